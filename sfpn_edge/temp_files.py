"""Temporary files written beside their target and renamed into place, and the leftovers of
writers that died mid-write (SIGKILL, power cut), removed by the next writer.

Each temporary file ``.NAME.XXXXXXXX.tmp`` is held under an exclusive ``flock`` by the process
writing it; the kernel drops the lock when that process exits or dies, so a temporary file whose
lock can be taken has no writer left (``sweep``). The lock is taken before the file gets its
``.tmp`` name, so ``sweep`` never sees a live writer's file unlocked.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import tempfile
from pathlib import Path
from typing import Tuple

SQLITE_SIDE_FILES = ("-journal", "-wal", "-shm")  # left beside a temporary SQLite file


def temp_beside(path: Path) -> Tuple[int, Path]:
    """A new empty temporary file beside ``path``: (its descriptor, locked until closed; its path).
    Dead writers' temporary files of ``path`` are swept first."""
    sweep(path)
    fd, new = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    tmp = Path(new[:-len(".new")] + ".tmp")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(new, tmp)
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(new)
        raise
    return fd, tmp


def sweep(path: Path) -> int:
    """Remove the temporary files of ``path`` (and of names starting with it, e.g. its matrix
    files) whose writer is gone, with their SQLite side files; how many. Errors are ignored: a
    directory this process cannot write keeps them."""
    removed = 0
    for name in glob.glob(os.path.join(glob.escape(str(path.parent)), f".{glob.escape(path.name)}.*.tmp")):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live writer's file
            for leftover in [name] + [name + side for side in SQLITE_SIDE_FILES]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            removed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` over ``path`` and make the rename durable (the directory fsynced, where it can be)."""
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
