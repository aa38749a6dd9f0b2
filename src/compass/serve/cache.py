"""An on-disk least-recently-used cache of small files (a metadata dict and a body), with a size cap.

The server keeps decoded layers in it: a hit costs one file read instead of a decode. Which entry was used last
is kept in memory and in each file's mtime, so the order survives a restart. One process should own a folder:
another process's entries count against its cap only from its next start.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ..errors import CompassError
from ..fileutil import atomic_write

_META = struct.Struct(">I")
log = logging.getLogger("compass.serve")


class DiskCache:
    """Entries `key -> (meta, body)` in `folder`, the least recently used removed while they exceed `max_bytes`
    (0 stores nothing). Keys must be file-name safe. Thread-safe."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int):
        self.folder, self.max_bytes = Path(folder), max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        if max_bytes <= 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        entries = []
        for path in self.folder.glob("*.entry"):
            try:
                st = path.stat()
            except OSError:  # removed meanwhile
                continue
            entries.append((st.st_mtime_ns, path.stem, st.st_size))
        with self._lock:
            for _, key, size in sorted(entries):
                self._add(key, size)
            self._evict()

    @property
    def total_bytes(self) -> int:
        return self._total

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.entry"

    def get(self, key: str) -> tuple[dict, bytes] | None:
        with self._lock:
            if key not in self._sizes:
                return None
            self._sizes.move_to_end(key)
        try:
            data = self._path(key).read_bytes()
            self._touch(key)
            (n,) = _META.unpack_from(data)
            return json.loads(data[_META.size:_META.size + n]), data[_META.size + n:]
        except (OSError, ValueError, struct.error):  # removed or damaged behind our back: a miss
            with self._lock:
                self._total -= self._sizes.pop(key, 0)
            return None

    def put(self, key: str, meta: dict, body: bytes) -> None:
        head = json.dumps(meta).encode()
        data = _META.pack(len(head)) + head + body
        if len(data) > self.max_bytes:
            return
        try:
            atomic_write(self._path(key), lambda f: f.write(data))
            self._touch(key)
        except (CompassError, OSError) as e:  # a full or read-only disk costs the cache, not the response
            log.warning("cache: %s", e)
            return
        with self._lock:
            self._add(key, len(data))
            self._evict()

    def _touch(self, key: str) -> None:
        """Mark the entry used now, in its mtime: the clock's nanoseconds (file systems stamp new files with a
        coarser clock, which would tie entries written within a few milliseconds)."""
        now = time.time_ns()
        os.utime(self._path(key), ns=(now, now))

    def _add(self, key: str, size: int) -> None:
        self._total += size - self._sizes.pop(key, 0)
        self._sizes[key] = size

    def _evict(self) -> None:
        while self._total > self.max_bytes:
            key, size = self._sizes.popitem(last=False)
            self._total -= size
            try:
                self._path(key).unlink()
            except FileNotFoundError:
                pass
