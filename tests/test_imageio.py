"""Image reading/writing rules and hostile files; every fixture is generated here in tmp_path."""
from __future__ import annotations

import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from conftest import fifo
from PIL import Image, ImageCms, ImageFile, ImageOps

from compass import fileutil, imageio, limits
from compass.errors import CompassError
from compass.fileutil import atomic_write_bytes, same_file
from compass.imageio import ImageError, load_image, save_image
from compass.pixels import all_finite, to_pixels, to_tensor

RNG = np.random.default_rng(0)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width, height, depth, colour_type, idat: bytes, extra: bytes = b"") -> bytes:
    """A PNG written by hand, for what Pillow cannot write (16-bit colour, huge declared sizes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _png16(samples: np.ndarray, colour_type: int, extra: bytes = b"") -> bytes:
    """16-bit PNG of (H, W, C) samples, every row with the Sub filter so the decoder has to unfilter bytes."""
    h, w, c = samples.shape
    raw = samples.astype(">u2").view(np.uint8).reshape(h, w * c * 2)
    sub = raw.copy()
    sub[:, 2 * c:] = raw[:, 2 * c:] - raw[:, :-2 * c]
    rows = np.concatenate([np.ones((h, 1), np.uint8), sub], axis=1)
    return _png(w, h, 16, colour_type, zlib.compress(rows.tobytes()), extra)


def _tiff16(samples: np.ndarray, byteorder: str, compression: int) -> bytes:
    """Single-strip 16-bit RGB TIFF, uncompressed (1) or Deflate (8), written by hand."""
    h, w, c = samples.shape
    data = samples.astype(byteorder + "u2").tobytes()
    if compression == 8:
        data = zlib.compress(data)
    e = "<" if byteorder == "<" else ">"
    n = 9
    bps_at = 8 + 2 + 12 * n + 4
    data_at = bps_at + 2 * c
    short = lambda tag, v: struct.pack(e + "HHIHH", tag, 3, 1, v, 0)  # noqa: E731
    long = lambda tag, v, kind=4, count=1: struct.pack(e + "HHII", tag, kind, count, v)  # noqa: E731
    entries = [short(256, w), short(257, h), long(258, bps_at, 3, c), short(259, compression), short(262, 2),
               long(273, data_at), short(277, c), short(278, h), long(279, len(data))]
    return ((b"II*\0" if e == "<" else b"MM\0*") + struct.pack(e + "IH", 8, n) + b"".join(entries)
            + struct.pack(e + "I", 0) + struct.pack(e + "H" * c, *[16] * c) + data)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _save(tmp_path, image: Image.Image, name: str, **options):
    path = tmp_path / name
    image.save(path, **options)
    return path


def _noise(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


# --- refusals -------------------------------------------------------------------------------------------


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path)


def test_empty_file(tmp_path):
    with pytest.raises(ImageError, match=r"empty\.png: empty file"):
        load_image(_write(tmp_path / "empty.png", b""))


def test_text_file(tmp_path):
    with pytest.raises(ImageError, match="not a PNG/JPEG/WEBP/TIFF/BMP/GIF image"):
        load_image(_write(tmp_path / "notes.png", b"hello, this is text\n" * 20))


def test_format_outside_the_list_is_refused(tmp_path):
    path = _save(tmp_path, Image.fromarray(_noise(4, 4)), "a.ppm")
    with pytest.raises(ImageError, match="not a PNG/JPEG/WEBP/TIFF/BMP/GIF image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 48)).save(buf, fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)


def test_truncation_is_an_error_even_if_pillow_was_told_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 48)).save(buf, "JPEG")
    with pytest.raises(ImageError, match="truncated"):
        load_image(_write(tmp_path / "cut.jpg", buf.getvalue()[:-100]))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    # A 3000x3000 header followed by a few bytes of pixel data: decoding would fail as truncated.
    path = _write(tmp_path / "big.png", _png(3000, 3000, 8, 2, zlib.compress(b"\0" * 100)))
    with pytest.raises(ImageError, match="3000x3000 is 9000000 pixels, above the limit of 1000000"):
        load_image(path, max_pixels=1_000_000)
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)  # within the default limit, so it gets as far as decoding


def test_huge_declared_size_is_refused(tmp_path):
    path = _write(tmp_path / "bomb.png", _png(100_000, 100_000, 8, 2, zlib.compress(b"\0" * 100)))
    with pytest.raises(ImageError, match="above the limit"):
        load_image(path)


def test_pixel_limit_is_inclusive(tmp_path):
    path = _save(tmp_path, Image.fromarray(_noise(3, 5)), "a.png")
    assert load_image(path, max_pixels=15).pixels.shape == (3, 5, 3)
    with pytest.raises(ImageError, match="above the limit of 14"):
        load_image(path, max_pixels=14)


def test_default_limit_admits_8k():
    assert 7680 * 4320 <= limits.MAX_PIXELS < 2 * Image.MAX_IMAGE_PIXELS


def test_damaged_files_give_an_image_or_an_image_error():
    rng = np.random.default_rng(1)
    seeds = []
    for fmt, options in [("PNG", {}), ("JPEG", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {}),
                         ("GIF", {})]:
        buf = io.BytesIO()
        Image.fromarray(_noise(12, 10)).save(buf, fmt, **options)
        seeds.append(buf.getvalue())
    for _ in range(150):
        data = bytearray(seeds[rng.integers(len(seeds))])
        for i in rng.integers(len(data), size=rng.integers(1, 4)):
            data[i] = rng.integers(256)
        if rng.random() < 0.3:
            del data[rng.integers(1, len(data)):]
        try:
            assert load_image(io.BytesIO(bytes(data))).pixels.shape[2] == 3
        except ImageError as e:
            assert "\n" not in str(e)


# --- what is read ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 2), (2, 3)])
def test_tiny_images(tmp_path, shape):
    a = _noise(*shape)
    got = load_image(_save(tmp_path, Image.fromarray(a), "tiny.png"))
    assert got.pixels.dtype == np.uint8 and got.pixels.flags.writeable
    np.testing.assert_array_equal(got.pixels, a)
    assert got.warnings == [] and got.source_mode == "RGB" and got.source_format == "PNG"


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"), ("BMP", "bmp")])
def test_lossless_formats_read_exactly(tmp_path, fmt, ext):
    a = _noise(5, 7)
    options = {"lossless": True} if fmt == "WEBP" else {}
    np.testing.assert_array_equal(load_image(_save(tmp_path, Image.fromarray(a), f"a.{ext}", **options)).pixels, a)


def test_file_objects(tmp_path):
    a = _noise(4, 6)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")

    class Pipe(io.RawIOBase):  # readable, not seekable, like stdin
        def __init__(self, data):
            self.data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, b):
            return self.data.readinto(b)

    for source in (io.BytesIO(buf.getvalue()), io.BufferedReader(Pipe(buf.getvalue()))):
        np.testing.assert_array_equal(load_image(source).pixels, a)


def test_pipes_are_read_within_a_bound_and_devices_refused(tmp_path):
    """Issue 22, rows 3 and 10: an image from a pipe (`<(cat x.png)`) is read into memory, up to what an image
    of `max_pixels` may take; a device (/dev/zero) is refused without reading it."""
    a = _noise(4, 6)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    np.testing.assert_array_equal(load_image(fifo(tmp_path / "pipe.png", buf.getvalue())).pixels, a)
    with pytest.raises(ImageError, match="endless.png: a pipe or stream of more than 16777224 bytes"):
        load_image(fifo(tmp_path / "endless.png", buf.getvalue(), endless=True), max_pixels=1)
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="zero.png: not a regular file"):
        load_image(tmp_path / "zero.png")


def test_grayscale(tmp_path):
    g = _noise(4, 5, 1)[..., 0]
    got = load_image(_save(tmp_path, Image.fromarray(g), "g.png"))
    assert got.source_mode == "L"
    np.testing.assert_array_equal(got.pixels, np.repeat(g[..., None], 3, axis=2))


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([200, 10, 20, 0, 0, 0, 5, 6, 7])
    for x in range(3):
        p.putpixel((x, 0), x)
    got = load_image(_save(tmp_path, p, "p.png", transparency=1))
    assert got.source_mode == "P"
    np.testing.assert_array_equal(got.pixels[0], [[200, 10, 20], [255, 255, 255], [5, 6, 7]])
    assert any("flattened onto white" in w for w in got.warnings)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    v = np.array([[0, 128, 129, 257 * 100, 65535, 32896, 65406]], dtype=np.uint16)
    got = load_image(_save(tmp_path, Image.fromarray(v), "g16.png"))
    assert got.source_mode == "I;16"
    np.testing.assert_array_equal(got.pixels[0, :, 0], [0, 0, 1, 100, 255, 128, 254])
    np.testing.assert_array_equal(got.pixels[..., 0], got.pixels[..., 2])


def test_16bit_grey_colour_key(tmp_path):
    v = np.array([[0, 1000, 65535]], dtype=">u2")
    png = _png(3, 1, 16, 0, zlib.compress(b"\0" + v.tobytes()), extra=_chunk(b"tRNS", struct.pack(">H", 1000)))
    got = load_image(_write(tmp_path / "key.png", png))
    np.testing.assert_array_equal(got.pixels[0, :, 0], [0, 255, 255])
    assert any("flattened" in w for w in got.warnings)


def _exact(v):
    return np.rint(v / 257).astype(np.uint8)


def test_16bit_rgb_png_is_rounded_not_truncated(tmp_path):
    v = RNG.integers(0, 65536, (6, 5, 3))
    v[0, 0] = [129, 255, 65535]  # Pillow alone gives 0, 0, 255
    got = load_image(_write(tmp_path / "rgb16.png", _png16(v, 2)))
    assert got.source_mode == "RGB;16" and got.warnings == []
    np.testing.assert_array_equal(got.pixels, _exact(v))
    np.testing.assert_array_equal(got.pixels[0, 0], [1, 1, 255])


def test_16bit_rgb_colour_key(tmp_path):
    v = np.array([[[1, 2, 3], [1, 2, 4]]])
    got = load_image(_write(tmp_path / "key.png", _png16(v, 2, extra=_chunk(b"tRNS", struct.pack(">3H", 1, 2, 3)))))
    np.testing.assert_array_equal(got.pixels[0], [[255, 255, 255], [0, 0, 0]])


def test_16bit_rgba_and_grey_alpha_png(tmp_path):
    v = RNG.integers(0, 65536, (4, 3, 4))
    v[..., 3] = 65535
    v[0, 0, 3] = 0
    got = load_image(_write(tmp_path / "rgba16.png", _png16(v, 6)))
    expect = _exact(v[..., :3])
    expect[0, 0] = 255
    assert got.source_mode == "RGBA;16"
    np.testing.assert_array_equal(got.pixels, expect)

    la = RNG.integers(0, 65536, (4, 3, 2))
    la[..., 1] = 65535
    got = load_image(_write(tmp_path / "la16.png", _png16(la, 4)))
    assert got.source_mode == "LA;16" and got.warnings == []
    np.testing.assert_array_equal(got.pixels, np.repeat(_exact(la[..., :1]), 3, axis=2))


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("compression", [1, 8])
def test_16bit_rgb_tiff(tmp_path, byteorder, compression):
    v = RNG.integers(0, 65536, (5, 4, 3))
    got = load_image(_write(tmp_path / "rgb16.tif", _tiff16(v, byteorder, compression)))
    assert got.source_mode == "RGB;16"
    np.testing.assert_array_equal(got.pixels, _exact(v))


def test_32bit_int_and_float_grey(tmp_path):
    i = np.array([[-5, 0, 129, 65535, 70000]], dtype=np.int32)
    got = load_image(_save(tmp_path, Image.fromarray(i), "i.tif"))
    assert got.source_mode == "I"
    np.testing.assert_array_equal(got.pixels[0, :, 0], [0, 0, 1, 255, 255])
    assert any("clipped" in w for w in got.warnings)

    f = np.array([[0.0, 0.5, 1.0, 0.3]], dtype=np.float32)
    got = load_image(_save(tmp_path, Image.fromarray(f), "f.tif"))
    assert got.source_mode == "F" and got.warnings == []
    np.testing.assert_array_equal(got.pixels[0, :, 0], [0, 128, 255, 76])


def test_rgba_is_flattened_onto_white(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [0, 0, 0, 128], [200, 100, 0, 51]]], dtype=np.uint8)
    got = load_image(_save(tmp_path, Image.fromarray(rgba), "a.png"))
    np.testing.assert_array_equal(got.pixels[0], [[255, 255, 255], [10, 20, 30], [127, 127, 127], [244, 224, 204]])
    assert got.source_mode == "RGBA"
    assert got.warnings == ["transparency flattened onto white (75.0% of pixels not opaque)"]


def test_opaque_rgba_gives_no_warning(tmp_path):
    rgba = _noise(3, 3, 4)
    rgba[..., 3] = 255
    got = load_image(_save(tmp_path, Image.fromarray(rgba), "a.png"))
    assert got.warnings == []
    np.testing.assert_array_equal(got.pixels, rgba[..., :3])


def test_cmyk_jpeg(tmp_path):
    # Pillow writes CMYK JPEGs as Adobe does (APP14 marker, inverted samples) and reads them back.
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    path = _save(tmp_path, cmyk, "c.jpg", quality=95)
    with Image.open(path) as im:
        assert im.info.get("adobe")
    got = load_image(path)
    assert got.source_mode == "CMYK"
    assert np.abs(got.pixels.astype(int) - [255, 0, 0]).max() <= 3
    assert any("CMYK" in w for w in got.warnings)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 3), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    got = load_image(path)
    np.testing.assert_array_equal(got.pixels, np.full((3, 4, 3), [255, 0, 0]))
    assert any("only the first" in w for w in got.warnings)


def test_exif_rotated_jpeg(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)  # stored 32 wide, 16 high: left half red, right half blue
    a[:, :16] = [255, 0, 0]
    a[:, 16:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half comes on top
    got = load_image(_save(tmp_path, Image.fromarray(a), "r.jpg", exif=exif, quality=95)).pixels
    assert got.shape == (32, 16, 3)
    assert np.abs(got[4, 8].astype(int) - [255, 0, 0]).max() <= 8
    assert np.abs(got[28, 8].astype(int) - [0, 0, 255]).max() <= 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path, Image.fromarray(_noise(3, 5)), "o.png", exif=exif)
    with Image.open(path) as im:
        expect = np.asarray(ImageOps.exif_transpose(im))
    np.testing.assert_array_equal(load_image(path).pixels, expect)


def test_colour_profile_warning(tmp_path):
    a = Image.fromarray(_noise(2, 2))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    other = ImageCms.ImageCmsProfile(ImageCms.createProfile("XYZ")).tobytes()
    assert load_image(_save(tmp_path, a, "s.png", icc_profile=srgb)).warnings == []
    assert load_image(_save(tmp_path, a, "x.png", icc_profile=other)).warnings == [
        "embedded colour profile (XYZ identity built-in) not applied; values read as sRGB"]


# --- writing --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.png", "a.PNG", "a", "a.webp", "a.tif", "a.tiff", "a.bmp"])
def test_save_round_trip(tmp_path, name):
    a = _noise(5, 7)
    save_image(a, tmp_path / name)
    np.testing.assert_array_equal(load_image(tmp_path / name).pixels, a)
    assert os.listdir(tmp_path) == [name]


@pytest.mark.parametrize("name", ["a.jpg", "a.gif", "a.xyz"])
def test_save_refuses_other_extensions(tmp_path, name):
    with pytest.raises(ImageError, match="cannot write"):
        save_image(_noise(2, 2), tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_save_failure_leaves_previous_file_and_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous")

    def broken(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(ImageError, match=r"out\.png: cannot write \(No space left on device\)"):
        save_image(_noise(4, 4), path)
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.png"]

    with pytest.raises(ImageError):
        save_image(_noise(4, 4), tmp_path / "new.png")
    assert os.listdir(tmp_path) == ["out.png"]


def test_interrupted_write_leaves_nothing(tmp_path):
    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileutil.atomic_write(tmp_path / "x.cmp", interrupted)
    assert os.listdir(tmp_path) == []


def test_save_errors(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="output folder .*missing does not exist"):
        save_image(_noise(2, 2), tmp_path / "missing" / "a.png")
    (tmp_path / "d").mkdir()
    with pytest.raises(ImageError, match="is a directory"):
        save_image(_noise(2, 2), tmp_path / "d")
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        save_image(np.zeros((2, 2, 4), np.uint8), tmp_path / "a.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)  # as root, a read-only folder would not stop the write
    with pytest.raises(ImageError, match=r"cannot write \(Permission denied\)"):
        save_image(_noise(2, 2), tmp_path / "a.png")


def test_atomic_write_bytes(tmp_path, monkeypatch):
    path = tmp_path / "x.cmp"
    atomic_write_bytes(path, b"first")
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second"

    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CompassError, match=r"x\.cmp: cannot write \(Input/output error\)"):
        atomic_write_bytes(path, b"third")
    assert path.read_bytes() == b"second" and os.listdir(tmp_path) == ["x.cmp"]


def test_atomic_write_follows_a_symlink(tmp_path):
    (tmp_path / "real.cmp").write_bytes(b"old")
    (tmp_path / "link.cmp").symlink_to("real.cmp")
    atomic_write_bytes(tmp_path / "link.cmp", b"new")
    assert (tmp_path / "link.cmp").is_symlink() and (tmp_path / "real.cmp").read_bytes() == b"new"


@pytest.mark.parametrize("kind", ["device node", "fifo"])
def test_atomic_write_never_replaces_a_device_or_a_fifo(kind, tmp_path):
    """Issue 22, row 4: an output that is a device node (here a copy of /dev/null) or a FIFO is refused, not
    replaced by a regular file."""
    import stat

    node = tmp_path / "node"
    if kind == "fifo":
        os.mkfifo(node)
    elif os.geteuid() != 0:
        pytest.skip("only root may create a device node (the FIFO covers the rule)")
    else:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (tmp_path / "link").symlink_to(node)
    for path in (node, tmp_path / "link"):
        with pytest.raises(CompassError, match="not a regular file .* refusing to replace it"):
            atomic_write_bytes(path, b"data")
    assert not stat.S_ISREG(node.lstat().st_mode) and sorted(os.listdir(tmp_path)) == ["link", "node"]


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    """Issue 22, row 5: a replaced file keeps its permission bits; a new one gets the umask's."""
    path = tmp_path / "x.cmp"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "y.cmp", b"new")
    finally:
        os.umask(umask)
    assert (tmp_path / "y.cmp").stat().st_mode & 0o777 == 0o644


