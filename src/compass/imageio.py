"""Reading and writing images, by the rules below, and the one conversion between pixels and tensors.

Reading (`load_image`) gives upright 8-bit RGB:

- Formats: PNG, JPEG, WebP, TIFF, BMP and GIF, decoded by Pillow. Other formats Pillow knows are refused,
  so that fewer parsers see untrusted files and none starts an external program (Pillow's EPS reader runs
  Ghostscript).
- Only the first frame of a multi-frame file (animated GIF, PNG or WebP, multi-page TIFF, multi-picture
  JPEG) is read, with a warning.
- The EXIF orientation is applied, so the pixels are upright as a viewer shows them.
- Colour modes become 8-bit RGB:
  - grey (8- or 1-bit) is copied into R, G and B; palette images take their palette colours;
  - 16-bit samples (grey, RGB or RGBA in PNG or TIFF, grey+alpha in PNG) become round(v / 257), the nearest
    8-bit level (Pillow alone would clip 16-bit grey at 255 and keep only the high byte of 16-bit colour);
  - 32-bit integer grey is read on the 16-bit scale, 0..65535, and 32-bit float grey on [0, 1] as
    round(v * 255); values outside are clipped, with a warning;
  - CMYK (JPEG, including Adobe's inverted CMYK, or TIFF) uses Pillow's conversion without colour
    management, R = (255 - C)(255 - K) / 255 and so on, with a warning that colours are approximate.
- Transparency (an alpha channel, or transparent palette entries or colour key) is flattened onto white:
  out = round((c * a + 255 * (255 - a)) / 255), with a warning when some pixel is not fully opaque. White is
  what a page or a browser shows behind a transparent image; keeping the stored colours instead would bring
  out whatever the encoder left under fully transparent pixels (often black, sometimes older content).
- An embedded colour profile is not applied: values are read as sRGB, with a warning unless the profile
  is an sRGB one.
- Refused with `ImageError`, a one-line message naming the file: a missing file, a directory, an empty
  file, a file that is not an image in a supported format (or whose header is damaged), damaged or truncated
  pixel data, an unsupported colour mode, a device (/dev/zero...), a pipe or stream longer than such an image
  could be (`limits.image_bytes_limit`), and an image above `max_pixels` pixels (default `limits.MAX_PIXELS`,
  2**26: 8192 x 8192, more than 8K UHD). The limit is checked on the size in the header, before any pixel is
  decoded; Pillow's own decompression-bomb limit (2 * PIL.Image.MAX_IMAGE_PIXELS, about 179 MP) still applies
  above it. A file whose pixel data is complete but whose trailer is missing (PNG IEND, GIF trailer) is
  accepted, as Pillow does. A pipe (`<(cat x.png)`, stdin) is read into memory first, since Pillow seeks.
- Pillow's setting that accepts truncated files (ImageFile.LOAD_TRUNCATED_IMAGES) is forced off for the
  call and restored after; Pillow's warnings on the file are returned with the others.

Writing (`save_image`) is lossless only, chosen by the extension: .png (and no extension), .webp (lossless),
.tif/.tiff, .bmp; others, JPEG included, are refused. Files are written atomically
(`compass.fileutil.atomic_write`): a failure leaves no partial file and any previous file untouched.

Torch-free: pixels to and from tensors are `compass.pixels`.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile

from .errors import CompassError
from .fileutil import atomic_write, open_input, read_upto
from .limits import MAX_PIXELS, image_bytes_limit

__all__ = ["FORMATS", "ImageError", "LoadedImage", "check_pixels", "from_pil", "load_image", "save_image",
           "save_layers"]

FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")
_SAVE_FORMATS = {"": "PNG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_SAVE_OPTIONS = {"WEBP": {"lossless": True}}

# 16-bit colour rawmodes, which Pillow decodes to the high byte of each sample, and the rawmode that reads
# the same bytes for the low byte: the other byte order, or for grey+alpha "RGBA", which keeps all 4 bytes.
_OTHER_ORDER = {"B": "L", "L": "B", "N": "B" if sys.byteorder == "little" else "L"}
_LOW_BYTE = {f"{m};16{o}": f"{m};16{p}" for m in ("RGB", "RGBA") for o, p in _OTHER_ORDER.items()}
_LOW_BYTE["LA;16B"] = "RGBA"
_AS_RGB = ("1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK")
_AS_RGBA = ("LA", "La", "PA", "RGBA", "RGBa")
_GREY16 = ("I;16", "I;16B", "I;16L", "I;16N")
_ORIENT = {  # EXIF orientation -> what makes the stored (H, W, C) array upright
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


class ImageError(CompassError):
    """An image file that cannot be read or written; the message names the file and the problem."""


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image.

    pixels: uint8 (H, W, 3) RGB, upright. warnings: one line each (without the file name) for everything the
    rules changed or dropped. source_mode: the file's colour mode in Pillow's terms ("RGB", "P", "I;16",
    "CMYK", ...), "RGB;16", "RGBA;16" or "LA;16" for 16-bit colour, which Pillow reports as 8-bit "RGB" or
    "RGBA". source_format: Pillow's format name ("PNG", "JPEG", "MPO" for a multi-picture JPEG, ...).
    """

    pixels: np.ndarray
    warnings: list[str]
    source_mode: str
    source_format: str


