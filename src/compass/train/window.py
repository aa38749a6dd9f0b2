"""GPU training windows: one call of about ten minutes on a lent GPU continues a recipe's committed checkpoint.

    # on the GPU machine (scripts/gpu_window.sh wraps this), with the repository and a crop pack carried:
    python -m compass.train.window run paper-gpu --stage base --minutes 8 --data .gpu-data --out OUT
    # back here: validate on the held-out photos and make it the checkpoint the next window continues; commit
    python -m compass.train.window import OUT

`run` measures the throughput variants briefly (`--probe-seconds`, `throughput.compare`) and trains with the
fastest, from `checkpoints/<recipe>/<stage>.pt` (a fresh optimizer with the recipe's warm-up) or from scratch
when there is none yet, until the time budget is spent. It writes at most 6 files, each under the 16 MiB a call
may return: the slim checkpoint (fp16 parameters, no optimizer state), the log, the learning curves, the probe's
numbers and `window.json`. A training run that fails after it started (a compiler error on a new shape, say)
is resumed once from its last checkpoint (at most a minute old) without compilation.

`import` validates that checkpoint on the recipe's 16 held-out photos (the run validated on a split of the
carried crops, which differs between windows), then replaces `checkpoints/<recipe>/<stage>.pt`, appends the
window's log to `<stage>-log.csv` with steps and time counted across windows, and its record (steps, pixels,
throughput, held-out numbers, sha256) to `windows.json`, and plots held-out PSNR against pixels seen.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
import traceback
from pathlib import Path

import torch

from ..models import load_checkpoint
from ..paths import REPO_ROOT
from ..weights import half_state, sha256_file
from .config import load_recipe
from .data import list_images, split, validation_crops
from .loop import LOG_FIELDS, NonFiniteLoss, log_row, plot_log, resolve_data, save_atomic, train
from .stages import make_stage
from .throughput import best, compare, variant_recipe

CHECKPOINTS = REPO_ROOT / "checkpoints"
RETURN_LIMIT = 16 * 2**20  # bytes per file a device call brings back
CARRY_LIMIT = 64 * 2**20  # bytes a device call carries: the working tree and the carried folders
EXPORT_MARGIN_S = 25.0  # of the window, kept for the slim checkpoint and the files after training


def committed(recipe_name: str, stage: str, root: Path = CHECKPOINTS) -> Path:
    return root / recipe_name / f"{stage}.pt"


def bare_stage(ck: dict, device: torch.device = torch.device("cpu")):
    """The checkpoint's stage with its modules built and loaded from it; a joint checkpoint without its frozen
    base (a slim one) gets the base from its `base_from` (a path relative to the repository root)."""
    cfg = {**ck["stage_config"], "residual_from": None, "liff_from": None}
    if "base" in ck["modules"] or ck["stage"] != "joint":
        cfg["base_from"] = None
    recipe = {**ck["recipe"], "train": {**ck["recipe"]["train"], "compile": False}}
    stage = make_stage(ck["stage"], recipe, cfg, device)
    for name, m in stage.modules().items():
        if name in ck["modules"]:
            m.load_state_dict(ck["modules"][name])
    return stage


def slim(ck: dict) -> dict:
    """The checkpoint without optimizer state, parameters in fp16 (buffers such as the entropy models' tables
    and targets as they are), and a joint stage's frozen base left out (it is the base stage's checkpoint)."""
    stage = bare_stage(ck)
    frozen = getattr(stage, "frozen", ())
    modules = {name: half_state(m) for name, m in stage.modules().items() if name not in frozen}
    return {**ck, "modules": modules, "optimizer": None, "aux_optimizer": None}


def run(recipe_name: str, stage: str, minutes: float, data: str, out: Path, *, probe_seconds: float = 8.0,
        variants: tuple[str, ...] = ("eager", "compiled"), init: str | None = None, overrides: tuple[str, ...] = (),
        run_dir: Path | None = None, checkpoints: Path = CHECKPOINTS, margin_s: float = EXPORT_MARGIN_S) -> dict:
    """Train one window of `minutes` (everything included) and write what comes back into `out`.
    `overrides`: "stages.base.batch=2"-style settings (TOML values) applied to the recipe, for a CPU dry run."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    if init is None and committed(recipe["name"], stage, checkpoints).exists():
        init = str(committed(recipe["name"], stage, checkpoints))
    probe, chosen = [], variants[0]
    if probe_seconds > 0 and len(variants) > 1:
        probe = compare(recipe, stage, list(variants), data=data, seconds=probe_seconds,
                        log=lambda r: print("probe", json.dumps(r), flush=True))
        fastest = best(probe, minutes * 60 - (time.monotonic() - start) - margin_s)
        chosen = fastest["variant"] if fastest else variants[0]
    recipe = variant_recipe(recipe, chosen)
    print(f"window: {recipe['name']} {stage} from {init or 'scratch'}, variant {chosen}", flush=True)
    run_dir = run_dir or Path("runs") / recipe["name"] / f"{stage}-window"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    left = lambda: minutes * 60 - (time.monotonic() - start) - margin_s  # noqa: E731
    failure = None
    try:
        ck = train(recipe, stage, run_dir, data=data, init=init, progress=False, time_budget=left())
    except Exception as e:  # noqa: BLE001 - run again once below, without compilation, and reported in window.json
        failure = traceback.format_exc()
        print(failure, flush=True)
        if left() < 2 * margin_s:
            raise
        recipe["train"]["compile"] = False
        if isinstance(e, NonFiniteLoss):  # diverged: go on from the last good checkpoint at half the lr
            cfg = recipe["stages"][stage]
            cfg.update({k: cfg[k] / 2 for k in ("lr", "lr_final") if k in cfg})
        resume = (run_dir / "checkpoint.pt").exists()
        if not resume:  # failed before its first checkpoint: start over, with a fresh log
            shutil.rmtree(run_dir)
        try:
            ck = train(recipe, stage, run_dir, data=data, init=None if resume else init, resume=resume,
                       progress=False, time_budget=left())
        except Exception:  # noqa: BLE001 - what the window trained until then still comes back
            failure += traceback.format_exc()
            print(failure, flush=True)
            if not (run_dir / "checkpoint.pt").exists():
                raise
            ck = load_checkpoint(run_dir / "checkpoint.pt")
    small = slim(ck)
    save_atomic(small, out / f"{stage}.pt")
    for name in ("log.csv", "curves.png"):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out / name)
    cfg = ck["stage_config"]
    summary = {"recipe": recipe["name"], "stage": stage, "device": ck.get("device"), "init": init,
               "variant": chosen, "probe": probe, "steps": ck["step"], "train_s": round(ck["elapsed_s"], 1),
               "batch": cfg["batch"], "crop": cfg["crop"],
               "mpix_per_s": round(ck["step"] * cfg["batch"] * cfg["crop"] ** 2 / max(ck["elapsed_s"], 1e-9) / 1e6, 1),
               "data": _pack_info(data), "failure": failure, "window_s": round(time.monotonic() - start, 1)}
    (out / "window.json").write_text(json.dumps(summary, indent=1))
    for f in out.iterdir():
        if f.stat().st_size > RETURN_LIMIT:
            raise RuntimeError(f"{f} is {f.stat().st_size / 2**20:.1f} MiB: over what a call brings back")
    return summary


