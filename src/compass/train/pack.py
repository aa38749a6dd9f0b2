"""Pack random crops of the training photos into a small folder, for a remote machine that only takes a few
tens of MiB (the device lease carries at most 64 MiB with the repository).

Crops are drawn from the training split only (the recipe's validation photos are left out), in proportion to
each photo's area, and stored as JPEG quality 95 without chroma subsampling (about 3-4 bits per pixel): far
finer than anything the codec keeps at its rates, and the BSDS500 part of the set is JPEG already.

    python -m compass.train.pack OUT_DIR [--count 900] [--crop 256] [--recipe cpu]
    python -m compass.train.pack .gpu-data --window K --count 220 --crop 320 --recipe paper-gpu

`--window K` packs GPU window K's share instead (compass.train.window): the training photos in one fixed
shuffled order, `count` of them from position K * count on (wrapping), one crop each at a place drawn with
seed K. Consecutive windows so cycle through the whole training split rather than seeing the same crops again.
Either way a `pack.json` records what was packed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..paths import data_dir
from . import load_recipe
from .data import list_images, split


def pack(src: Path, out: Path, count: int, crop: int, val_count: int, seed: int = 0, quality: int = 95) -> int:
    """Write `count` crops of crop x crop from the training split of `src` into `out`; returns bytes written."""
    train, _ = split(list_images(src), val_count)
    sizes = []
    for f in train:
        with Image.open(f) as im:
            sizes.append(im.size)
    area = np.array([w * h for w, h in sizes], np.float64)
    rng = np.random.default_rng(seed)
    picks = np.bincount(rng.choice(len(train), count, p=area / area.sum()), minlength=len(train))
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f, n, (w, h) in zip(train, picks, sizes):
        if n == 0:
            continue
        with Image.open(f) as im:
            im = im.convert("RGB")
            for i in range(n):
                cw, ch = min(crop, w), min(crop, h)
                x, y = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
                path = out / f"{f.stem}_{i}.jpg"
                im.crop((x, y, x + cw, y + ch)).save(path, quality=quality, subsampling=0)
                total += path.stat().st_size
    return total


def pack_window(src: Path, out: Path, window: int, count: int, crop: int, val_count: int, quality: int = 95) -> int:
    """Write window `window`'s `count` crops (one per photo, see the module docstring); returns bytes written."""
    train, _ = split(list_images(src), val_count)
    order = np.random.default_rng(0).permutation(len(train))
    picks = [train[order[(window * count + i) % len(train)]] for i in range(min(count, len(train)))]
    rng = np.random.default_rng(window)
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for f in picks:
        with Image.open(f) as im:
            im = im.convert("RGB")
            cw, ch = min(crop, im.width), min(crop, im.height)
            x, y = int(rng.integers(im.width - cw + 1)), int(rng.integers(im.height - ch + 1))
            path = out / f"{f.stem}.jpg"
            im.crop((x, y, x + cw, y + ch)).save(path, quality=quality, subsampling=0)
            total += path.stat().st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m compass.train.pack", description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", help="training photo folder (default: the recipe's, under the shared data root)")
    ap.add_argument("--count", type=int, default=900)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--recipe", default="cpu", help="whose validation split to leave out")
    ap.add_argument("--window", type=int, help="pack GPU window K's share of the training photos")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    src = Path(args.data) if args.data else data_dir(recipe["data"]["train"])
    if args.window is None:
        total = pack(src, args.out, args.count, args.crop, recipe["data"]["val_count"])
    else:
        total = pack_window(src, args.out, args.window, args.count, args.crop, recipe["data"]["val_count"])
    info = {"window": args.window, "count": args.count, "crop": args.crop, "quality": 95, "subsampling": "4:4:4",
            "recipe": recipe["name"], "mib": round(total / 2**20, 2)}
    (args.out / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"{args.count} crops, {total / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
