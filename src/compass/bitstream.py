"""The compass file format: one image at K+1 resolutions, a header then one chunk per layer (base layer first).

This module frames bytes and knows nothing of tensors: the codec turns each layer into strings and back.
Every read is bounded by the bytes actually present and every defect raises a `BitstreamError` subclass with a
one-line message. Reading layer k never touches a byte after chunk k, so a prefix of a file that holds chunks
0..k decodes layer k exactly like the whole file (progressive download). Byte layout: docs/bitstream.md.
"""
from __future__ import annotations

import dataclasses
import operator
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from .errors import (BadMagic, BitstreamError, ChunkCRCMismatch, ChunkError, HeaderError,  # noqa: F401 (API)
                     LayerOutOfRange, LimitExceeded, TruncatedChunk, UnsupportedVersion)
from .fileutil import open_input, read_upto
from .limits import MAX_LAYERS, MAX_PIXELS, check_quality, chunk_bytes_limit

MAGIC = b"\x89CMP"
SUFFIX = ".cmp"  # the file name suffix compass files go by (encode-dir writes it, serve looks for it)
VERSION = 2  # the newest version this module reads and writes; a writer uses the lowest that holds the file
MODEL_ID_BYTES = 8
QUALITY_STEPS = 65535
MAX_STRINGS = 255
_U32_MAX = 0xFFFFFFFF
_LAYERS = {1: struct.Struct(">IIH"),  # height, width, quality code
           2: struct.Struct(">IIHB")}  # ..., mode: 0 predicted from the layer below, 1 intra (coded on its own)
_FRAME = struct.Struct(">II")  # payload length, payload CRC32
_PAYLOAD_HEAD = struct.Struct(">IB")  # decoder check, string count
_U32 = struct.Struct(">I")
HEADER_MAX_BYTES = 7 + 255 + MODEL_ID_BYTES + 1 + 255 * _LAYERS[VERSION].size + 4  # every field at its largest


def _quality_code(q: float) -> int:
    return round(check_quality(q) * QUALITY_STEPS)


def quantize_quality(q: float) -> float:
    """q in [0, 1] rounded to the 1/65535 grid a file stores. Encode with this value: it is what decoders see."""
    return _quality_code(q) / QUALITY_STEPS


@dataclass(frozen=True)
class LayerInfo:
    """One layer's size, quality and mode. `quality` is quantized on construction, so it equals what a reader
    gets. `intra`: the layer is coded on its own by the base codec, not as a residual to the prediction from the
    layer below (the base layer always is; `Header` sets it there)."""

    height: int
    width: int
    quality: float
    intra: bool = False

    def __post_init__(self):
        # plain ints: numpy/torch integers would overflow silently in height * width
        object.__setattr__(self, "height", operator.index(self.height))
        object.__setattr__(self, "width", operator.index(self.width))
        object.__setattr__(self, "quality", quantize_quality(self.quality))
        object.__setattr__(self, "intra", bool(self.intra))

    @property
    def mode(self) -> str:
        """"intra" or "predicted" (what `info` and `compass info` show; layer 0 is shown as "base")."""
        return "intra" if self.intra else "predicted"

    @property
    def pixels(self) -> int:
        return self.height * self.width


@dataclass(frozen=True)
class Header:
    """Which model wrote the file (name and the first 8 bytes of its weights' sha256) and its layers, base first."""

    model_name: str
    model_id: bytes
    layers: tuple[LayerInfo, ...]

    def __post_init__(self):
        object.__setattr__(self, "model_id", bytes(self.model_id))
        layers = tuple(self.layers)
        if layers and not layers[0].intra:
            layers = (dataclasses.replace(layers[0], intra=True),) + layers[1:]
        object.__setattr__(self, "layers", layers)

    @property
    def version(self) -> int:
        """The lowest format version that holds this header: 2 when a layer above the base is intra, else 1 (so
        files without intra layers stay readable by version 1 readers)."""
        return 2 if any(layer.intra for layer in self.layers[1:]) else 1


