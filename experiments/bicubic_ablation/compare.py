"""The ablation against the model it ablates, from one rd.py JSON (experiments/anomalies/rd.py) holding both:
BD-rate / BD-PSNR per layer of a 3-layer file (0.25, 0.5, 1) of TEST against ANCHOR, and of each against
simulcast with the single-layer codec.

    python experiments/bicubic_ablation/compare.py RD.json TEST ANCHOR
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "anomalies"))
from report import bd, curves  # noqa: E402


def main(path: str, test: str, anchor: str) -> None:
    res = json.loads(Path(path).read_text())
    _, simul, files = curves(res)
    t, a = files[test]["compass"], files[anchor]["compass"]
    print(f"{len(res['images'])} images, q = {res['qs']}; accumulated bits of each layer over its pixels\n")
    print(f"| layer | {test} vs {anchor} | {test} vs simulcast | {anchor} vs simulcast |\n|---|---|---|---|")
    for k in (1, 2):
        (r, p), (rt, _), (ra, _) = bd(t[k], a[k]), bd(t[k], simul[k]), bd(a[k], simul[k])
        print(f"| {k} | {r:+.1f}% ({p:+.2f} dB) | {rt:+.1f}% | {ra:+.1f}% |")


if __name__ == "__main__":
    main(*sys.argv[1:4])
