"""Outputs of `compass eval`: results.json (setup, mean curves, BD figures), points.jsonl.gz (every coded point
of every image), report.md (BD tables beside the paper's), RD plots and the visual PNG."""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

from ..fileutil import atomic_write_bytes
from ..provenance import flatten, history
from .plots import rd_plot, visual_plot

# The paper's BD-rates of COMPASS on Kodak (ICCV 2023, Table 1; ../shared/docs/method.md), columns as in CONFIGS.
PAPER_CONFIGS = ("2L-1.2x", "2L-1.6x", "2L-2.0x", "2L-2.4x", "2L-2.8x",
                 "3L-2.4x", "3L-2.8x", "3L-3.2x", "3L-3.6x", "3L-4.0x")
PAPER_BD = {
    "SHVC": (-53.88, -42.58, -35.87, -26.24, -22.34, -58.33, -51.51, -46.72, -43.65, -33.34),
    "Simulcast (Mean-Scale)": (-44.04, -31.40, -16.29, -16.35, -12.38, -49.85, -42.20, -35.33, -30.81, -22.90),
    "Mei et al. (original)": (-36.26, -29.44, -28.20, -33.19, -36.31, -47.17, -38.73, -34.34, -33.56, -32.12),
    "Mei et al. (enhanced)": (-29.09, -17.45, -13.52, -20.63, -23.94, -38.23, -26.46, -19.70, -17.08, -14.23),
    "Single-layer (Mean-Scale)": (-8.19, -3.70, +8.80, +0.31, +0.94, -6.60, -4.23, -1.25, -0.74, +4.74),
}
# Our row printed just above each paper row, and the order of the table (the paper's, then what it lacks).
ROWS = (("hevc-simulcast", "SHVC"), ("simulcast", "Simulcast (Mean-Scale)"), ("jpeg2000-simulcast", None),
        ("jpeg2000", None), (None, "Mei et al. (original)"), (None, "Mei et al. (enhanced)"),
        ("single", "Single-layer (Mean-Scale)"), ("hevc-single", None), ("predicted", None), ("ablation", None))


def _clean(v):
    """`v` with non-finite numbers as None (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def results_json(results: dict) -> str:
    """Everything but the points, indented (diffs stay readable); non-finite numbers are written as null."""
    return json.dumps(_clean({k: v for k, v in results.items() if k != "points"}), indent=1) + "\n"


def points_jsonl_gz(results: dict) -> bytes:
    """The points, one JSON object per line, gzip-compressed (a Kodak evaluation's 11,000 points are 7 MB of
    text, 1 MB compressed); the same bytes for the same points (no timestamp in the gzip header)."""
    text = "".join(json.dumps(_clean(p), separators=(",", ":")) + "\n" for p in results["points"])
    return gzip.compress(text.encode(), mtime=0)


def load_results(folder: str | Path) -> dict:
    """An evaluation's results as `evaluate` returned them: results.json with the points of points.jsonl.gz."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    with gzip.open(folder / "points.jsonl.gz", "rt") as f:
        results["points"] = [json.loads(line) for line in f]
    return results


