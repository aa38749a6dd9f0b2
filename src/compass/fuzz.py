"""Fuzzing the decoder: a damaged, truncated, forged or foreign file must end in a decode or a `CompassError`.

    nice -n 19 compass fuzz --cases 10000 --seed 0          # docs/reliability.md has the results

Valid files are encoded by every model under test (default: two tiny random-weight models built on the fly,
plus the shipped compass-cpu when the manifest registers it), then damaged in the seeded ways of `CATEGORIES`.
A worker process decodes each case with `Compass.layers` (the API path) and `bitstream.info` (the header path),
one at a time, under a per-case deadline (a hang kills and restarts the worker) and an address-space limit
(RLIMIT_AS); it reports the outcome, the time and how much the case raised its peak RSS.

The first cases cut the first file at every byte; the others draw a category, a file and a damage at random.
A case fails when decoding raises anything but a `CompassError` with a one-line message, hangs, runs out of
memory or kills the worker; when it yields a layer of another shape than the header declares; when it yields a
layer that differs from the original file's decode although the damage cannot legitimately change it (the
decoder check must catch any change of the decoded symbols; only forged checks, edited header fields and
chunks that another layer of the same latent shape could hold may change the image); or when it ends
otherwise than its category requires (e.g. a declared size over `max_pixels` must be a `LimitExceeded`,
raised before anything is allocated). Case i of seed s depends only on (s, i, the models): `--only i`
reproduces it.
"""
from __future__ import annotations

import multiprocessing
import os
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from . import bitstream
from .errors import CompassError
from .procstat import reset_peak, status_mb

FUZZ_MAX_PIXELS = 1 << 16  # the decoder's pixel limit in the fuzz cases: a within-limit decode stays fast
API_MAX_PIXELS = 1 << 26  # compass.imageio.DEFAULT_MAX_PIXELS, the API's default (not imported: it needs torch)
TINY = "tiny"
CORPUS = [  # (height, width, image seed, encode options); the first file is cut at every byte
    (24, 32, 1, {"layers": (0.5, 1), "quality": 0.7}),
    (24, 32, 2, {"layers": (0.5, 1), "quality": 0.7}),  # the first's header: its chunks can be spliced in
    (40, 56, 3, {"layers": (0.25, 0.5, 1), "quality": 0.3}),
    (12, 16, 4, {"layers": (1,), "quality": 1.0}),
    (33, 21, 5, {"layers": (0.4, 0.7, 1), "qualities": (0.2, 0.5, 0.9)}),
    (256, 256, None, {"layers": (1, 1), "quality": 0.5}),  # flat, two layers at the pixel limit: for "bomb" only
]
FAILURES = ("crash", "hang", "died", "memory")


