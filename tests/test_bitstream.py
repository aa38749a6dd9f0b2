"""The container format: round trips, the prefix property, extract, every error, and robustness to garbage."""
import hashlib
import io
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib

import pytest
from conftest import fifo

from compass import bitstream as bs
from compass import limits
from compass.errors import CompassError

MODEL_ID = bytes.fromhex("0123456789abcdef")


def make(n_layers: int, seed: int = 0, string_bytes: int = 40, intra: bool = False):
    """A header with growing sizes and n_layers random chunks (2 strings each, one sometimes empty); `intra`:
    layers 1, 3, ... are intra (a version 2 header)."""
    rng = random.Random(seed)
    layers = [bs.LayerInfo(16 * (k + 1), 24 * (k + 1), rng.random(), intra and k % 2 == 1) for k in range(n_layers)]
    chunks = [bs.Chunk((rng.randbytes(rng.randrange(string_bytes)), rng.randbytes(rng.randrange(8))),
                       rng.getrandbits(32)) for _ in range(n_layers)]
    return bs.Header("compass-test", MODEL_ID, layers), chunks


def chunk_ends(data: bytes) -> list[int]:
    return [layer["total_bytes"] for layer in bs.info(data)["layers"]]


def raw_header(name=b"compass-test", layers=((16, 24, 0),), version=1, flags=0, model_id=MODEL_ID,
               count=None, crc=None) -> bytes:
    """A header built by hand from the documented layout, with any field values and a correct CRC by default.
    Version 2 layers are (height, width, quality code, mode)."""
    out = b"\x89CMP" + bytes([version, flags, len(name)]) + name + model_id
    out += bytes([len(layers) if count is None else count])
    out += b"".join(struct.pack(">IIHB" if len(layer) == 4 else ">IIH", *layer) for layer in layers)
    return out + struct.pack(">I", zlib.crc32(out) if crc is None else crc)


def raw_chunk(payload: bytes) -> bytes:
    return struct.pack(">II", len(payload), zlib.crc32(payload)) + payload


def good_chunk(*strings: bytes, check=0) -> bytes:
    return raw_chunk(struct.pack(">IB", check, len(strings)) + b"".join(struct.pack(">I", len(s)) + s
                                                                        for s in strings))


def read_all_quietly(data: bytes):
    """Exercise every reader on data; anything but a BitstreamError fails the test."""
    try:
        header, offset = bs.read_header(data)
    except bs.BitstreamError:
        return None
    bs.info(data)
    out = []
    for k in range(len(header.layers)):
        try:
            out.append(bs.read_chunks(data, header, offset, k))
        except bs.BitstreamError:
            out.append(None)
        try:
            bs.extract(data, k)
        except bs.BitstreamError:
            pass
    return header, out


# --- round trips -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intra", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2, 3, 5])
def test_round_trip(n_layers, intra):
    header, chunks = make(n_layers, seed=n_layers, intra=intra)
    data = bs.write(header, chunks)
    got, offset = bs.read_header(data)
    assert got == header
    assert [l.intra for l in got.layers] == [k == 0 or (intra and k % 2 == 1) for k in range(n_layers)]
    version = 2 if intra and n_layers > 1 else 1
    assert data[4] == version == bs.info(data)["format_version"]
    assert offset == len(raw_header(b"compass-test", [(16, 24, 0) + (0,) * (version - 1)] * n_layers))
    for k in range(n_layers):
        assert bs.read_chunks(data, got, offset, k) == chunks[:k + 1]
    assert bs.read(data) == (header, chunks)
    assert chunk_ends(data)[-1] == len(data)


def test_header_bytes_follow_documented_layout():
    header = bs.Header("compass-test", MODEL_ID, [bs.LayerInfo(16, 24, 0.0), bs.LayerInfo(32, 48, 1.0),
                                                  bs.LayerInfo(32, 50, 0.5)])
    data = bs.write(header, [bs.Chunk([b"ab", b""], 0xDEADBEEF)] * 3)
    assert data.startswith(raw_header(layers=[(16, 24, 0), (32, 48, 65535), (32, 50, 32768)]))
    assert data.endswith(good_chunk(b"ab", b"", check=0xDEADBEEF))


