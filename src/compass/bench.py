"""`compass bench`: speed and memory of compass beside its single-layer codec, JPEG 2000 and HEVC, in one run.

Every measurement runs in a fresh child process with the same thread settings (torch, OpenMP, MKL, OpenJPEG,
libheif, x265), so each reports its own peak resident memory (VmHWM); an idle child that imported the same
libraries gives the baseline, and `peak - idle` is what the coding itself costs. Each child runs `warmup`
untimed passes, then `repeat` timed ones (median, quartiles, min/max). Compass decode times are taken per layer
(time to reach layer k, and its increment) and split into sections (LIFF, g_s, h_s, entropy coding) by timing
wrappers around those methods; one more decode runs under torch.profiler for an operator-level profile.

Rates: JPEG 2000 is asked for the target bpp directly; the HEVC QP and the compass and single-layer qualities
are searched on the main image (when the weights are trained) and reused for the large image.
The large image is the main image upscaled 2x by `resample.resize` (antialiased bicubic) and mirror-tiled to
the requested size (3840x2160 by default): a 4K frame with photographic detail and no seams.
See docs/performance.md for the method and the results.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .errors import CompassError
from .procstat import peak_rss_mb, status_mb

LARGE_SIZE = (2160, 3840)  # (height, width)
DECODE_RATIO_TARGET = 1.5  # decode of all 3 layers / single-layer decode at the top size (the target)
LIFF_SPEEDUP_TARGET = {2: 2.0, 4: 2.5}  # factorized / direct MLP speed with the paper's widths
MEMORY_LIMIT_MB = 3 * 1024  # a 4K image must encode and decode within 3 GiB
RANDOM_NOTE = ("random weights: transform and LIFF timings are representative, entropy coding is not (latents of "
               "an untrained codec are nearly all zero) and rates are not comparable")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPJ_NUM_THREADS")


# ---------------------------------------------------------------- measurement helpers


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
    from .entropy import _TableCoder

    sec = Sections()
    for codec in codecs.values():
        for part in ("g_a", "h_a", "g_s", "h_s"):
            sec.wrap(getattr(codec, part), "forward", part)
    if liff is not None:
        sec.wrap(liff, "forward", "liff")  # features, query and (with skip) bicubic upsampling
    sec.wrap(_TableCoder, "encode", "entropy")
    sec.wrap(_TableCoder, "decode", "entropy")
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
    from .imageio import to_pixels, to_tensor
    from .resample import resize

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
    from .liff import LIFF_SIZES, LiffConfig
    from .train.config import load_recipe

    return {"paper": LIFF_SIZES["paper"], "cpu": LiffConfig.from_dict(load_recipe("cpu")["liff"])}


# ---------------------------------------------------------------- child jobs (each runs in a fresh process)


def _measure(fn, warmup: int, repeat: int, sections: Sections | None = None):
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


def _profile(fn, top: int = 10) -> list[dict]:
    """Operators by self CPU time during one call of fn (torch.profiler); share: of that call's wall time."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    wall_us = (time.perf_counter() - start) * 1e6
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / wall_us,
             "calls": e.count} for e in rows]


def _scalable(spec: dict):
    from .api import Compass

    codec = Compass(spec["model"])
    return codec, instrument({"base": codec.model.base, "residual": codec.model.residual}, codec.model.liff)


