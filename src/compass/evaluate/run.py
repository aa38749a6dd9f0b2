"""`compass eval`: rate-distortion points of COMPASS and every baseline on a test set, cached, summarised by BD-rate.

Configurations, the paper's: two layers with the top layer 1.2x .. 2.8x the base, three layers with the top
2.4x .. 4.0x the base and the middle layer at the geometric middle (both steps sqrt(T), so 4.0x is 1 -> 2 -> 4).
The top layer is the image itself; each lower layer is the image downscaled by `resample.resize` to the sizes of
`plan_from_scales` (sizes are rounded from the top down, so the base may be 1 px off round(H / T)).

Methods (rate parameter in brackets), all scored against the same uint8 layer targets unless said otherwise:
  compass             the scalable model; one file, every layer decoded from it [q]
  ablation            the same weights with bicubic instead of LIFF predictions [q]; its residual codec was
                      trained on LIFF residuals, so this is a lower bound on a bicubic-trained system
  simulcast           every layer coded alone by the single-layer codec, each as a 1-layer compass file [q]
  single              the top layer alone, single-layer codec [q]
  jpeg2000            JPEG 2000's own dyadic resolution scalability, dyadic configurations only [bpp of the
                      full stream]; its lower layers are wavelet low-passes, scored against its own 9/7 low-pass
  jpeg2000-simulcast  every layer coded alone by JPEG 2000 at the same target bpp [bpp]
  hevc-simulcast      every layer coded alone by HEVC intra 4:4:4 (x265), our stand-in for SHVC [qp]
  hevc-single         the top layer alone by HEVC intra 4:4:4 [qp]

Bytes ("bytes", headers included, accumulated over layers 0..k; bpp over layer k's pixels):
  compass, ablation   the real file prefix a decoder needs for layer k: header + chunks 0..k (`bitstream.info`)
  simulcast, single   the sum of real 1-layer compass files (header, chunk framing, strings; written and read
                      back with `bitstream`, decoded from what was read)
  jpeg2000            the raw J2K codestream prefix for that resolution (measured, no JP2 boxes)
  jpeg2000-simulcast  the sum of raw J2K codestreams
  hevc-*              the sum of HEVC streams as Annex-B files (parameter sets + NAL units; the .heic container,
                      about 290 bytes an image, is not counted)
"bytes_noheader": compass files less their file header (chunk framing kept); the classical codecs' counts are
already free of container headers and are repeated unchanged.

Every coding job (one file for compass, one layer for the others) is cached as JSON under its key's sha256; keys
hold the weights' sha256, the image's pixel hash, the sizes, the rate parameter and library versions.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import pillow_heif
import torch
from tqdm import tqdm

from .. import DEFAULT_MODEL, DEFAULT_SINGLE, bitstream
from ..api import Compass
from ..errors import CompassError
from ..fileutil import atomic_write_bytes
from ..imageio import load_image, to_pixels, to_tensor
from ..paths import data_dir, portable
from ..resample import plan_from_scales, resize
from ..weights import WeightsError, load_weights
from .baselines import BASELINES, HEVC_ENC_PARAMS, jpeg2000_levels, jpeg2000_lowpass
from .bdrate import BDWarning, bd_problem, bd_psnr, bd_rate
from .metrics import ms_ssim, ms_ssim_scales, psnr, to_float
from .report import write_report

CACHE_FORMAT = 1  # bump when a job's record changes meaning
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
QUICK_IMAGES = 3


@dataclass(frozen=True)
class Config:
    """A layer configuration: `layers` layers, the top one `top` times the base's size."""

    name: str
    layers: int
    top: float

    @property
    def scales(self) -> tuple[float, ...]:
        """Factors between adjacent layers: equal steps, so a 3-layer middle layer sits at the geometric middle."""
        step = self.top ** (1 / (self.layers - 1))
        return (step,) * (self.layers - 1)

    @property
    def dyadic(self) -> bool:
        return all(abs(s - 2.0) < 1e-9 for s in self.scales)