@dataclass
class Case:
    """One input for the decoder and what it may end in.

    `same`: every decoded layer must equal the decode of corpus file `base`. `expect`: the allowed outcomes
    ("error" is any CompassError); empty allows any. `forge`: the worker first rewrites every chunk's decoder
    check to what it decodes (what an attacker, or a buggy writer, could do). `traced`: Python allocations are
    traced (a refusal must come before any).
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

    @property
    def big(self) -> bool:
        """Whether the top layer is at the fuzz pixel limit (the flat file that "bomb" cases start from)."""
        return self.layers[-1][0] * self.layers[-1][1] >= FUZZ_MAX_PIXELS


def _split(model: int, data: bytes) -> Sample:
    header, pos = bitstream.read_header(data)
    chunks = []
    while pos < len(data):
        end = pos + 8 + struct.unpack_from(">I", data, pos)[0]
        chunks.append(data[pos:end])
        pos = end
    layers = [(l.height, l.width, round(l.quality * bitstream.QUALITY_STEPS)) for l in header.layers]
    return Sample(model, data, data[:len(data) - sum(map(len, chunks))], chunks, header.model_name.encode(),
                  header.model_id, layers)


def raw_header(name: bytes, model_id: bytes, layers, count: int | None = None, version: int = 1,
               flags: int = 0) -> bytes:
    """Header bytes with a valid CRC around any field values (`count` defaults to the number of layers)."""
    out = bytearray(bitstream.MAGIC) + bytes([version, flags, len(name) & 0xFF]) + name + model_id
    out += bytes([len(layers) if count is None else count])
    for h, w, q in layers:
        out += struct.pack(">IIH", h, w, q)
    return bytes(out + struct.pack(">I", zlib.crc32(out)))


def raw_chunk(check: int, strings) -> bytes:
    """A chunk (frame and payload) with a valid CRC around any strings."""
    payload = struct.pack(">IB", check, len(strings))
    payload += b"".join(struct.pack(">I", len(s)) + s for s in strings)
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def _parse_chunk(chunk: bytes) -> tuple[int, list[bytes]]:
    check, count = struct.unpack_from(">IB", chunk, 8)
    at, strings = 13, []
    for _ in range(count):
        n = struct.unpack_from(">I", chunk, at)[0]
        strings.append(chunk[at + 4:at + 4 + n])
        at += 4 + n
    return check, strings


# ---------------------------------------------------------------- case generators

def _latent(height: int, width: int) -> tuple[int, int]:
    """The shape of y for a layer of this size: four stride-2 stages, odd sides rounded up (layers.halve)."""
    for _ in range(4):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def _decodable_as(chunk: bytes, k: int, s: Sample, corpus: list[Sample]) -> bool:
    """Whether `chunk`, found at layer k of a file with `s`'s header, is another layer's valid chunk whose symbols
    decode there unchanged: same model, base codec or residual codec alike, same latent shape. The decoder check
    cannot object to it, so the layer decodes (to another image)."""
    return chunk != s.chunks[k] and any(
        d.model == s.model and c == chunk and (i == 0) == (k == 0)
        and _latent(*d.layers[i][:2]) == _latent(*s.layers[k][:2])
        for d in corpus for i, c in enumerate(d.chunks))

def _flip(rng: random.Random, data: bytes, flips: int) -> bytes:
    """`data` with `flips` distinct bits flipped."""
    out = bytearray(data)
    for bit in rng.sample(range(8 * len(data)), min(flips, 8 * len(data))):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def _truncate(rng, s: Sample, corpus):
    cut = rng.randrange(len(s.data))
    return dict(variant="random cut", data=s.data[:cut], expect=("error",))


def _bitflip(rng, s: Sample, corpus):
    n = rng.choice([1, 1, 2, 3, 8])
    return dict(variant=f"{n} bit(s)", data=_flip(rng, s.data, n), expect=("error",))


def _header_bytes(rng, s: Sample, corpus):
    out = bytearray(s.data)
    spots = rng.sample(range(len(s.head)), rng.randint(1, 4))
    for i in spots:
        out[i] = rng.choice([b for b in range(256) if b != out[i]])
    return dict(variant=f"{len(spots)} byte(s)", data=bytes(out), expect=("error",))


def _header_fields(rng, s: Sample, corpus):
    """A field rewritten and the header CRC recomputed: the values themselves must be checked."""
    name, mid, layers, body = s.name, s.model_id, list(s.layers), b"".join(s.chunks)
    kind = rng.choice(["name", "id", "version", "flags", "quality", "size", "zero size", "shrink"])
    kw, same, expect = {}, True, ("error",)
    k = rng.randrange(len(layers))
    h, w, q = layers[k]
    if kind == "name":
        name = rng.choice([b"", rng.randbytes(rng.randint(1, 40)), bytes([rng.randint(32, 126)]) * 255, name[:-1]])
        expect = ("HeaderError", "ModelMismatch")
    elif kind == "id":
        mid = rng.randbytes(8)
        expect = ("ModelMismatch",)
    elif kind == "version":
        kw["version"] = rng.choice([0, 2, 255])
        expect = ("UnsupportedVersion",)
    elif kind == "flags":
        kw["flags"] = 1 << rng.randrange(8)
        expect = ("UnsupportedVersion",)
    elif kind == "quality":
        layers[k] = (h, w, rng.choice([0, 65535, rng.randrange(65536), max(0, q - 1)]))
        same, expect = False, ()
    elif kind == "size":  # within the limit, never smaller than the layer below nor larger than the one above
        lo_h, lo_w = layers[k - 1][:2] if k else (1, 1)
        hi_h, hi_w = layers[k + 1][:2] if k + 1 < len(layers) else (4 * h, 4 * w)
        layers[k] = (rng.randint(lo_h, hi_h), rng.randint(lo_w, hi_w), q)
        # the same latent shape decodes the same symbols, at another size: the check cannot object
        same, expect = layers[k][:2] == (h, w) or _latent(*layers[k][:2]) != _latent(h, w), ()
    elif kind == "zero size":
        layers[k] = (0, w, q) if rng.random() < 0.5 else (h, 0, q)
        expect = ("HeaderError",)
    else:
        if len(layers) == 1:
            layers.append((h - 1, w, q))  # a second layer smaller than the first
        else:
            layers[k] = (layers[-1][0] + 1, layers[-1][1], q) if k + 1 < len(layers) else (h, layers[0][1] - 1, q)
        expect = ("HeaderError",)
    return dict(variant=kind, data=raw_header(name, mid, layers, **kw) + body, same=same, expect=expect)


def _limits(rng, s: Sample, corpus):
    """Declared sizes and layer counts far beyond sane, CRC valid: refused before any allocation."""
    layers, body = list(s.layers), b"".join(s.chunks)
    kind = rng.choice(["huge layer", "huge layer", "over the limit", "api default", "layer count"])
    max_pixels = FUZZ_MAX_PIXELS
    k = rng.randrange(len(layers))
    q = layers[k][2]
    if kind == "huge layer":
        layers[k] = rng.choice([(2**32 - 1, 2**32 - 1), (2**16, 2**16 + 1), (2**31, 3), (1, 2**32 - 1)]) + (q,)
    elif kind == "over the limit":  # one pixel over, the rest of the header intact
        w = rng.randint(layers[k][1], 2 * layers[k][1])
        layers[k] = (FUZZ_MAX_PIXELS // w + 1, w, q)
    elif kind == "api default":  # accepted by bitstream's own default (2^28), refused by the API's (2^26)
        max_pixels = API_MAX_PIXELS
        layers[k] = (rng.randint(API_MAX_PIXELS // 8192 + 1, 32768), 8192, q)
    else:
        top = layers[-1]
        layers += [top] * (rng.randint(bitstream.MAX_LAYERS + 1, 255) - len(layers))
    return dict(variant=kind, data=raw_header(s.name, s.model_id, layers) + body, expect=("LimitExceeded",),
                max_pixels=max_pixels, traced=True)


def _bomb(rng, s: Sample, corpus):
    """Decodes at the pixel limit, whose cost `max_pixels` bounds: a small file's top layer (or every layer)
    declared at the limit, or the corpus file whose two layers are at the limit (decoded in full)."""
    if rng.random() < 0.25:
        base = next(i for i, d in enumerate(corpus) if d.big and d.model == s.model)
        return dict(variant="a file at the limit", data=corpus[base].data, base=base, expect=("identical",))
    side = rng.choice([1, 64, 256])
    grown = [(max(h, side), FUZZ_MAX_PIXELS // max(h, side), q) for h, _, q in s.layers[-1:]]
    layers = s.layers[:-1] + grown if rng.random() < 0.5 else grown * len(s.layers)
    return dict(variant=f"grown to {layers[-1][1]}x{layers[-1][0]}", same=False, expect=("error", "differs"),
                data=raw_header(s.name, s.model_id, layers) + b"".join(s.chunks))


def _layer_count(rng, s: Sample, corpus):
    """The layer count and entries changed together (CRC valid)."""
    kind = rng.choice(["fewer", "more", "zero", "count only"])
    layers = s.layers
    body = b"".join(s.chunks)
    if kind == "fewer" and len(layers) > 1:
        n = rng.randrange(1, len(layers))
        return dict(variant=kind, data=raw_header(s.name, s.model_id, layers[:n]) + body, expect=("identical",))
    if kind in ("fewer", "more"):
        extra = [layers[-1]] * rng.randint(1, bitstream.MAX_LAYERS - len(layers))
        return dict(variant="more", data=raw_header(s.name, s.model_id, layers + extra) + body,
                    expect=("TruncatedChunk",))
    if kind == "zero":
        return dict(variant=kind, data=raw_header(s.name, s.model_id, []) + body, expect=("HeaderError",))
    count = rng.choice([c for c in range(256) if c != len(layers)])
    return dict(variant=kind, data=raw_header(s.name, s.model_id, layers, count=count) + body, expect=("error",))


def _chunks(rng, s: Sample, corpus):
    """Zero-length, duplicated, dropped, swapped and spliced chunks (each chunk itself valid)."""
    chunks = list(s.chunks)
    k = rng.randrange(len(chunks))
    kind = rng.choice(["empty", "empty inserted", "duplicated", "dropped", "swapped", "spliced"])
    expect = ()
    if kind == "empty":
        chunks[k] = struct.pack(">II", 0, 0)  # a frame with no payload at all
        expect = ("ChunkError",)
    elif kind == "empty inserted":
        chunks.insert(k, struct.pack(">II", 0, 0))
        expect = ("ChunkError",)
    elif kind == "duplicated":
        chunks.insert(k, chunks[k])
    elif kind == "dropped":
        del chunks[k]
        if k == len(s.chunks) - 1:
            expect = ("TruncatedChunk",)
    elif kind == "swapped" and len(chunks) > 1:
        j = rng.choice([i for i in range(len(chunks)) if i != k])
        chunks[j], chunks[k] = chunks[k], chunks[j]
        kind = f"swapped {min(j, k)}<->{max(j, k)}"
    else:
        donor = rng.choice([d for d in corpus if d.model == s.model and d is not s and len(d.chunks) > k])
        chunks[k] = donor.chunks[k]
        kind = f"spliced from {donor.layers[k][1]}x{donor.layers[k][0]}"
    same = not any(_decodable_as(c, k, s, corpus) for k, c in enumerate(chunks[:len(s.layers)]))
    return dict(variant=kind, data=s.head + b"".join(chunks), same=same, expect=expect)


def _damage_strings(rng, strings: list[bytes]) -> tuple[str, list[bytes]]:
    """Damage the y or z string of a payload (the variant names which and how)."""
    i = rng.randrange(len(strings))
    s = strings[i]
    kind = rng.choice(["bits", "bytes", "cut", "extended", "random", "empty", "words"])
    if kind == "bits" and s:
        n = rng.choice([1, 2, 5])
        s = _flip(rng, s, n)
    elif kind == "bytes" and s:
        out = bytearray(s)
        for j in rng.sample(range(len(out)), min(len(out), rng.randint(1, 4))):
            out[j] = rng.randrange(256)
        s = bytes(out)
    elif kind == "cut" and s:
        s = s[:rng.randrange(len(s))]
    elif kind == "extended":
        s = s + rng.randbytes(rng.randint(1, 16))
    elif kind == "random":
        s = rng.randbytes(rng.choice([rng.randrange(64), 4 * rng.randrange(200)]))
    elif kind == "words":
        s = bytes([rng.choice([0, 255])]) * (4 * rng.randrange(1, 300))
    else:
        s, kind = b"", "empty"
    out = list(strings)
    out[i] = s
    return f"{'yz'[i] if i < 2 else i} {kind}", out


def _payload(rng, s: Sample, corpus, forge: bool = False):
    """Damage inside one chunk's payload, chunk CRC recomputed: the entropy decoder and the check see it."""
    k = rng.randrange(len(s.chunks))
    check, strings = _parse_chunk(s.chunks[k])
    kind = "strings" if forge else rng.choice(["strings"] * 6 + ["swap", "count", "check"])
    expect = ()
    if kind == "strings":
        kind, strings = _damage_strings(rng, strings)
        chunk = raw_chunk(check, strings)
    elif kind == "swap":
        chunk = raw_chunk(check, strings[::-1])
        kind = "y<->z"
    elif kind == "check":
        chunk = raw_chunk(check ^ (1 << rng.randrange(32)), strings)
        expect = ("DecodeMismatch",)
    else:
        n = rng.choice([0, 1, 3, 255])
        kept = (strings + [rng.randbytes(4 * rng.randrange(8)) for _ in range(n)])[:n]
        chunk = raw_chunk(check, kept)
        kind, expect = f"{n} strings", ("ChunkError", "CodingError")
    chunks = list(s.chunks)
    chunks[k] = chunk
    return dict(variant=f"layer {k}: {kind}", data=s.head + b"".join(chunks), same=not forge, expect=expect,
                forge=forge)


