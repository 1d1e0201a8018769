"""PASCAL VOC 2012 into the four SageMaker channels, as the "Setup data" step of the SageMaker notebook does.

`ImageSets/Segmentation/train.txt` picks what goes to train/ and train_annotation/, `val.txt` what goes
to validation/ and validation_annotation/; the files are copied byte for byte (`JPEGImages/<id>.jpg`,
`SegmentationClass/<id>.png`). A label_map channel with {"scale": 1} is written for both splits.

The source is the trainval tar itself (read in place: only the listed members are copied, nothing is
extracted as such) or an extracted folder. Every tar member is checked before anything is written: an
absolute path, a '..' component, a link or a device anywhere in the archive refuses the whole archive.
"""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

from gluonseg.archives import TarBudget, member_refusal
from gluonseg.data.label_map import LABEL_MAP_FILES
from gluonseg.errors import ClientError, list_with_limit

log = logging.getLogger(__name__)

# Channel -> the VOC list file that fills it.
LIST_FILES = {"train": "train.txt", "validation": "val.txt"}
LIST_DIR = ("ImageSets", "Segmentation")
IMAGE_DIR, MASK_DIR = "JPEGImages", "SegmentationClass"
VOC_DIRS = ("ImageSets", IMAGE_DIR, MASK_DIR)
MAX_LIST_BYTES = 16 << 20  # the real lists are ~20 KB; anything this big is not a list
# The real trainval tar is 2.0 GB in ~40,000 members; far past that is a mistake or an attack (it would
# fill the disk, or memory with headers). Read when a tar is opened, so tests can lower them.
MAX_TAR_BYTES = 8 << 30
MAX_TAR_MEMBERS = 500_000


def prepare_output_dirs(planned: dict[Path, set[str]]) -> None:
    """Create the channel folders; refuse ones already holding files this run would not write.

    Stale files from an earlier, bigger run would otherwise silently join the channel.
    """
    for folder, names in planned.items():
        if folder.exists() and not folder.is_dir():
            raise ClientError(f"{folder} exists and is not a folder")
        if folder.is_dir():
            strangers = sorted(p.name for p in folder.iterdir() if p.name not in names)
            if strangers:
                raise ClientError(
                    f"{folder} already holds files this run would not write "
                    f"({list_with_limit(strangers, 5)}); use an empty output folder"
                )
    for folder in planned:
        folder.mkdir(parents=True, exist_ok=True)


def write_scale_label_maps(out: Path) -> dict[str, str]:
    """label_map/train_label_map.json and validation_label_map.json, both {"scale": 1} (pixel value = class)."""
    folder = out / "label_map"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, filename in LABEL_MAP_FILES.items():
        (folder / filename).write_text(json.dumps({"scale": 1}) + "\n")
        paths[split] = str(folder / filename)
    return paths