CONFIGS = tuple([Config(f"2L-{t}x", 2, t) for t in (1.2, 1.6, 2.0, 2.4, 2.8)]
                + [Config(f"3L-{t}x", 3, t) for t in (2.4, 2.8, 3.2, 3.6, 4.0)])


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    codec: str  # "compass", "neural" (the single-layer model), or a BASELINES name
    kind: str  # "scalable" (one job, all layers), "simulcast", "single" (top layer only) or "levels"


METHODS = {m.name: m for m in (
    Method("compass", "COMPASS", "compass", "scalable"),
    Method("ablation", "COMPASS with LIFF swapped for bicubic, residual codec kept (not the paper's ablation)",
           "compass", "scalable"),
    Method("simulcast", "Simulcast (single-layer codec)", "neural", "simulcast"),
    Method("single", "Single-layer (single-layer codec)", "neural", "single"),
    Method("jpeg2000", "JPEG 2000, own resolution scalability", "jpeg2000", "levels"),
    Method("jpeg2000-simulcast", "JPEG 2000 simulcast", "jpeg2000", "simulcast"),
    Method("hevc-simulcast", "HEVC-444 simulcast (x265)", "hevc444", "simulcast"),
    Method("hevc-single", "HEVC-444 single-layer (x265)", "hevc444", "single"),
)}

SWEEPS = {"compass": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "neural": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
          "jpeg2000": BASELINES["jpeg2000"].sweep, "hevc444": BASELINES["hevc444"].sweep}
QUICK_SWEEPS = {"compass": (0.0, 0.5, 1.0), "neural": (0.0, 0.5, 1.0), "jpeg2000": (0.15, 0.5, 1.5),
                "hevc444": (42, 32, 22)}
PARAMETER = {"compass": "q", "neural": "q", "jpeg2000": "bpp", "hevc444": "qp"}


def applies(method: Method, config: Config) -> bool:
    """JPEG 2000's own scalability only has factors of 2 between layers."""
    return method.kind != "levels" or config.dyadic


# ---------------------------------------------------------------- images and scores