def _forged(rng, s: Sample, corpus):
    return _payload(rng, s, corpus, forge=True)


def _model(rng, s: Sample, corpus):
    """A valid file of another model: refused by name and id, or (disguised as ours) by the decoder check."""
    other = rng.choice([d for d in corpus if d.model != s.model])
    if rng.random() < 0.6:
        return dict(variant="other model's file", data=other.data, base=None, expect=("ModelMismatch",))
    data = raw_header(s.name, s.model_id, other.layers) + b"".join(other.chunks)
    return dict(variant="disguised as ours", data=data, base=None, same=False, expect=("error",))


def _garbage(rng, s: Sample, corpus):
    kind = rng.choice(["random", "magic + random", "header + random", "png", "empty"])
    data = {"random": lambda: rng.randbytes(rng.randrange(1000)),
            "magic + random": lambda: bitstream.MAGIC + b"\x01" + rng.randbytes(rng.randrange(600)),
            "header + random": lambda: s.head + rng.randbytes(rng.randrange(600)),
            "png": lambda: b"\x89PNG\r\n\x1a\n" + rng.randbytes(rng.randrange(100)),
            "empty": lambda: b""}[kind]()
    return dict(variant=kind, data=data, base=None, expect=("error",))


def _trailing(rng, s: Sample, corpus):
    junk = rng.choice([rng.randbytes(rng.randint(1, 64)), s.chunks[-1], s.data])
    return dict(variant="junk after the last chunk", data=s.data + junk, expect=("identical",))


