"""What the benchmark measures with: timed runs and their statistics, time per section of the codec (timing
wrappers around its methods), the large test image, and LIFF's cost model in multiply-adds."""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np


def stats(seconds: list[float]) -> dict:
    """Median, quartiles, min and max of a list of durations, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": float(ms.min()), "max": float(ms.max()),
            "n": int(ms.size)}


class Sections:
    """Wall time spent inside chosen methods, summed by section name; `take()` returns and resets the sums."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, owner, name: str, section: str) -> None:
        """Replace `owner.name` (an instance's or a class's method) by a timed version of itself."""
        fn = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[section] += time.perf_counter() - start

        setattr(owner, name, timed)

    def take(self) -> dict:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def instrument(codecs: dict, liff=None) -> Sections:
    """Time the transforms of each codec, LIFF and the entropy coder (constriction calls and table grouping)."""
    from ..entropy import TableCoder

    sec = Sections()
    for codec in codecs.values():
        for part in ("g_a", "h_a", "g_s", "h_s"):
            sec.wrap(getattr(codec, part), "forward", part)
    if liff is not None:
        sec.wrap(liff, "forward", "liff")  # features, query and (with skip) bicubic upsampling
    sec.wrap(TableCoder, "encode", "entropy")
    sec.wrap(TableCoder, "decode", "entropy")
    return sec


def section_summary(runs: list[dict], totals: list[float]) -> dict:
    """Median milliseconds and median share of the total of each section over timed runs ("other": the rest)."""
    names = sorted({k for r in runs for k in r})
    out = {}
    for name in names + ["other"]:
        sec = [r.get(name, 0.0) if name != "other" else t - sum(r.values()) for r, t in zip(runs, totals)]
        out[name] = {"ms": float(np.median(sec) * 1e3), "share": float(np.median([s / t for s, t in zip(sec, totals)]))}
    return out


def make_large(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`pixels` upscaled 2x with `resample.resize`, then mirror-tiled (or cropped) to `size` (height, width)."""
    from ..pixels import to_pixels, to_tensor
    from ..resample import resize

    h, w = pixels.shape[:2]
    up = to_pixels(resize(to_tensor(pixels), (2 * h, 2 * w)))
    H, W = size
    tiled = np.pad(up, ((0, max(0, H - 2 * h)), (0, max(0, W - 2 * w)), (0, 0)), mode="symmetric")
    return np.ascontiguousarray(tiled[:H, :W])


# ---------------------------------------------------------------- LIFF cost model


def rdn_macs(cfg) -> int:
    """Multiply-adds of the RDN per source pixel."""
    c, g = cfg.feat, cfg.growth
    block = sum((c + i * g) * g * 9 for i in range(cfg.convs)) + (c + cfg.convs * g) * c
    return 3 * c * 9 + c * c * 9 + cfg.blocks * block + cfg.blocks * c * c + c * c * 9


def liff_macs(cfg, scale: float) -> dict:
    """Multiply-adds per OUTPUT pixel of LIFF's MLP part, direct vs factorized, at a scale factor per side.

    Direct: every linear layer on [unfolded feature | r | s] (d + 4 inputs, d = 9C, or C without unfolding) up to
    the d x 3 filter, then the filter product (3d). Factorized: the hidden layers and the 3 x hidden_last product
    per target pixel, plus the per-source projection d x (hidden0 + 3 hidden_last + 3) shared by scale^2 targets
    (the r, s terms are separable per row and column: negligible). The RDN, common to both, is given apart (also
    per output pixel).
    """
    d, hidden = cfg.unfold**2 * cfg.feat, list(cfg.hidden)
    inner = sum(a * b for a, b in zip(hidden[:-1], hidden[1:]))
    direct = (d + 4) * hidden[0] + inner + hidden[-1] * 3 * d + 3 * d
    per_source = d * (hidden[0] + 3 * hidden[-1] + 3)
    factorized = inner + 3 * hidden[-1] + per_source / scale**2
    return {"scale": scale, "direct": direct, "factorized": round(factorized), "ratio": direct / factorized,
            "per_source_projection": per_source, "rdn": round(rdn_macs(cfg) / scale**2)}


def liff_widths() -> dict:
    """The LIFF widths compared: the paper's and the shipped `cpu` recipe's."""
    from ..models import sizes

    return {"paper": sizes("paper")[1], "cpu": sizes("cpu")[1]}


def measure(fn, warmup: int, repeat: int, sections: Sections | None = None):
    """fn run `warmup` times untimed, then `repeat` times timed: (seconds, section sums per run, last result)."""
    for _ in range(warmup):
        fn()
    if sections is not None:
        sections.take()
    times, runs, out = [], [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        if sections is not None:
            runs.append(sections.take())
    return times, runs, out


def profile(fn, top: int = 10) -> list[dict]:
    """Operators by self CPU time during one call of fn (torch.profiler); share: of that call's wall time."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall_us = (time.perf_counter() - start) * 1e6
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / wall_us,
             "calls": e.count} for e in rows]

