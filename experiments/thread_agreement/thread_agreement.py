"""Do files and decodes agree between thread counts? Encode and decode Kodak images in separate processes.

Each of two worker processes (thread counts A and B, fresh interpreters, so nothing is shared) encodes the
images with `Compass.encode` and decodes its own files; then each decodes the OTHER worker's files (a symbol
mismatch would raise `DecodeMismatch` there). The parent compares the files byte for byte and the decoded
layers value by value, and prints a markdown summary (docs/reliability.md, "Determinism").

    python experiments/thread_agreement/thread_agreement.py [--images 4] [--quality 0.5] [--layers 0.25,0.5,1] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from compass import DEFAULT_MODEL


def worker(threads: int, paths: list[str], layers: list[float], quality: float, model: str, out: Path,
           other: Path | None) -> None:
    """Phase 1 (`other` None): encode and self-decode into `out`. Phase 2: decode `other`'s files into `out`."""
    import torch

    torch.set_num_threads(threads)
    from compass.api import Compass
    from compass.imageio import load_image
    from compass.resample import plan_from_fractions

    codec = Compass(model)
    for i, p in enumerate(paths):
        if other is None:
            px = load_image(p).pixels
            data = codec.encode(px, sizes=plan_from_fractions(px.shape[0], px.shape[1], layers), quality=quality)
            (out / f"{i}.cmp").write_bytes(data)
        else:
            data = (other / f"{i}.cmp").read_bytes()
        np.savez(out / f"{i}{'' if other is None else '-cross'}.npz", *codec.decode_all(data))


def _spawn(args, threads: int, out: Path, other: Path | None = None) -> None:
    cmd = [sys.executable, __file__, "--worker", json.dumps(
        {"threads": threads, "paths": args.paths, "layers": args.layers, "quality": args.quality,
         "model": args.model, "out": str(out), "other": str(other) if other else None})]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env)


def _layers(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{k}"] for k in range(len(z.files))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4, help="first N Kodak images (default 4)")
    p.add_argument("--quality", type=float, default=0.5)
    p.add_argument("--layers", default="0.25,0.5,1")
    p.add_argument("--threads", type=int, nargs=2, default=[1, 2])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--data", help="image folder (default: Kodak under the shared data root)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        w = json.loads(args.worker)
        worker(w["threads"], w["paths"], w["layers"], w["quality"], w["model"], Path(w["out"]),
               Path(w["other"]) if w["other"] else None)
        return 0

    from compass.evaluate.run import list_images
    from compass.paths import data_dir

    args.paths = [str(x) for x in list_images(args.data or data_dir("kodak"), args.images)]
    args.layers = [float(x) for x in args.layers.split(",")]
    a, b = args.threads
    with tempfile.TemporaryDirectory() as tmp:
        da, db = Path(tmp, "a"), Path(tmp, "b")
        da.mkdir(), db.mkdir()
        _spawn(args, a, da)
        _spawn(args, b, db)
        _spawn(args, a, da, other=db)  # raises (non-zero exit) on a symbol mismatch
        _spawn(args, b, db, other=da)
        same_files = sum((da / f"{i}.cmp").read_bytes() == (db / f"{i}.cmp").read_bytes()
                         for i in range(len(args.paths)))
        diff, total, worst = {}, {}, 0
        cross_equal = True
        for i in range(len(args.paths)):
            la, lb = _layers(da / f"{i}.npz"), _layers(db / f"{i}.npz")
            cross_equal &= all(np.array_equal(x, y) for x, y in zip(_layers(da / f"{i}-cross.npz"), la))
            cross_equal &= all(np.array_equal(x, y) for x, y in zip(_layers(db / f"{i}-cross.npz"), lb))
            for x, y in zip(la, lb):
                key = f"{x.shape[0]}x{x.shape[1]}"
                d = np.abs(x.astype(np.int16) - y.astype(np.int16))
                diff[key] = diff.get(key, 0) + int((d > 0).sum())
                total[key] = total.get(key, 0) + d.size
                worst = max(worst, int(d.max()))
    print(f"{len(args.paths)} images, model {args.model}, layers {args.layers}, q = {args.quality}, "
          f"threads {a} vs {b}")
    print(f"- files byte-identical: {same_files} of {len(args.paths)}")
    print(f"- cross decodes (each process decoding the other's files): every symbol check passed; "
          f"{'equal' if cross_equal else 'NOT equal'} to what the decoding process made of its own files")
    print(f"- decoded 8-bit values that differ: {sum(diff.values())} of {sum(total.values())}, at most {worst} "
          "level(s): " + ", ".join(f"{diff[k]} of {total[k]} at {k}" for k in diff))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