CATEGORIES = {  # name: (generator, weight in a random draw)
    "truncate": (_truncate, 1),
    "bitflip": (_bitflip, 2),
    "header-bytes": (_header_bytes, 1),
    "header-fields": (_header_fields, 1),
    "limits": (_limits, 1),
    "bomb": (_bomb, 0.2),
    "layer-count": (_layer_count, 0.5),
    "chunks": (_chunks, 1),
    "payload": (_payload, 3),
    "forged": (_forged, 1),
    "model": (_model, 0.5),
    "garbage": (_garbage, 0.5),
    "trailing": (_trailing, 0.3),
}


def make_case(seed: int, index: int, corpus: list[Sample]) -> Case:
    """Case `index` of `seed`: the first file cut at every byte (cases 0 .. its length - 1), then random draws."""
    first = corpus[0].data
    if index < len(first):
        return Case(index, "truncate", f"every cut ({index} of {len(first)})", first[:index], corpus[0].model, 0,
                    expect=("error",))
    rng = random.Random(seed * 1_000_003 + index)
    names = list(CATEGORIES)
    category = rng.choices(names, [CATEGORIES[n][1] for n in names])[0]
    base = rng.choice([i for i, s in enumerate(corpus) if not s.big])
    fields = {"base": base, **CATEGORIES[category][0](rng, corpus[base], corpus)}
    return Case(index, category, data=bytes(fields.pop("data")), model=corpus[base].model, **fields)


