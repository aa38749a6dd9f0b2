"""`compass eval`: rate-distortion points of COMPASS and every baseline on a test set (`run.evaluate`), with
its building blocks: quality metrics, Bjontegaard deltas and classical baseline codecs."""
from __future__ import annotations

from pathlib import Path

from .. import DEFAULT_MODEL, DEFAULT_SINGLE, argtypes

QUICK_IMAGES = 3  # images of a --quick run


def add_arguments(p) -> None:
    """`compass eval`'s options (an argparse parser)."""
    p.add_argument("--data", help="folder of test images (default: Kodak under the shared data root)")
    p.add_argument("--out", help="output folder, its cache inside (default: results/NAME, NAME the data folder's "
                                 "name, or results/NAME-quick with --quick; both cache in results/NAME/cache)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES} images and 3 rate points per method")
    p.add_argument("--model", default=DEFAULT_MODEL, help="scalable model: registered name or weights file")
    p.add_argument("--single", default=DEFAULT_SINGLE,
                   help="single-layer model for simulcast and single-layer: registered name or weights file")
    p.add_argument("--methods", nargs="+", metavar="METHOD",
                   help="baselines to run (compass always runs): predicted ablation simulcast single jpeg2000 "
                        "jpeg2000-simulcast hevc-simulcast hevc-single (default: all; none: compass alone, "
                        "e.g. to compare two models with compass.evaluate.compare)")
    p.add_argument("--images", type=int, help=f"first N images (default: all; {QUICK_IMAGES} with --quick)")
    p.add_argument("--configs", nargs="+", metavar="CONFIG",
                   help="layer configurations to run, e.g. 2L-2.0x 3L-4.0x (default: the paper's ten)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--shard", type=argtypes.shard, metavar="I/N",
                   help="only fill the cache with share I of N (0-based), e.g. two processes with --threads 1 "
                        "and --shard 0/2, 1/2; then run without --shard to write the results")


def main(args) -> int:
    """`compass eval`: evaluate, write the report beside the results, print the BD-rate table."""
    from ..paths import data_dir
    from .report import bd_table
    from .run import evaluate

    data = Path(args.data) if args.data else data_dir("kodak")
    root = Path("results") / data.name
    if args.out:
        out, cache = Path(args.out), Path(args.out) / "cache"
    else:  # a quick run writes beside the full results, sharing their cache, so it never replaces them
        out, cache = (root.with_name(f"{data.name}-quick") if args.quick else root), root / "cache"
    if args.methods and "none" in args.methods and args.methods != ["none"]:
        raise ValueError("--methods none runs compass alone and takes no other method")
    methods = [] if args.methods == ["none"] else args.methods
    results = evaluate(data, out, quick=args.quick, model=args.model, single=args.single, methods=methods,
                       images=args.images, configs=args.configs, cache=cache, progress=not args.quiet,
                       shard=args.shard)
    if args.shard:
        print(f"shard {args.shard[0]}/{args.shard[1]}: {results['stats']}; a run without --shard assembles")
        return 0
    print(f"BD-rate of COMPASS (%, top layer; n/a: see the report)\n{bd_table(results, paper=False)}")
    print(f"wrote {out / 'report.md'}, results.json, points.jsonl.gz and plots")
    return 0
