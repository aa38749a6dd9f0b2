"""Fuzzing compass with hostile input: every case must end in a decode, a load or a one-line `CompassError`.

    nice -n 19 compass fuzz --cases 10000 --seed 0          # docs/reliability.md has the results

Valid files are encoded by every model under test (default: two tiny random-weight models built on the fly,
plus the shipped compass-cpu when the manifest registers it), then damaged in the seeded ways of `CATEGORIES`.
A worker process decodes each case with `Compass.layers` (the API path) and `bitstream.info` (the header path),
one at a time, under a per-case deadline (a hang kills and restarts the worker) and an address-space limit
(RLIMIT_AS); it reports the outcome, the time and how much the case raised its peak RSS. The same worker loads
edited weights files, manifests and training checkpoints (the "weights", "manifest" and "checkpoint" cases),
and the "cli" cases run `compass encode|decode|info|extract|train` as subprocesses, each in a fresh folder.

The first cases cut the first file at every byte; then come the seeds, the hostile inputs of issue 22 (the
command line and the loaders); the others draw a category, a file and a damage at random.
A case fails when decoding raises anything but a `CompassError` with a one-line message (one naming the layer,
for a damaged layer), hangs, runs out of memory or kills the worker; when it yields a layer of another shape
than the header declares; when it yields a layer that differs from the original file's decode although the
damage cannot legitimately change it (the decoder check must catch any change of the decoded symbols; only
forged checks, edited header fields and chunks that another layer of the same latent shape could hold may
change the image); or when it ends otherwise than its category requires (e.g. a declared size over
`max_pixels` must be a `LimitExceeded`, raised before anything is allocated). A loader case fails when loading
runs code from the file or raises anything but a WeightsError naming the file; a command-line case, by the
rules of `_run_cli`. Case i of seed s depends only on (s, i, the models): `--only i` reproduces it.
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import random
import re
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import bitstream, limits
from .errors import CompassError
from .fileutil import TEMPORARY
from .procstat import reset_peak, status_mb

FUZZ_MAX_PIXELS = 1 << 16  # the decoder's pixel limit in the fuzz cases: a within-limit decode stays fast
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
    traced (a refusal must come before any). `edit`: for the loader categories, how the worker changes a valid
    weights object or checkpoint before saving it (`_edited`). `cli`: for "cli", the command and its setting
    (`_run_cli`).
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
    kind = rng.choice(["huge layer", "huge layer", "over the limit", "default limit", "layer count"])
    max_pixels = FUZZ_MAX_PIXELS
    k = rng.randrange(len(layers))
    q = layers[k][2]
    if kind == "huge layer":
        layers[k] = rng.choice([(2**32 - 1, 2**32 - 1), (2**16, 2**16 + 1), (2**31, 3), (1, 2**32 - 1)]) + (q,)
    elif kind == "over the limit":  # one pixel over, the rest of the header intact
        w = rng.randint(layers[k][1], 2 * layers[k][1])
        layers[k] = (FUZZ_MAX_PIXELS // w + 1, w, q)
    elif kind == "default limit":  # refused by the readers' default, limits.MAX_PIXELS (2^26), up to 2^28 pixels
        max_pixels = limits.MAX_PIXELS
        layers[k] = (rng.randint(limits.MAX_PIXELS // 8192 + 1, 32768), 8192, q)
    else:
        top = layers[-1]
        layers += [top] * (rng.randint(limits.MAX_LAYERS + 1, 255) - len(layers))
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
        extra = [layers[-1]] * rng.randint(1, limits.MAX_LAYERS - len(layers))
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


# ---------------------------------------------------------------- loaders: weights, manifests, checkpoints

EVIL = "<code>"  # in an edit: an object whose unpickling runs code (`_Evil`)
_INT_FIELDS = [("config", "codec", f) for f in ("N", "M", "levels")] + [
    ("config", "liff", f) for f in ("feat", "blocks", "convs", "growth")]
_BAD_INTS = [0, -1, 10**12, 2**63, limits.MODEL_CONFIG_MAX["blocks"] + 10**6, 1.5, "64", None, True, [8]]
_BAD_LAMBDAS = {"lambda_min": [0, -1.0, float("nan"), float("inf"), "0.01", None, 1.0],
                "lambda_max": [0, float("nan"), float("inf"), None, 1e-9]}


def _weights_file(rng, s: Sample, corpus):
    """The case model's weights object edited, saved and loaded by `Compass`: a config missing, out of bounds or
    of the wrong type, a module or tensor missing or replaced, a bad name or format tag, another object, one that
    runs code when unpickled, damaged bytes. It must load or be refused by a WeightsError naming the file."""
    kind = rng.choice(["config", "config", "lambda", "off by one", "missing", "state", "name", "whole", "code",
                       "bytes"])
    expect = ("WeightsError",)
    if kind == "config":
        path = rng.choice(_INT_FIELDS + [("config", "liff", "hidden")])
        value = rng.choice(_BAD_INTS if path[-1] != "hidden" else [[], [16] * 100, [10**9, 16], "16", None, 16])
        edit = (("set", path, value),)
    elif kind == "lambda":
        name = rng.choice(list(_BAD_LAMBDAS))
        edit = (("set", ("config", "codec", name), rng.choice(_BAD_LAMBDAS[name])),)
    elif kind == "off by one":  # within bounds, but not the shape of the stored tensors
        edit = (("add", rng.choice(_INT_FIELDS), rng.choice([-1, 1])),)
    elif kind == "missing":
        edit = (("del", rng.choice([("config",), ("config", "codec"), ("config", "liff"), ("config", "liff", "hidden"),
                                     ("state",), ("state", "base"), ("state", "residual"), ("state", "liff"),
                                     ("state", "base", "*"), ("name",), ("format",)]), None),)
    elif kind == "state":
        edit = (("set", rng.choice([("state", "base", "*"), ("state", "liff"), ("state", "residual", "extra"),
                                     ("state",)]), rng.choice([None, "x", 5, [1.0, 2.0], "<tensor>"])),)
    elif kind == "name":
        edit = (("set", ("name",), rng.choice(["", "\u00e9t\u00e9", "x" * 300, "two\nlines", 5, None])),)
    elif kind == "whole":
        edit = (("whole", (), rng.choice([[], "text", 5, None, {}, {"format": "compass-weights/1"}])),)
    elif kind == "code":
        edit = (("set", rng.choice([(), ("info",), ("config", "codec"), ("state", "base", "*"), ("extra",)]), EVIL),)
    else:
        edit, expect = (rng.choice([("cut", (), rng.random()), ("flip", (), rng.getrandbits(32)),
                                    ("junk", (), rng.getrandbits(32))]),), ("loaded", "WeightsError")
    return dict(variant=f"{kind}: {_describe(edit)}", data=b"", base=None, edit=edit, expect=expect)


def _manifest(rng, s: Sample, corpus):
    """A registry whose manifest.json names the case model's weights file as "fuzz": valid, or not JSON, or of
    another structure, an entry's "file" or "sha256" missing, null or wrong, a file outside its folder or missing.
    `Compass("fuzz")` must load, or be refused by a WeightsError naming the manifest or the weights."""
    entry = {"file": "w.pt", "sha256": "<sha256>", "kind": "scalable"}
    kind = rng.choice(["valid", "json", "structure", "file", "sha256"])
    doc, expect = {"models": {"fuzz": entry}}, ("WeightsError",)
    if kind == "valid":
        expect = ("loaded",)
    elif kind == "structure":
        doc = rng.choice([[], "models", 5, None, {}, {"models": []}, {"models": {"fuzz": []}},
                          {"models": {"fuzz": None}}, {"models": 5}])
    elif kind == "file":
        doc = {"models": {"fuzz": {**entry, "file": rng.choice([None, "", ".", "..", "../w.pt", "/etc/passwd",
                                                                 "sub/w.pt", 5, ["w.pt"], "missing.pt"])}}}
    elif kind == "sha256":
        value = rng.choice([None, "", "abc", "<SHA256>", "0" * 64, 5, "<drop>"])
        doc = {"models": {"fuzz": {**{k: v for k, v in entry.items() if k != "sha256"},
                                   **({} if value == "<drop>" else {"sha256": value})}}}
    text = json.dumps(doc)
    if kind == "json":
        text = rng.choice([text[:rng.randrange(1, len(text))], text.replace('"', "'"), text + "}", "{models: {}}"])
    data = text.encode() if rng.random() < 0.9 or kind == "valid" else b"\xff\xfe" + text.encode()
    return dict(variant=f"{kind}: {data[:70]!r}", data=data, base=None, expect=expect)


def _checkpoint(rng, s: Sample, corpus):
    """A training checkpoint (its types: tensors, numpy RNG state, plain data) for `history_of` and
    `load_module_state`, the loaders of `compass train --init` and `--resume`: valid, with an object that runs
    code when unpickled somewhere in it, or damaged. It must load, or be refused by a WeightsError; no code runs."""
    kind = rng.choice(["valid", "code", "code", "bytes"])
    if kind == "valid":
        edit, expect = (), ("loaded",)
    elif kind == "code":
        path = rng.choice([(), ("history",), ("sampler",), ("modules", "codec", "*"), ("recipe", "name"), ("extra",)])
        edit, expect = (("set", path, EVIL if path != ("history",) else [{"steps": 1}, EVIL]),), ("WeightsError",)
    else:
        edit, expect = (rng.choice([("cut", (), rng.random()), ("flip", (), rng.getrandbits(32))]),), ("loaded",
                                                                                                     "WeightsError")
    return dict(variant=f"{kind}: {_describe(edit) or 'as saved'}", data=b"", base=None, edit=edit, expect=expect)


def _describe(edit: tuple) -> str:
    """`edit` in words, for the report."""
    saved = {"cut": "cut at {:.3f} of the saved bytes", "flip": "8 bits of the saved bytes flipped (seed {})",
             "junk": "random bytes as long as the saved ones (seed {})"}
    return "; ".join(saved[op].format(value) if op in saved else f"{op} {'.'.join(map(str, path)) or 'the object'}"
                     + ("" if value is None else f" = {value!r:.40}") for op, path, value in edit)


# ---------------------------------------------------------------- the command line

_DECODER = ("truncate", "bitflip", "header-bytes", "header-fields", "limits", "layer-count", "chunks", "payload",
            "garbage", "trailing")  # the categories whose files `_cli` hands to the command line


def _cli(rng, s: Sample, corpus):
    """A damaged file of another category given to `compass info` or `extract` (commands that need no torch, so
    cheap), from a file or through a pipe. Exit code and output must be what the API says of the same bytes."""
    category = rng.choice(_DECODER)
    data = bytes(CATEGORIES[category][0](rng, s, corpus)["data"])
    fifo = rng.random() < 0.1
    if rng.random() < 0.5:
        try:
            bitstream.read_header(data)
            expect = (0,)
        except CompassError:
            expect = (2,)
        return _command(f"info of {category}{' via a pipe' if fifo else ''}", ["info", "{in}"], data, expect,
                        input="fifo" if fifo else "file")
    layer = rng.randrange(3)
    try:
        out = bitstream.extract(data, layer)
    except CompassError:
        out = None
    return _command(f"extract --layer {layer} of {category}{' via a pipe' if fifo else ''}",
                    ["extract", "{in}", "--layer", str(layer), "-o", "out.cmp"], data, (2,) if out is None else (0,),
                    input="fifo" if fifo else "file", checks=[("equals", "out.cmp", out)])


def _command(variant: str, argv: list[str], data: bytes = b"", expect=(2,), **spec) -> dict:
    """The fields of a "cli" case: `compass ARGV` run by `_run_cli` in a fresh folder, "{in}" the input written
    there from `data` (as spec["input"] says: "file", "fifo", "none", "link:TARGET" or "sparse"), "{w}" the
    weights of the case's model; `expect`: the exit codes allowed. Other keys: "name" (the input's file name),
    "files" ({name: bytes} written first), "setup" ([(step, name)]: "mode600", "node", "fifo", "stale"),
    "writes" (files a failing command may still write), "sigint" (seconds after torch is loaded), "closed"
    (stdout's reader gone), "checks" (see `_run_cli`)."""
    return dict(category="cli", variant=variant, data=data, base=None, cli={"argv": argv, "expect": expect, **spec})


def _png(pixels) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


_RECIPE = """name = "fuzz"
seed = 1
[codec]
N = 8
M = 12
levels = 3
[liff]
feat = 8
blocks = 1
convs = 2
growth = 4
hidden = [16, 16]
[data]
train = "photos"
val_count = 1
val_crop = 16
[train]
checkpoint_minutes = 0
log_every = 1
val_every = 1
clip = 1.0
aux_lr = 1e-3
[stages.base]
steps = 1
batch = 1
crop = 16
lr = 1e-3
"""


def _seeds(corpus: list[Sample]) -> tuple[dict, ...]:
    """The hostile inputs of issue 22, one case each (cases n .. n + len - 1 after the n cuts of the first file):
    the command line and the loaders, where `make_case`'s random draws reach them rarely or not at all."""
    return _seeds_of(corpus[0].model, corpus[0].data, corpus[2].data)


@functools.lru_cache(maxsize=4)
def _seeds_of(model: int, small_data: bytes, three_data: bytes) -> tuple[dict, ...]:
    import pickle

    small, three = _split(model, small_data), _split(model, three_data)  # a 32x24 file in 2 layers, 56x40 in 3
    evil = pickle.dumps(_Evil("code-ran"))  # a plain pickle, which torch's full unpickler reads as a checkpoint
    photos = {f"photos/{i}.png": _png(_image(24, 32, i + 10)) for i in range(3)}
    png = _png(_image(40, 56, 3))
    encode = ["encode", "{in}", "out.cmp", "--weights", "{w}", "--quiet"]
    nothing = [("equals", "out.cmp", None)]
    rest = b"".join(three.chunks)
    head, check = small.data[:len(small.head) + len(small.chunks[0])], _parse_chunk(small.chunks[1])[0]
    random_layer1 = head + raw_chunk(check, [bytes(range(37, 137)), bytes(range(200, 7, -3))])
    damaged_top = three.data[:-1]
    return (
        # 1: code in a checkpoint left as RUN_DIR/checkpoint.pt for `train --resume`, in weights, and in a checkpoint
        # for `train --init` (`history_of` and `load_module_state`, the "checkpoint" cases)
        _command("train --resume, evil checkpoint.pt", ["train", "recipe.toml", "--run-dir", "run", "--resume"],
                 input="none", files={"recipe.toml": _RECIPE.encode(), **photos, "run/checkpoint.pt": evil},
                 checks=[("absent", "code-ran"), ("stderr", "refused")]),
        dict(category="weights", variant="code: the whole object", data=b"", base=None, expect=("WeightsError",),
             edit=(("set", (), EVIL),)),
        dict(category="checkpoint", variant="code: in its history", data=b"", base=None, expect=("WeightsError",),
             edit=(("set", ("history",), [EVIL]),)),
        # 2: info of a truncated file, of a 4 GiB chunk length, of 16 layers declared with 3 chunks
        _command("info of a file cut inside layer 1", ["info", "{in}"], three.data[:len(three.head) + len(
            three.chunks[0]) + 5], (0,), checks=[("lines", 3)]),
        _command("info of a 4 GiB chunk length", ["info", "{in}"], small.head + struct.pack(">II", 2**32 - 1, 0)
                 + bytes(20), (0,), checks=[("lines", 2)]),
        _command("info of 16 layers with 3 chunks", ["info", "{in}"],
                 raw_header(three.name, three.model_id, three.layers + three.layers[-1:] * 13) + rest, (0,),
                 checks=[("lines", 16)]),
        # 3: endless or huge inputs
        _command("info of /dev/zero", ["info", "{in}"], input="link:/dev/zero"),
        _command("decode of /dev/zero", ["decode", "{in}", "-o", "out.png", "--weights", "{w}"],
                 input="link:/dev/zero"),
        _command("extract of /dev/urandom", ["extract", "{in}", "--layer", "0", "-o", "out.cmp"],
                 input="link:/dev/urandom", checks=nothing),
        _command("info of an 8 GiB sparse file", ["info", "{in}"], input="sparse"),
        # 4, 5: outputs that are not regular files, or of mode 600
        _command("extract onto a device node", ["extract", "{in}", "--layer", "0", "-o", "node"], small.data,
                 setup=[("node", "node")], checks=[("special", "node")]),
        _command("extract onto a FIFO", ["extract", "{in}", "--layer", "0", "-o", "fifo"], small.data,
                 setup=[("fifo", "fifo")], checks=[("special", "fifo")]),
        _command("extract over a file of mode 600", ["extract", "{in}", "--layer", "0", "-o", "out.cmp"], small.data,
                 (0,), files={"out.cmp": b"old"}, setup=[("mode600", "out.cmp")],
                 checks=[("mode", "out.cmp", 0o600), ("equals", "out.cmp", bitstream.extract(small.data, 0))]),
        # 6: malformed weights and manifests
        dict(category="weights", variant="missing: config", data=b"", base=None, expect=("WeightsError",),
             edit=(("del", ("config",), None),)),
        dict(category="weights", variant="config: N = 10**12", data=b"", base=None, expect=("WeightsError",),
             edit=(("set", ("config", "codec", "N"), 10**12),)),
        *[dict(category="manifest", variant=variant, data=data, base=None, expect=("WeightsError",))
          for variant, data in (("no sha256", b'{"models": {"fuzz": {"file": "w.pt"}}}'),
                                ("no models", b'{"fuzz": {}}'),
                                ("file: null", b'{"models": {"fuzz": {"file": null, "sha256": "<sha256>"}}}'),
                                ("a list", b'[{"file": "w.pt"}]'), ("invalid JSON", b'{"models": {fuzz: 1}}'))],
        # 7, 8: layer plans and options that are no plan
        _command("encode --layers ''", [*encode, "--layers", ""], png, name="in.png", checks=nothing),
        _command("encode --layers=-0.5,1", [*encode, "--layers=-0.5,1"], png, name="in.png", checks=nothing),
        _command("--threads -1", ["--threads", "-1", "info", "{in}"], small.data),
        _command("encode --refine 1.5", [*encode, "--refine", "1.5"], png, name="in.png", checks=nothing),
        # 9: an output name of 246 characters
        _command("extract to a 246-character name", ["extract", "{in}", "--layer", "0", "-o", "n" * 242 + ".cmp"],
                 small.data, (0,), checks=[("equals", "n" * 242 + ".cmp", bitstream.extract(small.data, 0))]),
        # 10: input through a pipe
        _command("encode from a pipe", encode, png, (0,), input="fifo", name="in.png", checks=[("compass", "out.cmp")]),
        _command("info from a pipe", ["info", "{in}"], three.data, (0,), input="fifo", checks=[("lines", 3)]),
        # 11: random bytes behind a valid chunk CRC
        _command("decode of a random layer 1", ["decode", "{in}", "-o", "out.png", "--weights", "{w}"], random_layer1,
                 checks=[("stderr", "layer 1: "), ("equals", "out.png", None)]),
        # 12: a small file declaring 8192x8192 (a PNG declaring it: tests/test_cli.py)
        _command("decode of a file declaring 8192x8192", ["decode", "{in}", "-o", "out.png", "--weights", "{w}"],
                 raw_header(small.name, small.model_id, small.layers[:1] + [(8192, 8192, 0)]) + b"".join(small.chunks),
                 checks=[("stderr", "over the limit"), ("equals", "out.png", None)]),
        # 13: a temporary file left by a killed writer
        _command("extract beside stale temporary files", ["extract", "{in}", "--layer", "1", "-o", "out.cmp"],
                 small.data, (0,), setup=[("stale", ".compass-000000000000.tmp")],
                 checks=[("absent", ".compass-000000000000.tmp"), ("exists", ".compass-111111111111.tmp")]),
        # 14, 15: Ctrl-C; the reader of the output gone
        _command("Ctrl-C during encode", [*encode, "--refine", "100000"], png, (130,), name="in.png", sigint=0.5,
                 checks=[("stderr", "interrupted"), *nothing]),
        _command("info | head -0", ["info", "{in}"], small.data, (141,), closed=True),
        # 16: decode --all of a file whose layer 2 is damaged, over older outputs
        _command("decode --all over older outputs", ["decode", "{in}", "--all", "-o", "o.png", "--weights", "{w}"],
                 damaged_top, files={f"o_L{k}.png": b"older" for k in range(3)}, writes=["o_L0.png", "o_L1.png"],
                 checks=[("absent", "o_L2.png"), ("stderr", "removed the older o_L2.png")]),
    )


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
    "weights": (_weights_file, 0.15),
    "manifest": (_manifest, 0.1),
    "checkpoint": (_checkpoint, 0.1),
    "cli": (_cli, 0.2),
}
LOADERS = ("weights", "manifest", "checkpoint")  # judged in the worker by `_run_loader`; "cli" by `_run_cli`