# ---------------------------------------------------------------- the worker

def _tiny_weights(path: Path, seed: int) -> Path:
    """A tiny random-weight scalable model whose latents use many values, tables and escapes (as the tests')."""
    import torch

    from .codec import CODEC_SIZES, MeanScaleHyperprior
    from .liff import LIFF, LIFF_SIZES
    from .weights import export

    codecs = {}
    for name, s in (("base", seed), ("residual", seed + 1)):
        torch.manual_seed(s)
        m = MeanScaleHyperprior(CODEC_SIZES["tiny"]).eval()
        with torch.no_grad():
            for part, gain in ((m.g_a, 60), (m.h_a, 100), (m.h_s, 30)):
                part.convs[-1].weight.mul_(gain)
        codecs[name] = m
    torch.manual_seed(seed)
    configs = {"codec": CODEC_SIZES["tiny"].to_dict(), "liff": LIFF_SIZES["tiny"].to_dict()}
    export({**codecs, "liff": LIFF(LIFF_SIZES["tiny"])}, configs, "compass-fuzz-tiny", path)
    return path


def _image(height: int, width: int, seed: int | None):
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


def _weights(spec: str, workdir: str):
    """A model spec as `Compass` takes it; "tiny:SEED" is built (once) into `workdir`."""
    if not spec.startswith(TINY + ":"):
        return spec
    seed = int(spec[len(TINY) + 1:])
    path = Path(workdir) / f"tiny-{seed}.pt"
    return path if path.exists() else _tiny_weights(path, seed)