def _example(intra: bool = False) -> bytes:
    """The example file of docs/bitstream.md; `intra`: its layer 1 coded intra."""
    header = bs.Header("compass-cpu", hashlib.sha256(b"example weights").digest()[:8],
                       [bs.LayerInfo(256, 384, 0.5), bs.LayerInfo(512, 768, 0.75, intra)])
    return bs.write(header, [bs.Chunk([b"\x11\x22\x33\x44", b"\x55\x66\x77\x88"], 0x0BADF00D),
                             bs.Chunk([b"\xaa" * 8, b"\xbb" * 4], 0x12345678)])


def test_golden_file():
    """The example in docs/bitstream.md: any change to these bytes breaks existing files."""
    data = _example()
    assert data.hex() == (
        "89434d5001000b636f6d706173732d63707564b91ca7fe644b1402000001000000018080000000020000000300bfff76"
        "51189d0000001552a6e21c0badf00d02000000041122334400000004556677880000001938"
        "08fbf5123456780200000008aaaaaaaaaaaaaaaa00000004bbbbbbbb")
    assert len(bs.extract(data, 0)) == 70 and bs.extract(data, 0)[41:] == data[51:80]


def test_golden_file_with_an_intra_layer():
    """Version 2, written only when a layer above the base is intra (docs/bitstream.md): one mode byte per layer."""
    data = _example(intra=True)
    assert data.hex() == (
        "89434d5002000b636f6d706173732d63707564b91ca7fe644b140200000100000001808000010000020000000300bfff01"
        "08abd4780000001552a6e21c0badf00d02000000041122334400000004556677880000001938"
        "08fbf5123456780200000008aaaaaaaaaaaaaaaa00000004bbbbbbbb")
    assert [l["mode"] for l in bs.info(data)["layers"]] == ["base", "intra"]
    assert bs.extract(data, 0) == bs.extract(_example(), 0)  # layer 0 alone needs no version 2


def test_layer_modes():
    """Layer 0 is intra whatever the writer says; a version 2 mode byte is 0 (predicted) or 1 (intra), and 1 for
    layer 0; a version 1 header holds no modes (every layer above the base predicted)."""
    assert bs.Header("m", MODEL_ID, [bs.LayerInfo(8, 8, 0)]).layers[0].intra
    assert bs.read_header(raw_header(layers=[(16, 24, 0), (32, 48, 0)]))[0].layers[1].intra is False
    v2 = [(16, 24, 0, 1), (32, 48, 0, 1), (64, 96, 0, 0)]
    assert [l.mode for l in bs.read_header(raw_header(layers=v2, version=2))[0].layers] == [
        "intra", "intra", "predicted"]
    with pytest.raises(bs.HeaderError, match="^layer 2: mode 2 is not valid"):
        bs.read_header(raw_header(layers=v2[:2] + [(64, 96, 0, 2)], version=2))
    with pytest.raises(bs.HeaderError, match="^layer 0: mode 0 is not valid"):
        bs.read_header(raw_header(layers=[(16, 24, 0, 0)], version=2))


