"""Classical codecs as baselines: JPEG 2000 (OpenJPEG), HEVC intra 4:4:4 (x265 in HEIF), JPEG (libjpeg).

Each codec is a function (uint8 HxWx3 RGB image, rate parameter) -> `Coded`: the decoded uint8 image, the bytes
counted as its rate (which bytes, per codec, is stated in its docstring and in `Coded.info["counted"]`), and
extra facts in `info`. `BASELINES` lists them with rate sweeps that span about 0.1-1.5 bpp on Kodak.
See ../shared/docs/baselines.md (the shared data's docs) for why the settings are what they are.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pillow_heif
from PIL import Image


@dataclass
class Coded:
    """One coded image: the decoder's output, the rate in bytes, and codec-specific facts."""

    image: np.ndarray
    num_bytes: int
    info: dict = field(default_factory=dict)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("expected a uint8 HxWx3 RGB numpy array")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"empty image {image.shape}")
    return np.ascontiguousarray(image)


def _rgb(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------- JPEG


def jpeg(image: np.ndarray, quality: int) -> Coded:
    """Baseline JPEG through Pillow (libjpeg), 4:2:0 chroma, optimised Huffman tables; counts the whole JFIF file.

    Optimised tables (still baseline sequential JPEG) add 1.6 / 0.6 / 0.2 dB at 0.25 / 0.5 / 1 bpp to Kodak's
    mean curve over libjpeg's standard tables; with them it matches ../shared/docs/baselines.md's JPEG reference.
    """
    image = _check_image(image)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=int(quality), subsampling="4:2:0", optimize=True)
    data = buf.getvalue()
    return Coded(_rgb(Image.open(io.BytesIO(data))), len(data), {"counted": "JFIF file", "quality": int(quality)})


# ---------------------------------------------------------------- JPEG 2000

_J2K_MAX_RESOLUTIONS = 6  # OpenJPEG's default: 5 wavelet decompositions
_J2K_RESOLUTION_MAJOR = (1, 2)  # COD progression codes of RLCP and RPCL
_EOC = b"\xff\xd9"


def _j2k_resolutions(height: int, width: int) -> int:
    """Resolution levels OpenJPEG accepts for this size: the smallest level must keep at least one pixel."""
    return min(_J2K_MAX_RESOLUTIONS, min(height, width).bit_length())


@dataclass
class J2KLayout:
    """A single-tile, single-layer J2K codestream, PLT segments removed, with each packet's length."""

    stream: bytes
    sot: int  # offset of the SOT marker
    data: int  # offset of the first packet (just after SOD)
    packets_per_resolution: int
    packet_lengths: list[int]
    decompositions: int


def _parse_plt(segment: bytes) -> list[int]:
    """Packet lengths from one PLT segment body (after Zplt): 7 bits a byte, high bit = more bytes follow."""
    lengths, value = [], 0
    for byte in segment:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            lengths.append(value)
            value = 0
    return lengths