def make_case(seed: int, index: int, corpus: list[Sample]) -> Case:
    """Case `index` of `seed`: the first file cut at every byte (cases 0 .. its length - 1), the `_seeds`, then
    random draws."""
    first = corpus[0].data
    if index < len(first):
        return Case(index, "truncate", f"every cut ({index} of {len(first)})", first[:index], corpus[0].model, 0,
                    expect=("error",))
    seeds = _seeds(corpus)
    if index < len(first) + len(seeds):
        return Case(index, model=corpus[0].model, **seeds[index - len(first)])
    rng = random.Random(seed * 1_000_003 + index)
    names = list(CATEGORIES)
    category = rng.choices(names, [CATEGORIES[n][1] for n in names])[0]
    base = rng.choice([i for i, s in enumerate(corpus) if not s.big])
    fields = {"base": base, "category": category, **CATEGORIES[category][0](rng, corpus[base], corpus)}
    return Case(index, data=bytes(fields.pop("data")), model=corpus[base].model, **fields)


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
    """`data` with each chunk's decoder check set to what `codec` decodes from it (and chunk CRCs recomputed), up
    to the first chunk that does not decode: that one and those above keep their checks, for `layers` to refuse."""
    from .entropy import CodingError
    from .scalable import LayerCode

    header, offset = bitstream.read_header(data, codec.max_pixels)
    chunks = bitstream.read_chunks(data, header, offset, len(header.layers) - 1)
    codes = [LayerCode(list(c.strings), c.check) for c in chunks]
    sizes, qs = [(l.height, l.width) for l in header.layers], [l.quality for l in header.layers]
    checks = [c.check for c in chunks]
    try:
        for k, (_, check) in enumerate(codec.model.decompress_iter(codes, sizes, qs)):
            checks[k] = check
    except CodingError:
        pass
    return bitstream.write(header, [bitstream.Chunk(c.strings, k) for c, k in zip(chunks, checks)], codec.max_pixels)


