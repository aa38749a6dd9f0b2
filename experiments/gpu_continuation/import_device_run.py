"""Put what experiments/gpu_continuation/device_train.sh brought back from a GPU lease into runs/, ready for export.

    python experiments/gpu_continuation/import_device_run.py DEVICE_DIR [--base-run runs/cpu-gpu/base] [--init-from SOURCE]

DEVICE_DIR holds base.pt, joint-cpu.pt, joint-lite.pt and logs.tar.gz (slim checkpoints: no optimizer state,
joint ones without their base). Each checkpoint goes to its run folder with its log; a joint checkpoint gets
its base back from base.pt. `--init-from` rewrites where the base stage started (on the lease it was a file
that only existed there). Every stage is then validated on the recipe's held-out photos (the lease validated
on a split of the packed crops, which is not comparable between runs); those rows are appended to the log
with the settings the CPU runs use, the lease's own rows keep theirs prefixed with "packed".
"""
from __future__ import annotations

import argparse
import csv
import tarfile
from pathlib import Path


from compass.train.loop import LOG_FIELDS, log_row, plot_log, save_atomic
from compass.train.window import held_out_validation
from compass.models import load_checkpoint


def relabel_and_append(log: Path, ck: dict, rows: list[dict]) -> None:
    with open(log, newline="") as f:
        old = list(csv.DictReader(f))
    for r in old:
        if r["kind"] == "val":
            r["setting"] = f"packed {r['setting']}"
    old.extend(log_row(ck["step"], ck["elapsed_s"], "val", "", r) for r in rows)
    with open(log, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(old)
    plot_log(log, log.parent / "curves.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device_dir", type=Path)
    ap.add_argument("--base-run", type=Path, default=Path("runs/cpu-gpu/base"),
                    help="run folder for base.pt (its log comes from runs/cpu-gpu/base in the tarball)")
    ap.add_argument("--init-from", help="where the base stage started (a checkpoint path or shipped name)")
    ap.add_argument("--no-joint", action="store_true", help="import base.pt only")
    args = ap.parse_args()
    src = args.device_dir
    with tarfile.open(src / "logs.tar.gz") as tar:
        logs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith("log.csv")}
    base = load_checkpoint(src / "base.pt")
    if args.init_from:
        base["init_from"] = args.init_from
    jobs = [(base, args.base_run, "runs/cpu-gpu/base/log.csv")]
    if not args.no_joint:
        for f, run in (("joint-cpu.pt", "runs/cpu-gpu/joint"), ("joint-lite.pt", "runs/cpu-lite-gpu/joint")):
            ck = load_checkpoint(src / f)
            ck["modules"] = {"base": base["modules"]["base"], **ck["modules"]}
            jobs.append((ck, Path(run), f"{run}/log.csv"))
    for ck, run, log_name in jobs:
        run.mkdir(parents=True, exist_ok=True)
        (run / "log.csv").write_bytes(logs[log_name])
        save_atomic(ck, run / "checkpoint.pt")
        rows = held_out_validation(ck)
        relabel_and_append(run / "log.csv", ck, rows)
        print(run, ck["stage"], ck["step"], [(r["setting"], round(r["bpp"], 4) if r["bpp"] != "" else None,
                                               round(r["psnr"], 3)) for r in rows])


if __name__ == "__main__":
    main()