def j2k_layout(stream: bytes) -> J2KLayout:
    """Split an OpenJPEG codestream written with plt=True into headers and packets, dropping the PLT segments.

    Relies on what `jpeg2000_levels` asks OpenJPEG for (one tile, one tile-part, one quality layer, default
    precincts: one precinct per resolution and component), and checks each of those; a violated one raises.
    """
    def u16(i):
        return struct.unpack(">H", stream[i:i + 2])[0]

    if u16(0) != 0xFF4F:
        raise ValueError("not a J2K codestream (no SOC)")
    i, out = 2, bytearray(stream[:2])
    components = decompositions = None
    while u16(i) != 0xFF90:  # main header, up to the first SOT
        marker, length = u16(i), u16(i + 2)
        if marker == 0xFF51:  # SIZ
            xsiz, ysiz, _, _, xt, yt, xto, yto = struct.unpack(">8I", stream[i + 6:i + 38])
            components = u16(i + 38)
            if xt < xsiz - xto or yt < ysiz - yto:
                raise ValueError("codestream has more than one tile")
        elif marker == 0xFF52:  # COD
            scod, progression, layers = stream[i + 4], stream[i + 5], u16(i + 6)
            decompositions = stream[i + 9]
            if progression not in _J2K_RESOLUTION_MAJOR or layers != 1 or scod & 1:
                raise ValueError("codestream is not single-layer, resolution-major with default precincts")
        out += stream[i:i + 2 + length]
        i += 2 + length
    if components is None or decompositions is None:
        raise ValueError("codestream lacks SIZ or COD")
    sot = len(out)
    psot, tile_parts = struct.unpack(">I", stream[i + 6:i + 10])[0], stream[i + 11]
    if tile_parts != 1 or i + psot + 2 != len(stream):
        raise ValueError("codestream is not one tile-part followed by EOC")
    out += stream[i:i + 12]
    i += 12
    lengths: list[int] = []
    while u16(i) != 0xFF93:  # tile-part header, up to SOD
        marker, length = u16(i), u16(i + 2)
        if marker == 0xFF58:  # PLT: read, then leave out
            lengths += _parse_plt(stream[i + 5:i + 2 + length])
        else:
            out += stream[i:i + 2 + length]
        i += 2 + length
    out += stream[i:i + 2]
    data = len(out)
    out += stream[i + 2:]
    struct.pack_into(">I", out, sot + 6, len(out) - 2 - sot)  # Psot without the PLT bytes
    if len(lengths) != (decompositions + 1) * components or sum(lengths) != len(out) - 2 - data:
        raise ValueError("PLT packet lengths do not match the codestream")
    return J2KLayout(bytes(out), sot, data, components, lengths, decompositions)


def j2k_prefix(layout: J2KLayout, reduce: int) -> bytes:
    """The shortest codestream a decoder needs for 1/2^reduce size: every packet of the lower resolutions + EOC."""
    packets = (layout.decompositions + 1 - reduce) * layout.packets_per_resolution
    end = layout.data + sum(layout.packet_lengths[:packets])
    prefix = bytearray(layout.stream[:end] + _EOC)
    struct.pack_into(">I", prefix, layout.sot + 6, end - layout.sot)
    return bytes(prefix)


def j2k_decode(stream: bytes, reduce: int) -> np.ndarray:
    """A raw J2K codestream decoded at 1/2^reduce size."""
    im = Image.open(io.BytesIO(stream))
    im.reduce = reduce
    im.load()
    return _rgb(im)