def load_image(source: str | os.PathLike | BinaryIO, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Read an image file (a path, or a binary file object read from its start) by the module docstring's rules.

    Warnings are returned rather than issued through the `warnings` module, which would show a repeated
    message only once and away from the file's name.
    """
    if isinstance(source, (str, bytes, os.PathLike)):
        name = os.fsdecode(source)
    else:
        name = str(getattr(source, "name", "<stream>"))
    with _input(source, name, max_pixels) as fp:
        if not fp.read(1):
            raise ImageError(f"{name}: empty file")
        notes: list[str] = []
        with _reading(name, max_pixels, notes):
            fp.seek(0)
            with Image.open(fp, formats=FORMATS) as im:
                pixels, mode = _convert(im, fp, name, max_pixels, notes)
                fmt = im.format
    return LoadedImage(pixels, notes, mode, fmt)


def from_pil(image: Image.Image, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """A PIL image by the rules files are read by (orientation, alpha, 16-bit, limits). One still tied to its
    file (opened, not yet loaded) gives its 16-bit samples as a file would; a loaded one has what Pillow kept."""
    filename, unloaded = getattr(image, "filename", ""), bool(getattr(image, "tile", None))
    if unloaded and filename:  # opened from a path and not loaded yet: what it holds is that file
        return load_image(filename, max_pixels)
    name, notes = filename or "<PIL image>", []
    with _reading(name, max_pixels, notes):
        pixels, mode = _convert(image, getattr(image, "fp", None) if unloaded else None, name, max_pixels, notes)
    return LoadedImage(pixels, notes, mode, image.format or "PIL")


@contextlib.contextmanager
def _reading(name: str, max_pixels: int, notes: list[str]):
    """Pillow strict and quiet (`_strict_pillow`), and its many exception types as one-line ImageErrors."""
    try:
        with _strict_pillow(notes):
            yield
    except (ImageError, MemoryError):
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not a {'/'.join(FORMATS)} image, or its header is damaged") from None
    except Image.DecompressionBombError:
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise ImageError(f"{name}: more than {limit} pixels, above the limit of {min(limit, max_pixels)}") from None
    except Exception as e:  # Pillow's decoders report damage with many exception types
        raise ImageError(f"{name}: damaged or truncated image data ({_one_line(e)})") from e


def suffixes() -> set[str]:
    """File name suffixes of the formats `load_image` reads, as Pillow registers them (.png, .jpg, .tif, ...)."""
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in FORMATS}


def save_image(pixels: np.ndarray, path: str | os.PathLike) -> None:
    """Write uint8 (H, W, 3) RGB losslessly in the format of the extension, atomically."""
    check_pixels(pixels)
    name = os.fsdecode(path)
    suffix = os.path.splitext(name)[1].lower()
    fmt = _SAVE_FORMATS.get(suffix)
    if fmt is None:
        why = "JPEG is lossy; " if suffix in (".jpg", ".jpeg") else ""
        raise ImageError(f"{name}: cannot write {suffix} files ({why}use .png, .webp, .tif or .bmp)")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    atomic_write(path, lambda f: image.save(f, fmt, **_SAVE_OPTIONS.get(fmt, {})), error=ImageError)


def save_layers(layers: Iterable[np.ndarray], paths: Sequence[str | os.PathLike],
                saved: Callable[[int, np.ndarray, str | os.PathLike], object] | None = None) -> None:
    """Write the k-th image of `layers` to `paths[k]` by `save_image`, calling `saved(k, image, path)` after each.

    When `layers` stops with an error (a damaged layer), files still at the paths not written are an earlier
    run's outputs that do not belong with the new ones: they are removed, and the error is raised again with a
    message that says so.
    """
    done = 0
    try:
        for path, image in zip(paths, layers):
            save_image(image, path)
            done += 1
            if saved is not None:
                saved(done - 1, image, path)
    except CompassError as e:
        removed = []
        for path in paths[done:]:
            if os.path.isfile(path) and not os.path.islink(path):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed.append(os.fsdecode(path))
        if removed:
            raise CompassError(f"{e}; removed the older {', '.join(removed)}") from e
        raise


def check_pixels(pixels: np.ndarray) -> None:
    """Refuse (ValueError) anything but a non-empty uint8 (H, W, 3) array."""
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
            and pixels.shape[2] == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0):
        got = f"{pixels.dtype} {pixels.shape}" if isinstance(pixels, np.ndarray) else type(pixels).__name__
        raise ValueError(f"expected a uint8 (H, W, 3) array, got {got}")


@contextlib.contextmanager
def _input(source, name: str, max_pixels: int):
    """The source as a binary file read from its start: a path is opened (and closed) here; a pipe, or a file
    object that cannot seek, is read into memory, up to what an image of `max_pixels` pixels may take."""
    with open_input(source, ImageError) as fp:
        try:
            fp.seek(0)
        except (AttributeError, OSError):
            limit = image_bytes_limit(max_pixels)
            data = read_upto(fp, limit + 1)
            if len(data) > limit:
                raise ImageError(f"{name}: a pipe or stream of more than {limit} bytes, more than an image of "
                                 f"{max_pixels} pixels takes") from None
            fp = io.BytesIO(data)
        yield fp


@contextlib.contextmanager
def _strict_pillow(notes: list[str]):
    """For this call only: truncated data is an error, and Pillow's warnings go to `notes`."""
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore")  # DecompressionBombWarning among others: our limit is the rule
            warnings.simplefilter("always", UserWarning)
            yield
        notes.extend(f"Pillow: {_one_line(w.message)}" for w in caught)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _convert(im: Image.Image, fp: BinaryIO | None, name: str, max_pixels: int,
             notes: list[str]) -> tuple[np.ndarray, str]:
    """RGB uint8 pixels and the source mode of an opened image; `fp`, its file, lets 16-bit samples be read."""
    width, height = im.size
    if width * height > max_pixels:
        raise ImageError(f"{name}: {width}x{height} is {width * height} pixels, above the limit of {max_pixels} "
                         f"(max_pixels, or --max-pixels)")
    if getattr(im, "is_animated", False):
        notes.append("several frames (animation or pages); only the first is read")
        im.seek(0)
    mode = im.mode
    wide = _samples16(im, fp) if fp is not None else None
    if wide is not None:
        mode = {2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[wide.shape[2]]
        rgb = _flatten(_to8(wide, im.info.get("transparency")), notes)
    else:
        im.load()
        rgb = _flatten(_samples8(im, name, notes), notes)
    orientation = _orientation(im, notes)
    icc = im.info.get("icc_profile")
    if icc:
        _note_profile(icc, notes)
    if orientation in _ORIENT:
        rgb = np.ascontiguousarray(_ORIENT[orientation](rgb))
    return rgb, mode


def _samples16(im: Image.Image, fp: BinaryIO) -> np.ndarray | None:
    """16-bit colour samples, uint32 (H, W, C) for C = 2 (grey, alpha), 3 or 4; None for other images.

    Pillow decodes each sample to its high byte only: the file is decoded a second time with the tiles'
    rawmode swapped for `_LOW_BYTE`'s, which gives the low bytes from the same unfiltered data.
    """
    raws = {_rawmode(t) for t in im.tile}
    if not raws or not raws.issubset(_LOW_BYTE):
        return None
    im.load()
    high = np.asarray(im, dtype=np.uint32)
    fp.seek(0)
    with Image.open(fp, formats=[im.format]) as again:
        again.tile = [_with_rawmode(t, _LOW_BYTE[_rawmode(t)]) for t in again.tile]
        again.load()
        low = np.asarray(again, dtype=np.uint32)
    if raws == {"LA;16B"}:  # low holds the bytes (L high, L low, A high, A low)
        return np.stack([low[..., 0] << 8 | low[..., 1], low[..., 2] << 8 | low[..., 3]], axis=-1)
    return high << 8 | low


def _rawmode(tile) -> str:
    """The rawmode a tile decodes with: its args, or their first item ("" when there is none)."""
    args = tile.args
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


def _with_rawmode(tile, rawmode: str):
    args = rawmode if isinstance(tile.args, str) else (rawmode, *tile.args[1:])
    return tile._replace(args=args)


def _to8(v: np.ndarray, key) -> np.ndarray:
    """16-bit samples (H, W, C) -> uint8 by round(v / 257); a colour key (16-bit) becomes an alpha channel."""
    out = ((2 * v.astype(np.uint32) + 257) // 514).astype(np.uint8)
    if key is not None and out.shape[2] in (1, 3):
        hit = np.all(v == np.asarray(key, dtype=np.uint32).reshape(-1), axis=2)
        out = np.concatenate([out, np.where(hit, 0, 255).astype(np.uint8)[..., None]], axis=2)
    return out


def _samples8(im: Image.Image, name: str, notes: list[str]) -> np.ndarray:
    """A loaded image as uint8 (H, W, C): C = 1 or 2 (grey, alpha) for 16/32-bit grey, else 3 or 4 (RGBA)."""
    mode = im.mode
    if mode in _GREY16:
        return _to8(np.asarray(im)[..., None], im.info.get("transparency"))
    if mode == "I":
        v = np.asarray(im)
        if v.min() < 0 or v.max() > 65535:
            notes.append("32-bit integer samples outside 0..65535 clipped")
        return _to8(np.clip(v, 0, 65535)[..., None], None)
    if mode == "F":
        v = np.asarray(im)
        if not (np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1):
            notes.append("float samples outside [0, 1] clipped (NaN read as 0)")
        v = np.clip(np.nan_to_num(v, nan=0.0), 0, 1)
        return np.rint(v * 255).astype(np.uint8)[..., None]
    if mode in _AS_RGBA or (mode in _AS_RGB and "transparency" in im.info):
        return np.array(im.convert("RGBA"))
    if mode in _AS_RGB:
        if mode == "CMYK":
            notes.append("CMYK converted to RGB without colour management; colours are approximate")
        return np.array(im.convert("RGB"))
    raise ImageError(f"{name}: colour mode {mode} is not supported")


def _flatten(a: np.ndarray, notes: list[str]) -> np.ndarray:
    """uint8 (H, W, C), C = 1 (grey), 2 (grey, alpha), 3 (RGB) or 4 (RGBA) -> RGB, alpha flattened onto white."""
    colour = np.repeat(a[..., :1], 3, axis=2) if a.shape[2] <= 2 else a[..., :3]
    if a.shape[2] in (1, 3):
        return np.ascontiguousarray(colour)
    alpha = a[..., -1:].astype(np.uint32)
    opaque = alpha == 255
    if opaque.all():
        return np.ascontiguousarray(colour)
    notes.append(f"transparency flattened onto white ({1 - opaque.mean():.1%} of pixels not opaque)")
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _orientation(im: Image.Image, notes: list[str]) -> int:
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a damaged EXIF block must not cost the pixels
        notes.append("EXIF data unreadable; orientation not applied")
        return 1
    if value not in range(1, 9):
        notes.append(f"invalid EXIF orientation {value!r} ignored")
        return 1
    return value


def _note_profile(icc: bytes, notes: list[str]) -> None:
    try:
        from PIL import ImageCms

        label = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc))).strip()
    except Exception:  # no LittleCMS, or a damaged profile
        label = "unreadable"
    if "srgb" not in label.lower():
        notes.append(f"embedded colour profile ({label}) not applied; values read as sRGB")


def _one_line(e: object) -> str:
    return " ".join(str(e).split()) or type(e).__name__