def _run(case: Case, codecs: list, refs: list) -> dict:
    """Decode one case (the API path, then `info`) and judge it; never raises."""
    import tracemalloc

    import numpy as np

    codec = codecs[case.model]
    codec.max_pixels = case.max_pixels
    got = []
    data = case.data
    reset_peak()
    rss0 = status_mb("VmRSS", 0.0)
    if case.traced:
        tracemalloc.start()
    start = time.process_time()

    def decode():
        nonlocal data
        data = _forge(codec, data) if case.forge else data
        for img in codec.layers(data):
            got.append(img)

    outcome, message, problems = _attempt(decode)
    outcome = "decoded" if outcome == "ok" else outcome
    if outcome in _LAYER_ERRORS and not message.startswith("layer "):
        problems.append("the message does not name the damaged layer")
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


_LAYER_ERRORS = ("ChunkError", "ChunkCRCMismatch", "TruncatedChunk", "CodingError", "DecodeMismatch")


def _attempt(call) -> tuple[str, str, list[str]]:
    """Run `call()`: ("ok", "", []), or what it raised: a CompassError's class name, "memory" or "crash"; the
    message; and a problem when a CompassError's message is not one line."""
    from .api import OutOfMemory

    try:
        call()
        return "ok", "", []
    except OutOfMemory as e:  # a CompassError, but over the worker's memory budget
        return "memory", str(e), []
    except CompassError as e:
        message = str(e)
        return type(e).__name__, message, [] if message and "\n" not in message else [f"message is not one line: "
                                                                                       f"{message!r}"]
    except MemoryError as e:
        return "memory", f"MemoryError: {e}", []
    except BaseException as e:  # a Rust panic is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        message = f"{type(e).__name__}: {e}"
        return "memory" if "allocate" in message or "out of memory" in message else "crash", message, []