def encode_corpus(codecs: list) -> list[tuple[int, bytes]]:
    """(model index, file) for every `CORPUS` entry encoded by every codec (`Compass`), in that order."""
    return [(m, c.encode(_image(h, w, seed), **opts)) for m, c in enumerate(codecs) for h, w, seed, opts in CORPUS]


def _forge(codec, data: bytes) -> bytes:
    """`data` with each chunk's decoder check set to what `codec` decodes from it (and chunk CRCs recomputed)."""
    from .scalable import LayerCode

    header, offset = bitstream.read_header(data, codec.max_pixels)
    chunks = bitstream.read_chunks(data, header, offset, len(header.layers) - 1)
    codes = [LayerCode(list(c.strings), c.check) for c in chunks]
    sizes, qs = [(l.height, l.width) for l in header.layers], [l.quality for l in header.layers]
    checks = [check for _, check in codec.model.decompress_iter(codes, sizes, qs)]
    return bitstream.write(header, [bitstream.Chunk(c.strings, k) for c, k in zip(chunks, checks)], codec.max_pixels)


def _run(case: Case, codecs: list, refs: list) -> dict:
    """Decode one case (the API path, then `info`) and judge it; never raises."""
    import tracemalloc

    import numpy as np

    from .api import OutOfMemory

    codec = codecs[case.model]
    codec.max_pixels = case.max_pixels
    problems, got, message = [], [], ""
    reset_peak()
    rss0 = status_mb("VmRSS", 0.0)
    if case.traced:
        tracemalloc.start()
    start = time.process_time()
    try:
        data = _forge(codec, case.data) if case.forge else case.data
        for img in codec.layers(data):
            got.append(img)
        outcome = "decoded"
    except OutOfMemory as e:  # a CompassError, but over the worker's memory budget
        outcome, message = "memory", str(e)
    except CompassError as e:
        outcome, message = type(e).__name__, str(e)
        if not message or "\n" in message:
            problems.append(f"message is not one line: {message!r}")
    except MemoryError as e:
        outcome, message = "memory", f"MemoryError: {e}"
    except BaseException as e:  # a Rust panic is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        outcome, message = "crash", f"{type(e).__name__}: {e}"
        if "allocate" in message or "out of memory" in message:
            outcome = "memory"
    seconds = time.process_time() - start
    if case.traced:
        allocated = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        if outcome == "LimitExceeded" and allocated > 1 << 20:
            problems.append(f"{allocated} bytes allocated before the refusal")
    try:
        bitstream.info(case.data, case.max_pixels)
    except CompassError:
        pass
    except Exception as e:
        problems.append(f"info raised {type(e).__name__}: {e}")
    if got:
        header = bitstream.read_header(data, case.max_pixels)[0]
        for k, img in enumerate(got):
            want = (header.layers[k].height, header.layers[k].width, 3)
            if img.dtype != np.uint8 or img.shape != want:
                problems.append(f"layer {k} is {img.dtype} {img.shape}, the header says uint8 {want}")
    ref = refs[case.base] if case.base is not None else None
    equal = ref is not None and all(k < len(ref) and np.array_equal(a, ref[k]) for k, a in enumerate(got))
    if case.same and got and not equal:
        problems.append("a decoded layer differs from the original file's decode")
    if outcome == "decoded":
        outcome = "identical" if equal else "differs"
    if case.expect and outcome not in FAILURES and not (
            outcome in case.expect or ("error" in case.expect and outcome not in ("identical", "differs"))):
        problems.append(f"expected {' or '.join(case.expect)}")
    peak = status_mb("VmHWM", 0.0)
    return {"outcome": outcome, "message": " ".join(message.split())[:300], "layers": len(got),
            "seconds": seconds, "rss_growth_mb": peak - rss0, "peak_mb": peak, "problems": problems}