def j2k_encode(image: np.ndarray, **options) -> bytes:
    """A raw J2K codestream of `image` with the baselines' settings (RPCL, every resolution OpenJPEG takes);
    `options` as Pillow's JPEG 2000 writer takes them (the rate)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG2000", no_jp2=True, mct=1, progression="RPCL",
                                num_resolutions=_j2k_resolutions(*image.shape[:2]), **options)
    return buf.getvalue()


def jpeg2000_levels(image: np.ndarray, bpp: float, reduces=(0,)) -> dict[int, Coded]:
    """Encode once at a target rate, then decode at each 1/2^r size r in `reduces` from only the bytes it needs.

    OpenJPEG through Pillow: 9/7 irreversible wavelet, colour transform on (mct=1), one quality layer whose
    size is set by quality_mode="rates" to 24/bpp : 1, up to 5 decompositions (fewer for images under 32 px),
    RPCL progression so the codestream is ordered by resolution. Rate counted: the raw J2K codestream (no JP2
    boxes). For r > 0 the count is measured per image, not estimated: the stream is written with PLT marker
    segments (packet lengths), cut after the last packet of the resolutions the reduced image uses, given a
    fixed tile-part length and EOC, and decoded from that cut; PLT bytes are not counted anywhere. The reduced
    image is the wavelet low-pass band, not a bicubic downscale; `jpeg2000_lowpass` gives its own reference.
    info: target_bpp, full_bytes (whole stream), fraction (num_bytes / full_bytes), decompositions.
    """
    image = _check_image(image)
    if not bpp > 0:
        raise ValueError(f"bpp must be > 0, got {bpp}")
    stream = j2k_encode(image, irreversible=True, quality_mode="rates", quality_layers=[24.0 / bpp], plt=True)
    layout = j2k_layout(stream)
    full = len(layout.stream)
    out = {}
    for r in reduces:
        if not 0 <= r <= layout.decompositions:
            raise ValueError(f"reduce must be in [0, {layout.decompositions}] for this image, got {r}")
        prefix = j2k_prefix(layout, r)
        out[r] = Coded(j2k_decode(prefix, r), len(prefix), {
            "counted": "J2K codestream prefix" if r else "J2K codestream", "target_bpp": bpp,
            "full_bytes": full, "fraction": len(prefix) / full, "decompositions": layout.decompositions})
    return out


def jpeg2000(image: np.ndarray, bpp: float) -> Coded:
    """JPEG 2000 at a target rate, full size (see `jpeg2000_levels`); counts the raw J2K codestream."""
    return jpeg2000_levels(image, bpp, (0,))[0]


def jpeg2000_lowpass(image: np.ndarray, reduce: int) -> np.ndarray:
    """The reference a reduced JPEG 2000 decode approximates: the 9/7 low-pass of the image at 1/2^reduce size.

    Same wavelet and colour transform as `jpeg2000_levels`, with no rate limit (every bit-plane kept; ~51 dB
    from the image at full size on Kodak, the 9/7 quantisation floor). Not a reversible 5/3 lossless stream:
    its low-pass is another filter, and a 9/7 decode at 4 bpp is only ~32.8 dB (1/2) / ~28.0 dB (1/4) from it
    on kodim05, against 47 / 52 dB from this one.
    """
    image = _check_image(image)
    return j2k_decode(j2k_encode(image, irreversible=True), reduce)


# ---------------------------------------------------------------- HEVC (x265) in HEIF

HEVC_ENC_PARAMS = {
    "x265:ipratio": "1",  # the I-slice QP is the QP asked for (x265 otherwise lowers it by ~3)
    "x265:aq-mode": "0",  # libheif turns x265's perceptual tuning on; it costs ~10% BD-rate in PSNR
    "x265:psy-rd": "0",
    "x265:psy-rdoq": "0",
    "x265:pools": "none",  # one thread, so the stream is the same on any machine (also turns WPP off)
    "x265:frame-threads": "1",
}


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, box end) of each ISO-BMFF box in data[start:end]."""
    end = len(data) if end is None else end
    while start < end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        yield kind.decode("latin-1"), start + head, start + size
        start += size


def _uint(data: bytes, pos: int, size: int) -> tuple[int, int]:
    return int.from_bytes(data[pos:pos + size], "big"), pos + size


def _iloc_extents(data: bytes, pos: int, item: int) -> list[tuple[int, int]]:
    """(file offset, length) of each extent of `item` in an iloc box payload (after version/flags at pos-4)."""
    version = data[pos - 4]
    offset_size, length_size = data[pos] >> 4, data[pos] & 15
    base_size, index_size = data[pos + 1] >> 4, (data[pos + 1] & 15) if version else 0
    count, pos = _uint(data, pos + 2, 4 if version == 2 else 2)
    for _ in range(count):
        item_id, pos = _uint(data, pos, 4 if version == 2 else 2)
        method = 0
        if version:
            method, pos = _uint(data, pos, 2)
        pos += 2  # data_reference_index
        base, pos = _uint(data, pos, base_size)
        extents, pos = _uint(data, pos, 2)
        found = []
        for _ in range(extents):
            pos += index_size
            off, pos = _uint(data, pos, offset_size)
            length, pos = _uint(data, pos, length_size)
            found.append((base + off, length))
        if item_id == item:
            if method & 15:
                raise ValueError("HEIF image item is not stored by file offset")
            return found
    raise ValueError(f"HEIF iloc has no item {item}")


def _nal_units(data: bytes, length_size: int) -> list[int]:
    """Sizes of the length-prefixed NAL units in data."""
    sizes, pos = [], 0
    while pos < len(data):
        n, pos = _uint(data, pos, length_size)
        sizes.append(n)
        pos += n
    return sizes


