"""The server's settings and limits, in one place (`compass serve` options set some of them)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/compass/serve (~/.cache/compass/serve): outside the served folder, which may be read-only."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compass" / "serve"


@dataclass(frozen=True)
class ServeConfig:
    """workers: decoding processes (the bound on concurrent decodes; default one per core, at most 4).
    max_pending: decodes waiting for a worker beyond which a request gets 503. cache_dir, cache_bytes: the on-disk
    LRU cache of decoded layers and its size cap (0 turns it off). layouts: files whose layer layout is kept in
    memory. max_age: Cache-Control max-age (s). webp_quality: lossy WebP quality of the WebP renditions (PNG is
    lossless). max_width: the largest `w` a request may ask for. gallery_images: images on the gallery page.
    """

    workers: int = max(1, min(4, os.cpu_count() or 1))
    max_pending: int = 64
    cache_dir: Path = default_cache_dir()
    cache_bytes: int = 256 << 20
    layouts: int = 4096
    max_age: int = 3600
    webp_quality: int = 90
    max_width: int = 1 << 16
    gallery_images: int = 500

    def __post_init__(self):
        if min(self.workers, self.max_pending, self.layouts, self.max_width) < 1:
            raise ValueError("workers, max_pending, layouts and max_width must be at least 1")
        if min(self.cache_bytes, self.max_age, self.gallery_images) < 0 or not 0 <= self.webp_quality <= 100:
            raise ValueError("cache_bytes, max_age and gallery_images must be at least 0, webp_quality 0 to 100")
