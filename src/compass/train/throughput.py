"""Training throughput: full steps (forward, backward, Adam, quantiles) of a recipe's stage, in Mpixel/s.

The step is the training loop's own (`loop.optimize`) on the loop's own sampler, so a number here is what a
run gets. Variants override the recipe's `train` options (`compile`, `channels_last`) and its data placement
(`on_device`), so layouts and compilation are compared side by side in one process on one machine:

    compass bench --train paper-gpu --stage base --seconds 10 --variants eager,compiled
"""
from __future__ import annotations

import copy
import time
import torch

from .config import stage_config
from .data import list_images, make_sampler
from .loop import device_name, make_optimizers, optimize, resolve_data, setup_device
from .stages import make_stage

VARIANTS = {  # crops cut on the training device unless "host-data"; channels_last unless "-nchw"
    "eager": {"on_device": True},
    "eager-nchw": {"on_device": True, "channels_last": False},
    "host-data": {"on_device": False},
    "compiled": {"on_device": True, "compile": True},
    "compiled-nchw": {"on_device": True, "compile": True, "channels_last": False},
}


def variant_recipe(recipe: dict, name: str) -> dict:
    """`recipe` with a variant's options applied (`on_device` goes to `data`, the rest to `train`)."""
    try:
        options = VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}") from None
    out = copy.deepcopy(recipe)
    for key, value in options.items():
        out["data" if key == "on_device" else "train"][key] = value
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(recipe: dict, stage_name: str, *, device: torch.device | str | None = None, data: str | None = None,
            batch: int | None = None, crop: int | None = None, seconds: float = 10.0, warmup: int = 5,
            max_steps: int | None = None, files: int = 200) -> dict:
    """Steps of `stage_name` with fresh weights (modules are not loaded from `*_from`) at the stage's batch and
    crop (or the ones given), square crops only so every step has the same shape. `warmup` steps first
    (autotuning, compilation: timed apart as `warmup_s`), then steps for `seconds` (or `max_steps`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    setup_device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cfg = stage_config(recipe, stage_name)
    cfg.update(base_from=None, residual_from=None, liff_from=None)
    cfg["batch"], cfg["crop"] = batch or cfg["batch"], crop or cfg["crop"]
    odd = [s for s in cfg.get("odd_sizes", []) if max(s) <= cfg["crop"]] if cfg.get("odd_fraction", 0) > 0 else []
    cfg["odd_fraction"] = 0.0
    torch.manual_seed(0)
    stage = make_stage(stage_name, recipe, cfg, device)
    opt, aux_opt = make_optimizers(stage, device, 1e-5, 1e-5)
    photos = list_images(resolve_data(recipe, data))[:files]
    sampler = make_sampler(photos, cfg["crop"], 0, device, recipe["data"].get("on_device", False))
    gen = torch.Generator(device=device).manual_seed(1)
    t0 = time.perf_counter()
    for size in odd:  # every shape training will see runs once (a compiled variant that fails on one fails here)
        cfg.update(odd_fraction=1.0, odd_sizes=[size])
        optimize(stage, sampler, gen, opt, aux_opt, recipe["train"]["clip"])
    cfg.update(odd_fraction=0.0)
    for _ in range(warmup):
        loss, _ = optimize(stage, sampler, gen, opt, aux_opt, recipe["train"]["clip"])
    _sync(device)
    t1 = time.perf_counter()
    steps = 0
    while (time.perf_counter() - t1 < seconds) and (max_steps is None or steps < max_steps):
        loss, _ = optimize(stage, sampler, gen, opt, aux_opt, recipe["train"]["clip"])
        steps += 1
        if device.type == "cuda" and steps % 10 == 0:  # the host runs ahead of the GPU: time what it finished
            _sync(device)
    _sync(device)
    dt = (time.perf_counter() - t1) / max(steps, 1)
    row = {"recipe": recipe["name"], "stage": stage_name, "device": device_name(device), "batch": cfg["batch"],
           "crop": cfg["crop"], "compile": bool(recipe["train"].get("compile", False)),
           "channels_last": bool(recipe["train"].get("channels_last", True)),
           "on_device": bool(recipe["data"].get("on_device", False)), "warmup_s": round(t1 - t0, 2),
           "steps": steps, "s_per_step": round(dt, 5), "mpix_per_s": mpix_per_s(cfg["batch"], cfg["crop"], dt),
           "loss": round(float(loss), 4), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def mpix_per_s(batch: int, crop: int, s_per_step: float) -> float:
    """Training pixels per second in millions, to 4 significant digits (a tiny test step stays above 0)."""
    return float(f"{batch * crop ** 2 / s_per_step / 1e6:.4g}")


def compare(recipe: dict, stage_name: str, variants: list[str], *, rounds: int = 1, log=None, **kwargs) -> list[dict]:
    """`measure` for each variant (same process, same data), `rounds` times in turn (ABCABC: a machine that
    slows down or speeds up meanwhile touches every variant alike); each row has the median step time of its
    rounds. A variant that fails is reported with its error instead of stopping the others (a compiler that
    cannot handle the step, say)."""
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name in variants:
            if runs[name] and "error" in runs[name][0]:
                continue
            try:
                row = {"variant": name, **measure(variant_recipe(recipe, name), stage_name, **kwargs)}
            except Exception as e:  # noqa: BLE001 - reported, and the next variant still runs
                row = {"variant": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            runs[name].append(row)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    rows = []
    for name in variants:
        row = dict(runs[name][0])
        if "error" not in row:
            times = sorted(r["s_per_step"] for r in runs[name])
            row["s_per_step"] = times[len(times) // 2]
            row["mpix_per_s"] = mpix_per_s(row["batch"], row["crop"], row["s_per_step"])
            row["rounds"] = [r["s_per_step"] for r in runs[name]]
        if log:
            log(row)
        rows.append(row)
    return rows


def best(rows: list[dict], seconds: float | None = None) -> dict | None:
    """The variant that ran and trains the most pixels: per second, or within `seconds` when its start-up
    (warmup_s: autotuning, compilation) is paid again in a new run (caches make it cheaper: half is counted)."""
    ok = [r for r in rows if "error" not in r]
    if seconds is None:
        return max(ok, key=lambda r: r["mpix_per_s"]) if ok else None
    return max(ok, key=lambda r: r["mpix_per_s"] * max(0.0, seconds - 0.5 * r["warmup_s"])) if ok else None


def format_rows(rows: list[dict]) -> str:
    """A table of `compare`'s rows: Mpixel/s and its ratio to the first variant, start-up, memory."""
    base = next((r["mpix_per_s"] for r in rows if "error" not in r), None)
    lines = [f"{'variant':<14} {'Mpix/s':>8} {'ratio':>6} {'s/step':>8} {'start s':>8} {'GiB':>6}  setup"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['variant']:<14} failed: {r['error']}")
            continue
        lines.append(f"{r['variant']:<14} {r['mpix_per_s']:>8.2f} {r['mpix_per_s'] / base:>6.2f} {r['s_per_step']:>8.4f} "
                     f"{r['warmup_s']:>8.1f} {r.get('peak_gib', 0):>6.2f}  {r['recipe']} {r['stage']}, batch {r['batch']} "
                     f"of {r['crop']}x{r['crop']}, {r['device']}, {r['threads']} threads")
    return "\n".join(lines)