class Footnotes:
    """Markdown footnotes for cells that hold no number, one per distinct reason."""

    def __init__(self):
        self.reasons: list[str] = []

    def cite(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return f"n/a[^{self.reasons.index(reason) + 1}]"

    def markdown(self) -> str:
        return "\n".join(f"[^{i}]: {r}" for i, r in enumerate(self.reasons, 1))


def bd_table(results: dict, value: str = "bd_rate", paper: bool = True, notes: Footnotes | None = None) -> str:
    """Markdown table in the paper's layout: rows = methods (each with the paper's row below it), columns =
    configurations. "—": the method does not apply to the configuration (or was not run)."""
    notes = notes or Footnotes()
    configs = list(results["setup"]["configs"])
    methods = results["setup"]["methods"]
    bd = results["summary"]["bd"]
    head = ["vs."] + [c.replace("-", " ") for c in configs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, paper_row in ROWS:
        if method in methods:
            cells = []
            for c in configs:
                entry = bd.get(method, {}).get(c)
                if entry is None:
                    cells.append("—")
                elif entry[value] is None:
                    cells.append(notes.cite(f"{method}, {c}: {entry[f'{value}_reason']}"))
                else:
                    cells.append(f"{entry[value]:+.2f}")
            lines.append(f"| {methods[method]['label']} | " + " | ".join(cells) + " |")
        if paper and paper_row is not None and (method is None or method in methods):
            cells = [f"{PAPER_BD[paper_row][PAPER_CONFIGS.index(c)]:+.2f}" if c in PAPER_CONFIGS else "—"
                     for c in configs]
            lines.append(f"| *paper: {paper_row}* | " + " | ".join(f"*{x}*" for x in cells) + " |")
    return "\n".join(lines)


def _trained(training: dict, stage_id: str) -> str:
    """A stage of a model's (flat) training record in words: its name and steps, with the runs it continued."""
    steps = history(training, stage_id)
    runs = f" ({' + '.join(f'{n:,}' for n in steps)})" if len(steps) > 1 else ""
    stage = next(s for s in training["stages"] if s["id"] == stage_id)
    return f"{stage['stage']} {sum(steps):,} steps{runs}"


def _models(setup: dict) -> str:
    out = []
    for role, m in setup["models"].items():
        training = flatten(m.get("info", {}))  # results of older runs hold nested records
        trained = ", ".join(_trained(training, i) for i in (training or {}).get("model_stages", []))
        codec = m["config"]["codec"]
        out.append(f"- {role}: `{m['name']}` (from `{m['source']}`, sha256 {m['sha256'][:16]}…), codecs "
                   f"N={codec['N']}, M={codec['M']}" + ("" if "liff" not in m["config"] else ", LIFF "
                   + ", ".join(f"{k}={v}" for k, v in m["config"]["liff"].items()))
                   + (f"; trained: {trained}" if trained else ""))
    return "\n".join(out)


def _j2k_lowpass_note(results: dict) -> str:
    """Mean PSNR of JPEG 2000's reduced decodes against its own low-pass and against the bicubic targets."""
    own, bicubic = [], []
    for p in results["points"]:
        if p["method"] == "jpeg2000":
            for l in p["layers"][:-1]:
                own.append(l["psnr"])
                if l.get("psnr_bicubic") is not None:
                    bicubic.append(l["psnr_bicubic"])
    if not own:
        return ""
    vs = f", {sum(bicubic) / len(bicubic):.2f} dB against the bicubic targets" if bicubic else ""
    return (f" Over all its lower-layer points the reduced decodes average {sum(own) / len(own):.2f} dB against "
            f"their own low-pass{vs}.")


def _modes_note(results: dict) -> str:
    """How COMPASS's files coded the layers above the base (layer mode auto), overall and per q; "" for
    evaluations whose files do not record modes (every layer predicted, before layer modes)."""
    by_q: dict[float, list[bool]] = {}
    for p in results["points"]:
        if p["method"] == "compass":
            modes = [l.get("mode") for l in p["layers"][1:]]
            if any(m is not None for m in modes):
                by_q.setdefault(p["param"], []).extend(m == "intra" for m in modes)
    if not by_q:
        return ""
    share = lambda flags: f"{100 * sum(flags) / len(flags):.0f}%"  # noqa: E731
    every = [f for flags in by_q.values() for f in flags]
    return ("COMPASS's layer mode (`auto`, `compass encode`'s default) coded " + share(every) + " of the layers "
            "above the base intra (by q: " + ", ".join(f"{q:g}: {share(f)}" for q, f in sorted(by_q.items()))
            + "), the rest predicted; the row \"every layer predicted\" is the paper's coding of the same model.")


def report_markdown(results: dict, visual: bool) -> str:
    setup, stats = results["setup"], results["stats"]
    names = [im["name"] for im in setup["images"]]
    notes = Footnotes()
    first = setup["images"][0]
    sizes = "\n".join(f"| {c} | " + " → ".join(f"{w}x{h}" for h, w in info["sizes"]) + " |"
                      for c, info in setup["configs"].items())
    sweeps = "\n".join(f"- {m['label']} (`{name}`): {m['parameter']} ∈ {tuple(m['sweep'])}"
                       for name, m in setup["methods"].items())
    plots = "\n".join(f"![{c}](rd_{c}.png)" for c in setup["configs"])
    parts = [
        f"# Rate-distortion evaluation: {Path(setup['data']).name}",
        f"{len(names)} images from `{setup['data']}` ({names[0]} .. {names[-1]}"
        + (f"; the first {len(names)} of its {setup['images_in_folder']}, a subset"
           if setup.get("images_in_folder", len(names)) > len(names) else "") + ")"
        + (", **quick run** (3 rate points per method)" if setup["quick"] else "")
        + f". {stats['jobs']} coding jobs, {stats['run']} run and {stats['cached']} from the cache, "
          f"{stats['seconds']:.0f} s.",
        _models(setup),
        "## BD-rate of COMPASS against each method (%, top layer, RGB PSNR)",
        "Negative: COMPASS needs fewer bits for the same PSNR. Rate: bytes of layers 0..top, headers included, over "
        "the top layer's pixels. Our rows use our models (see above); the paper's rows (in italics, below the "
        "matching row of ours) use its own N=128/M=192 models, SHVC (SHM) and Mei et al., which we do not have.",
        bd_table(results, "bd_rate", notes=notes),
        "## BD-PSNR of COMPASS against each method (dB, top layer)",
        "Positive: COMPASS reaches a higher PSNR at the same rate.",
        bd_table(results, "bd_psnr", paper=False, notes=notes),
        "## BD-rate without headers (%, top layer)",
        "Compass files less their file header; the classical codecs' counts hold no container header anyway.",
        bd_table(results, "bd_rate_noheader", paper=False, notes=notes),
        "## BD-rate on MS-SSIM (%, top layer, MS-SSIM in dB = -10 log10(1 - MS-SSIM))",
        bd_table(results, "bd_rate_msssim", paper=False, notes=notes),
        "## How it was measured",
        f"Layer sizes for {first['name']} ({first['width']}x{first['height']}); "
        "two layers: the base is the top over the factor; three layers: both steps are the square root of the "
        "top factor, i.e. the middle layer sits at the geometric middle. Every lower layer is the image "
        "downscaled directly by compass's antialiased bicubic `resize`, rounded to 8 bits; sizes come from "
        "`plan_from_scales` (rounded from the top down).",
        "| config | layer sizes (W x H), base first |\n|---|---|\n" + sizes,
        "Rate points:\n" + sweeps,
        *filter(None, [_modes_note(results)]),
        "Bytes counted, headers included, accumulated over layers 0..k:\n"
        "- COMPASS" + (", COMPASS with every layer predicted" if "predicted" in setup["methods"] else "")
        + " and the ablation: the real file prefix a decoder needs for layer k, the compass header plus "
        "chunks 0..k (`bitstream.info`).\n"
        "- Simulcast and single-layer (neural): one real 1-layer compass file per layer (header with the "
        "single-layer model's name and id, chunk framing, entropy-coded strings), written and read back with "
        "`compass.bitstream` and decoded from what was read; the files' sizes are added.\n"
        "- JPEG 2000 simulcast: raw J2K codestreams (no JP2 boxes), one per layer, each at the target bpp of its "
        "own pixels; sizes added. JPEG 2000's own scalability: one codestream at the target bpp over the full "
        "image; layer k is decoded from the measured codestream prefix holding its resolutions.\n"
        "- HEVC: the HEVC stream as an Annex-B file would hold it (parameter sets + NAL units), one per layer; "
        "the .heic container (about 290 bytes an image) is not counted.\n"
        "Without headers: compass files less their file header (chunk framing kept, a few bytes a layer); "
        "the classical counts unchanged.",
        "Distortion: PSNR (peak 255 on uint8, over R, G, B) and MS-SSIM of the decoded uint8 layer against the "
        "uint8 target layer. Curves are averaged per rate point: the mean bpp and the mean PSNR over the images at "
        "one q (neural), one QP (HEVC) or one target bpp (JPEG 2000). BD values use PCHIP over the overlap of the "
        "two mean curves (`evaluate.bdrate`).",
        "Caveats:\n"
        "- SHVC: the SHM reference software is not available as a package and x265 has no spatial scalability, "
        "so HEVC-444 (x265, intra, 4:4:4, psychovisual tuning off) simulcast stands in for it; HEVC single-layer "
        "is the bound any scalable HEVC would approach.\n"
        "- The ablation keeps COMPASS's residual codec, which was trained on LIFF residuals, and only swaps the "
        "predictor for bicubic; a residual codec trained with bicubic predictions would do better.\n"
        "- JPEG 2000's own scalability exists only for factors of 2 (2L 2.0x, 3L 4.0x). Its lower layers are "
        "the 9/7 wavelet low-pass, not the bicubic targets, so they are scored against its own low-pass (an "
        "unlimited-rate 9/7 decode at the same reduction); the top layer, the one in the tables, is the image "
        "itself in every method." + _j2k_lowpass_note(results) + "\n"
        "- The paper's pixel count for bpp is not stated; we divide by the top layer's pixels.",
        "## Rate-distortion curves\n\nOne panel per layer; lower panels plot the bytes of layers 0..k over layer "
        "k's pixels. Mean curves as above.\n\n" + plots,
    ]
    if visual:
        parts.append("## Visual comparison\n\nThe centre ninth of every layer of one image, COMPASS at its middle "
                     "rate point and the others at the point closest to its top-layer bpp (bpp of layers 0..k).\n\n"
                     "![visual comparison](visual.png)")
    if notes.reasons:
        parts.append(notes.markdown())
    return "\n\n".join(parts) + "\n"


def write_report(results: dict, out: str | Path, visual: dict | None = None) -> list[Path]:
    """Write results.json, points.jsonl.gz, report.md, rd_<config>.png and (given decoded layers) visual.png into
    `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "results.json", out / "points.jsonl.gz"]
    atomic_write_bytes(written[0], results_json(results).encode())
    atomic_write_bytes(written[1], points_jsonl_gz(results))
    for config in results["setup"]["configs"]:
        written.append(out / f"rd_{config}.png")
        rd_plot(results, config, written[-1])
    if visual is not None:
        written.append(out / "visual.png")
        visual_plot(visual, written[-1])
    written.append(out / "report.md")
    atomic_write_bytes(written[-1], report_markdown(results, visual is not None).encode())
    return written
