"""Every archive gluonseg opens, given crafted tars: the model channel (open_model_source ->
safe_extract) and the VOC trainval tar (prepare_voc). Absolute paths, '..', links, devices, FIFOs,
file/folder clashes, too many members and too many bytes are refused with a ClientError naming the
member, before anything is written anywhere.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from gluonseg import archives
from gluonseg.archives import safe_extract
from gluonseg.artifacts import BEST_PARAMS, HYPERPARAMS_FILE, open_model_source
from gluonseg.data import voc
from gluonseg.data.voc import prepare_voc
from gluonseg.errors import ClientError
from tests.support.voc_tree import build_voc_tree

MODES = ["w", "w:gz"]


def member(name: str, data: bytes | None = b"", kind: bytes = tarfile.REGTYPE, link: str = "", **attrs):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if data is not None and kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, (data if kind == tarfile.REGTYPE else None)


def write_tar(path: Path, members: list, mode: str = "w", fmt: int = tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(path, mode, format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def header_only_tar(path: Path, name: str, size: int) -> Path:
    """A tar of one member header that declares `size` bytes (data absent): the cheapest size bomb."""
    info = tarfile.TarInfo(name)
    info.size = size
    path.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT))
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


@pytest.fixture()
def sandbox(tmp_path: Path) -> dict[str, Path]:
    """dest (must stay empty on refusal), and `outside`, where escapes would land."""
    outside = tmp_path / "outside"
    outside.mkdir()
    return {"dest": tmp_path / "work" / "dest", "outside": outside, "root": tmp_path}


def evil_cases(outside: Path) -> dict[str, list]:
    """name -> members, each led by a harmless file so that refusing only the bad one is not enough.

    The member that must be named in the refusal is the first whose name holds 'evil' or is 'sub'.
    """
    ok = member("ok.txt", b"fine")
    return {
        "absolute path": [ok, member(str(outside / "evil_abs"), b"escaped")],
        "dot-dot": [ok, member("../outside/evil_dotdot", b"escaped")],
        "dot-dot inside a path": [ok, member("model/../../outside/evil_deep", b"escaped")],
        "windows drive": [ok, member("C:/evil_drive", b"escaped")],
        "symlink leaving the folder": [ok, member("evil_link", kind=tarfile.SYMTYPE, link=str(outside))],
        "symlink then a file through it": [
            ok,
            member("sub", kind=tarfile.SYMTYPE, link="../outside"),
            member("sub/evil_through", b"escaped"),
        ],
        "symlink inside the folder": [ok, member("evil_inner_link", kind=tarfile.SYMTYPE, link="ok.txt")],
        "hard link leaving the folder": [ok, member("evil_hard", kind=tarfile.LNKTYPE, link="../../etc/passwd")],
        "absolute hard link": [ok, member("evil_hard_abs", kind=tarfile.LNKTYPE, link="/etc/passwd")],
        "hard link to a later member": [
            ok,
            member("evil_hard_ahead", kind=tarfile.LNKTYPE, link="later.txt"),
            member("later.txt", b"x"),
        ],
        "hard link to a folder": [
            ok,
            member("dir", kind=tarfile.DIRTYPE),
            member("evil_hard_dir", kind=tarfile.LNKTYPE, link="dir"),
        ],
        "character device": [ok, member("evil_chr", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)],
        "block device": [ok, member("evil_blk", kind=tarfile.BLKTYPE, devmajor=8, devminor=0)],
        "fifo": [ok, member("evil_fifo", kind=tarfile.FIFOTYPE)],
        "file then a folder of the same name": [ok, member("ok.txt/evil_clash", b"x")],
        "folder then a file of the same name": [
            ok,
            member("evil_dir", kind=tarfile.DIRTYPE),
            member("evil_dir", b"x"),
        ],
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(evil_cases(Path("/x"))))
def test_unsafe_members_are_refused_before_anything_is_written(sandbox, case, mode):
    members = evil_cases(sandbox["outside"])[case]
    archive = write_tar(sandbox["root"] / f"evil.tar{'.gz' if 'gz' in mode else ''}", members, mode)
    bad_name = next(info.name for info, _ in members if "evil" in info.name or info.name == "sub")
    with tarfile.open(archive) as tar:  # the archive really holds the members we meant
        assert tar.getnames() == [info.name for info, _ in members]
    with pytest.raises(ClientError, match=re.escape(f"'{bad_name}'")) as info:
        safe_extract(archive, sandbox["dest"])
    assert str(archive) in str(info.value) and "refusing to extract" in str(info.value)
    assert not sandbox["dest"].exists()
    assert files_under(sandbox["outside"]) == []
    assert files_under(sandbox["root"]) == [archive]


@pytest.mark.parametrize(
    "name, fmt",
    [("../outside/evil_pax", tarfile.PAX_FORMAT), ("../" + "d" * 120 + "/evil_gnu_long", tarfile.GNU_FORMAT)],
    ids=["pax path header", "gnu long name"],
)
def test_names_from_extension_headers_are_checked_too(sandbox, name, fmt):
    info, data = member("innocent.txt", b"escaped")
    if fmt == tarfile.PAX_FORMAT:
        info.pax_headers = {"path": name}  # overrides the plain header's name when read
    else:
        info.name = name  # over 100 bytes: stored in a ././@LongLink record
    archive = write_tar(sandbox["root"] / "ext.tar", [(info, data)], fmt=fmt)
    with tarfile.open(archive) as tar:
        assert tar.getnames() == [name]
    with pytest.raises(ClientError, match=re.escape(name)):
        safe_extract(archive, sandbox["dest"])
    assert files_under(sandbox["root"]) == [archive]


@pytest.mark.parametrize("mode", MODES)
def test_total_size_bound(sandbox, mode):
    members = [member(f"part{i}.bin", bytes([i]) * 400) for i in range(3)]
    archive = write_tar(sandbox["root"] / "big.tar", members, mode)
    with pytest.raises(ClientError, match=r"more than 1000 bytes \(at 'part2\.bin', 400 bytes\)"):
        safe_extract(archive, sandbox["dest"], max_bytes=1000)
    assert not sandbox["dest"].exists()
    # At the bound exactly, it extracts.
    written = safe_extract(archive, sandbox["dest"], max_bytes=1200)
    assert sorted(p.name for p in written) == ["part0.bin", "part1.bin", "part2.bin"]


def test_declared_size_past_the_default_bound_is_refused_from_the_header(sandbox):
    archive = header_only_tar(sandbox["root"] / "bomb.tar", "model_best.params", archives.MAX_ARCHIVE_BYTES + 1)
    assert archive.stat().st_size <= 1024
    with pytest.raises(ClientError, match=re.escape("'model_best.params'")):
        safe_extract(archive, sandbox["dest"])
    assert not sandbox["dest"].exists()


def negative_size_tar(path: Path, first: str) -> Path:
    """A file member, then one whose (GNU base-256) size is negative, pointing the reader back at the first."""
    ok = tarfile.TarInfo(first)
    ok.size = 5
    bad = tarfile.TarInfo("evil_negative")
    bad.size = -1536
    path.write_bytes(
        ok.tobuf(format=tarfile.GNU_FORMAT)
        + b"hello".ljust(512, b"\0")
        + bad.tobuf(format=tarfile.GNU_FORMAT)
        + b"\0" * 2048
    )
    return path


def test_negative_member_size_is_refused(sandbox):
    archive = negative_size_tar(sandbox["root"] / "negative.tar", "ok.txt")
    with pytest.raises(ClientError, match="'evil_negative' declares a negative size"):
        safe_extract(archive, sandbox["dest"])
    assert not sandbox["dest"].exists()


def test_member_count_bound(sandbox):
    members = [member(f"f{i}", b"") for i in range(6)]
    archive = write_tar(sandbox["root"] / "many.tar", members)
    with pytest.raises(ClientError, match=r"more than 5 members \(at 'f5'\)"):
        safe_extract(archive, sandbox["dest"], max_members=5)
    assert not sandbox["dest"].exists()
    assert len(safe_extract(archive, sandbox["dest"], max_members=6)) == 6


def test_default_member_count_bound(sandbox):
    members = [member(f"d/{i}", None, kind=tarfile.DIRTYPE) for i in range(archives.MAX_MEMBERS + 1)]
    archive = write_tar(sandbox["root"] / "many.tar.gz", members, "w:gz")
    with pytest.raises(ClientError, match=f"more than {archives.MAX_MEMBERS} members"):
        safe_extract(archive, sandbox["dest"])


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_broken_archives_are_client_errors(sandbox, damage):
    good = write_tar(sandbox["root"] / "good.tar.gz", [member("f", b"x" * 5000)], "w:gz").read_bytes()
    data = {"truncated": good[: len(good) // 2], "garbage": b"not an archive at all" * 10, "empty": b""}[damage]
    archive = sandbox["root"] / "broken.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(ClientError, match=re.escape(str(archive))):
        safe_extract(archive, sandbox["dest"])


def test_every_single_byte_corruption_of_a_tar_gz_is_extracted_or_a_client_error(tmp_path):
    """Each byte of a small model.tar.gz flipped in turn: gzip CRC and zlib errors included, never a raw error."""
    good = write_tar(tmp_path / "good.tar.gz", [member(f"f{i}", bytes(range(256)) * 40) for i in range(3)], "w:gz")
    data = good.read_bytes()
    archive = tmp_path / "broken.tar.gz"
    reasons = []
    for at in range(len(data)):
        archive.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
        try:
            safe_extract(archive, tmp_path / f"out{at}")
        except ClientError as exc:
            reasons.append(str(exc))
    # The two kinds that escaped as raw gzip/zlib exceptions before are among them.
    assert any("CRC check failed" in r for r in reasons) and any("while decompressing" in r for r in reasons)


def test_a_normal_archive_extracts_without_special_bits(sandbox):
    members = [
        member("./model", None, kind=tarfile.DIRTYPE),
        member("./model/weights.params", b"\x01\x02", mode=0o4755),  # setuid in the archive
        member("notes/readme.txt", b"hello", mode=0o644),
        member("notes/..data", b"dots in a name are fine"),
        member("back\\slash", b"a plain character on Linux"),
    ]
    archive = write_tar(sandbox["root"] / "model.tar.gz", members, "w:gz")
    written = safe_extract(archive, sandbox["dest"])
    dest = sandbox["dest"]
    assert sorted(p.relative_to(dest).as_posix() for p in written) == [
        "back\\slash",
        "model/weights.params",
        "notes/..data",
        "notes/readme.txt",
    ]
    assert (dest / "model" / "weights.params").read_bytes() == b"\x01\x02"
    assert not (dest / "model" / "weights.params").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert files_under(sandbox["outside"]) == []


def test_hard_links_to_earlier_files_extract_as_one_file_under_two_names(sandbox):
    """What tar makes of a model folder whose model_best.params and model_algo-1 are one file."""
    folder = sandbox["root"] / "model"
    folder.mkdir()
    (folder / "model_algo-1").write_bytes(b"weights" * 100)
    (folder / "model_best.params").hardlink_to(folder / "model_algo-1")
    archive = sandbox["root"] / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=".")
    with tarfile.open(archive) as tar:
        assert sum(m.islnk() for m in tar.getmembers()) == 1  # really stored as a link
    dest = sandbox["dest"]
    written = safe_extract(archive, dest)
    assert sorted(p.name for p in written) == ["model_algo-1", "model_best.params"]
    assert (dest / "model_best.params").read_bytes() == (dest / "model_algo-1").read_bytes() == b"weights" * 100
    # The link's bytes count toward the size bound (where links fail it becomes a copy).
    shutil.rmtree(dest)
    with pytest.raises(ClientError, match="more than 1000 bytes"):
        safe_extract(archive, dest, max_bytes=1000)


# -- the model channel (incremental training): open_model_source -----------------------------


def model_members(extra: list | None = None) -> list:
    hyperparameters = {"num_classes": 4, "num_training_samples": 10, "crop_size": 64}
    return [
        member(HYPERPARAMS_FILE, json.dumps(hyperparameters).encode()),
        member(BEST_PARAMS, b"not really parameters"),
        *(extra or []),
    ]


def model_channel(root: Path, members: list) -> Path:
    channel = root / "input" / "data" / "model"
    channel.mkdir(parents=True)
    write_tar(channel / "model.tar.gz", members, "w:gz")
    return channel


def test_model_channel_with_a_good_tarball(sandbox):
    work = sandbox["root"] / "work"
    work.mkdir()
    artifact = open_model_source(model_channel(sandbox["root"], model_members()), workdir=work)
    assert artifact.num_classes == 4 and artifact.params_path.name == BEST_PARAMS
    assert artifact.folder.parent == work


@pytest.mark.parametrize(
    "bad",
    ["../../outside/evil_model", "/abs_evil_model", "link"],
)
def test_model_channel_refuses_a_crafted_tarball(sandbox, bad):
    if bad == "link":
        extra = member("evil_link", kind=tarfile.SYMTYPE, link=str(sandbox["outside"]))
    else:
        name = str(sandbox["outside"] / "abs_evil_model") if bad.startswith("/") else bad
        extra = member(name, b"escaped")
    work = sandbox["root"] / "work"
    work.mkdir()
    channel = model_channel(sandbox["root"], model_members([extra]))
    with pytest.raises(ClientError, match=re.escape(f"'{extra[0].name}'")):
        open_model_source(channel, workdir=work)
    assert files_under(work) == [] and files_under(sandbox["outside"]) == []


def test_model_channel_refuses_a_size_bomb(sandbox):
    channel = sandbox["root"] / "model"
    channel.mkdir()
    header_only_tar(channel / "model.tar.gz", BEST_PARAMS, archives.MAX_ARCHIVE_BYTES + 1)
    work = sandbox["root"] / "work"
    work.mkdir()
    with pytest.raises(ClientError, match=f"more than {archives.MAX_ARCHIVE_BYTES} bytes"):
        open_model_source(channel, workdir=work)
    assert files_under(work) == []


# -- the VOC trainval tar: prepare_voc --------------------------------------------------------


def voc_tar(tmp_path: Path) -> Path:
    tree = build_voc_tree(tmp_path / "src")
    archive = tmp_path / "VOCtrainval.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tree.parent, arcname="VOCdevkit")
    return archive


def test_voc_tar_past_the_size_bound_is_refused(tmp_path, monkeypatch):
    archive = voc_tar(tmp_path)
    with tarfile.open(archive) as tar:
        sizes = [m.size for m in tar]
    monkeypatch.setattr(voc, "MAX_TAR_BYTES", sum(sizes) - 1)
    out = tmp_path / "out"
    with pytest.raises(ClientError, match=r"more than \d+ bytes \(at '.+', \d+ bytes\), far more than VOC 2012"):
        prepare_voc(archive, out)
    assert not out.exists()
    monkeypatch.setattr(voc, "MAX_TAR_BYTES", sum(sizes))
    assert prepare_voc(archive, out)["train"] == 3


def test_voc_tar_declaring_more_than_the_default_bound_is_refused(tmp_path):
    archive = header_only_tar(tmp_path / "voc.tar", "VOCdevkit/VOC2012/JPEGImages/x.jpg", voc.MAX_TAR_BYTES + 1)
    out = tmp_path / "out"
    with pytest.raises(ClientError, match=re.escape("'VOCdevkit/VOC2012/JPEGImages/x.jpg'")):
        prepare_voc(archive, out)
    assert not out.exists()


def test_voc_tar_with_a_negative_member_size_is_refused(tmp_path):
    archive = negative_size_tar(tmp_path / "voc.tar", "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt")
    with pytest.raises(ClientError, match=r"'evil_negative': it declares a negative size"):
        prepare_voc(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_voc_tar_with_too_many_members_is_refused(tmp_path, monkeypatch):
    archive = voc_tar(tmp_path)
    monkeypatch.setattr(voc, "MAX_TAR_MEMBERS", 5)
    with pytest.raises(ClientError, match="more than 5 members"):
        prepare_voc(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
