"""The benchmark run: rates searched for every codec, then each measurement in its own child process, on the
test image and the large one."""
from __future__ import annotations

import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..errors import CompassError
from ..procs import Child, Died
from . import BPP, LARGE_SIZE, LAYERS, LIFF_SIZE, REPEAT, REPEAT_LARGE, THREADS, WARMUP
from .jobs import hevc_params
from .measure import liff_macs, liff_widths, make_large

DECODE_RATIO_TARGET = 1.5  # decode of all 3 layers / single-layer decode at the top size (the target)
MEMORY_LIMIT_MB = 3 * 1024  # a 4K image must encode and decode within 3 GiB
RANDOM_NOTE = ("random weights: transform and LIFF timings are representative, entropy coding is not (latents of "
               "an untrained codec are nearly all zero) and rates are not comparable")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPJ_NUM_THREADS")


def spawn(spec: dict) -> dict:
    """Run one job in a fresh interpreter with the spec's thread count; returns its result."""
    child = Child("compass.bench.jobs:child", env={v: str(spec["threads"]) for v in THREAD_VARS},
                  stderr=subprocess.DEVNULL)
    try:
        return child.ask(spec)
    except Died as e:
        raise CompassError(f"bench job {spec['job']} failed:\n{(e.error or str(e)).strip()[-2000:]}") from None
    finally:
        child.close()


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

    from ..api import Compass
    from ..bitstream import quantize_quality
    from ..evaluate.baselines import hevc_encode, hevc_stream_bytes
    from ..models import load
    from ..pixels import to_tensor

    px = pixels.shape[0] * pixels.shape[1]
    out = {"target_bpp": bpp, "jpeg2000_bpp": bpp, "calibrated": trained}
    params = hevc_params(threads)
    hevc = _bisect(lambda qp: hevc_stream_bytes(hevc_encode(pixels, 51 - qp, params)) * 8 / px, 0, 51, bpp, 8,
                   integer=True)
    out["hevc_qp"] = 51 - hevc[0]
    if not trained:
        return {**out, "compass_quality": 0.5, "single_quality": 0.5}
    codec = Compass(scalable)
    plan = codec.plan(*pixels.shape[:2], layers=layers)
    out["compass_quality"] = quantize_quality(_bisect(
        lambda q: len(codec.encode(pixels, sizes=plan, quality=q)) * 8 / px, 0.0, 1.0, bpp, 6)[0])
    sc = load(single).model.base
    x = to_tensor(pixels)
    with torch.no_grad():
        out["single_quality"] = quantize_quality(_bisect(
            lambda q: sum(map(len, sc.compress(x, quantize_quality(q), reconstruct=False)["strings"])) * 8 / px,
            0.0, 1.0, bpp, 6)[0])
    return out


def _models(model, single, workdir: Path) -> dict:
    """Weights to run: the given ones, else the registered defaults, else random-weight models of the cpu size."""
    from .. import DEFAULT_MODEL, DEFAULT_SINGLE
    from ..models import random_model, save
    from ..weights import registered

    names = registered()
    model = model or (DEFAULT_MODEL if DEFAULT_MODEL in names else None)
    single = single or (DEFAULT_SINGLE if DEFAULT_SINGLE in names else None)
    out = {"scalable": str(model) if model else None, "single": str(single) if single else None,
           "random": model is None or single is None}
    if model is None:
        out["scalable"] = str(workdir / "random-cpu.pt")
        save(random_model("cpu"), "compass-bench-random", out["scalable"])
    if single is None:
        out["single"] = str(workdir / "random-cpu-single.pt")
        save(random_model("cpu", single=True), "compass-bench-random-single", out["single"])
    return out


def _describe(spec: str) -> dict:
    from ..weights import load_weights

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


def run(image: str | Path | None = None, *, model=None, single=None, layers=LAYERS, bpp: float = BPP,
        quality: float | None = None, qp: int | None = None, repeat: int = REPEAT, repeat_large: int = REPEAT_LARGE,
        warmup: int = WARMUP, large: tuple[int, int] | None = LARGE_SIZE, threads: int = THREADS,
        liff_size: int = LIFF_SIZE, log=None) -> dict:
    """The whole benchmark; returns the results `format_report` prints (and `--json` writes).

    `quality` (compass and single-layer) and `qp` (HEVC) skip the rate search; `large=None` skips the large
    image; `liff_size` is the side of the LIFF micro-benchmark's output (0 skips it).
    """
    import PIL
    import pillow_heif
    import torch

    from ..imageio import load_image
    from ..paths import data_dir

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