def carried_bytes(carry: list[str], repo: Path = REPO_ROOT) -> dict:
    """What a device call would carry: git's tracked and untracked-not-ignored files, and the `carry` folders."""
    import subprocess

    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.split(b"\0")
    tree = sum((repo / f.decode()).stat().st_size for f in listed if f and (repo / f.decode()).is_file())
    extra = {c: sum(f.stat().st_size for f in (repo / c).rglob("*") if f.is_file()) for c in carry}
    return {"tree": tree, **extra, "total": tree + sum(extra.values()), "limit": CARRY_LIMIT}


def apply_overrides(recipe: dict, overrides: tuple[str, ...]) -> dict:
    """Set dotted keys of a recipe from "a.b.c=VALUE" strings; VALUE is read as TOML (2, 1e-4, true, [1, 2])."""
    import tomllib

    for item in overrides:
        key, _, text = item.partition("=")
        *path, last = key.split(".")
        node = recipe
        for k in path:
            node = node.setdefault(k, {})
        node[last] = tomllib.loads(f"v = {text}")["v"]
    return recipe


def _pack_info(data: str) -> dict:
    """The crop pack's own description (compass.train.pack writes pack.json), or its file count."""
    meta = Path(data) / "pack.json"
    if meta.exists():
        return json.loads(meta.read_text())
    return {"folder": Path(data).name, "files": len(list_images(data))}


def held_out_validation(ck: dict, data: str | None = None) -> list[dict]:
    """The stage's own validation on the recipe's held-out photos (the usual 16, 256x256 centre crops), on CPU;
    `data`: the training photo folder when not the recipe's."""
    recipe = ck["recipe"]
    _, files = split(list_images(resolve_data(recipe, data)), recipe["data"]["val_count"])
    return bare_stage(ck).validate(validation_crops(files, recipe["data"]["val_crop"]))


