"""Python API: `encode` / `decode` for one-off use, and `Compass`, which keeps a model loaded for repeated use.

>>> import compass
>>> data = compass.encode("photo.png", layers=(0.25, 0.5, 1), quality=0.5)
>>> small = compass.decode(data, layer=0)     # uint8 (H0, W0, 3)
>>> full = compass.decode(data)               # the top layer
"""
from __future__ import annotations

import contextlib
import functools
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from . import DEFAULT_MODEL, bitstream
from .errors import CompassError
from .entropy import CodingError
from .imageio import LoadedImage, all_finite, load_image, to_pixels, to_tensor
from .limits import MAX_PIXELS
from .refine import RefineConfig
from .resample import check_plan, plan_from_fractions, plan_from_scales, pyramid
from .scalable import LayerCode
from .weights import build_scalable, load_weights

DEFAULT_LAYERS = (0.25, 0.5, 1.0)
DEFAULT_QUALITY = 0.5


class ImageWarning(UserWarning):
    """An input image was converted by one of compass's stated rules (alpha flattened, CMYK, 16-bit...)."""


class ModelMismatch(CompassError):
    """The file was written by other weights than the ones loaded."""


class DecodeMismatch(CompassError):
    """A layer's decoded symbols differ from the encoder's: the probability models disagree."""


class OutOfMemory(CompassError):
    """Coding needed more memory than could be allocated (`max_pixels` bounds what a file may ask for)."""


