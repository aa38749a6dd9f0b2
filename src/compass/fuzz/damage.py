"""Damage to valid files: the decoder's categories, each a generator (rng, sample, corpus) -> a case's fields."""
from __future__ import annotations

import struct

from .. import bitstream, limits
from .format import FUZZ_MAX_PIXELS, Sample, flip, parse_chunk, raw_chunk, raw_header


def _latent(height: int, width: int) -> tuple[int, int]:
    """The shape of y for a layer of this size: four stride-2 stages, odd sides rounded up (layers.halve)."""
    for _ in range(4):
        height, width = (height + 1) // 2, (width + 1) // 2
    return height, width


def _decodable_as(chunk: bytes, k: int, s: Sample, corpus: list[Sample]) -> bool:
    """Whether `chunk`, found at layer k of a file with `s`'s header, is another layer's valid chunk whose symbols
    decode there unchanged: same model, base codec (layer 0 or intra) or residual codec alike, same latent
    shape. The decoder check cannot object to it, so the layer decodes (to another image)."""
    return chunk != s.chunks[k] and any(
        d.model == s.model and c == chunk and d.intra[i] == (k < len(s.intra) and s.intra[k])
        and _latent(*d.layers[i][:2]) == _latent(*s.layers[k][:2])
        for d in corpus for i, c in enumerate(d.chunks))


def _truncate(rng, s: Sample, corpus):
    cut = rng.randrange(len(s.data))
    return dict(variant="random cut", data=s.data[:cut], expect=("error",))


def _bitflip(rng, s: Sample, corpus):
    n = rng.choice([1, 1, 2, 3, 8])
    return dict(variant=f"{n} bit(s)", data=flip(rng, s.data, n), expect=("error",))


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
        kw["version"] = rng.choice([0, 3, 255])
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
    return dict(variant=kind, data=raw_header(name, mid, layers, intra=s.intra, **kw) + body, same=same,
                expect=expect)


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
    return dict(variant=kind, data=raw_header(s.name, s.model_id, layers, intra=s.intra) + body,
                expect=("LimitExceeded",),
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
                data=raw_header(s.name, s.model_id, layers, intra=s.intra) + b"".join(s.chunks))


def _layer_count(rng, s: Sample, corpus):
    """The layer count and entries changed together (CRC valid)."""
    kind = rng.choice(["fewer", "more", "zero", "count only"])
    layers = s.layers
    body = b"".join(s.chunks)
    if kind == "fewer" and len(layers) > 1:
        n = rng.randrange(1, len(layers))
        return dict(variant=kind, data=raw_header(s.name, s.model_id, layers[:n], intra=s.intra) + body,
                    expect=("identical",))
    if kind in ("fewer", "more"):
        extra = [layers[-1]] * rng.randint(1, limits.MAX_LAYERS - len(layers))
        return dict(variant="more", data=raw_header(s.name, s.model_id, layers + extra, intra=s.intra) + body,
                    expect=("TruncatedChunk",))
    if kind == "zero":
        return dict(variant=kind, data=raw_header(s.name, s.model_id, []) + body, expect=("HeaderError",))
    count = rng.choice([c for c in range(256) if c != len(layers)])
    return dict(variant=kind, data=raw_header(s.name, s.model_id, layers, count=count, intra=s.intra) + body,
                expect=("error",))


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
        s = flip(rng, s, n)
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
    check, strings = parse_chunk(s.chunks[k])
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
    data = raw_header(s.name, s.model_id, other.layers, intra=other.intra) + b"".join(other.chunks)
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



DAMAGES = {  # name: (generator, weight in a random draw)
    "truncate": (_truncate, 1), "bitflip": (_bitflip, 2), "header-bytes": (_header_bytes, 1),
    "header-fields": (_header_fields, 1), "limits": (_limits, 1), "bomb": (_bomb, 0.2),
    "layer-count": (_layer_count, 0.5), "chunks": (_chunks, 1), "payload": (_payload, 3), "forged": (_forged, 1),
    "model": (_model, 0.5), "garbage": (_garbage, 0.5), "trailing": (_trailing, 0.3),
}