def _worker(conn, specs: list[str], workdir: str, memory_mb: int) -> None:
    """Load the models, encode the corpus, decode it for reference, then judge the cases sent until None."""
    import resource

    import torch

    from .api import Compass

    torch.set_num_threads(1)
    try:
        codecs = [Compass(_weights(spec, workdir)) for spec in specs]
        corpus = encode_corpus(codecs)
        refs = [codecs[m].decode_all(data) for m, data in corpus]
    except Exception as e:
        conn.send({"error": f"{type(e).__name__}: {e}"})
        return
    vm = status_mb("VmSize", 0.0)
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (int((vm + memory_mb) * 2**20), resource.RLIM_INFINITY))
    conn.send({"corpus": corpus, "models": [f"{c.name} ({c.model_id.hex()})" for c in codecs],
               "rss_mb": status_mb("VmRSS", 0.0)})
    while (case := conn.recv()) is not None:
        conn.send(_run(case, codecs, refs))


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used: from /proc on Linux, 0 elsewhere (wall time rules)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Pool:
    """One worker process, restarted after a hang or a death."""

    def __init__(self, specs, workdir, memory_mb):
        self.args = (specs, workdir, memory_mb)
        self.ctx = multiprocessing.get_context("spawn")
        self.proc = None
        self.info = None

    def start(self) -> dict:
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        try:
            while not self.conn.poll(1):
                if not self.proc.is_alive():
                    raise EOFError
            info = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise CompassError(f"the fuzz worker died while starting (exit code {self.proc.exitcode})") from None
        if "error" in info:
            raise CompassError(f"fuzz worker: {info['error']}")
        if self.info is not None and info["corpus"] != self.info["corpus"]:
            raise CompassError("a restarted fuzz worker encoded another corpus: encoding is not deterministic")
        self.info = info
        return info

    def run(self, case: Case, timeout: float) -> dict:
        """The worker's verdict on `case`, or a hang after `timeout` CPU seconds (or 30 times that in wall time,
        for a hang that does not spin); the worker is then killed and restarted at the next case."""
        if self.proc is None:
            self.start()
        try:
            self.conn.send(case)
            cpu0, wall0 = _cpu_seconds(self.proc.pid), time.monotonic()
            while not self.conn.poll(0.1):
                cpu = _cpu_seconds(self.proc.pid) - cpu0
                wall = time.monotonic() - wall0
                if cpu > timeout or wall > 30 * timeout:
                    outcome, message = "hang", f"no answer after {cpu:.1f} CPU s ({wall:.0f} s)"
                    break
            else:
                return self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            outcome, message, cpu = "died", f"worker exited with code {self.proc.exitcode}", 0.0
        self.stop()
        return {"outcome": outcome, "message": message, "layers": 0, "seconds": cpu, "rss_growth_mb": 0.0,
                "peak_mb": 0.0, "problems": []}

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.is_alive():
                try:
                    self.conn.send(None)
                except OSError:
                    pass
                self.proc.join(2)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
            self.proc = None


# ---------------------------------------------------------------- running and reporting