def _job_compass_encode(spec: dict, pixels: np.ndarray) -> dict:
    codec, sec = _scalable(spec)
    plan = codec.plan(*pixels.shape[:2], layers=spec["layers"])
    ready = status_mb("VmRSS")
    times, runs, data = _measure(lambda: codec.encode(pixels, sizes=plan, quality=spec["quality"]),
                                 spec["warmup"], spec["repeat"], sec)
    Path(spec["stream"]).write_bytes(data)
    return {"encode": stats(times), "encode_sections": section_summary(runs, times), "bytes": len(data),
            "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_compass_decode(spec: dict, pixels: np.ndarray) -> dict:
    from . import bitstream

    codec, sec = _scalable(spec)
    data = Path(spec["stream"]).read_bytes()
    ready = status_mb("VmRSS")

    def decode() -> list[float]:
        """Decode every layer; seconds from the start to each layer's pixels."""
        start, marks = time.perf_counter(), []
        for img in codec.layers(data):
            marks.append(time.perf_counter() - start)
        if img.shape != pixels.shape:
            raise CompassError(f"decoded {img.shape}, expected {pixels.shape}")
        return marks

    marks = []
    times, runs, _ = _measure(lambda: marks.append(decode()), spec["warmup"], spec["repeat"], sec)
    marks = marks[spec["warmup"]:]
    layers = [{"height": l["height"], "width": l["width"], "bytes": l["total_bytes"], "bpp": l["bpp"],
               "decode_to": stats([m[k] for m in marks]),
               "decode_increment": stats([m[k] - (m[k - 1] if k else 0.0) for m in marks])}
              for k, l in enumerate(bitstream.info(data)["layers"])]
    out = {"decode": stats(times), "decode_sections": section_summary(runs, times), "layers": layers,
           "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}
    if spec.get("profile"):
        out["profile"] = _profile(decode)
    return out


def _single(spec: dict):
    from .weights import build_codec, load_weights

    codec = build_codec(load_weights(spec["single"])[0], "base")
    return codec, instrument({"single": codec})


def _job_single_encode(spec: dict, pixels: np.ndarray) -> dict:
    from .imageio import to_tensor

    codec, sec = _single(spec)
    ready = status_mb("VmRSS")
    # a single-layer encoder needs no reconstruction (as compass's top layer)
    times, runs, out = _measure(lambda: codec.compress(to_tensor(pixels), spec["quality"], reconstruct=False),
                                spec["warmup"], spec["repeat"], sec)
    Path(spec["stream"]).write_text(json.dumps([s.hex() for s in out["strings"]]))
    return {"encode": stats(times), "encode_sections": section_summary(runs, times),
            "bytes": sum(len(s) for s in out["strings"]), "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_single_decode(spec: dict, pixels: np.ndarray) -> dict:
    from .imageio import to_pixels

    codec, sec = _single(spec)
    strings = [bytes.fromhex(s) for s in json.loads(Path(spec["stream"]).read_text())]
    ready = status_mb("VmRSS")
    times, runs, _ = _measure(lambda: to_pixels(codec.decompress(strings, pixels.shape[:2], spec["quality"])["x_hat"]),
                              spec["warmup"], spec["repeat"], sec)
    return {"decode": stats(times), "decode_sections": section_summary(runs, times), "rss_ready_mb": ready,
            "peak_mb": peak_rss_mb()}


def _hevc_params(threads: int) -> dict:
    """The baselines' x265 settings; x265 gets `threads` worker threads when above 1."""
    from .evaluate.baselines import HEVC_ENC_PARAMS

    return dict(HEVC_ENC_PARAMS, **{"x265:pools": str(threads)}) if threads > 1 else HEVC_ENC_PARAMS


def _classical(spec: dict, pixels: np.ndarray):
    """(encode, decode, counted bytes) of the job's classical codec."""
    from .evaluate import baselines

    if spec["codec"] == "jpeg2000":
        encode = lambda: baselines._j2k_encode(pixels, irreversible=True, quality_mode="rates",  # noqa: E731
                                               quality_layers=[24.0 / spec["bpp"]])
        return encode, lambda data: baselines._j2k_decode(data, 0), len
    encode = lambda: baselines.hevc_encode(pixels, spec["qp"], _hevc_params(spec["threads"]))  # noqa: E731
    return encode, baselines.hevc_decode, baselines.hevc_stream_bytes


def _job_classical_encode(spec: dict, pixels: np.ndarray) -> dict:
    encode, _, counted = _classical(spec, pixels)
    ready = status_mb("VmRSS")
    times, _, data = _measure(encode, spec["warmup"], spec["repeat"])
    Path(spec["stream"]).write_bytes(data)
    return {"encode": stats(times), "bytes": counted(data), "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_classical_decode(spec: dict, pixels: np.ndarray) -> dict:
    _, decode, _ = _classical(spec, pixels)
    data = Path(spec["stream"]).read_bytes()
    ready = status_mb("VmRSS")
    times, _, img = _measure(lambda: decode(data), spec["warmup"], spec["repeat"])
    if img.shape != pixels.shape:
        raise CompassError(f"{spec['codec']} decoded {img.shape}, expected {pixels.shape}")
    return {"decode": stats(times), "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_liff(spec: dict, pixels) -> dict:
    """Factorized query vs `liff.direct_query` from the same RDN features, random weights (timing only)."""
    import torch

    from .liff import LIFF, LiffConfig, direct_query

    side, out = spec["size"], []
    for name, cfg in spec["widths"].items():
        torch.manual_seed(0)
        m = LIFF(LiffConfig.from_dict(cfg)).eval()
        for scale in spec["scales"]:
            src = max(1, side // scale)
            with torch.no_grad():
                f = m.features(torch.rand(1, 3, src, src))
                fact, _, pred = _measure(lambda: m.query(f, (side, side)), spec["warmup"], spec["repeat"])
                direct, _, ref = _measure(lambda: direct_query(m, f, (side, side)), spec["warmup"], spec["repeat"])
            fs, ds = stats(fact), stats(direct)
            out.append({"widths": name, "scale": scale, "source": [src, src], "target": [side, side],
                        "factorized": fs, "direct": ds, "speedup": ds["median"] / fs["median"],
                        "target_speedup": LIFF_SPEEDUP_TARGET.get(scale) if name == "paper" else None,
                        "max_abs_diff": float((pred - ref).abs().max())})
    return {"micro": out, "peak_mb": peak_rss_mb()}


def _job_idle(spec: dict, pixels) -> dict:
    return {"peak_mb": peak_rss_mb()}


JOBS = {"idle": _job_idle, "compass-encode": _job_compass_encode, "compass-decode": _job_compass_decode,
        "single-encode": _job_single_encode, "single-decode": _job_single_decode,
        "classical-encode": _job_classical_encode, "classical-decode": _job_classical_decode, "liff": _job_liff}


def child_main() -> None:
    """Entry of a child: a JSON spec on stdin, the JSON result as the last line of stdout."""
    spec = json.loads(sys.stdin.read())
    import pillow_heif
    import torch

    from . import api  # noqa: F401  (every child imports the same libraries as the idle one)
    from .evaluate import baselines  # noqa: F401

    torch.set_num_threads(spec["threads"])
    pillow_heif.options.DECODE_THREADS = spec["threads"]
    pixels = np.load(spec["image"]) if spec.get("image") else None
    result = JOBS[spec["job"]](spec, pixels)
    print(json.dumps(result))


def spawn(spec: dict) -> dict:
    """Run one job in a fresh interpreter with the spec's thread count; returns its result."""
    env = dict(os.environ, **{v: str(spec["threads"]) for v in THREAD_VARS})
    proc = subprocess.run([sys.executable, "-m", "compass.bench"], input=json.dumps(spec), env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise CompassError(f"bench job {spec['job']} failed:\n{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the run


def _bisect(rate, lo, hi, target: float, steps: int, integer: bool = False):
    """Parameter in [lo, hi] whose rate is nearest `target`, for a rate increasing in the parameter."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) // 2 if integer else (lo + hi) / 2
        r = rate(mid)
        if best is None or abs(np.log(r / target)) < abs(np.log(best[1] / target)):
            best = (mid, r)
        lo, hi = (mid, hi) if r < target else (lo, mid)
        if integer and hi - lo <= 1:
            break
    return best


def calibrate(pixels: np.ndarray, layers, bpp: float, scalable, single, trained: bool, threads: int) -> dict:
    """Rate parameters of every codec for about `bpp` on `pixels` (qualities only when the weights are trained)."""
    import torch

    from .api import Compass
    from .bitstream import quantize_quality
    from .evaluate.baselines import hevc_encode, hevc_stream_bytes
    from .imageio import to_tensor
    from .weights import build_codec, load_weights

    px = pixels.shape[0] * pixels.shape[1]
    out = {"target_bpp": bpp, "jpeg2000_bpp": bpp, "calibrated": trained}
    params = _hevc_params(threads)
    hevc = _bisect(lambda qp: hevc_stream_bytes(hevc_encode(pixels, 51 - qp, params)) * 8 / px, 0, 51, bpp, 8,
                   integer=True)
    out["hevc_qp"] = 51 - hevc[0]
    if not trained:
        return {**out, "compass_quality": 0.5, "single_quality": 0.5}
    codec = Compass(scalable)
    plan = codec.plan(*pixels.shape[:2], layers=layers)
    out["compass_quality"] = quantize_quality(_bisect(
        lambda q: len(codec.encode(pixels, sizes=plan, quality=q)) * 8 / px, 0.0, 1.0, bpp, 6)[0])
    sc = build_codec(load_weights(single)[0], "base")
    x = to_tensor(pixels)
    with torch.no_grad():
        out["single_quality"] = quantize_quality(_bisect(
            lambda q: sum(map(len, sc.compress(x, quantize_quality(q), reconstruct=False)["strings"])) * 8 / px,
            0.0, 1.0, bpp, 6)[0])
    return out


def _models(model, single, workdir: Path) -> dict:
    """Weights to run: the given ones, else the registered defaults, else random-weight models of the cpu size."""
    from .codec import CodecConfig, MeanScaleHyperprior
    from .liff import LIFF
    from .train.config import load_recipe
    from . import DEFAULT_MODEL, DEFAULT_SINGLE
    from .weights import export, registered

    names = registered()
    model = model or (DEFAULT_MODEL if DEFAULT_MODEL in names else None)
    single = single or (DEFAULT_SINGLE if DEFAULT_SINGLE in names else None)
    out = {"scalable": str(model) if model else None, "single": str(single) if single else None,
           "random": model is None or single is None}
    if not out["random"]:
        return out
    import torch

    recipe = load_recipe("cpu")
    codec, liff = CodecConfig(**recipe["codec"]), liff_widths()["cpu"]
    configs = {"codec": codec.to_dict(), "liff": liff.to_dict()}
    torch.manual_seed(0)
    if model is None:
        mods = {"base": MeanScaleHyperprior(codec), "residual": MeanScaleHyperprior(codec), "liff": LIFF(liff)}
        out["scalable"] = str(workdir / "random-cpu.pt")
        export(mods, configs, "compass-bench-random", out["scalable"])
    if single is None:
        out["single"] = str(workdir / "random-cpu-single.pt")
        export({"base": MeanScaleHyperprior(codec)}, {"codec": configs["codec"]}, "compass-bench-random-single",
               out["single"])
    return out


def _describe(spec: str) -> dict:
    from .weights import load_weights

    obj, digest = load_weights(spec)
    return {"name": obj["name"], "source": spec, "sha256": digest, "config": obj["config"]}


def _case(name: str, pixels: np.ndarray, what: str, workdir: Path, common: dict, rates: dict, repeat: int,
          profile: bool, log) -> dict:
    """Every codec on one image: encode and decode children, then the ratios."""
    path = workdir / f"{name}.npy"
    np.save(path, pixels)
    h, w = pixels.shape[:2]
    base = dict(common, image=str(path), repeat=repeat)

    def pair(label, enc_job, dec_job, **spec):
        stream = str(workdir / f"{name}-{label}.bin")
        log(f"{name} {w}x{h}: {label} encode")
        enc = spawn(dict(base, job=enc_job, stream=stream, **spec))
        log(f"{name} {w}x{h}: {label} decode")
        dec = spawn(dict(base, job=dec_job, stream=stream, profile=profile, **spec))
        peak = {"encode": enc.pop("peak_mb"), "decode": dec.pop("peak_mb")}
        ready = {"encode": enc.pop("rss_ready_mb"), "decode": dec.pop("rss_ready_mb")}
        return {**enc, **dec, "bpp": enc["bytes"] * 8 / (h * w), "peak_mb": peak, "rss_ready_mb": ready}

    codecs = {
        "compass": pair("compass", "compass-encode", "compass-decode", quality=rates["compass_quality"]),
        "single": pair("single", "single-encode", "single-decode", quality=rates["single_quality"]),
        "jpeg2000": pair("jpeg2000", "classical-encode", "classical-decode", codec="jpeg2000",
                         bpp=rates["jpeg2000_bpp"]),
        "hevc": pair("hevc", "classical-encode", "classical-decode", codec="hevc", qp=rates["hevc_qp"]),
    }
    c = codecs["compass"]
    ratios = {"decode_all_over_single": c["decode"]["median"] / codecs["single"]["decode"]["median"],
              "decode_all_over_single_target": DECODE_RATIO_TARGET}
    for other in ("single", "jpeg2000", "hevc"):
        ratios[f"compass_over_{other}"] = {op: c[op]["median"] / codecs[other][op]["median"]
                                           for op in ("encode", "decode")}
    return {"width": w, "height": h, "image": what, "repeat": repeat, "codecs": codecs, "ratios": ratios,
            "fits_memory": {op: c["peak_mb"][op] <= MEMORY_LIMIT_MB for op in ("encode", "decode")},
            "memory_limit_mb": MEMORY_LIMIT_MB}


def run(image: str | Path | None = None, *, model=None, single=None, layers=(0.25, 0.5, 1.0), bpp: float = 0.5,
        quality: float | None = None, qp: int | None = None, repeat: int = 5, repeat_large: int = 2,
        warmup: int = 1, large: tuple[int, int] | None = LARGE_SIZE, threads: int = 1, liff_size: int = 128,
        log=None) -> dict:
    """The whole benchmark; returns the results `format_report` prints (and `--json` writes).

    `quality` (compass and single-layer) and `qp` (HEVC) skip the rate search; `large=None` skips the large
    image; `liff_size` is the side of the LIFF micro-benchmark's output (0 skips it).
    """
    import PIL
    import pillow_heif
    import torch

    from .imageio import load_image
    from .paths import data_dir

    log = log or (lambda message: None)
    image = Path(image) if image else data_dir("kodak") / "kodim23.png"
    pixels = load_image(image).pixels
    with tempfile.TemporaryDirectory(prefix="compass-bench-") as tmp:
        workdir = Path(tmp)
        models = _models(model, single, workdir)
        log("rate search" if quality is None or qp is None else "rates given")
        rates = calibrate(pixels, layers, bpp, models["scalable"], models["single"], not models["random"], threads)
        if quality is not None:
            rates.update(compass_quality=quality, single_quality=quality, calibrated=False)
        if qp is not None:
            rates["hevc_qp"] = qp
        common = {"threads": threads, "warmup": warmup, "layers": list(layers), "model": models["scalable"],
                  "single": models["single"]}
        log("idle child")
        idle = spawn({"job": "idle", "threads": threads})["peak_mb"]
        cases = {"image": _case("image", pixels, image.name, workdir, common, rates, repeat, True, log)}
        if large:
            what = (f"{image.name} upscaled 2x by compass.resample.resize (antialiased bicubic) to "
                    f"{2 * pixels.shape[1]}x{2 * pixels.shape[0]}, mirror-tiled to {large[1]}x{large[0]}")
            cases["large"] = _case("large", make_large(pixels, large), what, workdir, common, rates, repeat_large,
                                   False, log)
        widths = liff_widths()
        liff = {"macs": [{"widths": n, **liff_macs(cfg, s)} for n, cfg in widths.items() for s in (2, 4)]}
        if liff_size:
            log("LIFF micro-benchmark")
            liff.update(spawn({"job": "liff", "threads": threads, "warmup": warmup, "repeat": repeat,
                               "size": liff_size, "scales": [2, 4],
                               "widths": {n: cfg.to_dict() for n, cfg in widths.items()}}))
            liff.pop("peak_mb")
        described = {role: _describe(models[role]) for role in ("scalable", "single")}
    heif = pillow_heif.libheif_info()
    meta = {"threads": threads, "repeat": repeat, "repeat_large": repeat_large, "warmup": warmup,
            "cpu": _cpu_name(), "python": platform.python_version(), "torch": torch.__version__,
            "pillow": PIL.__version__, "pillow_heif": pillow_heif.__version__, "libheif": heif.get("libheif"),
            "x265": heif.get("encoders", {}).get("x265"), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    return {"meta": meta, "models": {**described, "random": models["random"],
                                     "note": RANDOM_NOTE if models["random"] else None},
            "layers": list(layers), "rates": rates, "idle_rss_mb": idle, "cases": cases, "liff": liff}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------- the report


def _ms(s: dict) -> str:
    return f"{s['median']:9.1f} [{s['q1']:.1f}-{s['q3']:.1f}]"


def format_report(res: dict) -> str:
    """The results as text tables."""
    m, r = res["meta"], res["rates"]
    lines = [f"compass bench: {m['threads']} thread(s), {m['cpu']}, torch {m['torch']}, x265 {m['x265']}",
             f"models: {res['models']['scalable']['name']} / {res['models']['single']['name']}"]
    if res["models"]["note"]:
        lines.append(f"NOTE {res['models']['note']}")
    lines.append(f"rates: compass q={r['compass_quality']:.3f}, single q={r['single_quality']:.3f}, "
                 f"JPEG 2000 {r['jpeg2000_bpp']} bpp, HEVC QP {r['hevc_qp']} "
                 f"({'searched' if r['calibrated'] else 'given or default'} for {r['target_bpp']} bpp)")
    lines.append(f"idle child (imports only) peak RSS: {res['idle_rss_mb']:.0f} MiB; times in ms, median [IQR]")
    idle = res["idle_rss_mb"]
    for case in res["cases"].values():
        lines += ["", f"{case['width']}x{case['height']} ({case['image']}), {case['repeat']} runs",
                  f"{'codec':10} {'bpp':>6} {'encode':>24} {'decode':>24} {'peak MiB enc/dec (over idle)':>30}"]
        for name, c in case["codecs"].items():
            p = c["peak_mb"]
            lines.append(f"{name:10} {c['bpp']:6.3f} {_ms(c['encode']):>24} {_ms(c['decode']):>24} "
                         f"{p['encode']:7.0f} /{p['decode']:6.0f} ({p['encode'] - idle:.0f} / {p['decode'] - idle:.0f})")
        for k, l in enumerate(case["codecs"]["compass"]["layers"]):
            lines.append(f"  compass layer {k} {l['width']}x{l['height']}: {l['bpp']:.3f} bpp, decode to it "
                         f"{_ms(l['decode_to']).strip()}, increment {_ms(l['decode_increment']).strip()}")
        ra = case["ratios"]
        lines.append(f"decode all layers / single-layer decode: {ra['decode_all_over_single']:.2f}x "
                     f"(target <= {ra['decode_all_over_single_target']}x)")
        for other in ("jpeg2000", "hevc"):
            x = ra[f"compass_over_{other}"]
            lines.append(f"compass / {other}: encode {x['encode']:.1f}x, decode {x['decode']:.1f}x")
        fits = case["fits_memory"]
        lines.append(f"compass within {case['memory_limit_mb'] / 1024:.0f} GiB: encode {'yes' if fits['encode'] else 'NO'}, "
                     f"decode {'yes' if fits['decode'] else 'NO'}")
        for op in ("decode", "encode"):
            sec = case["codecs"]["compass"][f"{op}_sections"]
            lines.append(f"compass {op} time by section: " + ", ".join(
                f"{k} {v['share'] * 100:.0f}%" for k, v in sorted(sec.items(), key=lambda kv: -kv[1]["share"])))
        if "profile" in case["codecs"]["compass"]:
            lines.append("compass decode profile (torch operators, self time, one decode):")
            for e in case["codecs"]["compass"]["profile"]:
                lines.append(f"  {e['op']:40} {e['self_ms']:9.1f} ms {e['share'] * 100:5.1f}%  x{e['calls']}")
    liff = res["liff"]
    lines += ["", "LIFF multiply-adds per output pixel (MLP part; RDN apart, common to both)",
              f"{'widths':7} {'scale':>5} {'direct':>9} {'factorized':>10} {'ratio':>6} {'RDN':>8}"]
    for e in liff["macs"]:
        lines.append(f"{e['widths']:7} {e['scale']:>5} {e['direct']:9d} {e['factorized']:10d} {e['ratio']:6.2f} "
                     f"{e['rdn']:8d}")
    if "micro" in liff:
        lines += ["LIFF MLP part, factorized vs direct (same RDN features), ms median [IQR]"]
        for e in liff["micro"]:
            goal = f" (target >= {e['target_speedup']}x)" if e["target_speedup"] else ""
            lines.append(f"  {e['widths']:6} {e['scale']}x to {e['target'][1]}x{e['target'][0]}: direct "
                         f"{_ms(e['direct']).strip()}, factorized {_ms(e['factorized']).strip()}, speedup "
                         f"{e['speedup']:.2f}x{goal}, max |diff| {e['max_abs_diff']:.1e}")
    return "\n".join(lines)


def write_json(res: dict, path: str | Path) -> None:
    from .fileutil import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(res, indent=2) + "\n").encode())


if __name__ == "__main__":
    child_main()
