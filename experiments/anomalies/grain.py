"""The grain on the demo image's bokeh (docs/prediction.md, "The grain"): 3-layer compass-cpu-mini files at
q = 0.5 (the `compass encode` defaults), with every layer predicted (the paper's coding) and with the default
layer mode (auto), each against a 1-layer file of the single-layer codec at about its size, and what the top
layer looks like when the layer below is not coded (the oracle). High-frequency energy (RMS Laplacian, levels)
over the smooth part of the image; a crop of the smoothest 128x128 window, with its contrast stretched 6x around
the crop's mean in the lower row, to docs/img/grain-kingfisher.png (original | 1-layer | predicted | auto).

    python experiments/anomalies/grain.py [--model compass-cpu-mini] [--out docs/img/grain-kingfisher.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stages  # noqa: E402

from compass import bitstream  # noqa: E402
from compass.api import Compass  # noqa: E402
from compass.pixels import to_tensor  # noqa: E402
from compass.paths import REPO_ROOT  # noqa: E402
from compass.resample import pyramid  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="compass-cpu-mini")
    ap.add_argument("--out", default=str(REPO_ROOT / "docs" / "img" / "grain-kingfisher.png"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = np.array(Image.open(REPO_ROOT / "examples" / "kingfisher.png").convert("RGB"))
    scal, single = Compass(args.model), Compass("compass-cpu-single")
    qs = np.linspace(0, 1, 65)
    sizes = [len(single.encode(x, quality=float(q))) for q in qs]
    t = to_tensor(x)[None] if to_tensor(x).dim() == 3 else to_tensor(x)
    H, W = t.shape[-2:]
    mask = stages.smooth_mask(t)
    rows = [("original", x)]
    for mode in ("predicted", "auto"):
        data = scal.encode(x, quality=0.5, layer_mode=mode)
        near = int(np.argmin([abs(s - len(data)) for s in sizes]))
        modes = "/".join(l["mode"] for l in bitstream.info(data)["layers"])
        print(f"3-layer file, layer mode {mode}: {len(data)} B (q 0.5; {modes}); 1-layer file {sizes[near]} B "
              f"(q {qs[near]:.3f})")
        rows += [(f"1-layer, {sizes[near]} B", single.decode(single.encode(x, quality=float(qs[near])))),
                 (f"3-layer top, {mode}", scal.decode(data))]
    # the oracle: the same top layer predicted from the UNCODED middle layer
    L = pyramid(t, [(H // 2, W // 2), (H, W)])
    _, orec = stages.model(args.model).code_layer(L[1], 0.5, L[0])
    rows.append(("top from uncoded middle", (orec.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)))
    print(f"smooth share {float(mask.float().mean()):.2f}")
    for name, a in rows:
        ta = torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]
        print(f"  {name:24s} PSNR {stages.psnr(ta, t):.2f} dB, smooth part {stages.psnr(ta, t, mask):.2f} dB, "
              f"HF smooth {stages.laplacian_rms(ta, mask):.2f}")
    mm = mask[0, 0].float().numpy()
    _, y0, x0 = max((mm[y:y + 128, c:c + 128].mean(), y, c) for y in range(0, H - 128, 16) for c in range(0, W - 128, 16))
    crops = [rows[k][1][y0:y0 + 128, x0:x0 + 128].astype(np.float32) for k in (0, 1, 2, 4)]
    stretched = [np.clip((c - c.mean((0, 1))) * 6 + 128, 0, 255) for c in crops]
    fig = np.concatenate([np.concatenate(crops, 1), np.concatenate(stretched, 1)], 0).astype(np.uint8)
    Image.fromarray(fig).resize((fig.shape[1] * 2, fig.shape[0] * 2), Image.NEAREST).save(args.out, optimize=True)
    print(f"crop at x={x0}, y={y0} (original | 1-layer | 3-layer top, predicted | 3-layer top, auto; lower row: "
          f"contrast x6) -> {Path(args.out).relative_to(REPO_ROOT) if Path(args.out).is_relative_to(REPO_ROOT) else args.out}")


if __name__ == "__main__":
    main()