class Compass:
    """A scalable codec with its weights loaded once.

    `model`: a registered name (default: the shipped weights) or a weights file path.
    `predictor`: "liff" (COMPASS) or "bicubic" (the ablation, written under its own model name).
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, predictor: str = "liff", device: str | None = None,
                 max_pixels: int = MAX_PIXELS):
        obj, digest = load_weights(model)
        self.model = build_scalable(obj, predictor).to(device or "cpu")
        self.device = torch.device(device or "cpu")
        self.name = obj["name"] if predictor == "liff" else f"{obj['name']}+bicubic"
        self.model_id = bytes.fromhex(digest)[: bitstream.MODEL_ID_BYTES]
        self.max_pixels = max_pixels
        self.info = obj.get("info", {})

    @staticmethod
    def plan(height: int, width: int, layers: Sequence[float] | None = None,
             sizes: Sequence[tuple[int, int]] | None = None,
             scales: Sequence[float | tuple[float, float]] | None = None) -> list[tuple[int, int]]:
        """Layer sizes (height, width) from exactly one of: fractions, explicit sizes, or factors between layers."""
        given = [a is not None for a in (layers, sizes, scales)]
        if sum(given) > 1:
            raise ValueError("give only one of layers, sizes, scales")
        if sizes is not None:
            plan = [(operator.index(h), operator.index(w)) for h, w in sizes]
            if not plan or plan[-1] != (height, width):
                raise ValueError(f"the last size must be the input size {height}x{width} (height x width)")
            return check_plan(plan, height, width)
        if scales is not None:
            return plan_from_scales(height, width, scales)
        return plan_from_fractions(height, width, layers if layers is not None else DEFAULT_LAYERS)

    def encode(self, image, *, layers: Sequence[float] | None = None, sizes=None, scales=None,
               quality: float = DEFAULT_QUALITY, qualities: Sequence[float] | None = None,
               refine: RefineConfig | int | None = None) -> bytes:
        """Code `image` (path, binary file, LoadedImage or uint8 HxWx3 array) into one file holding every layer.

        `refine` (a step count or a `RefineConfig`) optimizes every layer's latents for this image before coding
        (`compass.refine`): fewer bits and/or higher PSNR for about 0.5 s per step per 768x512 layer on one
        thread; any decoder reads the file.
        """
        if isinstance(refine, int) and not isinstance(refine, bool):
            refine = RefineConfig(steps=refine)
        elif not (refine is None or isinstance(refine, RefineConfig)):
            raise TypeError(f"refine is a step count or a RefineConfig, not {type(refine).__name__}")
        pixels = _pixels(image, self.max_pixels)
        plan = self.plan(pixels.shape[0], pixels.shape[1], layers, sizes, scales)
        qs = list(qualities) if qualities is not None else [quality] * len(plan)
        if len(qs) != len(plan):
            raise ValueError(f"{len(qs)} qualities for {len(plan)} layers")
        qs = [bitstream.quantize_quality(q) for q in qs]
        x = to_tensor(pixels).to(self.device)
        with _memory_error(f"not enough memory to encode {pixels.shape[1]}x{pixels.shape[0]} in {len(plan)} layers"):
            codes, _ = self.model.compress(pyramid(x, plan), qs, reconstruct_top=False, refine=refine)
        header = bitstream.Header(self.name, self.model_id,
                                  tuple(bitstream.LayerInfo(h, w, q) for (h, w), q in zip(plan, qs)))
        chunks = [bitstream.Chunk(tuple(c.strings), c.check) for c in codes]
        return bitstream.write(header, chunks, self.max_pixels)

    def read_header(self, data) -> tuple[bitstream.Header, int]:
        """Parse the header and refuse files written by other weights."""
        header, offset = bitstream.read_header(data, self.max_pixels)
        if header.model_name != self.name or header.model_id != self.model_id:
            raise ModelMismatch(f"file was written by model {header.model_name!r} (id {header.model_id.hex()}), "
                                f"but {self.name!r} (id {self.model_id.hex()}) is loaded")
        return header, offset

    def layers(self, data, upto: int = -1,
               progress: Callable[[int, bitstream.LayerInfo], object] | None = None) -> Iterator[np.ndarray]:
        """Decode layers 0..upto in order, yielding each as uint8 HxWx3; reads no chunk above `upto`.

        A damaged layer raises when it is reached, after every layer below it was yielded, with a message that
        names it. `progress(k, layer)` is called before layer k is decoded (a long decode can say how far it is).
        """
        header, offset = self.read_header(data)
        k = _layer_index(upto, len(header.layers))
        sizes = [(l.height, l.width) for l in header.layers]
        qs = [l.quality for l in header.layers]
        damage = None
        try:
            chunks = bitstream.read_chunks(data, header, offset, k)
        except bitstream.ChunkError as e:
            if e.layer == 0:
                raise
            chunks, damage = bitstream.read_chunks(data, header, offset, e.layer - 1), e
        codes = [LayerCode(list(c.strings), c.check) for c in chunks]
        decoded = self.model.decompress_iter(codes, sizes, qs)
        for j in range(len(codes)):
            if progress is not None:
                progress(j, header.layers[j])
            below = f"; layers below {j} are fine" if j else ""
            with _memory_error(f"layer {j} ({sizes[j][1]}x{sizes[j][0]}): not enough memory to decode it{below}"):
                try:
                    x, check = next(decoded)
                except CodingError as e:  # the entropy decoder does not know which layer it decodes
                    raise CodingError(f"layer {j}: {e}{below}") from None
                if check != chunks[j].check:
                    raise DecodeMismatch(f"layer {j}: decoded symbols differ from the encoder's (probability model "
                                         f"mismatch: other weights, numerics or hardware){below}")
                if not all_finite(x):  # symbols no encoder writes, with a check made to match (forged)
                    raise CodingError(f"layer {j}: decoded values are not finite (damaged or forged data){below}")
                image = to_pixels(x)
            yield image
        if damage is not None:
            raise damage

    def decode(self, data, layer: int = -1, progress=None) -> np.ndarray:
        """Decode one layer (default: the top one) as uint8 HxWx3; `progress` as for `layers`."""
        out = None
        for out in self.layers(data, layer, progress):
            pass
        return out

    def decode_all(self, data) -> list[np.ndarray]:
        return list(self.layers(data, -1))


@contextlib.contextmanager
def _memory_error(message: str):
    """Turn a failed allocation (numpy's MemoryError, torch's RuntimeError) into OutOfMemory(message).

    What a system that overcommits memory kills instead of refusing cannot be caught; `max_pixels` is the guard.
    """
    try:
        yield
    except MemoryError:
        raise OutOfMemory(message) from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e):
            raise
        raise OutOfMemory(message) from None


def _layer_index(layer: int, count: int) -> int:
    k = layer + count if layer < 0 else layer
    if not 0 <= k < count:
        raise bitstream.LayerOutOfRange(f"layer {layer} requested, but the file holds layers 0..{count - 1}")
    return k


def _pixels(image, max_pixels: int) -> np.ndarray:
    """uint8 (H, W, 3) from a path, a binary file, a LoadedImage or an array; conversion warnings are emitted."""
    if isinstance(image, (str, Path)) or hasattr(image, "read"):
        image = load_image(image, max_pixels=max_pixels)
    if isinstance(image, LoadedImage):
        for message in image.warnings:
            warnings.warn(message, ImageWarning, stacklevel=3)
        return image.pixels
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("an array image must be uint8 shaped (H, W, 3)")
        if image.shape[0] * image.shape[1] > max_pixels:
            raise ValueError(f"image has {image.shape[0] * image.shape[1]} pixels, above the limit {max_pixels}")
        return image
    raise TypeError(f"cannot encode a {type(image).__name__}: pass a path, a binary file or a uint8 array")


@functools.lru_cache(maxsize=2)
def _default(model: str) -> Compass:
    return Compass(model)


def encode(image, layers: Sequence[float] | None = DEFAULT_LAYERS, quality: float = DEFAULT_QUALITY,
           model: str = DEFAULT_MODEL, **kwargs) -> bytes:
    """Encode with the shipped model (loaded once per process). See `Compass.encode` for the options."""
    if "sizes" in kwargs or "scales" in kwargs:
        layers = None
    return _default(str(model)).encode(image, layers=layers, quality=quality, **kwargs)


def decode(data, layer: int = -1, model: str = DEFAULT_MODEL) -> np.ndarray:
    """Decode one layer (default: the top one) of a compass file's bytes."""
    return _default(str(model)).decode(data, layer)
