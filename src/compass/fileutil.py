"""Opening inputs, writing outputs atomically, and telling whether two paths name the same file."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from typing import BinaryIO

from .errors import CompassError
from .limits import STALE_TEMP_SECONDS

TEMPORARY = re.compile(r"\.compass-[0-9a-f]{12}\.tmp")  # `atomic_write`'s: short, for a name of any length


def open_input(source: str | os.PathLike | BinaryIO, error: type[CompassError] = CompassError):
    """A context manager giving `source` as a binary file: a path is opened (and closed after), a file object is
    passed through. Only regular files and pipes are opened: a folder, a device (/dev/zero, /dev/urandom, a
    disk) or a socket is refused, since reading it could take forever or never end. Reading a pipe is for the
    caller to bound. Failures raise `error` with a one-line message naming the path.
    """
    if not isinstance(source, (str, bytes, os.PathLike)):
        return contextlib.nullcontext(source)
    name = os.fsdecode(source)
    try:
        mode = os.stat(source).st_mode  # before opening: opening some devices has effects (a tape rewinds)
        if stat.S_ISDIR(mode):
            raise error(f"{name}: is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise error(f"{name}: not a regular file (a device or socket); refused")
        return open(source, "rb")
    except FileNotFoundError:
        raise error(f"{name}: no such file") from None
    except OSError as e:
        raise error(f"{name}: cannot read ({e.strerror or e})") from None


def read_upto(f: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes of `f`, fewer only at its end (a pipe or a raw file may return less per read)."""
    parts, left = [], size
    while left > 0 and (part := f.read(min(left, 1 << 24))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object],
                 error: type[CompassError] = CompassError) -> None:
    """Create or replace the file `path` with what `write(f)` writes, so that it is either complete or untouched.

    The data goes to a new hidden file beside the destination (`.compass-XXXXXXXXXXXX.tmp`, short enough for
    any name), is flushed to disk, then renamed over it (os.replace, atomic on POSIX and Windows). On any
    failure, interruption included, the temporary file is removed and a file already at `path` is left as it
    was; one a killed process left is removed by a later write into the folder (`_remove_stale_temporaries`).
    A symlink at `path` is followed, so its target is replaced. A file replaced keeps its permission bits; a
    new one gets those of any newly created file (umask). Anything but a regular file at `path` (a device, a
    pipe, a socket) is refused, never replaced. OSErrors become `error`, with a one-line message naming `path`.
    """
    name = os.fsdecode(path)
    target = os.path.realpath(name)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise error(f"{name}: output folder {os.path.dirname(name) or '.'} does not exist")
    try:
        old = os.stat(target).st_mode
    except FileNotFoundError:
        old = None
    except OSError as e:
        raise error(f"{name}: cannot write ({e.strerror or e})") from None
    if old is not None and stat.S_ISDIR(old):
        raise error(f"{name}: is a directory")
    if old is not None and not stat.S_ISREG(old):
        raise error(f"{name}: not a regular file (a device, pipe or socket); refusing to replace it")
    _remove_stale_temporaries(folder)
    tmp = os.path.join(folder, f".compass-{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as e:
        raise error(f"{name}: cannot write ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            if old is not None:
                os.chmod(tmp, stat.S_IMODE(old))
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


def _remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Remove `atomic_write`'s temporary files in `folder` untouched for `STALE_TEMP_SECONDS`: a process killed
    while writing (kill -9, a power cut) leaves its file behind. A live write keeps touching its own."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if TEMPORARY.fullmatch(entry.name):
                with contextlib.suppress(OSError):
                    if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)


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
