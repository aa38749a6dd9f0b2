"""Python API: `encode` / `decode` for one-off use, and `Compass`, which keeps a model loaded for repeated use.

>>> import compass
>>> data = compass.encode("photo.png", layers=(0.25, 0.5, 1), quality=0.5)
>>> small = compass.decode(data, layer=0)     # uint8 (H0, W0, 3)
>>> full = compass.decode(data)               # the top layer, by the model the file names
>>> thumb = compass.encode("photo.png", layers=(0.25, 1), layer_bytes=(2_000, 30_000))  # q chosen to fit
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
from PIL import Image as PILImage

from . import DEFAULT_LAYER_MODE, DEFAULT_MODEL, DEFAULT_QUALITY, bitstream
from .errors import CompassError
from .entropy import CodingError
from .imageio import LoadedImage, from_pil, load_image
from .limits import MAX_PIXELS, check_layer_mode
from .pixels import all_finite, output_mse, to_pixels, to_tensor
from .refine import RefineConfig
from .resample import check_plan, plan_from_fractions, plan_from_scales, pyramid
from .scalable import LayerCode
from .models import load
from .weights import registered

DEFAULT_LAYERS = (0.25, 0.5, 1.0)
BICUBIC = "+bicubic"  # a model name's suffix for the bicubic-predictor ablation
FIT_STEPS = 256  # the quality grid a byte target is searched on (q = i / FIT_STEPS)


class ImageWarning(UserWarning):
    """An input image was converted by one of compass's stated rules (alpha flattened, CMYK, 16-bit...)."""


class ModelMismatch(CompassError):
    """The file was written by other weights than the ones loaded."""


class DecodeMismatch(CompassError):
    """A layer's decoded symbols differ from the encoder's: the probability models disagree."""


class OutOfMemory(CompassError):
    """Coding needed more memory than could be allocated (`max_pixels` bounds what a file may ask for)."""


class SizeTargetError(CompassError, ValueError):
    """A byte target cannot be met, even at quality 0."""