def hevc_stream_bytes(heif: bytes) -> int:
    """Size of the HEVC stream inside a single-image HEIF file, as an Annex-B byte stream would hold it.

    That is the parameter sets of the hvcC box (VPS, SPS, PPS, ...) plus the NAL units of the primary image
    item, each with a 4-byte start code: what a raw .hevc/.bin file of the same encode has. Everything else
    (ftyp, meta, item properties) is HEIF container overhead.
    """
    meta = next((s, e) for k, s, e in _boxes(heif) if k == "meta")
    primary = iloc_at = hvcc = None
    for kind, s, e in _boxes(heif, meta[0] + 4, meta[1]):
        if kind == "pitm":
            primary = _uint(heif, s + 4, 4 if heif[s] else 2)[0]
        elif kind == "iloc":
            iloc_at = s + 4
        elif kind == "iprp":
            for k2, s2, e2 in _boxes(heif, s, e):
                if k2 == "ipco":
                    found = [s3 for k3, s3, _ in _boxes(heif, s2, e2) if k3 == "hvcC"]
                    if len(found) != 1:
                        raise ValueError(f"expected one hvcC box, found {len(found)}")
                    hvcc = found[0]
    if primary is None or iloc_at is None or hvcc is None:
        raise ValueError("HEIF file lacks pitm, iloc or hvcC")
    extents = _iloc_extents(heif, iloc_at, primary)
    length_size = (heif[hvcc + 21] & 3) + 1
    total, pos = 0, hvcc + 23
    for _ in range(heif[hvcc + 22]):  # arrays of parameter-set NAL units
        count, pos = _uint(heif, pos + 1, 2)
        for _ in range(count):
            n, pos = _uint(heif, pos, 2)
            total += 4 + n
            pos += n
    item = b"".join(heif[off:off + length] for off, length in extents)
    return total + sum(4 + n for n in _nal_units(item, length_size))


def hevc_encode(image: np.ndarray, qp: int, enc_params: dict = HEVC_ENC_PARAMS) -> bytes:
    """A .heic file of `image` (uint8 RGB): HEVC intra 4:4:4, constant QP, x265 options `enc_params`."""
    h, w = image.shape[:2]
    buf = io.BytesIO()
    pillow_heif.encode("RGB", (w, h), image.tobytes(), buf, chroma=444, tile_size=0,
                       enc_params=dict(enc_params, **{"x265:qp": str(int(qp))}))
    return buf.getvalue()


def hevc_decode(data: bytes) -> np.ndarray:
    """uint8 RGB pixels of a .heic file (libde265 through pillow-heif)."""
    return _rgb(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True)[0].to_pillow())


def hevc444(image: np.ndarray, qp: int, enc_params: dict = HEVC_ENC_PARAMS) -> Coded:
    """HEVC intra, YCbCr 4:4:4 (BT.601 full range, as libheif converts), constant QP, x265 through pillow-heif.

    Settings: `HEVC_ENC_PARAMS` (psychovisual tuning off, I-slice QP = qp, one thread) unless `enc_params`
    replaces them (x265 options, "x265:" prefixed; "x265:qp" is always set from qp). Any size works, odd and
    1x1 included: libheif pads to the coding block grid and crops back (clap). Rate counted: the HEVC stream
    (`hevc_stream_bytes`); info["file_bytes"] has the .heic size, the difference being container overhead.
    """
    image = _check_image(image)
    data = hevc_encode(image, qp, enc_params)
    decoded = hevc_decode(data)
    if decoded.shape != image.shape:
        raise ValueError(f"HEVC decode returned {decoded.shape} for {image.shape}")
    return Coded(decoded, hevc_stream_bytes(data), {"counted": "HEVC stream (Annex-B)", "qp": int(qp),
                                                    "file_bytes": len(data)})


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Baseline:
    """A codec with its rate parameter name and a sweep of values, in increasing rate."""

    name: str
    code: Callable[[np.ndarray, float], Coded]
    parameter: str
    sweep: tuple


BASELINES = {b.name: b for b in (
    Baseline("hevc444", hevc444, "qp", (42, 38, 34, 31, 28, 25, 22)),
    Baseline("jpeg2000", jpeg2000, "bpp", (0.1, 0.175, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5)),
    Baseline("jpeg", jpeg, "quality", (3, 5, 8, 12, 20, 35, 55, 75, 85)),
)}
