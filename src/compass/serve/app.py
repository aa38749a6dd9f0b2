"""The HTTP side of `compass serve`: Starlette routes on uvicorn (the `serve` extra; docs/serving.md).

    GET /img/NAME?w=WIDTH or ?layer=K   a decoded layer (the smallest at least WIDTH wide), PNG or WebP by Accept
    GET /cmp/NAME                       the compass file itself, with Range support
    GET /                               the gallery page

Image responses carry ETag, Cache-Control and Vary: Accept, and say what the server did for them:
X-Compass-Layer (the layer served), X-Compass-Bytes-Read (bytes of the compass file read to answer),
X-Compass-Cache (hit, miss, or shared with a concurrent request), X-Compass-Warning (a lower layer was served).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import bitstream
from ..errors import CompassError
from . import gallery
from .config import ServeConfig
from .decoder import FORMATS, Busy, LayerService
from .library import Library, NotFound

log = logging.getLogger("compass.serve")


class BadRequest(CompassError):
    """A query the server does not understand."""


# Checked in order: the first class an error is an instance of gives its status; a CompassError not listed
# before it (a damaged file, the library's one-line message) gets 422.
_STATUS = ((NotFound, 404), (bitstream.LayerOutOfRange, 404), (BadRequest, 400), (Busy, 503), (CompassError, 422))


def negotiate(accept: str | None) -> str:
    """"webp" when the Accept header names image/webp and takes it at least as willingly as image/png, else "png"
    (the format every client decodes: also for a missing header or a bare */*)."""
    weights = {}
    for item in (accept or "").split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            if p.replace(" ", "").lower().startswith("q="):
                with contextlib.suppress(ValueError):
                    q = float(p.split("=", 1)[1])
        weights[media.lower()] = q

    png = weights.get("image/png", weights.get("image/*", weights.get("*/*", 0.0)))
    return "webp" if 0 < weights.get("image/webp", 0.0) >= png else "png"


def _int(params, key: str, low: int, high: int) -> int | None:
    if key not in params:
        return None
    try:
        value = int(params[key])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(f"{key} must be an integer from {low} to {high}, got {params[key]!r}")
    return value


def _etag_matches(header: str | None, etag: str) -> bool:
    tags = {t.strip().removeprefix("W/") for t in (header or "").split(",")}
    return etag in tags or "*" in tags


async def _error(request: Request, exc: Exception) -> Response:
    status = next(code for cls, code in _STATUS if isinstance(exc, cls))
    headers = {"Retry-After": "1"} if status == 503 else None
    return PlainTextResponse(f"{exc}\n", status, headers=headers)


def create_app(root: str | os.PathLike, config: ServeConfig = ServeConfig()) -> Starlette:
    """The server's application for the compass files below `root`."""
    library = Library(root, config.layouts)
    service = LayerService(config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        yield
        service.close()

    async def image(request: Request) -> Response:
        params = request.query_params
        width = _int(params, "w", 1, config.max_width)
        layer = _int(params, "layer", 0, bitstream.MAX_LAYERS - 1)
        if width is not None and layer is not None:
            raise BadRequest("give w or layer, not both")
        located = await asyncio.to_thread(library.locate, request.path_params["name"])
        fmt = negotiate(request.headers.get("accept"))
        served = await service.get(located, located.layer_for(width, layer), fmt)
        meta = served.meta
        headers = {"ETag": f'"{meta["etag"]}"', "Cache-Control": f"public, max-age={config.max_age}",
                   "Vary": "Accept", "X-Compass-Layer": str(meta["layer"]), "X-Compass-Cache": served.cache,
                   "X-Compass-Bytes-Read": str(located.bytes_read + served.bytes_read)}
        if meta["warning"]:
            headers["X-Compass-Warning"] = meta["warning"]
            log.warning("%s: %s", located.name, meta["warning"])
        if _etag_matches(request.headers.get("if-none-match"), headers["ETag"]):
            return Response(status_code=304, headers=headers)
        return Response(served.body, media_type=FORMATS[fmt], headers=headers)

    async def raw(request: Request) -> Response:
        located = await asyncio.to_thread(library.locate, request.path_params["name"])
        headers = {"Cache-Control": f"public, max-age={config.max_age}",
                   "X-Compass-Layer-Ends": ",".join(map(str, located.layout.ends))}
        return FileResponse(located.path, headers=headers, media_type="application/octet-stream")

    async def index(request: Request) -> Response:
        return HTMLResponse(gallery.page(await asyncio.to_thread(_gallery_items, library, config.gallery_images)))

    routes = [Route("/", index), Route("/img/{name:path}", image), Route("/cmp/{name:path}", raw)]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={cls: _error for cls, _ in _STATUS})


def _gallery_items(library: Library, limit: int) -> dict:
    items = {}
    for name in library.names(limit):
        try:
            items[name] = library.locate(name)
        except CompassError as e:
            items[name] = str(e)
    return items


def run(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig = ServeConfig(),
        log_level: str = "info") -> None:
    """Serve until interrupted, logging like uvicorn (its access log included), compass's warnings beside it."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    logging_config = copy.deepcopy(LOGGING_CONFIG)
    logging_config["loggers"]["compass.serve"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    uvicorn.run(create_app(root, config), host=host, port=port, log_level=log_level, log_config=logging_config)