class EvalImage:
    """One test image with its layer targets (uint8, the same `resize` the codec uses), made once per size."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.name
        self.pixels = load_image(path).pixels
        self.sha256 = hashlib.sha256(repr(self.pixels.shape).encode() + self.pixels.tobytes()).hexdigest()
        self._targets: dict[tuple[int, int], np.ndarray] = {}
        self._lowpass: dict[int, np.ndarray] = {}

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]

    def target(self, size: tuple[int, int]) -> np.ndarray:
        size = tuple(size)
        if size not in self._targets:
            self._targets[size] = to_pixels(resize(to_tensor(self.pixels), size))
        return self._targets[size]

    def lowpass(self, reduce: int) -> np.ndarray:
        if reduce not in self._lowpass:
            self._lowpass[reduce] = jpeg2000_lowpass(self.pixels, reduce)
        return self._lowpass[reduce]


def list_images(folder: str | Path, count: int | None = None) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CompassError(f"{folder}: no such folder of test images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise CompassError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths[:count] if count else paths


def score(reference: np.ndarray, decoded: np.ndarray) -> dict:
    """RGB PSNR and MS-SSIM of uint8 images; MS-SSIM is None below its 11 px minimum."""
    a, b = to_float(reference), to_float(decoded)
    return {"psnr": psnr(a, b), "ms_ssim": ms_ssim(a, b) if ms_ssim_scales(*a.shape[:2]) else None}


def _layer(ref: np.ndarray, decoded: np.ndarray, num_bytes: int, noheader: int, **extra) -> dict:
    return {"height": decoded.shape[0], "width": decoded.shape[1], "bytes": int(num_bytes),
            "bytes_noheader": int(noheader), **score(ref, decoded), **extra}


# ---------------------------------------------------------------- coding jobs
# Each returns (record, decoded images): the record is cached, the images only serve the visual comparison.


def _scalable_job(codec: Compass, image: EvalImage, plan, q: float):
    data = codec.encode(image.pixels, sizes=plan, quality=q)
    meta = bitstream.info(data)
    decoded = codec.decode_all(data)
    layers = [_layer(image.target(size), img, m["total_bytes"], m["total_bytes"] - meta["header_bytes"])
              for size, img, m in zip(plan, decoded, meta["layers"])]
    return {"layers": layers, "header_bytes": meta["header_bytes"]}, decoded


def _neural_layer_job(single: Compass, image: EvalImage, size, q: float):
    """Code one layer as a real 1-layer compass file, then decode it from the bytes."""
    target = image.target(size)
    data = single.encode(target, layers=(1.0,), quality=q)
    img = single.decode(data)
    header_bytes = bitstream.info(data)["header_bytes"]
    return {"layers": [_layer(target, img, len(data), len(data) - header_bytes)]}, [img]


def _classical_layer_job(codec: str, image: EvalImage, size, param):
    target = image.target(size)
    coded = BASELINES[codec].code(target, param)
    extra = {"container_bytes": coded.info["file_bytes"]} if "file_bytes" in coded.info else {}
    return {"layers": [_layer(target, coded.image, coded.num_bytes, coded.num_bytes, **extra)]}, [coded.image]


def _levels_job(image: EvalImage, plan, bpp: float):
    """JPEG 2000 coded once; layer k decoded at reduce K-k from its codestream prefix, scored vs its own low-pass.

    `psnr_bicubic` scores the same decode against compass's bicubic target where the sizes agree.
    """
    reduces = tuple(range(len(plan) - 1, -1, -1))
    coded = jpeg2000_levels(image.pixels, bpp, reduces)
    layers, decoded = [], []
    for size, r in zip(plan, reduces):
        c = coded[r]
        extra = {}
        if r and c.image.shape[:2] == tuple(size):
            extra["psnr_bicubic"] = psnr(to_float(image.target(size)), to_float(c.image))
        ref = image.lowpass(r) if r else image.pixels
        layers.append(_layer(ref, c.image, c.num_bytes, c.num_bytes, reference="j2k-lowpass" if r else "image",
                             **extra))
        decoded.append(c.image)
    return {"layers": layers}, decoded


# ---------------------------------------------------------------- cache


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class Cache:
    """Job records as JSON files named by the sha256 of their key; `folder=None` keeps nothing."""

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder is not None else None

    def _path(self, key: dict) -> Path | None:
        if self.folder is None:
            return None
        h = _digest(key)
        return self.folder / h[:2] / f"{h}.json"

    def get(self, key: dict) -> dict | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed
        return entry["record"] if entry.get("key") == json.loads(json.dumps(key)) else None

    def put(self, key: dict, record: dict) -> None:
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, json.dumps({"key": key, "record": record}).encode())


# ---------------------------------------------------------------- the evaluation


@dataclass
class _Job:
    key: dict
    run: Callable[[], tuple[dict, list[np.ndarray]]]


@dataclass
class _Point:
    method: Method
    config: Config
    image: EvalImage
    param: float
    plan: list[tuple[int, int]]
    jobs: list[_Job]


class _Context:
    """Loaded codecs and the fixed parts of every cache key."""

    def __init__(self, methods: Sequence[Method], model, single):
        self.models: dict[str, dict] = {}
        self.codecs: dict[str, Compass] = {}
        obj, digest = _load(model, "scalable")
        self.models["compass"] = _describe(obj, model, digest)
        for m in methods:
            if m.name in ("compass", "ablation"):
                self.codecs[m.name] = Compass(model, predictor="liff" if m.name == "compass" else "bicubic")
        self.single = None
        if any(m.codec == "neural" for m in methods):
            obj, digest = _load(single, "single-layer")
            self.single = Compass(single)
            self.models["single"] = _describe(obj, single, digest)
        versions = {"format": CACHE_FORMAT, "torch": torch.__version__}
        self.keys = {"compass": dict(versions, model=self.models["compass"]["sha256"]),
                     "neural": dict(versions, model=self.models.get("single", {}).get("sha256")),
                     "hevc444": {"format": CACHE_FORMAT, "pillow_heif": pillow_heif.__version__,
                                 "libheif": pillow_heif.libheif_version(), "params": HEVC_ENC_PARAMS},
                     "jpeg2000": {"format": CACHE_FORMAT, "pillow": PIL.__version__}}

    def jobs(self, method: Method, image: EvalImage, plan, param) -> list[_Job]:
        key = dict(self.keys[method.codec], image=image.sha256, param=param)
        if method.kind == "scalable":
            codec = self.codecs[method.name]
            return [_Job(dict(key, job="scalable", predictor=method.name, sizes=plan),
                         lambda: _scalable_job(codec, image, plan, param))]
        if method.kind == "levels":
            return [_Job(dict(key, job="jpeg2000-levels", sizes=plan), lambda: _levels_job(image, plan, param))]
        sizes = plan[-1:] if method.kind == "single" else plan
        return [_Job(dict(key, job="layer", codec=method.codec, size=size),
                     self._layer_runner(method, image, size, param)) for size in sizes]

    def _layer_runner(self, method: Method, image: EvalImage, size, param):
        if method.codec == "neural":
            return lambda: _neural_layer_job(self.single, image, size, param)
        return lambda: _classical_layer_job(method.codec, image, size, param)


def _describe(obj: dict, source, digest: str) -> dict:
    shown = portable(source) if Path(source).is_file() else str(source)  # a weights file, or a registered name
    return {"name": obj["name"], "source": shown, "sha256": digest, "config": obj["config"],
            "info": obj.get("info", {})}


def _load(model, role: str) -> tuple[dict, str]:
    try:
        return load_weights(model)
    except WeightsError as e:
        raise WeightsError(f"the {role} model {str(model)!r} is not available: {e}") from None


def _assemble(point: _Point, records: list[dict]) -> dict:
    """A point's layers, base first: bytes accumulated over the layers coded so far, bpp over each layer's pixels."""
    if point.method.kind in ("scalable", "levels"):
        layers = [dict(l) for l in records[0]["layers"]]
        first = 0
    else:
        layers, total, noheader = [], 0, 0
        for rec in records:
            l = dict(rec["layers"][0])
            total += l["bytes"]
            noheader += l["bytes_noheader"]
            layers.append(dict(l, bytes=total, bytes_noheader=noheader))
        first = len(point.plan) - len(layers)
    below = 0
    for k, l in enumerate(layers, first):
        pixels = l["height"] * l["width"]
        l.update(layer=k, layer_bytes=l["bytes"] - below, bpp=8 * l["bytes"] / pixels,
                 bpp_noheader=8 * l["bytes_noheader"] / pixels)
        below = l["bytes"]
    return {"method": point.method.name, "config": point.config.name, "image": point.image.name,
            "parameter": PARAMETER[point.method.codec], "param": point.param, "layers": layers}


def _check_methods(methods) -> list[Method]:
    names = list(METHODS) if methods is None else list(dict.fromkeys(["compass", *methods]))
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    return [METHODS[n] for n in names]


def _check_configs(configs) -> list[Config]:
    if configs is None:
        return list(CONFIGS)
    known = {c.name: c for c in CONFIGS}
    unknown = [n for n in configs if n not in known]
    if unknown:
        raise ValueError(f"unknown configuration(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in configs]


def evaluate(data: str | Path | None = None, out: str | Path | None = None, *, quick: bool = False,
             model: str | Path = DEFAULT_MODEL, single: str | Path = DEFAULT_SINGLE,
             methods: Sequence[str] | None = None, images: int | None = None, configs: Sequence[str] | None = None,
             cache: str | Path | None = None, progress: bool = True, shard: tuple[int, int] | None = None) -> dict:
    """Code every image of `data` (default: Kodak) with every method, configuration and rate point; summarise.

    `methods`: the baselines to run (compass always runs); `configs`: names from CONFIGS (default all).
    `quick`: 3 images (unless `images` says otherwise) and 3 rate points per method. Jobs are cached in `cache`
    (default OUT/cache; none without `out`). `shard` (i, n): only fill the cache with the i-th of n disjoint
    shares of the jobs (n processes side by side use the cores better than one; a run without `shard` then
    assembles) and return just the stats. With `out`, writes results.json, report.md, the RD plots and the
    visual comparison there (see `report.write_report`). Returns {"setup", "points", "summary", "stats"}.
    """
    t0 = time.perf_counter()
    chosen = _check_methods(methods)
    cfgs = _check_configs(configs)
    folder = Path(data) if data is not None else data_dir("kodak")
    in_folder = list_images(folder)
    paths = in_folder[:images or (QUICK_IMAGES if quick else None)]
    ctx = _Context(chosen, model, single)
    sweeps = QUICK_SWEEPS if quick else SWEEPS
    if out is not None and cache is None:
        cache = Path(out) / "cache"
    store = Cache(cache)

    test_images = [EvalImage(p) for p in paths]
    points: list[_Point] = []
    for image in test_images:
        for config in cfgs:
            plan = plan_from_scales(*image.size, config.scales)
            for method in chosen:
                if applies(method, config):
                    points += [_Point(method, config, image, p, plan, ctx.jobs(method, image, plan, p))
                               for p in sweeps[method.codec]]
    unique = {}
    for pt in points:
        for job in pt.jobs:
            unique.setdefault(_digest(job.key), job)
    if shard is not None:
        if store.folder is None:
            raise ValueError("a shard needs a cache to fill")
        i, n = shard
        unique = {h: job for h, job in unique.items() if int(h, 16) % n == i}
    records, ran = {}, 0
    for h, job in tqdm(unique.items(), desc="compass eval", unit="job", disable=not progress):
        rec = store.get(job.key)
        if rec is None:
            rec = job.run()[0]
            store.put(job.key, rec)
            ran += 1
        records[h] = rec
    if shard is not None:
        return {"stats": {"jobs": len(unique), "run": ran, "cached": len(unique) - ran,
                          "seconds": round(time.perf_counter() - t0, 1)}}

    results = {
        "setup": {"data": portable(folder), "quick": quick, "models": ctx.models,
                  "images_in_folder": len(in_folder),
                  "images": [{"name": im.name, "sha256": im.sha256, "height": im.size[0], "width": im.size[1]}
                             for im in test_images],
                  "configs": {c.name: {"layers": c.layers, "top": c.top, "scales": list(c.scales),
                                       "sizes": plan_from_scales(*test_images[0].size, c.scales)} for c in cfgs},
                  "methods": {m.name: {"label": m.label, "codec": m.codec, "kind": m.kind,
                                       "parameter": PARAMETER[m.codec], "sweep": list(sweeps[m.codec])}
                              for m in chosen}},
        "points": [_assemble(pt, [records[_digest(j.key)] for j in pt.jobs]) for pt in points],
    }
    results["summary"] = summarize(results)
    results["stats"] = {"jobs": len(unique), "run": ran, "cached": len(unique) - ran,
                        "seconds": round(time.perf_counter() - t0, 1)}
    if out is not None:
        write_report(results, out, _visual_points(ctx, points, results["points"], test_images[0], cfgs))
    return results


# ---------------------------------------------------------------- summary


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _db(ms: float) -> float:
    """MS-SSIM in dB, -10 log10(1 - MS-SSIM), the usual axis for BD on MS-SSIM."""
    return math.inf if ms >= 1 else -10 * math.log10(1 - ms)


def mean_curves(points: list[dict]) -> dict:
    """{method: {config: {layer: {param, bpp, bpp_noheader, psnr, ms_ssim, psnr_bicubic?}}}}, lists in sweep order.

    Each rate point is averaged over the images (mean bpp, mean PSNR, mean MS-SSIM at one q / qp / target bpp),
    the way published Kodak curves are; MS-SSIM is None where a layer is too small for it.
    """
    groups: dict = {}
    for p in points:
        for l in p["layers"]:
            groups.setdefault((p["method"], p["config"], l["layer"]), {}).setdefault(p["param"], []).append(l)
    curves: dict = {}
    for (method, config, layer), by_param in groups.items():
        params = list(by_param)
        c = {"param": params}
        for f in ("bpp", "bpp_noheader", "psnr", "ms_ssim", "psnr_bicubic"):
            vals = [_mean(l.get(f) for l in by_param[p]) for p in params]
            if any(v is not None for v in vals):
                c[f] = vals
        curves.setdefault(method, {}).setdefault(config, {})[str(layer)] = c
    return curves


def _bd(test: dict, anchor: dict) -> dict:
    """BD-rate (PSNR, PSNR without headers, MS-SSIM dB) and BD-PSNR of test vs anchor; None + reason where NaN."""
    out = {}
    pairs = {"bd_rate": (bd_rate, "bpp", "psnr"), "bd_rate_noheader": (bd_rate, "bpp_noheader", "psnr"),
             "bd_psnr": (bd_psnr, "bpp", "psnr"), "bd_rate_msssim": (bd_rate, "bpp", "ms_ssim")}
    for name, (fn, rate, quality) in pairs.items():
        if quality not in test or quality not in anchor or None in test[quality] or None in anchor[quality]:
            out[name], out[f"{name}_reason"] = None, f"no {quality} on every point (layer too small)"
            continue
        qt, qa = test[quality], anchor[quality]
        if quality == "ms_ssim":
            qt, qa = [_db(v) for v in qt], [_db(v) for v in qa]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BDWarning)
            value = fn(test[rate], qt, anchor[rate], qa)
        out[name] = None if math.isnan(value) else value
        if out[name] is None:
            out[f"{name}_reason"] = (bd_problem(test[rate], qt, anchor[rate], qa, "psnr" if fn is bd_psnr else "rate")
                                     or "the Bjontegaard integral is undefined for these curves")
    return out


def summarize(results: dict) -> dict:
    """Mean curves, and BD values of compass against every other method on each configuration's top layer."""
    curves = mean_curves(results["points"])
    bd: dict = {}
    for method in results["setup"]["methods"]:
        if method == "compass":
            continue
        for config, info in results["setup"]["configs"].items():
            top = str(info["layers"] - 1)
            anchor = curves.get(method, {}).get(config, {}).get(top)
            test = curves.get("compass", {}).get(config, {}).get(top)
            if anchor is not None and test is not None:
                bd.setdefault(method, {})[config] = _bd(test, anchor)
    return {"averaging": "per rate point: mean bpp and mean quality over the images", "curves": curves, "bd": bd}