def test_quality_is_quantized_once_and_exactly():
    layer = bs.LayerInfo(8, 8, 0.3)
    assert layer.quality == round(0.3 * 65535) / 65535 == bs.quantize_quality(0.3)
    assert bs.LayerInfo(8, 8, layer.quality).quality == layer.quality
    assert bs.quantize_quality(0) == 0.0 and bs.quantize_quality(1) == 1.0
    for bad in (-0.01, 1.01, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            bs.LayerInfo(8, 8, bad)


# --- progressive prefixes and extract ----------------------------------------------------------------------


def test_prefix_reads_lower_layers_like_the_full_file():
    header, chunks = make(4, seed=1)
    data = bs.write(header, chunks)
    ends = chunk_ends(data)
    for k, end in enumerate(ends):
        prefix = data[:end]
        h, offset = bs.read_header(prefix)
        assert h == header
        assert bs.read_chunks(prefix, h, offset, k) == chunks[:k + 1]
        # bytes after chunk k are never looked at, whatever they hold
        assert bs.read_chunks(prefix + b"\xff" * 50, h, offset, k) == chunks[:k + 1]
        if k + 1 < len(ends):
            with pytest.raises(bs.TruncatedChunk, match=f"^layer {k + 1}: chunk missing"):
                bs.read_chunks(prefix, h, offset, k + 1)
            status = bs.info(prefix)["layers"][k + 1]
            assert status["chunk_bytes"] is None and not status["decodable"]


@pytest.mark.parametrize("intra", [False, True])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_extract_is_a_valid_file_with_identical_chunks(n_layers, intra):
    header, chunks = make(n_layers, seed=7, intra=intra)
    data = bs.write(header, chunks)
    _, offset = bs.read_header(data)
    ends = chunk_ends(data)
    for k in range(n_layers):
        out = bs.extract(data, k)
        h, out_offset = bs.read_header(out)
        assert h == bs.Header(header.model_name, header.model_id, header.layers[:k + 1])
        assert out[out_offset:] == data[offset:ends[k]]
        assert bs.read_chunks(out, h, out_offset, k) == chunks[:k + 1]
        assert bs.info(out)["trailing_bytes"] == 0
        assert bs.extract(out, k) == out
    assert bs.extract(data + b"junk", n_layers - 1) == data
    for bad in (-1, n_layers):
        with pytest.raises(bs.LayerOutOfRange, match=f"layer {bad} requested"):
            bs.extract(data, bad)


def test_extract_refuses_a_damaged_chunk_it_would_copy():
    header, chunks = make(3, seed=2)
    data = bytearray(bs.write(header, chunks))
    data[chunk_ends(data)[1] - 1] ^= 1
    bs.extract(bytes(data), 0)
    with pytest.raises(bs.ChunkCRCMismatch, match="^layer 1: "):
        bs.extract(bytes(data), 1)


def test_info_reports_bytes_bpp_and_damage_per_layer():
    header, chunks = make(3, seed=3)
    data = bytearray(bs.write(header, chunks))
    report = bs.info(bytes(data))
    header_bytes = report["header_bytes"]
    assert report["model_id"] == MODEL_ID.hex() and report["trailing_bytes"] == 0
    total = header_bytes
    for k, layer in enumerate(report["layers"]):
        total += layer["chunk_bytes"]
        assert layer["total_bytes"] == total
        assert layer["bpp"] == pytest.approx(8 * total / (header.layers[k].height * header.layers[k].width))
        assert layer["status"] == "ok" and layer["decodable"]
    data[report["layers"][0]["total_bytes"] - 1] ^= 0x80  # damage layer 0's payload: all layers undecodable
    damaged = bs.info(bytes(data))["layers"]
    assert "CRC mismatch" in damaged[0]["status"]
    assert [layer["status"] for layer in damaged[1:]] == ["ok", "ok"]
    assert not any(layer["decodable"] for layer in damaged)
    assert damaged[2]["total_bytes"] == total  # extents still known after a CRC error
    # cut inside layer 1's chunk: layer 2's cannot even be located
    cut = bs.info(bytes(data[:report["layers"][1]["total_bytes"] - 5]))["layers"]
    assert cut[1]["status"].startswith("chunk truncated") and cut[2]["status"].startswith("chunk missing")


# --- errors ------------------------------------------------------------------------------------------------


def test_header_errors():
    with pytest.raises(bs.BadMagic, match="not a compass file"):
        bs.read_header(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(bs.BadMagic):
        bs.read_header(b"CMP1" + raw_header()[4:])  # text-mode mangling loses the high bit
    for short in (b"", b"\x89C", raw_header()[:-1]):
        with pytest.raises(bs.HeaderError, match="truncated header"):
            bs.read_header(short)
    with pytest.raises(bs.UnsupportedVersion, match="version 3 is not supported"):
        bs.read_header(raw_header(version=3))
    with pytest.raises(bs.UnsupportedVersion, match="flags 0x04"):
        bs.read_header(raw_header(flags=4))
    with pytest.raises(bs.HeaderError, match="CRC mismatch"):
        bs.read_header(raw_header(crc=0))
    with pytest.raises(bs.HeaderError, match="no layers"):
        bs.read_header(raw_header(layers=()))
    with pytest.raises(bs.HeaderError, match="model name"):
        bs.read_header(raw_header(name=b"caf\xe9"))
    with pytest.raises(bs.HeaderError, match="model name"):
        bs.read_header(raw_header(name=b""))
    with pytest.raises(bs.HeaderError, match="^layer 1: width 24 and height 0 must"):
        bs.read_header(raw_header(layers=[(16, 24, 0), (0, 24, 0)]))
    with pytest.raises(bs.HeaderError, match="^layer 2: size 47x32 is smaller than layer 1's 48x32"):
        bs.read_header(raw_header(layers=[(16, 24, 0), (32, 48, 0), (32, 47, 0)]))


def test_limits_are_refused_before_allocation():
    with pytest.raises(bs.LimitExceeded, match="17 layers exceed the limit of 16"):
        bs.read_header(raw_header(layers=[(16, 24, 0)] * 17))
    huge = raw_header(layers=[(16, 24, 0), (2**32 - 1, 2**32 - 1, 0)])
    tracemalloc.start()
    try:
        with pytest.raises(bs.LimitExceeded, match="^layer 1: .* over the limit of 67108864"):
            bs.read_header(huge)
        # a chunk declaring 4 GiB of payload in a tiny file: more than its layer may hold
        data = raw_header() + struct.pack(">II", 2**32 - 1, 0) + bytes(16)
        with pytest.raises(bs.ChunkError, match="^layer 0: chunk declares 4294967295 payload bytes, over the limit"):
            bs.read(data)
        # a CRC-valid payload whose string declares 4 GiB
        data = raw_header() + raw_chunk(struct.pack(">IBI", 0, 1, 2**32 - 1) + bytes(8))
        with pytest.raises(bs.ChunkError, match="^layer 0: string 0 declares 4294967295 bytes"):
            bs.read(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # the pixel limit is the caller's to set
    big = raw_header(layers=[(20000, 20000, 0)])
    with pytest.raises(bs.LimitExceeded):
        bs.read_header(big)
    assert bs.read_header(big, max_pixels=20000 * 20000)[0].layers[0].pixels == 20000 * 20000
    with pytest.raises(bs.LimitExceeded):
        bs.read_header(raw_header(), max_pixels=16 * 24 - 1)


@pytest.mark.parametrize("payload, message", [
    (b"\x00\x00\x00", "payload too short"),
    (struct.pack(">IB", 0, 0), "holds no strings"),
    (struct.pack(">IB", 0, 2) + struct.pack(">I", 1) + b"a" + b"\x00\x00", "ends inside the length of string 1"),
    (struct.pack(">IBI", 0, 1, 5) + b"abc", "string 0 declares 5 bytes, only 3 remain"),
    (struct.pack(">IBI", 0, 1, 1) + b"ab", "1 unexpected bytes after the last string"),
])
def test_malformed_payload_names_its_layer(payload, message):
    data = raw_header(layers=[(16, 24, 0), (16, 24, 0)]) + good_chunk(b"ok", check=5) + raw_chunk(payload)
    header, offset = bs.read_header(data)
    with pytest.raises(bs.ChunkError, match=f"^layer 1: .*{message}"):
        bs.read_chunks(data, header, offset, 1)
    assert bs.read_chunks(data, header, offset, 0) == [bs.Chunk([b"ok"], 5)]


def test_chunk_errors_name_the_layer_and_spare_lower_layers():
    header, chunks = make(3, seed=4)
    data = bs.write(header, chunks)
    _, offset = bs.read_header(data)
    ends = chunk_ends(data)
    damaged = bytearray(data)
    damaged[ends[2] - 1] ^= 0x10
    with pytest.raises(bs.ChunkCRCMismatch, match=r"^layer 2: chunk CRC mismatch \(file damaged\)$"):
        bs.read_chunks(bytes(damaged), header, offset, 2)
    assert bs.read_chunks(bytes(damaged), header, offset, 1) == chunks[:2]
    with pytest.raises(bs.TruncatedChunk, match=r"^layer 2: chunk truncated \(3 of its 8 framing bytes"):
        bs.read_chunks(data[:ends[1] + 3], header, offset, 2)
    with pytest.raises(bs.TruncatedChunk, match="^layer 2: chunk truncated .* payload bytes present"):
        bs.read_chunks(data[:-1], header, offset, 2)
    with pytest.raises(bs.LayerOutOfRange, match="holds layers 0-2"):
        bs.read_chunks(data, header, offset, 3)
    err = pytest.raises(bs.ChunkError, bs.read_chunks, data[:-1], header, offset, 2).value
    assert err.layer == 2 and isinstance(err, CompassError) and "\n" not in str(err)


def test_write_refuses_what_readers_would_refuse():
    header, chunks = make(2)
    with pytest.raises(ValueError, match="1 chunks given for 2 layers"):
        bs.write(header, chunks[:1])
    with pytest.raises(bs.HeaderError, match="smaller than layer 0"):
        bs.write(bs.Header("m", MODEL_ID, [bs.LayerInfo(32, 32, 0), bs.LayerInfo(16, 64, 0)]), chunks)
    with pytest.raises(bs.LimitExceeded):
        bs.write(bs.Header("m", MODEL_ID, [bs.LayerInfo(8, 8, 0)] * 17), [chunks[0]] * 17)
    with pytest.raises(bs.HeaderError, match="model id must be 8 bytes"):
        bs.write(bs.Header("m", MODEL_ID[:4], header.layers), chunks)
    with pytest.raises(bs.HeaderError, match="model name"):
        bs.write(bs.Header("m\n", MODEL_ID, header.layers), chunks)
    with pytest.raises(bs.ChunkError, match="^layer 1: a chunk holds 1-255 strings, got 0"):
        bs.write(header, [chunks[0], bs.Chunk((), 0)])
    with pytest.raises(bs.ChunkError, match="^layer 0: decoder check"):
        bs.write(header, [bs.Chunk([b""], 2**32), chunks[1]])
    too_long = bs.Chunk([bytes(limits.chunk_bytes_limit(16 * 24))], 0)  # 4 bytes per pixel and 64 KiB
    with pytest.raises(bs.ChunkError, match="^layer 0: chunk payload of .* bytes is over the limit"):
        bs.write(header, [too_long, chunks[1]])


def test_read_file_reads_no_more_than_the_header_allows(tmp_path):
    """Issue 22, row 3: /dev/zero, /dev/urandom, an 8 GiB sparse file or an endless pipe cost at most what the
    header allows: the header, then each declared layer's chunk limit. Devices and folders are refused unread."""
    header, chunks = make(2)
    data = bs.write(header, chunks)
    (tmp_path / "x.cmp").write_bytes(data + b"trailing")
    assert bs.read_file(tmp_path / "x.cmp") == data + b"trailing"
    offset = bs.read_header(data)[1]
    allowed = offset + sum(8 + limits.chunk_bytes_limit(layer.pixels) for layer in header.layers)
    got = bs.read_file(fifo(tmp_path / "endless", data, endless=True))
    assert len(got) == allowed and got.startswith(data)
    for device in ("/dev/zero", "/dev/urandom"):
        (tmp_path / "link.cmp").unlink(missing_ok=True)
        (tmp_path / "link.cmp").symlink_to(device)
        with pytest.raises(CompassError, match="link.cmp: not a regular file"):
            bs.read_file(tmp_path / "link.cmp")
    with pytest.raises(CompassError, match="is a directory"):
        bs.read_file(tmp_path)
    with open(tmp_path / "sparse.cmp", "wb") as f:
        f.truncate(8 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(bs.BadMagic):
            bs.read_file(tmp_path / "sparse.cmp")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


class CountingFile(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.bytes_read = 0

    def read(self, n=-1):
        out = super().read(n)
        self.bytes_read += len(out)
        return out


@pytest.mark.parametrize("intra", [False, True])
def test_layout_locates_every_layer_from_the_header_and_framing_only(intra):
    header, chunks = make(4, seed=2, string_bytes=300, intra=intra)
    data = bs.write(header, chunks)
    f = CountingFile(data)
    got = bs.layout(f)
    assert got == bs.Layout(header, bs.read_header(data)[1], tuple(chunk_ends(data)), None)
    assert f.bytes_read == got.header_bytes + 8 * 4 < len(data) / 4


def test_layout_of_a_cut_file_stops_at_the_first_chunk_it_does_not_hold_whole():
    header, chunks = make(3, seed=3)
    data = bs.write(header, chunks)
    ends = chunk_ends(data)
    for cut, located in ((len(data) - 1, 2), (ends[1], 2), (ends[1] + 5, 2), (ends[0] + 8, 1), (ends[0] - 1, 0)):
        got = bs.layout(CountingFile(data[:cut]))
        assert got.ends == tuple(ends[:located]), cut
        with pytest.raises(bs.TruncatedChunk) as e:
            bs.read_chunks(data[:cut], header, got.header_bytes, located)
        assert got.missing == str(e.value)
    with pytest.raises(bs.BadMagic):
        bs.layout(CountingFile(b"GIF89a" + data))
    for cut in (0, 3, 6, 20, got.header_bytes - 1):
        with pytest.raises(bs.HeaderError):
            bs.layout(CountingFile(data[:cut]))


# --- robustness --------------------------------------------------------------------------------------------


def test_every_truncation_raises_only_bitstream_errors():
    header, chunks = make(3, seed=5, string_bytes=6)
    data = bs.write(header, chunks)
    ends = chunk_ends(data)
    for cut in range(len(data)):
        result = read_all_quietly(data[:cut])
        if cut < bs.read_header(data)[1]:
            assert result is None
            continue
        for k, got in enumerate(result[1]):
            assert got == (chunks[:k + 1] if cut >= ends[k] else None)


@pytest.mark.parametrize("intra", [False, True])
def test_random_bit_flips_never_escape_or_hurt_lower_layers(intra):
    header, chunks = make(3, seed=6, string_bytes=12, intra=intra)
    data = bs.write(header, chunks)
    header_bytes = bs.read_header(data)[1]
    ends = chunk_ends(data)
    rng = random.Random(0)
    for _ in range(400):
        damaged = bytearray(data)
        positions = [rng.randrange(len(data)) for _ in range(rng.randint(1, 3))]
        for pos in positions:
            damaged[pos] ^= 1 << rng.randrange(8)
        if damaged == data:
            continue
        result = read_all_quietly(bytes(damaged))
        first = min(positions)
        if first < header_bytes:
            assert result is None  # any header damage is detected
            continue
        # chunks wholly before the first damaged byte still read exactly; the damaged one never reads wrong
        damaged_layer = next(k for k, end in enumerate(ends) if first < end)
        for k in range(damaged_layer):
            assert result[1][k] == chunks[:k + 1]
        assert result[1][damaged_layer] is None


def test_random_headers_and_garbage_only_raise_bitstream_errors():
    rng = random.Random(1)
    for i in range(300):
        count = rng.choice([0, 1, 2, 3, 16, 17, rng.randrange(256)])
        layers = [(rng.choice([0, 1, rng.getrandbits(16), rng.getrandbits(32)]),
                   rng.choice([0, 1, rng.getrandbits(16), rng.getrandbits(32)]), rng.getrandbits(16))
                  for _ in range(count)]
        name = b"compass-cpu" if i % 2 else rng.randbytes(rng.randrange(256))
        data = raw_header(name=name, layers=layers) + rng.randbytes(rng.randrange(200))
        result = read_all_quietly(data)
        if result is not None:  # accepted: then it obeys every limit
            accepted = result[0].layers
            assert 1 <= len(accepted) <= limits.MAX_LAYERS
            assert all(1 <= layer.pixels <= limits.MAX_PIXELS for layer in accepted)
        read_all_quietly(rng.randbytes(rng.randrange(100)))
        read_all_quietly(b"\x89CMP\x01\x00" + rng.randbytes(rng.randrange(100)))


def test_module_does_not_import_torch():
    """Inspecting or cutting files must not pay for (or need) torch."""
    code = "import sys, compass.bitstream; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