class Compass:
    """A codec with its weights loaded once: a scalable model, or a single-layer codec (files of one layer).

    `model`: a registered name or a weights file path. None: the default model, and files written by another
    installed model are decoded by that model (the file names it); a model given explicitly decodes only its own.
    `predictor`: "liff" (COMPASS) or "bicubic" (the ablation, written under its own model name).
    """

    def __init__(self, model: str | Path | None = None, predictor: str = "liff", device: str | None = None,
                 max_pixels: int = MAX_PIXELS):
        self.explicit = model is not None
        loaded = load(DEFAULT_MODEL if model is None else model, predictor)
        self.model = loaded.model.to(device or "cpu")
        self.device = torch.device(device or "cpu")
        self.name = loaded.name if predictor == "liff" else f"{loaded.name}{BICUBIC}"
        self.model_id = bytes.fromhex(loaded.id)[: bitstream.MODEL_ID_BYTES]
        self.max_pixels = max_pixels
        self.info = loaded.info

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

    @property
    def single_layer(self) -> bool:
        return self.model.max_layers == 1

    def encode(self, image, *, layers: Sequence[float] | None = None, sizes=None, scales=None,
               quality: float = DEFAULT_QUALITY, qualities: Sequence[float] | None = None,
               refine: RefineConfig | int | None = None, max_bytes: int | None = None,
               layer_bytes: Sequence[int] | None = None, layer_mode: str = DEFAULT_LAYER_MODE) -> bytes:
        """Code `image` (path, binary file, PIL image, LoadedImage or uint8 HxWx3 array) into one file holding
        every layer (default: 0.25, 0.5, 1 of its size; the whole image for a single-layer codec).

        `refine` (a step count or a `RefineConfig`) optimizes every layer's latents for this image before coding
        (`compass.refine`): fewer bits and/or higher PSNR for about 0.5 s per step per 768x512 layer on one
        thread; any decoder reads the file.
        Byte targets instead of qualities: `max_bytes` for the whole file (the highest quality that fits, the same
        for every layer), or `layer_bytes` (one per layer) for the bytes up to the end of each layer, which is
        what a reader of that layer fetches (per layer, bottom first, the highest quality that fits). Both search
        q on a grid of 1/256 (in layer mode auto also with every layer predicted, keeping the lower distortion);
        a target that q = 0 does not meet raises SizeTargetError.
        `layer_mode`, for the layers above the base: "auto" (default) codes each as a residual to the prediction
        from the layer below or on its own with the base codec, whichever has the lower rate-distortion cost at
        its q (both are coded: about 2.6x the encoding time, the same decoding time); "predicted" always predicts
        (the paper's method; the files compass wrote before layer modes); "intra" never does (simulcast in one
        file). Files with an intra layer are format version 2, others version 1.
        """
        check_layer_mode(layer_mode)
        if isinstance(refine, int) and not isinstance(refine, bool):
            refine = RefineConfig(steps=refine)
        elif not (refine is None or isinstance(refine, RefineConfig)):
            raise TypeError(f"refine is a step count or a RefineConfig, not {type(refine).__name__}")
        if sum(a is not None for a in (qualities, max_bytes, layer_bytes)) > 1:
            raise ValueError("give only one of qualities, max_bytes, layer_bytes")
        pixels = _pixels(image, self.max_pixels)
        if layers is None and sizes is None and scales is None and self.single_layer:
            layers = (1.0,)
        plan = self.plan(pixels.shape[0], pixels.shape[1], layers, sizes, scales)
        if self.single_layer and len(plan) > 1:
            raise ValueError(f"{self.name} is a single-layer codec: it codes one layer (layers=[1]), not {len(plan)}")
        fit = max_bytes is not None or layer_bytes is not None
        if not fit:
            qs = list(qualities) if qualities is not None else [quality] * len(plan)
            if len(qs) != len(plan):
                raise ValueError(f"{len(qs)} qualities for {len(plan)} layers")
            qs = [bitstream.quantize_quality(q) for q in qs]
        x = to_tensor(pixels).to(self.device)
        with _memory_error(f"not enough memory to encode {pixels.shape[1]}x{pixels.shape[0]} in {len(plan)} layers"):
            targets = pyramid(x, plan)
            if fit:
                qs, codes = self._fit(targets, plan, max_bytes, layer_bytes, refine, layer_mode)
            else:
                codes, _ = self.model.compress(targets, qs, reconstruct_top=False, refine=refine, mode=layer_mode)
        header = self._header(plan, qs, [c.intra for c in codes])
        chunks = [bitstream.Chunk(tuple(c.strings), c.check) for c in codes]
        return bitstream.write(header, chunks, self.max_pixels)

    def _header(self, plan: list[tuple[int, int]], qs: Sequence[float], intra: Sequence[bool]) -> bitstream.Header:
        return bitstream.Header(self.name, self.model_id, tuple(
            bitstream.LayerInfo(h, w, q, i) for (h, w), q, i in zip(plan, qs, intra)))

    def _fit(self, targets: list[torch.Tensor], plan, max_bytes: int | None, layer_bytes: Sequence[int] | None,
             refine: RefineConfig | None, mode: str) -> tuple[list[float], list]:
        """Qualities (and the codes they give) that meet a byte target; see `encode`.

        In layer mode auto a file's size is not monotonic in q (it jumps up where a layer turns intra), so the
        highest q that fits can leave much of the target unused; the search is then made with every layer
        predicted too, and the candidate with the lower distortion is kept: of the top layer for `max_bytes`, of
        each layer for `layer_bytes`. The header is counted at its size with intra layers (1 byte per layer
        more) unless every layer is predicted."""
        grid = [bitstream.quantize_quality(i / FIT_STEPS) for i in range(FIT_STEPS + 1)]  # as the header stores q
        modes = ("auto", "predicted") if mode == "auto" else (mode,)
        count = len(plan)

        def header_bytes(m: str) -> int:
            return bitstream.header_bytes(self._header(plan, [0.0] * count, [m != "predicted"] * count))

        def highest(size_at, cap: int, what: str):
            """The highest grid q whose size fits `cap` (bisection: size grows with q), with what it coded."""
            lo, hi = 0, len(grid) - 1
            best = size_at(grid[0])
            if best[0] > cap:
                raise SizeTargetError(f"{what} needs {best[0]} bytes even at quality 0, more than the {cap} allowed")
            best = (0, best)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                got = size_at(grid[mid])
                if got[0] <= cap:
                    lo, best = mid, (mid, got)
                else:
                    hi = mid - 1
            return grid[best[0]], best[1][1]

        def least_distortion(found: list) -> tuple:
            """The (distortion, result) of `found` with the lowest distortion; the first error if none fits."""
            fits = [f for f in found if not isinstance(f, SizeTargetError)]
            if not fits:
                raise found[0]
            return min(fits, key=lambda f: f[0])

        if max_bytes is not None:
            found = []
            for m in modes:
                def whole(q, m=m, head=header_bytes(m)):
                    codes, _ = self.model.compress(targets, [q] * count, reconstruct_top=False, refine=refine,
                                                   mode=m)
                    return head + sum(bitstream.chunk_bytes(c.strings) for c in codes), codes

                try:
                    q, codes = highest(whole, int(max_bytes), "the file")
                except SizeTargetError as e:
                    found.append(e)
                    continue
                top = None
                if len(modes) > 1:  # the top layer as the decoder will have it
                    *_, (top, _) = self.model.decompress_iter(codes, plan, [q] * count)
                found.append((0.0 if top is None else output_mse(top, targets[-1]), ([q] * count, codes)))
            return least_distortion(found)[1]
        caps = [int(b) for b in layer_bytes]
        if len(caps) != count:
            raise ValueError(f"{len(caps)} byte targets for {count} layers")
        qs, codes, x_prev, used = [], [], None, header_bytes(mode)
        for k, (target, cap) in enumerate(zip(targets, caps)):
            found = []
            for m in modes:
                def layer(q, m=m, target=target):
                    code, _ = self.model.code_layer(target, q, x_prev, False, refine, m)
                    return used + bitstream.chunk_bytes(code.strings), code

                try:
                    q, code = highest(layer, cap, f"layer {k}")
                except SizeTargetError as e:
                    found.append(e)
                    continue
                x = None
                if len(modes) > 1 or k < count - 1:  # to compare, and for the next prediction
                    code, x = self.model.code_layer(target, q, x_prev, True, refine, m)
                found.append((0.0 if len(modes) == 1 else output_mse(x, target), (q, code, x)))
            q, code, x_prev = least_distortion(found)[1]
            qs.append(q)
            codes.append(code)
            used += bitstream.chunk_bytes(code.strings)
        return qs, codes

    def read_header(self, data) -> tuple[bitstream.Header, int]:
        """Parse the header; refuse a file that this model did not write and that no other can decode here (see
        `codec_for`)."""
        header, offset = bitstream.read_header(data, self.max_pixels)
        self.codec_for(header)
        return header, offset

    def codec_for(self, header: bitstream.Header) -> Compass:
        """The codec that decodes a file with this header: this one when it wrote the file; else, unless this
        model was given explicitly, the installed model the file names (`model_for`)."""
        if header.model_name == self.name and header.model_id == self.model_id:
            return self
        if self.explicit:
            raise ModelMismatch(f"file was written by model {header.model_name!r} (id {header.model_id.hex()}), "
                                f"but {self.name!r} (id {self.model_id.hex()}) is loaded")
        return model_for(header, self.max_pixels)

    def decode_iter(self, data, upto: int = -1,
               progress: Callable[[int, bitstream.LayerInfo], object] | None = None) -> Iterator[np.ndarray]:
        """Decode layers 0..upto in order, yielding each as uint8 HxWx3; reads no chunk above `upto`.

        A damaged layer raises when it is reached, after every layer below it was yielded, with a message that
        names it. `progress(k, layer)` is called before layer k is decoded (a long decode can say how far it is).
        """
        header, offset = bitstream.read_header(data, self.max_pixels)
        codec = self.codec_for(header)
        if codec is not self:
            yield from codec.decode_iter(data, upto, progress)
            return
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
        codes = [LayerCode(list(c.strings), c.check, l.intra) for c, l in zip(chunks, header.layers)]
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
        """Decode one layer (default: the top one) as uint8 HxWx3; `progress` as for `decode_iter`."""
        out = None
        for out in self.decode_iter(data, layer, progress):
            pass
        return out

    def decode_all(self, data) -> list[np.ndarray]:
        return list(self.decode_iter(data, -1))


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
    """uint8 (H, W, 3) from a path, a binary file, a PIL image, a LoadedImage or an array; conversion warnings
    are emitted."""
    if isinstance(image, (str, Path)) or hasattr(image, "read"):
        image = load_image(image, max_pixels=max_pixels)
    elif isinstance(image, PILImage.Image):
        image = from_pil(image, max_pixels=max_pixels)
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
    raise TypeError(f"cannot encode a {type(image).__name__}: pass a path, a binary file, a PIL image or a uint8 "
                    "array")