@dataclass(frozen=True)
class Chunk:
    """One layer's coded strings (e.g. y and z) and the codec's checksum of its decoded symbols (opaque here)."""

    strings: tuple[bytes, ...]
    check: int

    def __post_init__(self):
        object.__setattr__(self, "strings", tuple(bytes(s) for s in self.strings))
        object.__setattr__(self, "check", operator.index(self.check))


def _bytes_view(data) -> memoryview:
    # byte-indexed whatever buffer came in (a numpy array's memoryview counts elements, not bytes)
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"expected the bytes of a compass file, got {type(data).__name__} (read_file reads a "
                        f"file)") from None


def _size(layer: LayerInfo) -> str:
    return f"{layer.width}x{layer.height}"


def valid_model_name(name: str) -> bool:
    """Whether a header can hold `name`: 1-255 printable ASCII characters."""
    return 1 <= len(name) <= 255 and all(" " <= c <= "~" for c in name)


def _check_header(header: Header, max_pixels: int) -> None:
    """Raise HeaderError or LimitExceeded unless a reader with this pixel limit would accept the header."""
    name = header.model_name
    if not valid_model_name(name):
        raise HeaderError(f"model name must be 1-255 printable ASCII characters, got {name[:40]!r}")
    if len(header.model_id) != MODEL_ID_BYTES:
        raise HeaderError(f"model id must be {MODEL_ID_BYTES} bytes, got {len(header.model_id)}")
    count = len(header.layers)
    if count == 0:
        raise HeaderError("the header declares no layers")
    if count > MAX_LAYERS:
        raise LimitExceeded(f"{count} layers exceed the limit of {MAX_LAYERS}")
    for k, layer in enumerate(header.layers):
        if not (1 <= layer.height <= _U32_MAX and 1 <= layer.width <= _U32_MAX):
            raise HeaderError(f"layer {k}: width {layer.width} and height {layer.height} must both be "
                              f"1 to {_U32_MAX}")
        if layer.pixels > max_pixels:
            raise LimitExceeded(f"layer {k}: {_size(layer)} is {layer.pixels} pixels, over the limit of "
                                f"{max_pixels} (raise max_pixels, or --max-pixels, to accept it)")
        below = header.layers[k - 1]
        if k and (layer.height < below.height or layer.width < below.width):
            raise HeaderError(f"layer {k}: size {_size(layer)} is smaller than layer {k - 1}'s {_size(below)}")


def _check_layer(header: Header, layer: int) -> int:
    layer = operator.index(layer)
    top = len(header.layers) - 1
    if not 0 <= layer <= top:
        held = "layer 0 only" if top == 0 else f"layers 0-{top}"
        raise LayerOutOfRange(f"layer {layer} requested, but the file holds {held}")
    return layer


def _pack_header(header: Header) -> bytes:
    name = header.model_name.encode("ascii")
    version = header.version
    out = bytearray(MAGIC)
    out += bytes([version, 0, len(name)]) + name + header.model_id + bytes([len(header.layers)])
    for layer in header.layers:
        fields = (layer.height, layer.width, _quality_code(layer.quality))
        out += _LAYERS[version].pack(*fields, *((int(layer.intra),) if version > 1 else ()))
    out += _U32.pack(zlib.crc32(out))
    return bytes(out)


def _pack_chunk(chunk: Chunk, layer: int, pixels: int) -> bytes:
    if not 1 <= len(chunk.strings) <= MAX_STRINGS:
        raise ChunkError(layer, f"a chunk holds 1-{MAX_STRINGS} strings, got {len(chunk.strings)}")
    if not 0 <= chunk.check <= _U32_MAX:
        raise ChunkError(layer, f"decoder check {chunk.check} does not fit in 32 bits")
    size = chunk_bytes(chunk.strings) - _FRAME.size
    if size > chunk_bytes_limit(pixels):
        raise ChunkError(layer, f"chunk payload of {size} bytes is over the limit of {chunk_bytes_limit(pixels)} "
                                f"for its layer")
    payload = _PAYLOAD_HEAD.pack(chunk.check, len(chunk.strings)) + b"".join(
        _U32.pack(len(s)) + s for s in chunk.strings)
    return _FRAME.pack(size, zlib.crc32(payload)) + payload


