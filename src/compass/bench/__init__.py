"""`compass bench`: speed and memory of compass beside its single-layer codec, JPEG 2000 and HEVC, in one run.

Every measurement runs in a fresh child process with the same thread settings (torch, OpenMP, MKL, OpenJPEG,
libheif, x265), so each reports its own peak resident memory (VmHWM); an idle child that imported the same
libraries gives the baseline, and `peak - idle` is what the coding itself costs. Each child runs `warmup`
untimed passes, then `repeat` timed ones (median, quartiles, min/max). Compass decode times are taken per layer
(time to reach layer k, and its increment) and split into sections (LIFF, g_s, h_s, entropy coding) by timing
wrappers around those methods; one more decode runs under torch.profiler for an operator-level profile.

Rates: JPEG 2000 is asked for the target bpp directly; the HEVC QP and the compass and single-layer qualities
are searched on the main image (when the weights are trained) and reused for the large image.
The large image is the main image upscaled 2x by `resample.resize` (antialiased bicubic) and mirror-tiled to
the requested size (3840x2160 by default): a 4K frame with photographic detail and no seams.
See docs/performance.md for the method and the results.
"""
from __future__ import annotations

import argparse
import json
import sys

from .. import DEFAULT_MODEL, DEFAULT_SINGLE, argtypes

# `run`'s defaults, and `compass bench`'s
LAYERS, BPP, REPEAT, REPEAT_LARGE, WARMUP, THREADS, LIFF_SIZE = (0.25, 0.5, 1.0), 0.5, 5, 2, 1, 1, 128
LARGE_SIZE = (2160, 3840)  # (height, width)


def add_arguments(p) -> None:
    """`compass bench`'s options (an argparse parser)."""
    p.add_argument("--image", help="test image (default: kodim23 of Kodak under the shared data root)")
    p.add_argument("--model", help=f"scalable model: registered name or weights file (default: {DEFAULT_MODEL} "
                                   "when registered, else random weights of the cpu size)")
    p.add_argument("--single", help=f"single-layer model (default: {DEFAULT_SINGLE} when registered, else random)")
    p.add_argument("--layers", type=argtypes.floats, default=list(LAYERS),
                   help=f"compass layers (default {','.join(f'{f:g}' for f in LAYERS)})")
    p.add_argument("--bpp", type=float, default=BPP, help="rate every codec is set to, searched on the image "
                                                          f"(default {BPP})")
    p.add_argument("--quality", type=float, help="compass and single-layer quality, instead of the rate search")
    p.add_argument("--qp", type=int, help="HEVC QP, instead of the rate search")
    p.add_argument("--repeat", type=int, default=REPEAT, help=f"timed runs per measurement (default {REPEAT})")
    p.add_argument("--repeat-large", type=int, default=REPEAT_LARGE,
                   help=f"timed runs on the large image (default {REPEAT_LARGE})")
    p.add_argument("--warmup", type=int, default=WARMUP, help=f"untimed runs before them (default {WARMUP})")
    p.add_argument("--large", type=argtypes.size_or_none, default=LARGE_SIZE,
                   help="WIDTHxHEIGHT of the large image made from the test image, or none (default "
                        f"{LARGE_SIZE[1]}x{LARGE_SIZE[0]})")
    p.add_argument("--liff-size", type=int, default=LIFF_SIZE,
                   help=f"output side of the LIFF micro-benchmark, 0 to skip it (default {LIFF_SIZE})")
    p.add_argument("--threads", type=argtypes.positive, default=argparse.SUPPRESS,
                   help=f"threads of every codec (default {THREADS})")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    t = p.add_argument_group("training throughput (--train RECIPE instead of the coding benchmark)")
    t.add_argument("--train", metavar="RECIPE", help="time full training steps of RECIPE's stage, in Mpixel/s")
    t.add_argument("--stage", default="base", help="base, liff or joint (default base)")
    t.add_argument("--variants", default="eager,eager-nchw,host-data",
                   help="comma-separated: eager, eager-nchw, host-data, compiled, compiled-nchw "
                        "(default eager,eager-nchw,host-data)")
    t.add_argument("--seconds", type=float, default=10.0, help="timed seconds per variant and round (default 10)")
    t.add_argument("--rounds", type=int, default=1, help="variants measured in turn this many times; the median "
                                                         "counts (default 1)")
    t.add_argument("--batch", type=int, help="batch size (default the stage's)")
    t.add_argument("--crop", type=int, help="square crop side (default the stage's)")
    t.add_argument("--data", help="training photo folder (default the recipe's, under the shared data root)")
    t.add_argument("--device", help="cpu or cuda (default cuda when available)")


def main(args) -> int:
    """`compass bench`: the coding benchmark, or with --train the training throughput."""
    if args.train:
        return _bench_train(args)
    from .report import format_report, write_json
    from .run import run

    log = None if args.quiet else (lambda message: print(f"compass bench: {message}", file=sys.stderr))
    results = run(args.image, model=args.model, single=args.single, layers=args.layers, bpp=args.bpp,
                  quality=args.quality, qp=args.qp, repeat=args.repeat, repeat_large=args.repeat_large,
                  warmup=args.warmup, large=args.large, threads=args.threads or THREADS, liff_size=args.liff_size,
                  log=log)
    print(format_report(results))
    if args.json:
        write_json(results, args.json)
    return 0


def _bench_train(args) -> int:
    """`compass bench --train RECIPE`: training throughput of the variants, side by side in this process."""
    import torch

    from ..fileutil import atomic_write_bytes
    from ..train import load_recipe
    from ..train.throughput import compare, format_rows

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    log = None if args.quiet else (lambda row: print(f"compass bench: {row['variant']} done", file=sys.stderr))
    rows = compare(load_recipe(args.train), args.stage, args.variants.split(","), device=args.device, data=args.data,
                   batch=args.batch, crop=args.crop, seconds=args.seconds, rounds=args.rounds, log=log)
    print(format_rows(rows))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(rows, indent=1) + "\n").encode())
    return 0 if any("error" not in r for r in rows) else 1
