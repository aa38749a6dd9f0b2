"""Command-line front end (argparse only; everything it does is callable from Python)."""
from __future__ import annotations

import argparse
import sys


def _train(args) -> int:
    from .train import load_recipe, train
    from .train.loop import NonFiniteLoss

    recipe = load_recipe(args.recipe)
    run_dir = args.run_dir or f"runs/{recipe['name']}/{args.stage}"
    try:
        train(recipe, args.stage, run_dir, resume=args.resume, steps=args.steps, data=args.data,
              threads=args.threads)
    except NonFiniteLoss as e:
        print(f"compass train: {e}", file=sys.stderr)
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compass", description="Neural spatially scalable image codec (COMPASS).")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one stage of a recipe (cpu, paper, or a TOML file)")
    t.add_argument("recipe")
    t.add_argument("--stage", default="base")
    t.add_argument("--run-dir")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt")
    t.add_argument("--steps", type=int, help="override the stage's step count")
    t.add_argument("--data", help="training image folder (default: the recipe's, under the shared data root)")
    t.add_argument("--threads", type=int, help="torch CPU threads")
    t.set_defaults(func=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