def header_bytes(header: Header) -> int:
    """Bytes of the header (fixed by the model name and the number of layers)."""
    return len(_pack_header(header))


def chunk_bytes(strings) -> int:
    """Bytes of the chunk that holds `strings` (framing included): what a layer adds to the file."""
    return _FRAME.size + _PAYLOAD_HEAD.size + sum(4 + len(s) for s in strings)


def write(header: Header, chunks, max_pixels: int = MAX_PIXELS) -> bytes:
    """The file for `header` and one `Chunk` per layer, base first.

    Refuses (with the error a reader would raise) any header that `read_header` with this `max_pixels` would
    refuse; a wrong number of chunks is a ValueError.
    """
    chunks = list(chunks)
    _check_header(header, max_pixels)
    if len(chunks) != len(header.layers):
        raise ValueError(f"{len(chunks)} chunks given for {len(header.layers)} layers")
    return _pack_header(header) + b"".join(_pack_chunk(c, k, l.pixels)
                                            for k, (c, l) in enumerate(zip(chunks, header.layers)))


def read_header(data, max_pixels: int = MAX_PIXELS) -> tuple[Header, int]:
    """Parse and check the header of `data` (bytes-like): (header, offset of layer 0's chunk).

    Structure and CRC are checked before field values, so a damaged header reports a CRC mismatch rather than
    whatever nonsense the damage produced. Layers over `max_pixels` pixels raise LimitExceeded.
    """
    view = _bytes_view(data)
    n = len(view)

    def need(end: int) -> None:
        if end > n:
            raise HeaderError(f"truncated header: the file is {n} bytes, the header needs at least {end}")

    if bytes(view[:4]) != MAGIC:
        if MAGIC.startswith(bytes(view[:4])):
            need(4)
        raise BadMagic("not a compass file (wrong magic bytes)")
    need(5)
    version = view[4]
    if version not in _LAYERS:
        raise UnsupportedVersion(f"format version {version} is not supported (this compass reads versions "
                                 f"{', '.join(map(str, _LAYERS))}); the file is damaged or needs another compass "
                                 f"release")
    need(7)
    if view[5]:
        raise UnsupportedVersion(f"unknown header flags 0x{view[5]:02x}: the file is damaged or needs a newer "
                                 f"compass")
    pos = 7 + view[6]
    need(pos + MODEL_ID_BYTES + 1)
    name = bytes(view[7:pos]).decode("latin-1")
    model_id = bytes(view[pos:pos + MODEL_ID_BYTES])
    count = view[pos + MODEL_ID_BYTES]
    pos += MODEL_ID_BYTES + 1
    entry = _LAYERS[version]
    need(pos + count * entry.size + 4)
    fields = [entry.unpack_from(view, pos + k * entry.size) + (0,) * (version == 1) for k in range(count)]
    pos += count * entry.size
    if zlib.crc32(view[:pos]) != _U32.unpack_from(view, pos)[0]:
        raise HeaderError("header CRC mismatch (file damaged)")
    for k, (*_, mode) in enumerate(fields):
        if mode > 1 or (k == 0 and mode == 0 and version > 1):
            raise HeaderError(f"layer {k}: mode {mode} is not valid (0 predicted, 1 intra; layer 0 is intra)")
    header = Header(name, model_id,
                    tuple(LayerInfo(h, w, q / QUALITY_STEPS, mode == 1) for h, w, q, mode in fields))
    _check_header(header, max_pixels)
    return header, pos + 4


def _chunk_end(view: memoryview, pos: int, layer: int, pixels: int) -> int:
    """Offset just past layer `layer`'s chunk starting at `pos` (the layer has `pixels` pixels); TruncatedChunk if
    the data ends before it, ChunkError if it declares more bytes than such a layer may hold."""
    return _frame_end(bytes(view[pos:pos + _FRAME.size]), pos, len(view), layer, pixels)