def _worker(conn, specs: list[str], workdir: str, memory_mb: int) -> None:
    """Load the models, encode the corpus, decode it for reference, then judge the cases sent until None."""
    import resource

    import torch

    from .api import Compass
    from .weights import load_weights, resolve

    torch.set_num_threads(1)
    try:
        models = [_weights(spec, workdir) for spec in specs]
        codecs = [Compass(m) for m in models]
        corpus = encode_corpus(codecs)
        refs = [codecs[m].decode_all(data) for m, data in corpus]
        objects = [{k: v for k, v in load_weights(m)[0].items() if k != "source"} for m in models]
        files = [resolve(m)[0] for m in models]
    except Exception as e:
        conn.send({"error": f"{type(e).__name__}: {e}"})
        return
    vm = status_mb("VmSize", 0.0)
    if vm:
        resource.setrlimit(resource.RLIMIT_AS, (int((vm + memory_mb) * 2**20), resource.RLIM_INFINITY))
    conn.send({"corpus": corpus, "models": [f"{c.name} ({c.model_id.hex()})" for c in codecs],
               "rss_mb": status_mb("VmRSS", 0.0)})
    while (case := conn.recv()) is not None:
        if case.category in LOADERS:
            with tempfile.TemporaryDirectory(dir=workdir) as folder:
                conn.send(_run_loader(case, objects[case.model], files[case.model], Path(folder)))
        else:
            conn.send(_run(case, codecs, refs))