def import_window(out: Path, *, checkpoints: Path = CHECKPOINTS, data: str | None = None) -> dict:
    """Make the window in `out` the committed checkpoint its recipe's next window continues. Returns its record."""
    summary = json.loads((out / "window.json").read_text())
    stage = summary["stage"]
    ck = load_checkpoint(out / f"{stage}.pt")
    folder = checkpoints / ck["recipe"]["name"]
    folder.mkdir(parents=True, exist_ok=True)
    windows_path = folder / "windows.json"
    windows = json.loads(windows_path.read_text()) if windows_path.exists() else []
    earlier = [w for w in windows if w["stage"] == stage]
    prior_steps = sum(w["steps"] for w in earlier)
    prior_s = sum(w["train_s"] for w in earlier)
    prior_pixels = sum(w["pixels"] for w in earlier)
    rows = held_out_validation(ck, data)
    target = committed(ck["recipe"]["name"], stage, checkpoints)
    ck["init_from"] = f"{checkpoints.name}/{target.parent.name}/{target.name}" if summary["init"] else None
    save_atomic(ck, target)
    log = folder / f"{stage}-log.csv"
    new = not log.exists()
    with open(out / "log.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    with open(log, "a", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in lines:
            if r["kind"] == "val":
                r["setting"] = f"packed {r['setting']}"
            w.writerow({**r, "step": int(r["step"]) + prior_steps, "elapsed_s": round(float(r["elapsed_s"]) + prior_s, 1)})
        for r in rows:
            w.writerow(log_row(prior_steps + ck["step"], prior_s + ck["elapsed_s"], "val", "", r))
    plot_log(log, folder / f"{stage}-curves.png")
    pixels = ck["step"] * summary["batch"] * summary["crop"] ** 2  # odd-size batches are a little smaller
    record = {"window": len(windows) + 1, "stage": stage, "device": summary["device"], "variant": summary["variant"],
              "steps": ck["step"], "train_s": summary["train_s"], "mpix_per_s": summary["mpix_per_s"],
              "pixels": pixels, "total_steps": prior_steps + ck["step"], "total_pixels": prior_pixels + pixels,
              "data": summary["data"], "sha256": sha256_file(target),
              "held_out": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "loss"}
                           for r in rows]}
    windows.append(record)
    windows_path.write_text(json.dumps(windows, indent=1) + "\n")
    plot_windows(windows, stage, folder / f"{stage}-windows.png")
    return record


def plot_windows(windows: list[dict], stage: str, path: Path) -> None:
    """Held-out PSNR (and bpp) per setting against the pixels seen, one point per window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [w for w in windows if w["stage"] == stage]
    settings = [r["setting"] for r in rows[-1]["held_out"]]
    coded = any(r.get("bpp") not in ("", None) for r in rows[-1]["held_out"])
    fig, axes = plt.subplots(1, 2 if coded else 1, figsize=(11 if coded else 6, 4), squeeze=False)
    for s in settings:
        x = [w["total_pixels"] / 1e9 for w in rows]
        vals = [next(r for r in w["held_out"] if r["setting"] == s) for w in rows]
        axes[0][0].plot(x, [v["psnr"] for v in vals], marker="o", label=s)
        if coded:
            axes[0][1].plot(x, [v["bpp"] for v in vals], marker="o", label=s)
    axes[0][0].set(title=f"{stage}: held-out PSNR (dB)", xlabel="Gpixels seen")
    if coded:
        axes[0][1].set(title="held-out bpp (estimated)", xlabel="Gpixels seen")
    for ax in axes[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compass.train.window", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one window (on the GPU machine)")
    r.add_argument("recipe")
    r.add_argument("--stage", default="base")
    r.add_argument("--minutes", type=float, required=True, help="the whole window, probe and export included")
    r.add_argument("--data", required=True, help="the carried crop pack (compass.train.pack --window K)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--probe-seconds", type=float, default=8.0, help="per variant; 0 skips the probe")
    r.add_argument("--variants", default="eager,compiled", help="throughput variants to probe; the first without a probe")
    r.add_argument("--init", help="start here instead of the committed checkpoint")
    r.add_argument("--run-dir", type=Path, help="the training run's folder (default runs/RECIPE/STAGE-window)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. stages.base.batch=2 (a CPU dry run)")
    c = sub.add_parser("carry", help="the bytes a device call would carry (working tree + folders), against 64 MiB")
    c.add_argument("folders", nargs="*", default=[".gpu-data", ".whl"])
    i = sub.add_parser("import", help="validate a window's checkpoint here and make it the committed one")
    i.add_argument("out", type=Path)
    i.add_argument("--data", help="the training photo folder (default: the recipe's, under the shared data root)")
    args = ap.parse_args(argv)
    if args.command == "carry":
        sizes = carried_bytes(args.folders)
        print("  ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in sizes.items()))
        return 0 if sizes["total"] <= sizes["limit"] else 1
    if args.command == "run":
        summary = run(args.recipe, args.stage, args.minutes, args.data, args.out, probe_seconds=args.probe_seconds,
                      variants=tuple(args.variants.split(",")), init=args.init, overrides=tuple(args.overrides),
                      run_dir=args.run_dir)
        print(json.dumps({k: v for k, v in summary.items() if k != "probe"}))
    else:
        print(json.dumps(import_window(args.out, data=args.data), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