def _frame_end(frame: bytes, pos: int, n: int, layer: int, pixels: int) -> int:
    """`_chunk_end` from the chunk's framing bytes alone (`frame`, read at `pos` of a file of `n` bytes)."""
    if pos >= n:
        raise TruncatedChunk(layer, "chunk missing (the file ends before it)")
    if pos + _FRAME.size > n:
        raise TruncatedChunk(layer, f"chunk truncated ({n - pos} of its {_FRAME.size} framing bytes present)")
    length = _U32.unpack_from(frame)[0]
    if length > chunk_bytes_limit(pixels):
        raise ChunkError(layer, f"chunk declares {length} payload bytes, over the limit of "
                                f"{chunk_bytes_limit(pixels)} for its {pixels} pixels")
    start = pos + _FRAME.size
    if start + length > n:
        raise TruncatedChunk(layer, f"chunk truncated ({n - start} of its {length} payload bytes present)")
    return start + length


def _parse_chunk(view: memoryview, pos: int, end: int, layer: int) -> Chunk:
    """The chunk in view[pos:end] after checking its CRC and payload structure."""
    payload = view[pos + _FRAME.size:end]
    if zlib.crc32(payload) != _U32.unpack_from(view, pos + 4)[0]:
        raise ChunkCRCMismatch(layer, "chunk CRC mismatch (file damaged)")
    size = len(payload)
    if size < _PAYLOAD_HEAD.size:
        raise ChunkError(layer, f"chunk payload too short ({size} bytes)")
    check, count = _PAYLOAD_HEAD.unpack_from(payload)
    if count == 0:
        raise ChunkError(layer, "chunk holds no strings")
    at, strings = _PAYLOAD_HEAD.size, []
    for i in range(count):
        if at + 4 > size:
            raise ChunkError(layer, f"chunk payload ends inside the length of string {i} of {count}")
        length = _U32.unpack_from(payload, at)[0]
        at += 4
        if at + length > size:
            raise ChunkError(layer, f"string {i} declares {length} bytes, only {size - at} remain in the chunk")
        strings.append(bytes(payload[at:at + length]))
        at += length
    if at != size:
        raise ChunkError(layer, f"{size - at} unexpected bytes after the last string of the chunk")
    return Chunk(tuple(strings), check)


def _walk(view: memoryview, header: Header, offset: int, upto: int) -> tuple[list[Chunk], int]:
    chunks = []
    for layer in range(upto + 1):
        end = _chunk_end(view, offset, layer, header.layers[layer].pixels)
        chunks.append(_parse_chunk(view, offset, end, layer))
        offset = end
    return chunks, offset


def read_chunks(data, header: Header, offset: int, upto: int) -> list[Chunk]:
    """Chunks of layers 0..upto, reading nothing past chunk `upto`; `offset` is what `read_header` returned.

    A damaged chunk k raises (naming layer k) only when upto >= k: lower layers stay readable.
    """
    upto = _check_layer(header, upto)
    return _walk(_bytes_view(data), header, offset, upto)[0]


def read(data, layer: int | None = None, max_pixels: int = MAX_PIXELS) -> tuple[Header, list[Chunk]]:
    """`read_header` then `read_chunks` up to `layer` (default: the top layer the header declares)."""
    header, offset = read_header(data, max_pixels)
    upto = len(header.layers) - 1 if layer is None else layer
    return header, read_chunks(data, header, offset, upto)


def extract(data, layer: int, max_pixels: int = MAX_PIXELS) -> bytes:
    """A valid file holding layers 0..layer of `data`: header rewritten, chunks copied byte for byte.

    Every copied chunk is checked first, so a damaged file is refused rather than copied.
    """
    view = _bytes_view(data)
    header, start = read_header(view, max_pixels)
    layer = _check_layer(header, layer)
    end = _walk(view, header, start, layer)[1]
    kept = Header(header.model_name, header.model_id, header.layers[:layer + 1])
    return _pack_header(kept) + bytes(view[start:end])


