"""Weights files of the GPU-continued joint stages in ../shared/checkpoints (made on one H200 from the shipped
compass-cpu-fast and compass-cpu-mini), to evaluate beside the shipped models. Not shipped weights.

    python experiments/gpu_joint_h200/export_h200.py [--out runs/gpu-joint-h200]

Each file is the shipped model with the checkpoint's residual codec and LIFF (the base, compass-cpu-single, is
frozen in both and referred to, as in the shipped files), named NAME-h200.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from compass.models import load, load_checkpoint, modules_of
from compass.paths import shared_dir
from compass.weights import export, load_weights

MODELS = ("compass-cpu-mini", "compass-cpu-fast")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/gpu-joint-h200"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        model = load(name).model
        ck = load_checkpoint(shared_dir() / "checkpoints" / f"{name}-joint-h200.pt")
        for part in ("residual", "liff"):
            getattr(model, part).load_state_dict(ck["modules"][part])
        sha = export(modules_of(model), load_weights(name)[0]["config"], f"{name}-h200", args.out / f"{name}-h200.pt",
                     info={"note": f"GPU-continued joint stage of {name}, ../shared/checkpoints; not shipped"},
                     frozen=("base",), base_ref="compass-cpu-single")
        print(f"{args.out / f'{name}-h200.pt'}  sha256 {sha}")


if __name__ == "__main__":
    main()
