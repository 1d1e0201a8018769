"""Safe extraction of tar archives we are handed (model channel, model.tar.gz).

tarfile.extractall trusts member names; these archives come from users, so every member is checked:
no absolute paths, no `..`, no links, no devices or FIFOs, and a bound on the total size.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from gluonseg.errors import ClientError

MAX_ARCHIVE_BYTES = 8 << 30  # a ResNet-101 model is ~0.5 GB; 8 GB is a mistake or an attack
MAX_MEMBERS = 10_000


def _check_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    name = PurePosixPath(member.name)
    drive_like = bool(name.parts) and ":" in name.parts[0]  # "C:/x" from a Windows tar
    if member.name.startswith(("/", "\\")) or name.is_absolute() or drive_like:
        raise ClientError(f"{archive}: member '{member.name}' has an absolute path; refusing to extract")
    if ".." in name.parts:
        raise ClientError(f"{archive}: member '{member.name}' leaves the folder ('..'); refusing to extract")
    if member.issym() or member.islnk():
        raise ClientError(f"{archive}: member '{member.name}' is a link; refusing to extract")
    if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir()):
        raise ClientError(f"{archive}: member '{member.name}' is not a regular file or folder; refusing to extract")
    parts = [p for p in name.parts if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else None


def safe_extract(archive: Path, dest: Path, max_bytes: int = MAX_ARCHIVE_BYTES) -> list[Path]:
    """Extract regular files and folders of `archive` into `dest`; return the files written."""
    written: list[Path] = []
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for count, member in enumerate(tar, start=1):
                if count > MAX_MEMBERS:
                    raise ClientError(f"{archive}: more than {MAX_MEMBERS} members; refusing to extract")
                rel = _check_member(member, archive)
                total += max(member.size, 0)
                if total > max_bytes:
                    raise ClientError(f"{archive}: members add up to more than {max_bytes} bytes; refusing to extract")
                if rel is not None:
                    members.append((member, rel))
            dest.mkdir(parents=True, exist_ok=True)
            for member, rel in members:
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    continue
                with source, open(target, "wb") as out:
                    while chunk := source.read(1 << 20):
                        out.write(chunk)
                written.append(target)
    except tarfile.TarError as exc:
        raise ClientError(f"{archive}: not a readable tar archive ({exc})") from None
    except EOFError:
        raise ClientError(f"{archive}: the archive is truncated") from None
    return written
