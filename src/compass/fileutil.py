"""Writing files atomically, and telling whether two paths name the same file."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

from .errors import CompassError


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                 error: type[CompassError] = CompassError) -> None:
    """Create or replace the file `path` with what `write(f)` writes, so that it is either complete or untouched.

    The data goes to a new hidden file beside the destination, is flushed to disk, then renamed over it
    (os.replace, atomic on POSIX and Windows). On any failure, interruption included, the temporary file is
    removed and a file already at `path` is left as it was. A symlink at `path` is followed, so its target is
    replaced. The new file gets the permissions of any newly created file (umask). OSErrors become `error`,
    with a one-line message naming `path`.
    """
    name = os.fsdecode(path)
    target = os.path.realpath(name)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise error(f"{name}: output folder {os.path.dirname(name) or '.'} does not exist")
    if os.path.isdir(target):
        raise error(f"{name}: is a directory")
    tmp = os.path.join(folder, f".{os.path.basename(target)}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise error(f"{name}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise error(f"{name}: cannot write ({e.strerror or e})") from e
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` by the rule of `atomic_write` (e.g. a .cmp bitstream)."""
    atomic_write(path, lambda f: f.write(data))


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same file, e.g. to refuse an output that would overwrite the input.

    Two existing paths are compared as files (symlinks, hard links and case-insensitive file systems
    included); when either does not exist, the paths are compared once resolved (links, `..`, case on Windows).
    """
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
