"""BD-rate of one scalable model against another on the same images, from two `compass eval` results.

    python -m compass.evaluate.compare results/kodak-cpu-lite/results.json results/kodak/results.json

Each file comes from `compass eval --model NAME --methods none --out results/kodak-NAME` (compass alone: about
half an hour on 2 cores as two `--threads 1 ... --shard I/2` processes, then once without --shard to assemble).
The first file's compass curves are the test, the second's the anchor (BD-rate < 0: the test needs fewer bits).
Per layer configuration and per layer (accumulated bits over that layer's pixels, mean over the images per
rate point, as in the evaluation report). Both evaluations must have run on the same images.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .bdrate import bd_psnr, bd_rate


def compare(test: dict, anchor: dict, method: str = "compass") -> list[dict]:
    """Rows {config, layer, bd_rate, bd_psnr} for every configuration both results have."""
    if test["setup"]["images"] != anchor["setup"]["images"]:
        raise ValueError("the two evaluations ran on different images")
    t, a = test["summary"]["curves"][method], anchor["summary"]["curves"][method]
    rows = []
    for config in sorted(set(t) & set(a)):
        for layer in sorted(set(t[config]) & set(a[config]), key=int):
            ct, ca = t[config][layer], a[config][layer]
            rows.append({"config": config, "layer": int(layer),
                         "bd_rate": bd_rate(ct["bpp"], ct["psnr"], ca["bpp"], ca["psnr"]),
                         "bd_psnr": bd_psnr(ct["bpp"], ct["psnr"], ca["bpp"], ca["psnr"])})
    return rows


def _model(results: dict) -> str:
    m = results["setup"]["models"].get("compass", {})
    return f"{m.get('name', '?')} ({str(m.get('sha256', ''))[:12]})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m compass.evaluate.compare", description=__doc__.splitlines()[0])
    p.add_argument("test", type=Path)
    p.add_argument("anchor", type=Path)
    a = p.parse_args(argv)
    test, anchor = (json.loads(f.read_text()) for f in (a.test, a.anchor))
    print(f"test {_model(test)} against anchor {_model(anchor)}, {len(test['setup']['images'])} images\n")
    print("| configuration | layer | BD-rate | BD-PSNR |\n|---|---|---|---|")
    for r in compare(test, anchor):
        print(f"| {r['config']} | {r['layer']} | {r['bd_rate']:+.1f}% | {r['bd_psnr']:+.2f} dB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
