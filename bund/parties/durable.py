"""Files that survive a crash: a directory's entries synced, a file moved in or replaced durably.

A rename is durable only once the directory that holds the new name is synced; the bucket files
of a spilling role and the job store's artifact files both rely on it. A file replaced by a
rename must be synced before it: else a crash can leave the new name on an empty file.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


def sync_directory(path: Path) -> None:
    """Make the entries of directory ``path`` durable (after a rename or a create in it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move_durably(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``: a rename, or a synced copy across file systems.

    The caller syncs ``target``'s directory once it has moved what it moves.
    """
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        temporary = target.with_name(target.name + ".new")
        with source.open("rb") as src, temporary.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temporary, target)
        source.unlink()


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: written beside it, synced, renamed over it.

    A reader, or a restart after a crash, sees the old file or the new one whole. The caller
    syncs the directory where the rename itself must survive a crash.
    """
    temporary = path.with_name(path.name + ".new")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)
