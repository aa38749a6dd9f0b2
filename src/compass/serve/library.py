"""The served folder: which names are compass files inside it, and where each file's layers end.

NAME in a URL is a file's path below the folder without its `.cmp` suffix (`birds/kingfisher` for
DIR/birds/kingfisher.cmp). Nothing outside the folder is ever opened: `..`, absolute paths, hidden names and
symbolic links that lead out of the folder are refused as if missing.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .. import bitstream
from ..bitstream import SUFFIX
from ..errors import CompassError


class NotFound(CompassError):
    """No compass file of that name inside the served folder."""


@dataclass(frozen=True)
class Located:
    """A compass file found by name: its real path, its version (device, inode, size, mtime_ns: it changes when
    the file does), its layer layout, and the bytes this lookup read from it (0 when the layout was known)."""

    name: str
    path: str
    version: tuple[int, int, int, int]
    layout: bitstream.Layout
    bytes_read: int

    @property
    def widths(self) -> list[int]:
        return [layer.width for layer in self.layout.header.layers]

    def layer_for(self, width: int | None = None, layer: int | None = None) -> int:
        """The layer to serve: `layer` itself, else the smallest layer at least `width` wide (the top layer when
        none is, or when neither is given)."""
        top = len(self.widths) - 1
        if layer is not None:
            if not 0 <= layer <= top:
                raise bitstream.LayerOutOfRange(f"layer {layer} requested, but {self.name} holds layers 0-{top}")
            return layer
        if width is None:
            return top
        return next((k for k, w in enumerate(self.widths) if w >= width), top)


class _Counted:
    """A binary file that counts the bytes read through it."""

    def __init__(self, f):
        self.f, self.bytes_read = f, 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, *args) -> int:
        return self.f.seek(*args)


class Library:
    """The compass files below `root`, with the layouts of the last `layouts` files looked up kept in memory."""

    def __init__(self, root: str | os.PathLike, layouts: int = 4096):
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise CompassError(f"{os.fsdecode(root)}: not a folder")
        self._max = layouts
        self._layouts: OrderedDict[str, tuple[tuple, bitstream.Layout]] = OrderedDict()
        self._lock = threading.Lock()

    def path(self, name: str) -> str:
        """The real path of NAME's file, or NotFound unless it is a regular file inside the folder."""
        parts = name.split("/")
        if "\\" in name or "\0" in name or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            raise NotFound(f"{name!r}: no such image")
        path = os.path.realpath(os.path.join(self.root, name + SUFFIX))
        if os.path.commonpath([self.root, path]) != self.root or not os.path.isfile(path):
            raise NotFound(f"{name!r}: no such image")
        return path

    def locate(self, name: str) -> Located:
        """NAME's file and its layout (read from the header and chunk framing only, once per file version).

        NotFound for a missing file or one that is not a compass file; BitstreamError for a damaged header.
        """
        path = self.path(name)
        try:
            f = open(path, "rb")
        except OSError:
            raise NotFound(f"{name!r}: no such image") from None
        with f:
            st = os.fstat(f.fileno())
            version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            with self._lock:
                known = self._layouts.get(path)
                if known is not None and known[0] == version:
                    self._layouts.move_to_end(path)
                    return Located(name, path, version, known[1], 0)
            counted = _Counted(f)
            try:
                layout = bitstream.layout(counted)
            except bitstream.BadMagic:
                raise NotFound(f"{name!r}: not a compass file") from None
        with self._lock:
            self._layouts[path] = (version, layout)
            self._layouts.move_to_end(path)
            while len(self._layouts) > self._max:
                self._layouts.popitem(last=False)
        return Located(name, path, version, layout, counted.bytes_read)

    def names(self, limit: int) -> list[str]:
        """Names of the first `limit` files with the `.cmp` suffix below the folder (sorted; hidden files and links
        leading out of the folder are left out)."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel = os.path.relpath(folder, self.root)
            for file in files:
                if file.endswith(SUFFIX) and not file.startswith("."):
                    found.append(file[:-len(SUFFIX)] if rel == "." else f"{rel}/{file[:-len(SUFFIX)]}")
        return sorted(name for name in found if self._inside(name))[:limit]

    def _inside(self, name: str) -> bool:
        try:
            self.path(name)
        except NotFound:  # a link leading out of the folder
            return False
        return True
