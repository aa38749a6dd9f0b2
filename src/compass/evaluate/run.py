"""`compass eval`: rate-distortion points of COMPASS and every baseline on a test set, cached, summarised by BD-rate.

Configurations, the paper's: two layers with the top layer 1.2x .. 2.8x the base, three layers with the top
2.4x .. 4.0x the base and the middle layer at the geometric middle (both steps sqrt(T), so 4.0x is 1 -> 2 -> 4).
The top layer is the image itself; each lower layer is the image downscaled by `resample.resize` to the sizes of
`plan_from_scales` (sizes are rounded from the top down, so the base may be 1 px off round(H / T)).

Methods (rate parameter in brackets), all scored against the same uint8 layer targets unless said otherwise:
  compass             the scalable model as `compass encode` codes by default (layer mode auto: each layer above
                      the base predicted, or intra where that costs less); one file, every layer decoded from it [q]
  predicted           the same model with every layer above the base predicted: the paper's coding [q]
  ablation            the same weights with bicubic instead of LIFF predictions, every layer predicted [q]; its
                      residual codec was trained on LIFF residuals, so this is a lower bound on a bicubic-trained
                      system
  simulcast           every layer coded alone by the single-layer codec, each as a 1-layer compass file [q]
  single              the top layer alone, single-layer codec [q]
  jpeg2000            JPEG 2000's own dyadic resolution scalability, dyadic configurations only [bpp of the
                      full stream]; its lower layers are wavelet low-passes, scored against its own 9/7 low-pass
  jpeg2000-simulcast  every layer coded alone by JPEG 2000 at the same target bpp [bpp]
  hevc-simulcast      every layer coded alone by HEVC intra 4:4:4 (x265), our stand-in for SHVC [qp]
  hevc-single         the top layer alone by HEVC intra 4:4:4 [qp]

Bytes ("bytes", headers included, accumulated over layers 0..k; bpp over layer k's pixels):
  compass, predicted, ablation
                      the real file prefix a decoder needs for layer k: header + chunks 0..k (`bitstream.info`)
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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import pillow_heif
import torch
from tqdm import tqdm

from .. import DEFAULT_MODEL, DEFAULT_SINGLE
from . import QUICK_IMAGES
from ..api import Compass
from ..paths import data_dir, portable
from ..provenance import flatten
from ..resample import plan_from_scales
from ..weights import WeightsError, load_weights
from .baselines import BASELINES, HEVC_ENC_PARAMS
from .coding import (Cache, EvalImage, classical_layer_job, key_digest, levels_job, list_images, neural_layer_job,
                     scalable_job)
from .report import write_report
from .summary import summarize

CACHE_FORMAT = 1  # bump when a job's record changes meaning


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
    layer_mode: str = "predicted"  # scalable methods: how layers above the base are coded (`Compass.encode`)
    predictor: str = "liff"  # scalable methods: "liff", or "bicubic" for the ablation


METHODS = {m.name: m for m in (
    Method("compass", "COMPASS", "compass", "scalable", layer_mode="auto"),
    Method("predicted", "COMPASS, every layer predicted (the paper's coding)", "compass", "scalable"),
    Method("ablation", "COMPASS with LIFF swapped for bicubic, residual codec kept (not the paper's ablation)",
           "compass", "scalable", predictor="bicubic"),
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
            if m.kind == "scalable" and m.predictor not in self.codecs:
                self.codecs[m.predictor] = Compass(model, predictor=m.predictor)
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
            codec, mode = self.codecs[method.predictor], method.layer_mode
            # keys of every-layer-predicted files keep their first form (the files did not change)
            key = dict(key, job="scalable", predictor="compass" if method.predictor == "liff" else "ablation",
                       sizes=plan, **({} if mode == "predicted" else {"layer_mode": mode}))
            return [_Job(key, lambda: scalable_job(codec, image, plan, param, mode))]
        if method.kind == "levels":
            return [_Job(dict(key, job="jpeg2000-levels", sizes=plan), lambda: levels_job(image, plan, param))]
        sizes = plan[-1:] if method.kind == "single" else plan
        return [_Job(dict(key, job="layer", codec=method.codec, size=size),
                     self._layer_runner(method, image, size, param)) for size in sizes]

    def _layer_runner(self, method: Method, image: EvalImage, size, param):
        if method.codec == "neural":
            return lambda: neural_layer_job(self.single, image, size, param)
        return lambda: classical_layer_job(method.codec, image, size, param)


def _describe(obj: dict, source, digest: str) -> dict:
    shown = portable(source) if Path(source).is_file() else str(source)  # a weights file, or a registered name
    return {"name": obj["name"], "source": shown, "sha256": digest, "config": obj["config"],
            "info": flatten(obj.get("info", {}))}


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
            unique.setdefault(key_digest(job.key), job)
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
        "points": [_assemble(pt, [records[key_digest(j.key)] for j in pt.jobs]) for pt in points],
    }
    results["summary"] = summarize(results)
    results["stats"] = {"jobs": len(unique), "run": ran, "cached": len(unique) - ran,
                        "seconds": round(time.perf_counter() - t0, 1)}
    if out is not None:
        write_report(results, out, _visual_points(ctx, points, results["points"], test_images[0], cfgs))
    return results



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