class _Evil:
    """Unpickling this runs code: it creates the file `marker` (what a hostile weights file or checkpoint does)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def _edited(obj, edit: tuple, marker: str):
    """A copy of `obj` (a weights object or checkpoint) changed by the ("set" | "add" | "del" | "whole", path,
    value) steps of `edit`; "*" in a path is the first key there, `EVIL` an `_Evil`, "<tensor>" a small tensor."""
    import copy

    import torch

    def value_of(v):
        if isinstance(v, list):
            return [value_of(x) for x in v]
        return _Evil(marker) if v == EVIL else torch.zeros(3) if v == "<tensor>" else v

    obj = copy.deepcopy(obj)
    for op, path, value in edit:
        if op not in ("set", "add", "del", "whole"):
            continue  # byte damage, after saving
        if op == "whole" or not path:
            obj = value_of(value)
            continue
        node = obj
        for key in path[:-1]:
            node = node[sorted(node)[0] if key == "*" else key]
        key = sorted(node)[0] if path[-1] == "*" else path[-1]
        if op == "del":
            del node[key]
        else:
            node[key] = node[key] + value if op == "add" else value_of(value)
    return obj


def _saved(obj, edit: tuple, path: Path) -> None:
    """torch.save `obj` to `path`, then apply the byte damage of `edit` ("cut" at a fraction, "flip" 8 bits,
    "junk": as many random bytes, each seeded by its value)."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    for op, _, value in edit:
        if op == "cut":
            data = data[:int(len(data) * value)]
        elif op == "flip":
            data = _flip(random.Random(value), data, 8)
        elif op == "junk":
            data = random.Random(value).randbytes(len(data))
    path.write_bytes(data)