@dataclass
class Report:
    seed: int
    models: list[str]
    counts: dict = field(default_factory=lambda: defaultdict(Counter))
    failures: list = field(default_factory=list)
    slowest: dict = field(default_factory=lambda: defaultdict(float))
    growth: dict = field(default_factory=lambda: defaultdict(float))
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    baseline_mb: float = 0.0
    peak_mb: float = 0.0
    details: list = field(default_factory=list)

    @property
    def cases(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def table(self) -> str:
        """Markdown: categories x outcomes, the failing cases, the slowest case and the largest RSS growth."""
        seen = Counter()
        for c in self.counts.values():
            seen.update(c)
        order = ["identical", "differs"] + sorted(o for o in seen if o not in ("identical", "differs", *FAILURES))
        cols = order + [o for o in FAILURES if o in seen]
        failed = Counter(f["category"] for f in self.failures)
        head = ["category", "cases", *cols, "failed", "max CPU s", "max RSS +MiB"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cat in list(CATEGORIES):
            if cat in self.counts:
                c = self.counts[cat]
                rows.append(f"| {cat} | {sum(c.values())} | " + " | ".join(str(c[o] or "") for o in cols)
                            + f" | {failed[cat]} | {self.slowest[cat]:.2f} | {self.growth[cat]:.0f} |")
        total = Counter()
        for c in self.counts.values():
            total.update(c)
        rows.append(f"| **all** | {self.cases} | " + " | ".join(str(total[o] or "") for o in cols)
                    + f" | {len(self.failures)} | {max(self.slowest.values(), default=0):.2f} "
                    + f"| {max(self.growth.values(), default=0):.0f} |")
        return "\n".join(rows)

    def text(self) -> str:
        lines = [f"compass fuzz: seed {self.seed}, {self.cases} cases, models {', '.join(self.models)}",
                 "", self.table(), "",
                 f"{self.seconds:.0f} s wall, {self.cpu_seconds:.0f} s CPU in cases; worker peak RSS "
                 f"{self.peak_mb:.0f} MiB (after loading {self.baseline_mb:.0f} MiB)"]
        lines += [f"{len(self.failures)} failing case(s)" if self.failures else "no failing case"]
        for f in self.failures[:100]:
            lines.append(f"  case {f['index']} [{f['category']}: {f['variant']}] {f['outcome']}: "
                         f"{'; '.join(f['problems']) or f['message']} -- reproduce: compass fuzz --seed {self.seed} "
                         f"--only {f['index']}")
        lines += self.details
        return "\n".join(lines)


def run(cases: int = 2000, seed: int = 0, models: list[str] | None = None, timeout: float = 10.0,
        memory_mb: int = 2048, only: list[int] | None = None, progress: int = 0) -> Report:
    """Run cases 0..cases-1 of `seed` (or just `only`) and return the report.

    `models`: weights paths or registered names, each decoding its own files; default two tiny random-weight
    models ("tiny:0", "tiny:1") and compass-cpu when registered. `timeout`: seconds per case before it counts as
    a hang. `memory_mb`: address space the worker may add to what it holds after loading. `progress`: print a
    line to stderr every that many cases.
    """
    if models is None:
        models = [f"{TINY}:0", f"{TINY}:1"] + (["compass-cpu"] if _registered("compass-cpu") else [])
    if len(models) < 2:
        raise ValueError("fuzzing needs at least two models (files of one are foreign to the other)")
    with tempfile.TemporaryDirectory(prefix="compass-fuzz-") as workdir:
        pool = _Pool(models, workdir, memory_mb)
        try:
            info = pool.start()
            corpus = [_split(m, data) for m, data in info["corpus"]]
            report = Report(seed, info["models"], baseline_mb=info["rss_mb"])
            start = time.perf_counter()
            for i in (only if only is not None else range(cases)):
                case = make_case(seed, i, corpus)
                res = pool.run(case, timeout)
                report.counts[case.category][res["outcome"]] += 1
                report.slowest[case.category] = max(report.slowest[case.category], res["seconds"])
                report.growth[case.category] = max(report.growth[case.category], res["rss_growth_mb"])
                report.cpu_seconds += res["seconds"]
                report.peak_mb = max(report.peak_mb, res["peak_mb"])
                if res["problems"] or res["outcome"] in FAILURES:
                    report.failures.append({"index": i, "category": case.category, "variant": case.variant, **res})
                if only is not None:
                    report.details.append(f"case {i} [{case.category}: {case.variant}] model {case.model}, "
                                          f"{len(case.data)} bytes -> {res['outcome']} after {res['layers']} "
                                          f"layer(s), {res['seconds']:.3f} s: {res['message']}")
                if progress and (i + 1) % progress == 0:
                    print(f"compass fuzz: {i + 1} cases, {len(report.failures)} failing, "
                          f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
            report.seconds = time.perf_counter() - start
        finally:
            pool.stop()
    return report


def _registered(name: str) -> bool:
    import json

    manifest = Path(__file__).resolve().parent / "pretrained" / "manifest.json"
    return manifest.exists() and name in json.loads(manifest.read_text()).get("models", {})