def read_file(source, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of a compass file (a path, or a binary file object) up to its last chunk, reading no more than its
    header allows: the header, then at most each declared layer's `chunk_bytes_limit`. Bytes past that are not
    read (they would be ignored). Refuses folders and devices (/dev/zero, ...); pipes are read like files.

    Header errors raise as `read_header` raises them; chunk damage is left to the readers of the result.
    """
    with open_input(source) as f:
        head = read_upto(f, HEADER_MAX_BYTES)
        header, offset = read_header(head, max_pixels)
        size = offset + sum(_FRAME.size + chunk_bytes_limit(layer.pixels) for layer in header.layers)
        return head + read_upto(f, size - len(head))


def info(data, max_pixels: int = MAX_PIXELS) -> dict:
    """What `compass info` prints: header fields, then per layer its size, quality, bytes and status.

    A layer's `total_bytes` is the header plus chunks 0..k (what decoding layer k needs) and `bpp` is that over
    layer k's pixels; both are None when a chunk up to k is missing. `status` is "ok" or what is wrong with the
    layer's own chunk; `decodable` means chunks 0..k are all intact. Only header errors raise.
    """
    view = _bytes_view(data)
    header, pos = read_header(view, max_pixels)
    header_bytes, layers, intact, lost = pos, [], True, None
    for k, layer in enumerate(header.layers):
        entry = {"layer": k, "height": layer.height, "width": layer.width, "quality": layer.quality,
                 "mode": "base" if k == 0 else layer.mode, "chunk_bytes": None, "total_bytes": None, "bpp": None,
                 "status": "ok"}
        try:
            if lost is not None:
                raise ChunkError(k, lost)
            end = _chunk_end(view, pos, k, layer.pixels)
        except ChunkError as e:
            entry["status"] = e.detail
            if lost is None and not isinstance(e, TruncatedChunk):  # a length no layer may have
                lost = f"chunk not located (layer {k}'s chunk length is impossible)"
            pos = len(view)  # nothing after a truncation or an impossible length can be located
        else:
            # a located chunk implies every chunk below it was located too
            entry.update(chunk_bytes=end - pos, total_bytes=end, bpp=8 * end / layer.pixels)
            try:
                _parse_chunk(view, pos, end, k)
            except ChunkError as e:
                entry["status"] = e.detail
            pos = end
        intact = intact and entry["status"] == "ok"
        entry["decodable"] = intact
        layers.append(entry)
    complete = layers[-1]["chunk_bytes"] is not None
    return {"format_version": view[4], "model_name": header.model_name, "model_id": header.model_id.hex(),
            "header_bytes": header_bytes, "file_bytes": len(view),
            "trailing_bytes": len(view) - pos if complete else None, "layers": layers}


@dataclass(frozen=True)
class Layout:
    """Where a file's layers end: `ends[k]` is the size of the prefix that decoding layer k needs (`info`'s
    `total_bytes`), for each layer whose chunk the file holds whole, base first; `missing` says why the next
    layer's chunk cannot be located (None when every layer's can)."""

    header: Header
    header_bytes: int
    ends: tuple[int, ...]
    missing: str | None


def layout(f: BinaryIO, max_pixels: int = MAX_PIXELS) -> Layout:
    """The `Layout` of the compass file `f` (binary, seekable), reading only the header and each chunk's 8
    framing bytes, never a payload: a server locates a layer's prefix without reading the layers above it.

    Header errors raise as in `read_header`; payloads and their CRCs are not checked (decoding does that).
    """
    size = f.seek(0, 2)
    f.seek(0)
    head = f.read(7)
    if head[:4] == MAGIC and len(head) == 7:  # the rest of the header, in the two reads its fields size
        head += f.read(head[6] + MODEL_ID_BYTES + 1)
        if len(head) == 7 + head[6] + MODEL_ID_BYTES + 1:
            head += f.read(head[-1] * _LAYERS.get(head[4], _LAYERS[1]).size + 4)
    header, pos = read_header(head, max_pixels)
    header_bytes, ends, missing = pos, [], None
    for k in range(len(header.layers)):
        f.seek(pos)
        try:
            pos = _frame_end(f.read(_FRAME.size), pos, size, k, header.layers[k].pixels)
        except ChunkError as e:
            missing = str(e)
            break
        ends.append(pos)
    return Layout(header, header_bytes, tuple(ends), missing)