def _checkpoint_of(weights: dict) -> dict:
    """A training checkpoint as `compass.train.loop` saves it, holding `weights`' base codec."""
    import numpy as np
    import torch

    return {"format": "compass-checkpoint/1", "recipe": {"name": "fuzz"}, "stage": "base", "step": 7,
            "elapsed_s": 1.5, "modules": {"codec": weights["state"]["base"]},
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}, "aux_optimizer": None,
            "sampler": [np.random.default_rng(7).bit_generator.state], "generator": torch.Generator().get_state(),
            "torch_rng": torch.get_rng_state(), "init_from": None, "sources": {}, "history": [], "device": "cpu"}


def _run_loader(case: Case, base: dict, weights_file: Path, folder: Path) -> dict:
    """Judge one loader case in `folder`: `Compass` on an edited weights file or through a manifest, or the
    checkpoint loaders on an edited checkpoint. Never raises."""
    from . import weights
    from .api import Compass
    from .train.loop import history_of
    from .train.stages import load_module_state

    marker = folder / "code-ran"
    path = folder / ("manifest.json" if case.category == "manifest" else "w.pt")
    if case.category == "manifest":
        digest = weights.sha256_file(weights_file)
        path.write_bytes(case.data.replace(b"<sha256>", digest.encode()).replace(b"<SHA256>", digest.upper().encode()))
        (folder / "w.pt").symlink_to(weights_file)
        saved = weights.PRETRAINED_DIR, weights.MANIFEST
        weights.PRETRAINED_DIR, weights.MANIFEST = folder, path

        def load():
            try:
                Compass("fuzz")
            finally:
                weights.PRETRAINED_DIR, weights.MANIFEST = saved
    else:
        obj = _checkpoint_of(base) if case.category == "checkpoint" else base
        _saved(_edited(obj, case.edit, str(marker)), case.edit, path)

        def load():
            if case.category == "checkpoint":
                history_of(path)
                load_module_state(path, "codec")
            else:
                Compass(path)

    reset_peak()
    rss0 = status_mb("VmRSS", 0.0)
    start = time.process_time()
    outcome, message, problems = _attempt(load)
    seconds = time.process_time() - start
    outcome = "loaded" if outcome == "ok" else outcome
    if marker.exists():
        problems.append("loading ran code from the file")
    if outcome == "WeightsError" and str(folder) not in message:
        problems.append("the message does not name the file")
    if case.expect and outcome not in FAILURES and outcome not in case.expect:
        problems.append(f"expected {' or '.join(case.expect)}")
    peak = status_mb("VmHWM", 0.0)
    return {"outcome": outcome, "message": " ".join(message.split())[:300], "layers": 0, "seconds": seconds,
            "rss_growth_mb": peak - rss0, "peak_mb": peak, "problems": problems}


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


# ---------------------------------------------------------------- the command line, run

_NOTE = re.compile(r"compass \w+: (warning: |decoding layer )")  # stderr lines that are not the error