def test_atomic_write_takes_any_name_the_folder_takes(tmp_path):
    """Issue 22, row 9: the temporary name is short, so a name of 255 bytes (the usual limit) can be written."""
    path = tmp_path / ("n" * 251 + ".cmp")
    atomic_write_bytes(path, b"data")
    assert path.read_bytes() == b"data" and os.listdir(tmp_path) == [path.name]


_KILLED_WRITER = r"""
import sys, time
from compass.fileutil import atomic_write
atomic_write(sys.argv[1], lambda f: (f.write(b"half"), f.flush(), print("writing", flush=True), time.sleep(60)))
"""


def test_a_killed_writer_s_temporary_file_goes_with_a_later_write(tmp_path):
    """Issue 22, row 13: kill -9 during a write leaves the temporary file (nothing can prevent that); the next
    write into the folder removes it once it is `STALE_TEMP_SECONDS` old. Fresh ones (a write in progress) and
    other files stay."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path / "out.cmp")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"writing\n"
    finally:
        proc.kill()
        proc.wait()
    (left,) = os.listdir(tmp_path)
    assert left.startswith(".compass-") and left.endswith(".tmp")
    old = time.time() - limits.STALE_TEMP_SECONDS - 1
    os.utime(tmp_path / left, (old, old))
    (tmp_path / ".compass-0123456789ab.tmp").write_bytes(b"a write in progress")
    (tmp_path / ".notes.tmp").write_bytes(b"not ours")
    os.utime(tmp_path / ".notes.tmp", (old, old))
    atomic_write_bytes(tmp_path / "other.cmp", b"data")
    assert sorted(os.listdir(tmp_path)) == [".compass-0123456789ab.tmp", ".notes.tmp", "other.cmp"]


def test_same_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.png").write_bytes(b"x")
    os.link(tmp_path / "a.png", tmp_path / "hard.png")
    (tmp_path / "soft.png").symlink_to("a.png")
    assert same_file("a.png", tmp_path / "sub" / ".." / "a.png")
    assert same_file("a.png", "hard.png") and same_file("soft.png", "a.png")
    assert not same_file("a.png", "b.png")
    assert same_file("b.png", "./sub/../b.png")  # neither exists yet


# --- tensors --------------------------------------------------------------------------------------------


def test_tensor_round_trip_is_exact():
    a = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    t = to_tensor(a)
    assert t.shape == (1, 3, 16, 16) and t.dtype == torch.float32 and t.is_contiguous()
    assert float(t.min()) == 0.0 and float(t.max()) == 1.0
    np.testing.assert_array_equal(to_pixels(t), a)


def test_to_pixels_rounding_rule():
    x = torch.tensor([-0.5, 0.0, 0.49 / 255, 0.51 / 255, 100.49 / 255, 100.51 / 255, 1.0, 7.0])
    got = to_pixels(x.view(1, 1, 1, 8).expand(1, 3, 1, 8))
    np.testing.assert_array_equal(got[0, :, 0], [0, 0, 0, 1, 100, 101, 255, 255])
    assert to_pixels(torch.full((3, 2, 2), 0.5)).shape == (2, 2, 3)
    halves = torch.tensor([0.5, 1.5, 2.5], dtype=torch.float64) / 255
    np.testing.assert_array_equal(to_pixels(halves.view(1, 1, 3).expand(3, 1, 3))[0, :, 0], [0, 2, 2])


def test_to_pixels_refuses_nan_and_bad_shapes():
    with pytest.raises(ValueError, match="NaN"):
        to_pixels(torch.full((1, 3, 2, 2), float("nan")))
    x = torch.rand(1, 3, 5, 7).contiguous(memory_format=torch.channels_last)  # decoders hand over this layout
    np.testing.assert_array_equal(to_pixels(x), to_pixels(x.contiguous()))
    x[0, 1, 2, 3] = float("nan")  # one value inside the image
    with pytest.raises(ValueError, match="NaN"):
        to_pixels(x)
    with pytest.raises(ValueError):
        to_pixels(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError):
        to_tensor(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_sees_one_bad_value_anywhere(value):
    x = torch.rand(1, 3, 6, 9).contiguous(memory_format=torch.channels_last)
    assert all_finite(x)
    for at in [(0, 0, 0, 0), (0, 1, 3, 4), (0, 2, 5, 8)]:
        y = x.clone()
        y[at] = value
        assert not all_finite(y), at


def test_pil_images_are_read_by_the_file_rules(tmp_path):
    """compass.encode(PIL.Image.open(p)) sees what encode(p) sees: EXIF orientation, alpha flattened, 16-bit
    samples (from the file while the image is not loaded yet), and the pixel limit."""
    from compass.imageio import from_pil

    v = RNG.integers(0, 65536, (6, 5, 3))
    exif = Image.Exif()
    exif[0x0112] = 6
    rgba = _noise(7, 9, 4)
    rgba[..., 3] = np.linspace(0, 255, 9).astype(np.uint8)
    paths = [_write(tmp_path / "rgb16.png", _png16(v, 2)),
             _save(tmp_path, Image.fromarray(_noise(8, 12)), "r.jpg", exif=exif, quality=95),
             _save(tmp_path, Image.fromarray(rgba), "a.png")]
    for path in paths:
        want = load_image(path)
        with Image.open(path) as im, Image.open(io.BytesIO(path.read_bytes())) as from_memory:
            for got in (from_pil(im), from_pil(from_memory)):
                np.testing.assert_array_equal(got.pixels, want.pixels, err_msg=str(path))
                assert got.source_mode == want.source_mode and got.warnings == want.warnings
    with Image.open(paths[0]) as im:
        im.load()  # loaded: Pillow kept the high bytes only, and that is what there is to read
        assert from_pil(im).pixels.shape == (6, 5, 3)
    with pytest.raises(ImageError, match="above the limit of 40"):
        from_pil(Image.fromarray(_noise(8, 12)), max_pixels=40)
