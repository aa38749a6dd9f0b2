"""The fuzzer's vocabulary: its corpus, a case and a corpus file, and the bytes of the compass format written by
hand (so that any field may hold any value, with valid CRCs around it)."""
from __future__ import annotations

import random
import struct
import zlib
from dataclasses import dataclass

from .. import bitstream

FUZZ_MAX_PIXELS = 1 << 16  # the decoder's pixel limit in the fuzz cases: a within-limit decode stays fast
TINY = "tiny"
CORPUS = [  # (height, width, image seed, encode options); the first file is cut at every byte
    (24, 32, 1, {"layers": (0.5, 1), "quality": 0.7, "layer_mode": "predicted"}),
    (24, 32, 2, {"layers": (0.5, 1), "quality": 0.7, "layer_mode": "predicted"}),  # the first's header: its
    # chunks can be spliced in
    (40, 56, 3, {"layers": (0.25, 0.5, 1), "quality": 0.3, "layer_mode": "predicted"}),
    (12, 16, 4, {"layers": (1,), "quality": 1.0}),
    (33, 21, 5, {"layers": (0.4, 0.7, 1), "qualities": (0.2, 0.5, 0.9), "layer_mode": "predicted"}),
    (40, 56, 6, {"layers": (0.25, 0.5, 1), "quality": 0.6, "layer_mode": "intra"}),  # version 2
    (256, 256, None, {"layers": (1, 1), "quality": 0.5, "layer_mode": "predicted"}),  # flat, two layers at the
    # pixel limit: for "bomb" only
]
FAILURES = ("crash", "hang", "died", "memory")


@dataclass
class Case:
    """One input for the decoder and what it may end in.

    `same`: every decoded layer must equal the decode of corpus file `base`. `expect`: the allowed outcomes
    ("error" is any CompassError); empty allows any. `forge`: the worker first rewrites every chunk's decoder
    check to what it decodes (what an attacker, or a buggy writer, could do). `traced`: Python allocations are
    traced (a refusal must come before any). `edit`: for the loader categories, how the worker changes a valid
    weights object or checkpoint before saving it (`worker.load_case`). `cli`: for "cli", the command and its setting
    (`commands.run_command`).
    """

    index: int
    category: str
    variant: str
    data: bytes
    model: int
    base: int | None
    same: bool = True
    expect: tuple[str, ...] = ()
    max_pixels: int = FUZZ_MAX_PIXELS
    forge: bool = False
    traced: bool = False
    edit: tuple = ()
    cli: dict | None = None


@dataclass
class Sample:
    """A valid corpus file split into its parts."""

    model: int
    data: bytes
    head: bytes
    chunks: list[bytes]
    name: bytes
    model_id: bytes
    layers: list[tuple[int, int, int]]  # (height, width, quality code)
    intra: tuple[bool, ...]  # per layer: coded by the base codec (layer 0, and intra layers above it)

    @property
    def big(self) -> bool:
        """Whether the top layer is at the fuzz pixel limit (the flat file that "bomb" cases start from)."""
        return self.layers[-1][0] * self.layers[-1][1] >= FUZZ_MAX_PIXELS


def split(model: int, data: bytes) -> Sample:
    """Corpus file `data` of model `model` in its parts."""
    header, pos = bitstream.read_header(data)
    chunks = []
    while pos < len(data):
        end = pos + 8 + struct.unpack_from(">I", data, pos)[0]
        chunks.append(data[pos:end])
        pos = end
    layers = [(l.height, l.width, round(l.quality * bitstream.QUALITY_STEPS)) for l in header.layers]
    return Sample(model, data, data[:len(data) - sum(map(len, chunks))], chunks, header.model_name.encode(),
                  header.model_id, layers, tuple(l.intra for l in header.layers))


def raw_header(name: bytes, model_id: bytes, layers, count: int | None = None, version: int | None = None,
               flags: int = 0, intra=()) -> bytes:
    """Header bytes with a valid CRC around any field values (`count` defaults to the number of layers). `intra`:
    per layer (missing ones predicted); the version is 2, with a mode byte per layer, when a layer above the base
    is intra, else 1; a `version` given is written as it is, with version 2's layout only for 2."""
    modes = [int(k == 0 or (k < len(intra) and bool(intra[k]))) for k in range(len(layers))]
    if version is None:
        version = 2 if any(modes[1:]) else 1
    out = bytearray(bitstream.MAGIC) + bytes([version, flags, len(name) & 0xFF]) + name + model_id
    out += bytes([len(layers) if count is None else count])
    for (h, w, q), mode in zip(layers, modes):
        out += struct.pack(">IIH", h, w, q) + (bytes([mode]) if version == 2 else b"")
    return bytes(out + struct.pack(">I", zlib.crc32(out)))


def raw_chunk(check: int, strings) -> bytes:
    """A chunk (frame and payload) with a valid CRC around any strings."""
    payload = struct.pack(">IB", check, len(strings))
    payload += b"".join(struct.pack(">I", len(s)) + s for s in strings)
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def parse_chunk(chunk: bytes) -> tuple[int, list[bytes]]:
    """A chunk's decoder check and strings."""
    check, count = struct.unpack_from(">IB", chunk, 8)
    at, strings = 13, []
    for _ in range(count):
        n = struct.unpack_from(">I", chunk, at)[0]
        strings.append(chunk[at + 4:at + 4 + n])
        at += 4 + n
    return check, strings


def flip(rng: random.Random, data: bytes, flips: int) -> bytes:
    """`data` with `flips` distinct bits flipped."""
    out = bytearray(data)
    for bit in rng.sample(range(8 * len(data)), min(flips, 8 * len(data))):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def image(height: int, width: int, seed: int | None):
    """A photo-like uint8 (H, W, 3) image: waves, gradients, a hard-edged block, noise; flat grey if seed is None."""
    import numpy as np

    if seed is None:
        return np.full((height, width, 3), 128, np.uint8)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    f, p = rng.uniform(3, 15, (2, 3, 1, 1)), rng.uniform(0, 6.3, (3, 1, 1))
    img = 0.5 + 0.3 * np.sin(f[0] * x + p) * np.cos(f[1] * y) + 0.2 * (x - y) + rng.normal(0, 0.04, (3, height, width))
    img[:, height // 3: height // 2, width // 4: width // 2] += rng.uniform(-0.4, 0.4, (3, 1, 1))
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0).copy()


def png(pixels) -> bytes:
    """uint8 (H, W, 3) pixels as PNG bytes."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()
