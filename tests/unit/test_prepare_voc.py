"""prepare_voc: a miniature VOC 2012 tree, as folders and as tars, into the four SageMaker channels."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from gluonseg.data.voc import prepare_voc
from gluonseg.errors import ClientError
from tests.support.voc_tree import CHANNELS, TRAIN_IDS, VAL_IDS, build_voc_tree


def _tar(folder: Path, arcname: str, path: Path, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        tar.add(folder, arcname=arcname)
    return path


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return build_voc_tree(tmp_path / "src")


def _check_channels(out: Path, root: Path, summary: dict) -> None:
    assert summary["train"] == len(TRAIN_IDS) and summary["validation"] == len(VAL_IDS)
    expected = {
        "train": {f"{i}.jpg": root / "JPEGImages" / f"{i}.jpg" for i in TRAIN_IDS},
        "train_annotation": {f"{i}.png": root / "SegmentationClass" / f"{i}.png" for i in TRAIN_IDS},
        "validation": {f"{i}.jpg": root / "JPEGImages" / f"{i}.jpg" for i in VAL_IDS},
        "validation_annotation": {f"{i}.png": root / "SegmentationClass" / f"{i}.png" for i in VAL_IDS},
    }
    for channel, files in expected.items():
        assert sorted(p.name for p in (out / channel).iterdir()) == sorted(files)
        for name, original in files.items():
            assert (out / channel / name).read_bytes() == original.read_bytes()
        assert Path(summary["channels"][channel]) == out / channel
    for split in ("train", "validation"):
        assert json.loads((out / "label_map" / f"{split}_label_map.json").read_text()) == {"scale": 1}
    assert {p.name for p in out.iterdir()} == {*CHANNELS, "label_map"}


@pytest.mark.parametrize("form", ["VOCdevkit", "VOC2012", "parent"])
def test_from_folder(tmp_path: Path, tree: Path, form: str) -> None:
    source = {"VOCdevkit": tree.parent, "VOC2012": tree, "parent": tree.parent.parent}[form]
    out = tmp_path / "out"
    summary = prepare_voc(source, out)
    _check_channels(out, tree, summary)


@pytest.mark.parametrize(
    "mode, suffix, arcname",
    [
        ("w", ".tar", "VOCdevkit"),
        ("w:gz", ".tar.gz", "VOCdevkit"),
        ("w", ".tar", "./VOCdevkit"),
        ("w", ".tar", "VOC2012"),
    ],
)
def test_from_tar(tmp_path: Path, tree: Path, mode: str, suffix: str, arcname: str) -> None:
    folder = tree if arcname == "VOC2012" else tree.parent
    archive = _tar(folder, arcname, tmp_path / f"VOCtrainval_11-May-2012{suffix}", mode)
    out = tmp_path / "out"
    summary = prepare_voc(archive, out)
    _check_channels(out, tree, summary)
    # Nothing beyond the channels was unpacked anywhere.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src", "out", archive.name])


def _evil_members() -> list[tuple[tarfile.TarInfo, bytes | None]]:
    def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.linkname = linkname
        return member

    return [
        (info("../evil"), b"escaped"),
        (info("VOCdevkit/VOC2012/JPEGImages/../../../evil2"), b"escaped"),
        (info("/tmp/gluonseg_absolute_evil"), b"escaped"),
        (info("VOCdevkit/VOC2012/JPEGImages/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), None),
        (info("VOCdevkit/VOC2012/JPEGImages/hard.jpg", tarfile.LNKTYPE, "VOCdevkit/VOC2012/JPEGImages/x.jpg"), None),
        (info("VOCdevkit/VOC2012/dev", tarfile.CHRTYPE), None),
        (info("VOCdevkit/VOC2012/pipe", tarfile.FIFOTYPE), None),
    ]


@pytest.mark.parametrize("evil", range(len(_evil_members())))
@pytest.mark.parametrize("first", [True, False])
def test_unsafe_tar_members_are_refused_before_anything_is_written(
    tmp_path: Path, tree: Path, evil: int, first: bool
) -> None:
    member, data = _evil_members()[evil]
    if data is not None:
        member.size = len(data)
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        if first:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
        tar.add(tree.parent, arcname="VOCdevkit")
        if not first:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    with tarfile.open(archive) as tar:  # the archive really holds the name we meant
        assert member.name in tar.getnames()
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    with pytest.raises(ClientError, match=repr(member.name).replace(".", r"\.")):
        prepare_voc(archive, out)
    assert not out.exists()
    assert list(work.iterdir()) == []
    assert not any("evil" in p.name for p in tmp_path.rglob("*") if p != archive)
    assert not Path("/tmp/gluonseg_absolute_evil").exists()


@pytest.mark.parametrize("as_tar", [False, True])
@pytest.mark.parametrize(
    "remove, named",
    [
        ("ImageSets/Segmentation/val.txt", "val.txt"),
        ("ImageSets/Segmentation/train.txt", "train.txt"),
        ("JPEGImages/2009_000001.jpg", "2009_000001.jpg"),
        ("SegmentationClass/2007_000039.png", "2007_000039.png"),
    ],
)
def test_missing_files_are_named(tmp_path: Path, tree: Path, as_tar: bool, remove: str, named: str) -> None:
    (tree / remove).unlink()
    source = _tar(tree.parent, "VOCdevkit", tmp_path / "voc.tar") if as_tar else tree.parent
    out = tmp_path / "out"
    with pytest.raises(ClientError, match=named):
        prepare_voc(source, out)
    assert not out.exists()


@pytest.mark.parametrize("as_tar", [False, True])
@pytest.mark.parametrize("line", ["../../escape", "a/b", "two words"])
def test_ids_that_are_not_file_names_are_refused(tmp_path: Path, tree: Path, as_tar: bool, line: str) -> None:
    (tree / "ImageSets/Segmentation/train.txt").write_text(f"{TRAIN_IDS[0]}\n{line}\n")
    source = _tar(tree.parent, "VOCdevkit", tmp_path / "voc.tar") if as_tar else tree.parent
    with pytest.raises(ClientError, match=r"train\.txt line 2"):
        prepare_voc(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_blank_lines_and_repeats_in_lists_are_tolerated(tmp_path: Path, tree: Path) -> None:
    ids = "\n".join(TRAIN_IDS)
    (tree / "ImageSets/Segmentation/train.txt").write_text(f"\n{ids}\r\n  {TRAIN_IDS[0]}  \n\n")
    _check_channels(tmp_path / "out", tree, prepare_voc(tree, tmp_path / "out"))


def test_rerun_into_the_same_folder_and_stale_files(tmp_path: Path, tree: Path) -> None:
    out = tmp_path / "out"
    prepare_voc(tree, out)
    _check_channels(out, tree, prepare_voc(tree, out))
    (out / "validation" / "leftover.jpg").write_bytes(b"old")
    with pytest.raises(ClientError, match="leftover.jpg"):
        prepare_voc(tree, out)


def test_sources_that_are_not_voc(tmp_path: Path) -> None:
    with pytest.raises(ClientError, match="no such file"):
        prepare_voc(tmp_path / "absent.tar", tmp_path / "out")
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(ClientError, match="junk.tar"):
        prepare_voc(tmp_path / "junk.tar", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClientError, match="not a VOC2012 folder"):
        prepare_voc(tmp_path / "empty", tmp_path / "out")
    (tmp_path / "other" / "stuff").mkdir(parents=True)
    (tmp_path / "other" / "stuff" / "a.txt").write_text("x")
    with pytest.raises(ClientError, match="no VOC2012 folder"):
        prepare_voc(_tar(tmp_path / "other", "other", tmp_path / "other.tar"), tmp_path / "out")
    assert not (tmp_path / "out").exists()
