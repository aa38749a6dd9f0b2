"""Export trained checkpoints as shipped weights (fp16, exact tables) and record them in the manifest.

    python -m compass.train.export --base runs/cpu/base/checkpoint.pt --joint runs/cpu/joint/checkpoint.pt
    python -m compass.train.export --joint runs/cpu-lite/joint/checkpoint.pt   # base_from: shipped weights

writes `compass-<recipe>-single.pt` (the single-layer codec) and `compass-<recipe>.pt` (the scalable model),
with sha256, config, and the training record (`compass.provenance`: every stage with its steps, time and last
validation numbers, each naming its parents) in `pretrained/manifest.json`.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from ..fileutil import atomic_write_bytes
from ..models import from_checkpoint, load_checkpoint, modules_of
from ..provenance import flatten
from ..weights import PRETRAINED_DIR, export, manifest


def last_validation(run_dir: Path) -> list[dict]:
    log = run_dir / "log.csv"
    if not log.exists():
        return []
    with open(log, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "val"]
    if not rows:
        return []
    last = rows[-1]["step"]
    return [{"setting": r.get("setting", r.get("q")), "bpp_estimated": float(r["bpp"]) if r["bpp"] else None,
             "psnr": float(r["psnr"])} for r in rows if r["step"] == last]


def source_record(source: str, ck: dict | None = None, key: str = "init_from") -> dict:
    """Where a module started: shipped weights with their training record (as the checkpoint kept it when its
    stage started; older checkpoints: as the manifest has it now), or a checkpoint with its stage's record (so a
    chain of runs is recorded back to its first)."""
    kept = (ck or {}).get("sources", {}).get(key)
    if kept is not None and kept["source"] == source:
        return kept
    path = Path(source)
    if source not in manifest()["models"] and path.is_file():
        return {"source": source, "stage": stage_info(load_checkpoint(path), path)}
    return {"source": source, "training": manifest()["models"].get(source, {}).get("training")}


def stage_info(ck: dict, path: Path) -> dict:
    """A stage's record, its parents' records inside it (`provenance.flatten` lays them out flat, each once);
    modules started from shipped weights (`--init`, or a joint stage's `base_from` / `residual_from`) carry those
    weights' training record along."""
    source, cfg = ck.get("init_from"), ck["stage_config"]
    info = {"stage": ck["stage"], "steps": ck["step"], "hours": round(ck["elapsed_s"] / 3600, 2),
            "init_from": source_record(source, ck) if source else None, "config": cfg,
            "validation": last_validation(path.parent)}
    shipped = manifest()["models"]
    warm = {k: source_record(cfg[k], ck, k) for k in ("base_from", "residual_from")
            if cfg.get(k) in shipped or k in ck.get("sources", {})}
    if warm:
        info["shipped_sources"] = warm
    return info


def _record(name: str, path: Path, sha: str, kind: str, configs: dict, training: dict) -> None:
    """Add or replace `name` in the manifest.json beside the weights file."""
    target = path.parent / "manifest.json"
    man = manifest(target)
    man["models"][name] = {"file": path.name, "sha256": sha, "bytes": path.stat().st_size, "kind": kind,
                           "config": configs, "training": training}
    atomic_write_bytes(target, (json.dumps(man, indent=2, sort_keys=True) + "\n").encode())


def export_checkpoints(base: Path | None, joint: Path | None, out_dir: Path = PRETRAINED_DIR,
                       name: str | None = None, single_name: str | None = None) -> list[str]:
    """Write the single-layer model (from `base`) and the scalable one (from `joint`); either may be None (a
    joint stage whose `base_from` names shipped weights needs no base checkpoint). Returns the names written.

    `name` / `single_name`: the models' names (default compass-RECIPE / compass-RECIPE-single); their training
    records keep the recipe name the checkpoints were trained with.
    """
    if base is None and joint is None:
        raise ValueError("nothing to export: give a base and/or a joint checkpoint")
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = load_checkpoint(base) if base is not None else None
    jk = load_checkpoint(joint) if joint is not None else None
    recipe = (jk or ck)["recipe"]
    data = {"train": recipe["data"]["train"], "val_count": recipe["data"]["val_count"],
            "note": "training photos of ../shared/data/train minus a held-out validation split; never Kodak"}
    names = []
    # every record first: the single-layer export below may replace weights the joint stage's record names
    base_info = stage_info(ck, base) if ck is not None else None
    joint_info = stage_info(jk, joint) if jk is not None else None
    if ck is not None:
        single = single_name or f"compass-{ck['recipe']['name']}-single"
        path = out_dir / f"{single}.pt"
        configs = {"codec": recipe["codec"]}
        training = flatten({"recipe": ck["recipe"]["name"], "data": data, "stages": [base_info]})
        sha = export(modules_of(from_checkpoint(ck, single=True)), configs, single, path, training)
        _record(single, path, sha, "single-layer", configs, training)
        names.append(single)
    if jk is not None:
        name = name or f"compass-{recipe['name']}"
        path = out_dir / f"{name}.pt"
        configs = {"codec": recipe["codec"], "liff": recipe["liff"]}
        stages = [base_info] if base_info is not None else []
        liff_ck = Path(jk["stage_config"].get("liff_from", ""))
        if liff_ck.is_file():
            stages.append(stage_info(load_checkpoint(liff_ck), liff_ck))
        stages.append(joint_info)
        training = flatten({"recipe": recipe["name"], "data": data, "stages": stages})
        modules = modules_of(from_checkpoint(jk))
        if "liff" not in modules:  # a weights file without LIFF reads as a single-layer codec
            raise ValueError(f"{joint} was trained with the bicubic predictor (the ablation): weights files hold "
                             "LIFF models only")
        # a base loaded from shipped weights and frozen is stored bit for bit as shipped; from a shipped
        # single-layer model, as a reference to it
        shipped = manifest()["models"].get(jk["stage_config"].get("base_from"))
        frozen = {"base"} if shipped else set()
        ref = jk["stage_config"]["base_from"] if shipped and shipped["kind"] == "single-layer" else None
        sha = export(modules, configs, name, path, training, frozen, base_ref=ref)
        _record(name, path, sha, "scalable", configs, training)
        names.append(name)
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compass.train.export", description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, help="checkpoint of the base stage (exports the single-layer model)")
    p.add_argument("--joint", type=Path, help="checkpoint of the joint stage (its frozen base is the one shipped)")
    p.add_argument("--out", type=Path, default=PRETRAINED_DIR)
    p.add_argument("--name", help="name of the scalable model (default: compass-RECIPE)")
    p.add_argument("--single-name", help="name of the single-layer model (default: compass-RECIPE-single)")
    args = p.parse_args(argv)
    for n in export_checkpoints(args.base, args.joint, args.out, args.name, args.single_name):
        print(f"exported {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