def parse_id_list(data: bytes, where: str) -> list[str]:
    """Image ids, one a line; blank lines skipped, repeats dropped. An id must be a plain file-name stem."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(f"{where}: not UTF-8 text") from None
    ids: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        image_id = line.strip()
        if not image_id:
            continue
        # The id becomes part of an output path, so it must not be able to leave the channel folder.
        if image_id in (".", "..") or any(c in image_id for c in "/\\\0") or any(c.isspace() for c in image_id):
            raise ClientError(f"{where} line {number}: {image_id!r} is not an image id")
        ids[image_id] = None
    return list(ids)


def _sources(image_id: str) -> tuple[str, str]:
    return f"{IMAGE_DIR}/{image_id}.jpg", f"{MASK_DIR}/{image_id}.png"


class _FolderSource:
    """An extracted VOC2012 folder, found from itself, its VOCdevkit parent, or the folder holding VOCdevkit."""

    def __init__(self, path: Path) -> None:
        for root in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
            if any((root / name).is_dir() for name in VOC_DIRS):
                self.root = root
                return
        raise ClientError(
            f"{path}: not a VOC2012 folder (no ImageSets/, JPEGImages/ or SegmentationClass/ "
            f"in it, in VOC2012/ or in VOCdevkit/VOC2012/)"
        )

    def where(self, relative: str) -> str:
        return str(self.root / relative)

    def read_list(self, relative: str) -> bytes:
        path = self.root / relative
        if not path.is_file():
            raise ClientError(f"{path}: list file not found")
        if path.stat().st_size > MAX_LIST_BYTES:
            raise ClientError(f"{path}: too large for a list of image ids")
        return path.read_bytes()

    def has(self, relative: str) -> bool:
        return (self.root / relative).is_file()

    def copy(self, plan: dict[str, list[Path]]) -> None:
        for relative, destinations in plan.items():
            for destination in destinations:
                shutil.copyfile(self.root / relative, destination)


class _TarSource:
    """The VOC trainval tar, read in place. All members are checked before any is copied."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, OSError, zlib.error) as exc:
            raise ClientError(f"{path}: not a readable tar archive ({exc})") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        self.lists: dict[str, bytes] = {}
        roots: set[tuple[str, ...]] = set()
        budget = TarBudget(path, MAX_TAR_BYTES, MAX_TAR_MEMBERS, note=", far more than VOC 2012")
        try:
            # One pass over the headers; list files are read as they go by, so a compressed tar is not rewound.
            for member in self.tar:
                reason = member_refusal(member)
                if reason:
                    raise ClientError(f"{path}: refusing tar member {member.name!r}: it {reason}")
                budget.spend(member, member.size)
                budget.count(member)
                parts = PurePosixPath(member.name).parts
                parts = parts[1:] if parts[:1] == (".",) else parts
                name = "/".join(parts)
                for i, part in enumerate(parts):
                    if part in VOC_DIRS:
                        roots.add(parts[:i])
                        break
                if member.isreg():
                    self.members[name] = member
                    if parts[-3:-1] == LIST_DIR and parts[-1] in LIST_FILES.values():
                        if member.size > MAX_LIST_BYTES:
                            raise ClientError(f"{path}: {member.name} is too large for a list of image ids")
                        self.lists[name] = self._read(member)
        except (tarfile.TarError, OSError, zlib.error) as exc:
            raise ClientError(f"{path}: broken tar archive ({exc})") from None
        if not roots:
            raise ClientError(f"{path}: no VOC2012 folder (ImageSets/, JPEGImages/, SegmentationClass/) in the archive")
        if len(roots) > 1:
            found = sorted("/".join(r) or "." for r in roots)
            raise ClientError(f"{path}: more than one VOC2012 folder in the archive ({list_with_limit(found, 5)})")
        self.prefix = "".join(f"{part}/" for part in roots.pop())

    def _read(self, member: tarfile.TarInfo) -> bytes:
        handle = self.tar.extractfile(member)
        if handle is None:  # pragma: no cover - only regular files get here
            raise ClientError(f"{self.path}: cannot read {member.name}")
        with handle:
            return handle.read()

    def where(self, relative: str) -> str:
        return f"{self.path}:{self.prefix}{relative}"

    def read_list(self, relative: str) -> bytes:
        data = self.lists.get(self.prefix + relative)
        if data is None:
            raise ClientError(f"{self.where(relative)}: list file not found in the archive")
        return data

    def has(self, relative: str) -> bool:
        return self.prefix + relative in self.members

    def copy(self, plan: dict[str, list[Path]]) -> None:
        # Archive order, so a compressed tar is read forward once.
        ordered = sorted(plan, key=lambda relative: self.members[self.prefix + relative].offset)
        try:
            for relative in ordered:
                member = self.members[self.prefix + relative]
                handle = self.tar.extractfile(member)
                if handle is None:  # pragma: no cover - only regular files are in self.members
                    raise ClientError(f"{self.where(relative)}: cannot read")
                with handle:
                    for destination in plan[relative]:
                        handle.seek(0)
                        with open(destination, "wb") as sink:
                            shutil.copyfileobj(handle, sink, 1 << 20)
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ClientError(f"{self.path}: broken tar archive ({exc})") from None

    def close(self) -> None:
        self.tar.close()


def prepare_voc(source: Path, out: Path) -> dict[str, Any]:
    """Fill out/train, train_annotation, validation, validation_annotation and label_map from VOC 2012.

    `source`: VOCtrainval_11-May-2012.tar (any tar compression), an extracted VOCdevkit/ folder, its
    VOC2012/ folder, or the folder the tar was extracted into. Returns the counts and paths.
    Everything is checked (archive members, list files, every listed file present) before anything is written.
    """
    source, out = Path(source), Path(out)
    if source.is_dir():
        reader: _FolderSource | _TarSource = _FolderSource(source)
    elif source.is_file():
        reader = _TarSource(source)
    else:
        raise ClientError(f"{source}: no such file or folder")
    try:
        splits: dict[str, list[str]] = {}
        for channel, list_file in LIST_FILES.items():
            relative = "/".join((*LIST_DIR, list_file))
            splits[channel] = parse_id_list(reader.read_list(relative), reader.where(relative))
        plan: dict[str, list[Path]] = {}
        planned: dict[Path, set[str]] = {}
        for channel, ids in splits.items():
            list_name = "/".join((*LIST_DIR, LIST_FILES[channel]))
            missing = [relative for image_id in ids for relative in _sources(image_id) if not reader.has(relative)]
            if missing:
                raise ClientError(
                    f"{reader.where('')}: files listed in {list_name} are missing: " f"{list_with_limit(missing, 10)}"
                )
            planned[out / channel] = {f"{image_id}.jpg" for image_id in ids}
            planned[out / f"{channel}_annotation"] = {f"{image_id}.png" for image_id in ids}
            for image_id in ids:
                image, mask = _sources(image_id)
                plan.setdefault(image, []).append(out / channel / f"{image_id}.jpg")
                plan.setdefault(mask, []).append(out / f"{channel}_annotation" / f"{image_id}.png")
        prepare_output_dirs(planned)
        reader.copy(plan)
    finally:
        if isinstance(reader, _TarSource):
            reader.close()
    label_maps = write_scale_label_maps(out)
    counts = {channel: len(ids) for channel, ids in splits.items()}
    log.info(
        "VOC from %s: %d training and %d validation pairs in %s", source, counts["train"], counts["validation"], out
    )
    return {
        "source": str(source),
        "out": str(out),
        **counts,
        "channels": {
            name: str(out / name)
            for name in ("train", "train_annotation", "validation", "validation_annotation", "label_map")
        },
        "label_maps": label_maps,
    }
