"""Safe extraction of tar archives we are handed (model channel, model.tar.gz).

tarfile.extractall trusts member names; these archives come from users, so every member is checked
before anything is written (`member_refusal`, on top of tarfile's data filter, also used for the VOC tar):
no absolute paths, no `..`, no symbolic links, no devices or FIFOs, no path
that is both a file and a folder, and bounds on the member count and the total size. A hard link is
accepted only to a regular file earlier in the same archive (tar stores a model folder's second name
for one parameter file that way), and is written as a link or copy inside the destination. Files are
written with default permissions (no setuid bits, no owners from the archive).
"""

from __future__ import annotations

import gzip
import lzma
import tarfile
import zlib
from pathlib import Path, PurePosixPath

from gluonseg.errors import ClientError
from gluonseg.files import link_or_copy

MAX_ARCHIVE_BYTES = 8 << 30  # a ResNet-101 model is ~0.5 GB; 8 GB is a mistake or an attack
MAX_MEMBERS = 10_000


def member_refusal(member: tarfile.TarInfo, hard_links: bool = False) -> str | None:
    """Why `member` must not be extracted (a phrase that follows its name), or None.

    tarfile's own `data_filter` judges absolute paths, escapes from the destination and special files;
    on top of it: symbolic links (a model or a dataset needs none), hard links unless `hard_links` (the
    caller then checks their targets), names like "C:/x" from Windows tars, and negative sizes (only a
    crafted header has one; CVE-2025-8194 loops tarfile on such offsets).
    """
    name = PurePosixPath(member.name)
    if member.name.startswith(("/", "\\")) or name.is_absolute() or (name.parts and ":" in name.parts[0]):
        return "has an absolute path"
    if ".." in name.parts:  # even where it lands inside: a member must have one spelling
        return "leaves the folder ('..')"
    if member.issym():
        return "is a symbolic link"
    if member.islnk() and not hard_links:
        return "is a hard link"
    if member.size < 0:
        return "declares a negative size"
    try:
        tarfile.data_filter(member, "/destination")
    except tarfile.OutsideDestinationError:
        return "leaves the folder ('..')"
    except tarfile.SpecialFileError:
        return "is a device file or FIFO"
    except tarfile.FilterError as exc:  # link targets: judged again by the caller, against earlier members
        if not member.islnk():
            return f"is refused by tarfile's data filter ({exc})"
    if not (member.isfile() or member.isdir() or member.islnk()):
        return "is not a regular file or folder"
    return None


class TarBudget:
    """The bounds tarfile's data filter lacks: how many members and how many bytes an archive may hold,
    counted from the headers as they go by (before anything is written). `note` ends the message, e.g.
    ", far more than VOC 2012"."""

    def __init__(self, archive: Path, max_bytes: int, max_members: int, note: str = "") -> None:
        self.archive, self.max_bytes, self.max_members, self.note = archive, max_bytes, max_members, note
        self.members = 0
        self.bytes = 0

    def count(self, member: tarfile.TarInfo) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ClientError(
                f"{self.archive}: more than {self.max_members} members (at '{member.name}'){self.note}; "
                "refusing to extract"
            )

    def spend(self, member: tarfile.TarInfo, size: int) -> None:
        self.bytes += size
        if self.bytes > self.max_bytes:
            raise ClientError(
                f"{self.archive}: members add up to more than {self.max_bytes} bytes (at '{member.name}', "
                f"{size} bytes){self.note}; refusing to extract"
            )


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    reason = member_refusal(member, hard_links=True)
    if reason:
        raise ClientError(f"{archive}: member '{member.name}' {reason}; refusing to extract")
    parts = [p for p in PurePosixPath(member.name).parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def _link_target(member: tarfile.TarInfo, archive: Path, regular: dict[PurePosixPath, int]) -> PurePosixPath:
    """The earlier regular member a hard link names, or a refusal."""
    link = PurePosixPath(member.linkname)
    parts = [p for p in link.parts if p not in ("", ".")]
    rel = PurePosixPath(*parts) if parts else None
    escapes = member.linkname.startswith(("/", "\\")) or link.is_absolute() or ".." in link.parts
    if escapes or rel not in regular:
        raise ClientError(
            f"{archive}: member '{member.name}' is a hard link to '{member.linkname}', which is not a file "
            "earlier in the archive; refusing to extract"
        )
    return rel


def _check_shape(rel: PurePosixPath, is_dir: bool, files: set, folders: set, member: str, archive: Path) -> None:
    """Refuse a path that is a file in one member and a folder in another (else an OSError mid-write)."""
    parents = {p for p in rel.parents if p != PurePosixPath(".")}
    if (is_dir and rel in files) or (not is_dir and rel in folders) or parents & files:
        raise ClientError(
            f"{archive}: member '{member}' is both a file and a folder in the archive; refusing to extract"
        )
    folders.update(parents)
    (folders if is_dir else files).add(rel)


def safe_extract(
    archive: Path, dest: Path, max_bytes: int = MAX_ARCHIVE_BYTES, max_members: int = MAX_MEMBERS
) -> list[Path]:
    """Extract regular files and folders of `archive` into `dest`; return the files written.

    Every member is checked before `dest` is created, so a refused archive writes nothing.
    """
    written: list[Path] = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            files: set[PurePosixPath] = set()
            folders: set[PurePosixPath] = set()
            regular: dict[PurePosixPath, int] = {}  # file members so far -> size, for hard links
            budget = TarBudget(archive, max_bytes, max_members)
            for member in tar:
                budget.count(member)
                rel = _check_member(member, archive)
                link_to = _link_target(member, archive, regular) if member.islnk() else None
                # A link counts its file's size again: where links are refused it is written as a copy.
                size = regular[link_to] if link_to is not None else max(member.size, 0)
                budget.spend(member, size)
                if rel is not None:
                    _check_shape(rel, member.isdir(), files, folders, member.name, archive)
                    members.append((member, rel, link_to))
                    if not member.isdir():
                        regular[rel] = size
            dest.mkdir(parents=True, exist_ok=True)
            for member, rel, link_to in members:
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.unlink(missing_ok=True)  # a repeated name must not write through an earlier link
                if link_to is not None:
                    link_or_copy(dest.joinpath(*link_to.parts), target)
                    written.append(target)
                    continue
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(target, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                written.append(target)
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, lzma.LZMAError) as exc:
        raise ClientError(f"{archive}: not a readable tar archive ({exc})") from None
    except EOFError:
        raise ClientError(f"{archive}: the archive is truncated") from None
    return written