def _run_cli(case: Case, workdir: str, weights: str, timeout: float, memory_mb: int) -> dict:
    """Run `compass` as a subprocess on `case.cli` in a fresh folder and judge it; never raises.

    It fails when it hangs (`timeout` * 3 CPU seconds, or 30 times that in wall time) or its peak RSS passes
    `memory_mb`; when the exit code is not one of those expected; when stderr holds anything but compass's own
    lines (a traceback), or not exactly one error line on exit 2 or 130 (none otherwise); when it leaves a
    temporary file; when a failed command changed any file; or when a check of spec["checks"] fails: ("lines",
    n) `info` printed n layers; ("stderr", text) in its error; ("equals", name, bytes or None) the file holds
    that or does not exist; ("absent" | "exists", name); ("mode", name, bits); ("special", name) the node or FIFO
    is still one; ("compass", name) a readable compass file.
    """
    spec = case.cli
    with tempfile.TemporaryDirectory(dir=workdir) as d, tempfile.TemporaryFile() as out, \
            tempfile.TemporaryFile() as err:
        folder = Path(d)
        src = folder / spec.get("name", "in.cmp")
        how = spec.get("input", "file")
        if how == "file":
            src.write_bytes(case.data)
        elif how == "fifo":
            os.mkfifo(src)
        elif how.startswith("link:"):
            src.symlink_to(how[5:])
        elif how == "sparse":
            with open(src, "wb") as f:
                f.truncate(8 << 30)
        for name, data in spec.get("files", {}).items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        _setup(folder, spec.get("setup", ()))
        before = _snapshot(folder)
        argv = [a.format_map({"in": src.name, "w": str(weights)}) for a in spec["argv"]]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        proc = subprocess.Popen([sys.executable, "-m", "compass", *argv], cwd=folder, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if spec.get("closed") else out,
                                stderr=err)
        _limit_memory(proc.pid, (memory_mb + 2048) << 20)  # address space: torch reserves more than it touches
        if spec.get("closed"):
            proc.stdout.close()
        if how == "fifo":
            threading.Thread(target=_feed, args=(src, case.data, proc), daemon=True).start()
        code, seconds, rss = _wait(proc, 3 * timeout, spec.get("sigint"))
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
        problems = _judge_cli(spec, folder, before, code, stdout, stderr)
    outcome = "hang" if code is None else "memory" if rss > memory_mb else f"exit {code}"
    last = stderr.strip().splitlines()[-1:] or [""]
    return {"outcome": outcome, "message": " ".join(last[0].split())[:300], "layers": 0, "seconds": seconds,
            "rss_growth_mb": rss, "peak_mb": 0.0, "problems": problems}


def _setup(folder: Path, steps) -> None:
    """The special files a "cli" case needs: a device node (a copy of /dev/null; a FIFO where we may not make
    one), a FIFO, a file of mode 600, an old and a fresh temporary file of `atomic_write`'s."""
    for step, name in steps:
        path = folder / name
        if step == "node":
            try:
                os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            except PermissionError:
                os.mkfifo(path)
        elif step == "fifo":
            os.mkfifo(path)
        elif step == "mode600":
            os.chmod(path, 0o600)
        elif step == "stale":
            path.write_bytes(b"left by a killed writer")
            os.utime(path, (time.time() - 2 * limits.STALE_TEMP_SECONDS,) * 2)
            (folder / ".compass-111111111111.tmp").write_bytes(b"being written")


def _snapshot(folder: Path) -> dict:
    """Every file under `folder` (links and special files too, not followed; not folders) with its kind and inode,
    and for regular files its size and modification time: any write or replacement shows (a FIFO's times move
    as it is read)."""
    return {p.relative_to(folder): (st.st_mode, st.st_ino) + ((st.st_size, st.st_mtime_ns) if stat.S_ISREG(
        st.st_mode) else ()) for p in folder.rglob("*") if not stat.S_ISDIR((st := p.lstat()).st_mode)}


def _limit_memory(pid: int, limit: int) -> None:
    """Set process `pid`'s address-space limit (a guard for the machine: the verdict is on its peak RSS)."""
    import resource

    with contextlib.suppress(OSError):  # it has ended already
        resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))


def _feed(fifo: Path, data: bytes, proc) -> None:
    """Write `data` into `fifo` once `proc` opens it for reading (it may exit first: then nothing is written).
    `_wait` alone reaps `proc` (and sets its return code): a poll here could take its exit status away."""
    while proc.returncode is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no reader yet
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        try:
            with open(fd, "wb") as f:
                f.write(data)
        except OSError:
            pass  # the reader stopped reading
        return