# ---------------------------------------------------------------- the visual comparison


def _visual_points(ctx: _Context, points: list[_Point], records: list[dict], image: EvalImage,
                   cfgs: list[Config]) -> dict:
    """Decoded layers of one image, for compass, simulcast and JPEG 2000 at about the same top-layer rate.

    Configuration 3L-4.0x when evaluated (JPEG 2000's own scalability applies there), else the last one; compass
    at its middle rate point, the others at the point whose top-layer bpp is closest to compass's.
    """
    config = next((c for c in cfgs if c.name == "3L-4.0x"), cfgs[-1])
    mine = [(pt, rec) for pt, rec in zip(points, records) if pt.image is image and pt.config == config]
    compass = [(pt, rec) for pt, rec in mine if pt.method.name == "compass"]
    anchor = compass[len(compass) // 2]
    rate = anchor[1]["layers"][-1]["bpp"]
    chosen = [anchor]
    j2k = "jpeg2000" if any(pt.method.name == "jpeg2000" for pt, _ in mine) else "jpeg2000-simulcast"
    for name in ("simulcast", j2k):
        cands = [(pt, rec) for pt, rec in mine if pt.method.name == name]
        if cands:
            chosen.append(min(cands, key=lambda c: abs(c[1]["layers"][-1]["bpp"] - rate)))
    rows = []
    for pt, rec in chosen:
        decoded = [img for job in pt.jobs for img in job.run()[1]]
        rows.append({"label": pt.method.label, "param": pt.param, "parameter": rec["parameter"],
                     "layers": rec["layers"], "images": decoded})
    return {"image": image.name, "config": config.name,
            "targets": [image.target(s) for s in plan_from_scales(*image.size, config.scales)], "rows": rows}