@functools.lru_cache(maxsize=4)
def _default(model: str, predictor: str = "liff", max_pixels: int = MAX_PIXELS) -> Compass:
    return Compass(model, predictor, max_pixels=max_pixels)


def model_for(data_or_header, max_pixels: int = MAX_PIXELS) -> Compass:
    """The installed model that wrote a file (its bytes, or its parsed header), loaded once per process: the
    header names it (shipped name and the first bytes of its weights' sha256). Raises ModelMismatch when that
    model is not installed, or when the installed one of that name has other weights."""
    header = data_or_header
    if not isinstance(header, bitstream.Header):
        header = bitstream.read_header(data_or_header, max_pixels)[0]
    name = header.model_name
    base, predictor = (name[: -len(BICUBIC)], "bicubic") if name.endswith(BICUBIC) else (name, "liff")
    if base not in registered():
        raise ModelMismatch(f"file was written by model {name!r}, which is not installed here; pass its weights file "
                            "(model=PATH, or --weights PATH)")
    codec = _default(base, predictor, max_pixels)
    if codec.model_id != header.model_id:
        raise ModelMismatch(f"file was written by model {name!r} with id {header.model_id.hex()}, but the installed "
                            f"{name!r} has id {codec.model_id.hex()} (other weights under that name); pass the weights "
                            "that wrote it")
    return codec


def encode(image, layers: Sequence[float] | None = None, quality: float = DEFAULT_QUALITY,
           model: str | None = None, **kwargs) -> bytes:
    """Encode with a shipped model (default: the default model; loaded once per process). See
    `Compass.encode` for the options."""
    return _default(str(model or DEFAULT_MODEL)).encode(image, layers=layers, quality=quality, **kwargs)


def decode(data, layer: int = -1, model: str | None = None) -> np.ndarray:
    """Decode one layer (default: the top one) of a compass file's bytes, by the model the file names (or by
    `model`, which must be the one that wrote it)."""
    codec = model_for(data) if model is None else _default(str(model))
    return codec.decode(data, layer)