def _wait(proc, cpu_limit: float, interrupt: float | None) -> tuple[int | None, float, float]:
    """(exit code, CPU seconds, peak RSS in MiB) of `proc`; exit code None when it ran past `cpu_limit` CPU
    seconds (or 30 times that in wall time) and was killed. `interrupt`: send SIGINT that many seconds after the
    process mapped torch (it is then inside `compass.cli.main`).

    Exit codes are what a shell reports: 128 + N for a death by signal N. Python ends by SIGINT even after
    `main` handled the KeyboardInterrupt (exit 130) when the interrupt came while C code ran Python code (say,
    inside torch's import): either way a shell sees 130.
    """
    import signal

    wall0, loaded = time.monotonic(), None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
            return code, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        if interrupt is not None:
            if loaded is None and "libtorch" in _read_text(f"/proc/{proc.pid}/maps"):
                loaded = time.monotonic()
            if loaded is not None and time.monotonic() - loaded >= interrupt:
                proc.send_signal(signal.SIGINT)
                interrupt = None
        if _cpu_seconds(proc.pid) > cpu_limit or time.monotonic() - wall0 > 30 * cpu_limit:
            proc.kill()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return None, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        time.sleep(0.01)


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _judge_cli(spec: dict, folder: Path, before: dict, code: int | None, stdout: str, stderr: str) -> list[str]:
    problems = []
    if code is not None and code not in spec["expect"]:
        problems.append(f"exit code {code}, expected {' or '.join(map(str, spec['expect']))}")
    lines = stderr.splitlines()
    errors = [line for line in lines if not _NOTE.match(line)]
    if "Traceback" in stderr or not all(line.startswith("compass") for line in lines):
        problems.append(f"stderr is not compass's one-line messages: {stderr[-300:]!r}")
    elif len(errors) != (code in (2, 130)):
        problems.append(f"{len(errors)} error lines on exit {code}")
    after = _snapshot(folder)
    new = [p for p in after if p not in before and TEMPORARY.fullmatch(p.name)]
    if new:
        problems.append(f"temporary file left: {new[0]}")
    may_change = {Path(c[1]) for c in spec.get("checks", ()) if c[0] == "absent"}
    may_change |= set(map(Path, spec.get("writes", ())))
    if code != 0 and {p: v for p, v in after.items() if p not in may_change} != {
            p: v for p, v in before.items() if p not in may_change}:
        problems.append("a failed command changed files")
    for check, name, *arg in spec.get("checks", ()):
        problem = _check(check, folder, name, arg, stdout, stderr)
        if problem:
            problems.append(problem)
    return problems


def _check(check: str, folder: Path, name, arg: list, stdout: str, stderr: str) -> str | None:
    """What is wrong with the outcome of a "cli" case by one of its checks (see `_run_cli`), or None."""
    path = folder / name if isinstance(name, str) else folder
    if check == "lines":
        found = sum(line.startswith("  layer ") for line in stdout.splitlines())
        return None if found == name else f"info printed {found} layers, not {name}"
    if check == "stderr":
        return None if name in stderr else f"stderr lacks {name!r}"
    if check == "equals":
        got = path.read_bytes() if path.is_file() else None
        return None if got == arg[0] else f"{name} is not what the API writes"
    if check in ("absent", "exists"):
        there = os.path.lexists(path)
        return None if there == (check == "exists") else f"{name} is {'' if there else 'not '}there"
    if check == "mode":
        return None if stat.S_IMODE(path.stat().st_mode) == arg[0] else f"{name} has mode {path.stat().st_mode:o}"
    if check == "special":
        return None if not stat.S_ISREG(path.lstat().st_mode) else f"{name} was replaced by a regular file"
    try:  # "compass"
        bitstream.read_header(path.read_bytes())
        return None
    except (OSError, CompassError) as e:
        return f"{name} is not a compass file ({e})"


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

    def add(self, case: Case, res: dict, detailed: bool = False) -> None:
        """Count the verdict `res` on `case`; list it if it failed, or in any case if `detailed`."""
        self.counts[case.category][res["outcome"]] += 1
        self.slowest[case.category] = max(self.slowest[case.category], res["seconds"])
        self.growth[case.category] = max(self.growth[case.category], res["rss_growth_mb"])
        self.cpu_seconds += res["seconds"]
        self.peak_mb = max(self.peak_mb, res["peak_mb"])
        if res["problems"] or res["outcome"] in FAILURES:
            self.failures.append({"index": case.index, "category": case.category, "variant": case.variant, **res})
        if detailed:
            self.details.append((case.index, f"case {case.index} [{case.category}: {case.variant}] model {case.model}, "
                                             f"{len(case.data)} bytes -> {res['outcome']} after {res['layers']} "
                                             f"layer(s), {res['seconds']:.3f} s: {res['message']}"))

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
        for f in sorted(self.failures, key=lambda f: f["index"])[:100]:
            lines.append(f"  case {f['index']} [{f['category']}: {f['variant']}] {f['outcome']}: "
                         f"{'; '.join(f['problems']) or f['message']} -- reproduce: compass fuzz --seed {self.seed} "
                         f"--only {f['index']}")
        lines += [text for _, text in sorted(self.details)]
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
            with ThreadPoolExecutor(1) as cli:  # command lines run beside the worker: they wait on subprocesses
                pending = []
                for i in (only if only is not None else range(cases)):
                    case = make_case(seed, i, corpus)
                    if case.category == "cli":
                        weights = _weights(models[case.model], workdir)
                        pending.append((case, cli.submit(_run_cli, case, workdir, weights, timeout, memory_mb)))
                    else:
                        report.add(case, pool.run(case, timeout), only is not None)
                    if progress and (i + 1) % progress == 0:
                        print(f"compass fuzz: {i + 1} cases, {len(report.failures)} failing, "
                              f"{time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
                for case, verdict in pending:
                    report.add(case, verdict.result(), only is not None)
            report.seconds = time.perf_counter() - start
        finally:
            pool.stop()
    return report


def _registered(name: str) -> bool:
    """Whether the shipped manifest registers `name` (read here: `weights` needs torch; a manifest it cannot
    read registers nothing, and `Compass` says what is wrong with it)."""
    manifest = Path(__file__).resolve().parent / "pretrained" / "manifest.json"
    try:
        return name in json.loads(manifest.read_text())["models"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
