"""File operations shared by the checkpoint and model writers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_or_copy(src: Path, dst: Path) -> None:
    """Make `dst` hold `src`'s bytes: a hard link where the filesystem allows one, else a copy.

    Parameter files are 100-300 MB and never modified in place (always replaced whole), so a second
    name for the same bytes is as good as a copy and costs no disk. `dst` is replaced atomically.
    """
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem (EXDEV), or one without hard links (EPERM, ENOTSUP)
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
