"""What `compass eval` codes and how it scores: a test image and its layer targets, the coding jobs (each returns
(record, decoded images): the record is cached, the images only serve the visual comparison), and the cache."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from .. import bitstream
from ..api import Compass
from ..errors import CompassError
from ..fileutil import atomic_write_bytes
from ..imageio import load_image
from ..pixels import to_pixels, to_tensor
from ..resample import resize
from .baselines import BASELINES, jpeg2000_levels, jpeg2000_lowpass
from .metrics import ms_ssim, ms_ssim_scales, psnr, to_float

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


class EvalImage:
    """One test image with its layer targets (uint8, the same `resize` the codec uses), made once per size."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.pixels = load_image(path).pixels
        self.sha256 = hashlib.sha256(repr(self.pixels.shape).encode() + self.pixels.tobytes()).hexdigest()
        self._targets: dict[tuple[int, int], np.ndarray] = {}
        self._lowpass: dict[int, np.ndarray] = {}

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]

    def target(self, size: tuple[int, int]) -> np.ndarray:
        size = tuple(size)
        if size not in self._targets:
            self._targets[size] = to_pixels(resize(to_tensor(self.pixels), size))
        return self._targets[size]

    def lowpass(self, reduce: int) -> np.ndarray:
        if reduce not in self._lowpass:
            self._lowpass[reduce] = jpeg2000_lowpass(self.pixels, reduce)
        return self._lowpass[reduce]


def list_images(folder: str | Path, count: int | None = None) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CompassError(f"{folder}: no such folder of test images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise CompassError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths[:count] if count else paths


def score(reference: np.ndarray, decoded: np.ndarray) -> dict:
    """RGB PSNR and MS-SSIM of uint8 images; MS-SSIM is None below its 11 px minimum."""
    a, b = to_float(reference), to_float(decoded)
    return {"psnr": psnr(a, b), "ms_ssim": ms_ssim(a, b) if ms_ssim_scales(*a.shape[:2]) else None}


def _layer(ref: np.ndarray, decoded: np.ndarray, num_bytes: int, noheader: int, **extra) -> dict:
    return {"height": decoded.shape[0], "width": decoded.shape[1], "bytes": int(num_bytes),
            "bytes_noheader": int(noheader), **score(ref, decoded), **extra}



def scalable_job(codec: Compass, image: EvalImage, plan, q: float, layer_mode: str):
    """One compass file of every layer of `plan` (layers above the base coded by `layer_mode`), each layer decoded
    from it and scored; each layer's record says how it was coded."""
    data = codec.encode(image.pixels, sizes=plan, quality=q, layer_mode=layer_mode)
    meta = bitstream.info(data)
    decoded = codec.decode_all(data)
    layers = [_layer(image.target(size), img, m["total_bytes"], m["total_bytes"] - meta["header_bytes"],
                     mode=m["mode"]) for size, img, m in zip(plan, decoded, meta["layers"])]
    return {"layers": layers, "header_bytes": meta["header_bytes"]}, decoded


def neural_layer_job(single: Compass, image: EvalImage, size, q: float):
    """Code one layer as a real 1-layer compass file, then decode it from the bytes."""
    target = image.target(size)
    data = single.encode(target, layers=(1.0,), quality=q)
    img = single.decode(data)
    header_bytes = bitstream.info(data)["header_bytes"]
    return {"layers": [_layer(target, img, len(data), len(data) - header_bytes)]}, [img]


def classical_layer_job(codec: str, image: EvalImage, size, param):
    """One layer coded alone by a classical codec (`BASELINES`) at its rate parameter."""
    target = image.target(size)
    coded = BASELINES[codec].code(target, param)
    extra = {"container_bytes": coded.info["file_bytes"]} if "file_bytes" in coded.info else {}
    return {"layers": [_layer(target, coded.image, coded.num_bytes, coded.num_bytes, **extra)]}, [coded.image]


def levels_job(image: EvalImage, plan, bpp: float):
    """JPEG 2000 coded once; layer k decoded at reduce K-k from its codestream prefix, scored vs its own low-pass.

    `psnr_bicubic` scores the same decode against compass's bicubic target where the sizes agree.
    """
    reduces = tuple(range(len(plan) - 1, -1, -1))
    coded = jpeg2000_levels(image.pixels, bpp, reduces)
    layers, decoded = [], []
    for size, r in zip(plan, reduces):
        c = coded[r]
        extra = {}
        if r and c.image.shape[:2] == tuple(size):
            extra["psnr_bicubic"] = psnr(to_float(image.target(size)), to_float(c.image))
        ref = image.lowpass(r) if r else image.pixels
        layers.append(_layer(ref, c.image, c.num_bytes, c.num_bytes, reference="j2k-lowpass" if r else "image",
                             **extra))
        decoded.append(c.image)
    return {"layers": layers}, decoded


def key_digest(key: dict) -> str:
    """The sha256 of a job's key, which names its cache entry."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class Cache:
    """Job records as JSON files named by the sha256 of their key; `folder=None` keeps nothing."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    def _path(self, key: dict) -> Path | None:
        if self.folder is None:
            return None
        h = key_digest(key)
        return self.folder / h[:2] / f"{h}.json"

    def get(self, key: dict) -> dict | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed
        return entry["record"] if entry.get("key") == json.loads(json.dumps(key)) else None

    def put(self, key: dict, record: dict) -> None:
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps({"key": key, "record": record}).encode())

