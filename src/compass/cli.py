"""Command-line front end: argument parsing and printing only; the work is done by the Python API.

Exit codes: 0 success, 1 `fuzz` found failing cases, 2 bad input or damaged data, or a usage error (one-line
message; `--debug` shows the traceback), 3 training stopped on a non-finite loss, 130 interrupted (Ctrl-C),
141 the reader of the output went away (`compass info x.cmp | head -1`), quietly.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import DEFAULT_LAYER_MODE, DEFAULT_MODEL, DEFAULT_QUALITY, argtypes, bench, evaluate, fuzz, limits
from .errors import CompassError


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error (exit code 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _codec(args, data: bytes | None = None):
    """The model of --model/--predictor; without them, for decoding `data`, the installed model it names."""
    from .api import Compass, model_for

    if data is not None and args.model is None and args.predictor is None:
        return model_for(data, args.max_pixels)
    return Compass(args.model or DEFAULT_MODEL, predictor=args.predictor or "liff", max_pixels=args.max_pixels)


def _print_layers(meta: dict) -> None:
    """`info`'s table: one line per layer, with what is wrong with its chunk (a truncated file has no bytes or
    bpp for the layers it lacks)."""
    print(f"model {meta['model_name']} (id {meta['model_id']}), header {meta['header_bytes']} bytes, "
          f"file {meta['file_bytes']} bytes")
    for l in meta["layers"]:
        coded = "" if l["bpp"] is None else (f"  chunk {l['chunk_bytes']} B  total {l['total_bytes']} B  "
                                             f"{l['bpp']:.4f} bpp")
        status = "" if l["status"] == "ok" else f"  [{l['status']}]"
        print(f"  layer {l['layer']}: {l['width']}x{l['height']}  q={l['quality']:.3f}  {l['mode']}{coded}{status}")


def _encode(args) -> int:
    from . import bitstream
    from .fileutil import atomic_write_bytes, same_file
    from .imageio import load_image

    if same_file(args.input, args.output):
        raise CompassError(f"output {args.output} is the input file; choose another path")
    image = load_image(args.input, max_pixels=args.max_pixels)
    for message in image.warnings:
        print(f"compass encode: warning: {message}", file=sys.stderr)
    data = _codec(args).encode(image.pixels, layers=args.layers, sizes=args.sizes, scales=args.scales,
                               quality=args.quality, qualities=args.qualities, refine=args.refine,
                               max_bytes=args.max_bytes, layer_bytes=args.layer_bytes, layer_mode=args.layer_mode)
    atomic_write_bytes(args.output, data)
    if not args.quiet:
        _print_layers(bitstream.info(data))
    return 0


def _decode(args) -> int:
    from . import bitstream
    from .fileutil import same_file

    if same_file(args.input, args.output):
        raise CompassError(f"output {args.output} is the input file; choose another path")
    data = bitstream.read_file(args.input, args.max_pixels)  # refused, where it must be, before torch is imported
    from .imageio import save_image, save_layers

    codec = _codec(args, data)
    header = codec.read_header(data)[0]
    progress = None if args.quiet else _progress(header)
    if not args.all:
        save_image(codec.decode(data, args.layer, progress), args.output)
        return 0
    out = Path(args.output)
    paths = [out.with_name(f"{out.stem}_L{k}{out.suffix}") for k in range(len(header.layers))]
    for path in paths:  # all of them before anything is written
        if same_file(args.input, path):
            raise CompassError(f"output {path} is the input file; choose another path")
    saved = None if args.quiet else lambda k, img, path: print(f"layer {k}: {img.shape[1]}x{img.shape[0]} -> {path}")
    save_layers(codec.decode_iter(data, -1, progress), paths, saved)
    return 0


def _progress(header):
    """For a decode whose layers declare over `limits.PROGRESS_PIXELS` pixels in all (it may take minutes): a
    callback that says on stderr which layer is being decoded; None for others."""
    if sum(layer.pixels for layer in header.layers) <= limits.PROGRESS_PIXELS:
        return None
    start = time.monotonic()

    def show(k, layer):
        print(f"compass decode: decoding layer {k} ({layer.width}x{layer.height}) after "
              f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    return show


def _info(args) -> int:
    from . import bitstream

    meta = bitstream.info(bitstream.read_file(args.input, args.max_pixels), args.max_pixels)
    if args.json:
        print(json.dumps(meta, indent=2))
    else:
        _print_layers(meta)
    return 0


def _extract(args) -> int:
    from . import bitstream
    from .fileutil import atomic_write_bytes, same_file

    if same_file(args.input, args.output):
        raise CompassError(f"output {args.output} is the input file; choose another path")
    atomic_write_bytes(args.output, bitstream.extract(bitstream.read_file(args.input, args.max_pixels), args.layer,
                                                      args.max_pixels))
    return 0


def _train(args) -> int:
    from .train import load_recipe, train
    from .train.loop import NonFiniteLoss

    recipe = load_recipe(args.recipe)
    run_dir = args.run_dir or f"runs/{recipe['name']}/{args.stage}"
    try:
        train(recipe, args.stage, run_dir, resume=args.resume, steps=args.steps, data=args.data,
              threads=args.threads, init=args.init,
              time_budget=60 * args.time_budget if args.time_budget else None)
    except NonFiniteLoss as e:
        print(f"compass train: {e}", file=sys.stderr)
        return 3
    return 0


def _encode_dir(args) -> int:
    from tqdm import tqdm

    from .encodedir import encode_dir

    done = encode_dir(args.src, args.dst, layers=args.layers, widths=args.sizes, quality=args.quality,
                      model=args.model, jobs=args.jobs, force=args.force, progress=not args.quiet,
                      report=lambda message: tqdm.write(f"compass encode-dir: {message}", file=sys.stderr),
                      layer_mode=args.layer_mode)
    print(f"{len(done.encoded)} encoded, {len(done.skipped)} up to date, {len(done.failed)} failed")
    return 2 if done.failed else 0


def _serve(args) -> int:
    try:
        from .serve.app import run
    except ImportError as e:
        raise CompassError(f"compass serve needs the serve extra: pip install 'compass-codec[serve]' ({e})") from None
    from .serve.config import ServeConfig

    given = {"workers": args.workers, "cache_dir": args.cache_dir and Path(args.cache_dir),
             "cache_bytes": None if args.cache_mb is None else round(args.cache_mb * 2**20)}
    config = ServeConfig(**{k: v for k, v in given.items() if v is not None})
    run(args.dir, host=args.host, port=args.port, config=config, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="compass", description="Neural spatially scalable image codec (COMPASS): "
                                            "one file holds an image at several resolutions.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--threads", type=argtypes.positive, help="torch CPU threads")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def max_pixels(sp, default, why):
        sp.add_argument("--max-pixels", type=argtypes.positive, default=default, metavar="N",
                        help=f"refuse images and layers of more than N pixels (default {default}: {why})")

    def model_args(sp, default: str):
        sp.add_argument("--model", "--weights", dest="model",
                        help=f"registered model name or weights file, scalable or single-layer (default: {default})")
        sp.add_argument("--predictor", choices=["liff", "bicubic"],
                        help="inter-layer predictor (bicubic: the ablation; default liff, or what the file names)")
        sp.add_argument("--quiet", action="store_true")
        max_pixels(sp, limits.CLI_MAX_PIXELS, "4096x4096, about a minute of CPU and 1.6 GB per layer")

    def layer_mode(sp):
        sp.add_argument("--layer-mode", choices=limits.LAYER_MODES, default=DEFAULT_LAYER_MODE,
                        help="layers above the base: auto (each predicted from the layer below or coded on its own, "
                             "whichever costs less at its q; default), predicted (always: the paper's method, about "
                             "40%% of auto's encoding time), intra (never: simulcast in one file)")

    e = sub.add_parser("encode", help="encode an image into one file holding several resolutions")
    e.add_argument("input")
    e.add_argument("output")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--layers", type=argtypes.floats,
                   help="fractions of the input size, e.g. 0.25,0.5,1 (default; 1 for a single-layer model)")
    g.add_argument("--sizes", type=argtypes.sizes, help="layer sizes WIDTHxHEIGHT, the last one the input's")
    g.add_argument("--scales", type=argtypes.scales, help="factors between layers, e.g. 1.6,2.4 or 1.5x2.0 (h x v)")
    e.add_argument("-q", "--quality", type=float, default=DEFAULT_QUALITY,
                   help=f"q in [0, 1] for every layer (default {DEFAULT_QUALITY})")
    t = e.add_mutually_exclusive_group()
    t.add_argument("--qualities", type=argtypes.floats, help="one q per layer, overrides --quality")
    t.add_argument("--max-bytes", type=argtypes.byte_count, metavar="N",
                   help="the highest q (the same for every layer) that keeps the file within N bytes")
    t.add_argument("--layer-bytes", type=argtypes.byte_counts, metavar="B0,B1,...",
                   help="per layer, bottom first, the highest q that keeps the bytes up to that layer within Bk")
    e.add_argument("--refine", type=argtypes.steps, default=0, metavar="STEPS",
                   help="optimize each layer's latents for this image for STEPS steps before coding (slower "
                        "encode, smaller file or better image, same decoder; 100 is a good value; default 0: off)")
    layer_mode(e)
    model_args(e, DEFAULT_MODEL)
    e.set_defaults(func=_encode)

    d = sub.add_parser("decode", help="decode one layer (default: the top one) or all layers to PNG")
    d.add_argument("input")
    d.add_argument("-o", "--output", required=True, help="output image (--all writes NAME_L0.png, NAME_L1.png...)")
    d.add_argument("--layer", type=int, default=-1, help="layer index; negative counts from the top")
    d.add_argument("--all", action="store_true", help="decode every layer")
    model_args(d, "the model the file names")
    d.set_defaults(func=_decode)

    i = sub.add_parser("info", help="layers, sizes, bytes and bpp of a compass file")
    i.add_argument("input")
    i.add_argument("--json", action="store_true")
    max_pixels(i, limits.MAX_PIXELS, "8192x8192")
    i.set_defaults(func=_info)

    x = sub.add_parser("extract", help="keep layers 0..k of a file, without re-encoding")
    x.add_argument("input")
    x.add_argument("--layer", type=int, required=True)
    x.add_argument("-o", "--output", required=True)
    max_pixels(x, limits.MAX_PIXELS, "8192x8192")
    x.set_defaults(func=_extract)

    t = sub.add_parser("train", help="train one stage of a recipe (cpu, paper, or a TOML file)")
    t.add_argument("recipe")
    t.add_argument("--stage", default="base", help="base, liff or joint")
    t.add_argument("--run-dir")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    t.add_argument("--steps", type=int, help="override the stage's step count")
    t.add_argument("--init", help="start from shipped weights (name or file) or a checkpoint, when not resuming")
    t.add_argument("--data", help="training image folder (default: the recipe's, under the shared data root)")
    t.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="fit the step count to this much wall-clock time (after a short probe), then stop")
    t.add_argument("--threads", type=argtypes.positive, default=argparse.SUPPRESS, help="torch CPU threads")
    t.set_defaults(func=_train)

    z = sub.add_parser("fuzz", help="feed damaged, forged and foreign files to the decoder, hostile input to the "
                                     "command line and the loaders (docs/reliability.md)")
    fuzz.add_arguments(z)
    z.set_defaults(func=fuzz.main)

    n = sub.add_parser("encode-dir", help="encode a folder of images for `compass serve` (skips what is up to date)")
    n.add_argument("src")
    n.add_argument("dst")
    g = n.add_mutually_exclusive_group()
    g.add_argument("--layers", type=argtypes.floats, help="fractions of each image's size, e.g. 0.25,0.5,1 (default)")
    g.add_argument("--sizes", type=argtypes.widths, help="layer widths in pixels, e.g. 480,960,1920; heights follow "
                                                         "the aspect ratio, the image itself is the top layer")
    n.add_argument("-q", "--quality", type=float, default=DEFAULT_QUALITY,
                   help=f"q in [0, 1] for every layer (default {DEFAULT_QUALITY})")
    n.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL}; "
                                                          "compass-cpu-mini decodes fastest)")
    layer_mode(n)
    n.add_argument("--jobs", type=int, help="worker processes (default: one per core)")
    n.add_argument("--force", action="store_true", help="encode again what is up to date")
    n.add_argument("--quiet", action="store_true", help="no progress bar")
    n.set_defaults(func=_encode_dir)

    s = sub.add_parser("serve", help="serve a folder of compass files over HTTP, each width from a prefix of "
                                     "its file (docs/serving.md)")
    s.add_argument("dir")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, help="decoding processes (default: one per core, at most 4)")
    s.add_argument("--cache-dir", help="cache of decoded layers (default ~/.cache/compass/serve)")
    s.add_argument("--cache-mb", type=float, help="size cap of that cache in MiB, 0 to turn it off (default 256)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=_serve)

    v = sub.add_parser("eval", help="rate-distortion evaluation against the baselines: BD-rate table, plots")
    evaluate.add_arguments(v)
    v.set_defaults(func=evaluate.main)

    b = sub.add_parser("bench", help="speed and memory beside the single-layer codec, JPEG 2000 and HEVC, side by "
                                     "side (docs/performance.md)")
    bench.add_arguments(b)
    b.set_defaults(func=bench.main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, not at exit
        return code
    except BrokenPipeError:  # `compass info x.cmp | head -1`: stop quietly, as tools that SIGPIPE kills do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13
    except (CompassError, ValueError, OSError, KeyboardInterrupt) as e:
        if args.debug:
            raise
        interrupted = isinstance(e, KeyboardInterrupt)
        print(f"compass {args.command}: {'interrupted' if interrupted else e}", file=sys.stderr)
        return 130 if interrupted else 2
