"""Decoding layers for the server, never on its event loop: a bounded pool of worker processes (each loads the
codecs it needs once), one decode shared by every request that waits for the same layer, and the disk cache in
front of both. A decode reads the file's prefix through the layer it decodes, and nothing after it."""
from __future__ import annotations

import asyncio
import hashlib
import importlib
import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace

from .. import bitstream
from ..errors import CompassError
from .cache import DiskCache
from .config import ServeConfig
from .library import Located

FORMATS = {"png": "image/png", "webp": "image/webp"}


class Damaged(CompassError):
    """The layer cannot be decoded, nor any layer below it (the message is the library's one-line error)."""


class Busy(CompassError):
    """The server cannot decode now (too many decodes waiting, a worker died, the file changed): try again."""


@dataclass(frozen=True)
class Served:
    """A layer rendition: `meta` (etag, layer, width, height, warning), the image bytes, how the request got it
    (`cache`: hit, miss or shared with a concurrent request) and the bytes of the compass file it read."""

    meta: dict
    body: bytes
    cache: str
    bytes_read: int


# ---- in the worker processes


def _start_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _ready() -> None:
    """Import the codec now rather than at the first request."""
    importlib.import_module("compass.api")


def decode_png(path: str, version: tuple, upto: int, end: int) -> dict:
    """Decode layer `upto` of the file from its first `end` bytes, or the highest layer below it that decodes.

    Returns {"meta", "png", "bytes_read"}, or {"error", "retry"} (exceptions do not all survive pickling).
    The etag hashes the bytes read, so it changes with anything that could change the pixels.
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != tuple(version):
                return {"error": "the file changed while it was being served", "retry": True}
            data = f.read(end)
        from ..api import model_for  # shipped models only: the name comes from the file

        codec = model_for(bitstream.read_header(data)[0])
        image, served, warning = None, -1, None
        try:
            for served, image in enumerate(codec.decode_iter(data, upto)):
                pass
        except CompassError as e:
            if image is None:
                raise
            warning = f"{e}; served layer {served}"
    except (CompassError, OSError) as e:
        return {"error": str(e), "retry": False}
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    meta = {"etag": f"{hashlib.sha256(data).hexdigest()[:20]}-L{served}", "layer": served,
            "width": image.shape[1], "height": image.shape[0], "warning": warning}
    return {"meta": meta, "png": out.getvalue(), "bytes_read": len(data)}


def png_to_webp(png: bytes, quality: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    with Image.open(io.BytesIO(png)) as im:
        im.save(out, "WEBP", quality=quality)
    return out.getvalue()


# ---- in the server process


class LayerService:
    """Layers of located files as PNG or WebP: from the cache, else decoded once in the worker pool."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.cache = DiskCache(config.cache_dir, config.cache_bytes)
        self._pool: ProcessPoolExecutor | None = None
        self._flights: dict[str, asyncio.Future] = {}
        self._pending = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        threads = max(1, (os.cpu_count() or 1) // self.config.workers)
        return ProcessPoolExecutor(self.config.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker, initargs=(threads,))

    async def start(self) -> None:
        """Start the workers and wait until each has imported the codec."""
        self._pool = self._new_pool()
        await asyncio.gather(*(self._run(_ready) for _ in range(self.config.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    async def get(self, located: Located, layer: int, fmt: str) -> Served:
        """Layer `layer` in format `fmt`, or the highest layer below it that the file holds intact (with a
        warning in its meta). Damaged when no layer up to `layer` decodes; Busy when it cannot decode now."""
        layout = located.layout
        if not layout.ends:
            raise Damaged(layout.missing)
        upto = min(layer, len(layout.ends) - 1)
        key = hashlib.sha256(f"{located.path}\0{located.version}".encode()).hexdigest()[:32] + f"-{upto}"

        async def decode():
            out = await self._run(decode_png, located.path, located.version, upto, layout.ends[upto])
            if "error" in out:
                raise (Busy if out["retry"] else Damaged)(out["error"])
            return out["meta"], out["png"], out["bytes_read"]

        async def render():
            png = await self._once(f"{key}.png", decode)
            webp = await self._run(png_to_webp, png.body, self.config.webp_quality)
            return {**png.meta, "etag": png.meta["etag"] + ".webp"}, webp, png.bytes_read

        served = await self._once(f"{key}.{fmt}", decode if fmt == "png" else render)
        if upto < layer and not served.meta["warning"]:
            meta = {**served.meta, "warning": f"{layout.missing}; served layer {served.meta['layer']}"}
            served = replace(served, meta=meta)
        return served

    async def _once(self, key: str, produce) -> Served:
        """The cache entry `key`, else what `produce` makes (then cached); concurrent calls share one."""
        flight = self._flights.get(key)
        if flight is not None:
            return replace(await asyncio.shield(flight), cache="shared", bytes_read=0)
        flight = self._flights[key] = asyncio.ensure_future(self._lookup(key, produce))
        flight.add_done_callback(lambda _: self._flights.pop(key, None))
        return await asyncio.shield(flight)

    async def _lookup(self, key: str, produce) -> Served:
        hit = await asyncio.to_thread(self.cache.get, key)
        if hit is not None:
            return Served(*hit, "hit", 0)
        meta, body, bytes_read = await produce()
        await asyncio.to_thread(self.cache.put, key, meta, body)
        return Served(meta, body, "miss", bytes_read)

    async def _run(self, fn, *args):
        """`fn(*args)` in the worker pool, refused beyond `max_pending` waiting calls."""
        if self._pending >= self.config.max_pending:
            raise Busy(f"{self._pending} decodes are waiting; try again")
        self._pending += 1
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)
        except BrokenProcessPool:
            if self._pool is pool:  # a worker was killed (out of memory?): later requests get new ones
                self._pool = self._new_pool()
            raise Busy("a decoding process died; try again") from None
        finally:
            self._pending -= 1
