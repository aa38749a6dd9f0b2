"""Every limit compass puts on untrusted input, in one place (torch-free: the CLI, `bitstream`, `imageio` and
`fuzz` read it), and the one check of a quality and of a layer mode.

Two pixel limits, on purpose: `MAX_PIXELS` is what the library accepts by default (`Compass`, every `bitstream`
reader, `load_image`; a caller may pass another), `CLI_MAX_PIXELS` the tighter default of `compass encode` and
`decode`, which read files from anywhere and should not spend minutes and gigabytes on one. Why each limit
exists and what it bounds: docs/reliability.md ("What is refused, what is bounded").
"""
from __future__ import annotations

import math

MAX_LAYERS = 16  # layers in a file (the format's count byte would allow 255)
MAX_PIXELS = 1 << 26  # pixels in a layer or an input image, the library's default: 8192 x 8192, more than 8K UHD
CLI_MAX_PIXELS = 1 << 24  # `compass encode|decode` default (--max-pixels): 4096 x 4096, more than 4K UHD
MIN_LAYER_SIDE = 8  # an encoder's layer is at least this many pixels a side, or the input's side when smaller
PROGRESS_PIXELS = 1 << 22  # the CLI reports each layer of a decode declaring more pixels than this in all

CHUNK_BYTES_PER_PIXEL = 4  # 32 bits per pixel: far above what any layer codes into (under 2 at q = 1)
CHUNK_SLACK_BYTES = 1 << 16  # string lengths and the hyperprior's string, which a 1x1 layer has too
IMAGE_BYTES_PER_PIXEL = 8  # 16-bit RGBA, uncompressed: the largest encoding of a pixel we read
IMAGE_SLACK_BYTES = 1 << 24  # metadata (EXIF, colour profiles, text chunks)

STALE_TEMP_SECONDS = 600  # an output's temporary file untouched this long belongs to a process that died

# weights files: every width and count in a model's config, so that a forged config cannot make the model
# builder allocate without bound (the largest scalable model allowed: 233 M parameters, 0.93 GB in float32)
MODEL_CONFIG_MAX = {"N": 512, "M": 512, "levels": 64, "feat": 256, "growth": 128, "blocks": 8, "convs": 8,
                    "hidden": 1024}
MAX_HIDDEN_LAYERS = 8


LAYER_MODES = ("auto", "predicted", "intra")  # how layers above the base are coded (ScalableCodec.code_layer)


def check_layer_mode(mode: str) -> str:
    """`mode`, or ValueError when it is not one of LAYER_MODES: the one check, for the codec, the API and
    encode-dir (which checks before it starts its workers)."""
    if mode not in LAYER_MODES:
        raise ValueError(f"layer_mode {mode!r}: expected one of {', '.join(LAYER_MODES)}")
    return mode


def check_quality(q: float) -> float:
    """q as a float, or ValueError when it is outside [0, 1] or not finite: the one check of a quality, for the
    file format (`bitstream`) and the codec alike."""
    q = float(q)
    if not math.isfinite(q) or not 0.0 <= q <= 1.0:
        raise ValueError(f"quality must be in [0, 1], got {q}")
    return q


def chunk_bytes_limit(pixels: int) -> int:
    """The most payload bytes the chunk of a layer of `pixels` pixels may declare (writers and readers refuse more)."""
    return CHUNK_SLACK_BYTES + CHUNK_BYTES_PER_PIXEL * pixels


def image_bytes_limit(max_pixels: int) -> int:
    """The most bytes read from a pipe for an image of at most `max_pixels` pixels."""
    return IMAGE_SLACK_BYTES + IMAGE_BYTES_PER_PIXEL * max_pixels
