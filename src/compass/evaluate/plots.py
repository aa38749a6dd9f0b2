"""PNG figures of `compass eval` (matplotlib, Agg backend): RD curves per configuration and a visual comparison."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)

_STYLE = {"compass": {"color": "C3", "lw": 2.4, "marker": "o"}, "ablation": {"color": "C3", "ls": "--", "marker": "x"},
          "predicted": {"color": "C3", "ls": ":", "marker": "."},
          "simulcast": {"color": "C0", "marker": "s"}, "single": {"color": "C0", "ls": ":", "marker": "^"},
          "jpeg2000": {"color": "C2", "marker": "D"}, "jpeg2000-simulcast": {"color": "C2", "ls": "--", "marker": "d"},
          "hevc-simulcast": {"color": "C1", "marker": "v"}, "hevc-single": {"color": "C1", "ls": ":", "marker": "<"}}


def rd_plot(results: dict, config: str, path: str | Path) -> None:
    """One panel per layer: PSNR against bpp (layers 0..k accumulated, over layer k's pixels), mean curves."""
    info = results["setup"]["configs"][config]
    curves = results["summary"]["curves"]
    count = info["layers"]
    fig, axes = plt.subplots(1, count, figsize=(4.6 * count, 4.8), squeeze=False)
    for k, ax in enumerate(axes[0]):
        for method, m in results["setup"]["methods"].items():
            c = curves.get(method, {}).get(config, {}).get(str(k))
            if c is None:
                continue
            label = m["label"] + (" (vs own low-pass)" if m["kind"] == "levels" and k < count - 1 else "")
            ax.plot(c["bpp"], c["psnr"], ms=4, label=label, **_STYLE.get(method, {}))
        h, w = info["sizes"][k]
        ax.set_title(f"{config}, layer {k} ({w}x{h}{', top' if k == count - 1 else ''})", fontsize=10)
        ax.set_xlabel("bpp, layers 0..k over layer k's pixels")
        ax.set_ylabel("PSNR (dB, RGB)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    lowpass = any(m["kind"] == "levels" and config in curves.get(name, {})
                  for name, m in results["setup"]["methods"].items())
    fig.suptitle(f"{config}: mean over {len(results['setup']['images'])} images (mean bpp and PSNR per rate point)"
                 + ("\nJPEG 2000's own lower layers are scored against its own 9/7 low-pass" if lowpass else ""),
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _crop(image, window):
    """The same relative window (top, left, height, width as fractions) of an image of any size."""
    h, w = image.shape[:2]
    y0, x0 = int(window[0] * h), int(window[1] * w)
    return image[y0:y0 + max(1, round(window[2] * h)), x0:x0 + max(1, round(window[3] * w))]


def visual_plot(visual: dict, path: str | Path) -> None:
    """Rows: the bicubic targets, then each method; columns: layers. Every layer shows the same centre window."""
    targets = visual["targets"]
    window = (1 / 3, 1 / 3, 1 / 3, 1 / 3)
    rows = [{"label": "target (bicubic)", "images": targets, "layers": None}] + visual["rows"]
    fig, axes = plt.subplots(len(rows), len(targets), figsize=(3.3 * len(targets), 3.0 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for k, ax in enumerate(axes[r]):
            img = row["images"][k]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.imshow(_crop(img, window), interpolation="nearest")
            h, w = img.shape[:2]
            if row["layers"] is None:
                ax.set_title(f"layer {k}: {w}x{h}", fontsize=8)
            else:
                l = row["layers"][k]
                ref = " vs own low-pass" if l.get("reference") == "j2k-lowpass" else ""
                ax.set_title(f"layer {k}: {l['bpp']:.3f} bpp, {l['psnr']:.2f} dB{ref}", fontsize=8)
        label = row["label"] if row["layers"] is None else f"{row['label']}\n{row['parameter']} = {row['param']}"
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"{visual['image']}, {visual['config']}: centre crop of every layer (bpp: layers 0..k)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
