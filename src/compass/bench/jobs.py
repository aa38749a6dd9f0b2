"""The benchmark's measurements, each run by `child` in a fresh process (`procs.Child`) that reports its own
peak memory: compass, its single-layer codec, JPEG 2000 and HEVC, encode and decode; LIFF's query."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import CompassError
from ..procstat import peak_rss_mb, status_mb
from .measure import instrument, measure, profile, section_summary, stats

LIFF_SPEEDUP_TARGET = {2: 2.0, 4: 2.5}  # factorized / direct MLP speed with the paper's widths


def _scalable(spec: dict):
    from ..api import Compass

    codec = Compass(spec["model"])
    return codec, instrument({"base": codec.model.base, "residual": codec.model.residual}, codec.model.liff)


def _job_compass_encode(spec: dict, pixels: np.ndarray) -> dict:
    codec, sec = _scalable(spec)
    plan = codec.plan(*pixels.shape[:2], layers=spec["layers"])
    ready = status_mb("VmRSS")
    times, runs, data = measure(lambda: codec.encode(pixels, sizes=plan, quality=spec["quality"]),
                                 spec["warmup"], spec["repeat"], sec)
    Path(spec["stream"]).write_bytes(data)
    return {"encode": stats(times), "encode_sections": section_summary(runs, times), "bytes": len(data),
            "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_compass_decode(spec: dict, pixels: np.ndarray) -> dict:
    from .. import bitstream

    codec, sec = _scalable(spec)
    data = Path(spec["stream"]).read_bytes()
    ready = status_mb("VmRSS")

    def decode() -> list[float]:
        """Decode every layer; seconds from the start to each layer's pixels."""
        start, marks = time.perf_counter(), []
        for img in codec.decode_iter(data):
            marks.append(time.perf_counter() - start)
        if img.shape != pixels.shape:
            raise CompassError(f"decoded {img.shape}, expected {pixels.shape}")
        return marks

    marks = []
    times, runs, _ = measure(lambda: marks.append(decode()), spec["warmup"], spec["repeat"], sec)
    marks = marks[spec["warmup"]:]
    layers = [{"height": l["height"], "width": l["width"], "bytes": l["total_bytes"], "bpp": l["bpp"],
               "decode_to": stats([m[k] for m in marks]),
               "decode_increment": stats([m[k] - (m[k - 1] if k else 0.0) for m in marks])}
              for k, l in enumerate(bitstream.info(data)["layers"])]
    out = {"decode": stats(times), "decode_sections": section_summary(runs, times), "layers": layers,
           "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}
    if spec.get("profile"):
        out["profile"] = profile(decode)
    return out


def _single(spec: dict):
    from ..models import load

    codec = load(spec["single"]).model.base
    return codec, instrument({"single": codec})


def _job_single_encode(spec: dict, pixels: np.ndarray) -> dict:
    from ..pixels import to_tensor

    codec, sec = _single(spec)
    ready = status_mb("VmRSS")
    # a single-layer encoder needs no reconstruction (as compass's top layer)
    times, runs, out = measure(lambda: codec.compress(to_tensor(pixels), spec["quality"], reconstruct=False),
                                spec["warmup"], spec["repeat"], sec)
    Path(spec["stream"]).write_text(json.dumps([s.hex() for s in out["strings"]]))
    return {"encode": stats(times), "encode_sections": section_summary(runs, times),
            "bytes": sum(len(s) for s in out["strings"]), "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_single_decode(spec: dict, pixels: np.ndarray) -> dict:
    from ..pixels import to_pixels

    codec, sec = _single(spec)
    strings = [bytes.fromhex(s) for s in json.loads(Path(spec["stream"]).read_text())]
    ready = status_mb("VmRSS")
    times, runs, _ = measure(lambda: to_pixels(codec.decompress(strings, pixels.shape[:2], spec["quality"])["x_hat"]),
                              spec["warmup"], spec["repeat"], sec)
    return {"decode": stats(times), "decode_sections": section_summary(runs, times), "rss_ready_mb": ready,
            "peak_mb": peak_rss_mb()}


def hevc_params(threads: int) -> dict:
    """The baselines' x265 settings; x265 gets `threads` worker threads when above 1."""
    from ..evaluate.baselines import HEVC_ENC_PARAMS

    return dict(HEVC_ENC_PARAMS, **{"x265:pools": str(threads)}) if threads > 1 else HEVC_ENC_PARAMS


def _classical(spec: dict, pixels: np.ndarray):
    """(encode, decode, counted bytes) of the job's classical codec."""
    from ..evaluate import baselines

    if spec["codec"] == "jpeg2000":
        encode = lambda: baselines.j2k_encode(pixels, irreversible=True, quality_mode="rates",  # noqa: E731
                                               quality_layers=[24.0 / spec["bpp"]])
        return encode, lambda data: baselines.j2k_decode(data, 0), len
    encode = lambda: baselines.hevc_encode(pixels, spec["qp"], hevc_params(spec["threads"]))  # noqa: E731
    return encode, baselines.hevc_decode, baselines.hevc_stream_bytes


def _job_classical_encode(spec: dict, pixels: np.ndarray) -> dict:
    encode, _, counted = _classical(spec, pixels)
    ready = status_mb("VmRSS")
    times, _, data = measure(encode, spec["warmup"], spec["repeat"])
    Path(spec["stream"]).write_bytes(data)
    return {"encode": stats(times), "bytes": counted(data), "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_classical_decode(spec: dict, pixels: np.ndarray) -> dict:
    _, decode, _ = _classical(spec, pixels)
    data = Path(spec["stream"]).read_bytes()
    ready = status_mb("VmRSS")
    times, _, img = measure(lambda: decode(data), spec["warmup"], spec["repeat"])
    if img.shape != pixels.shape:
        raise CompassError(f"{spec['codec']} decoded {img.shape}, expected {pixels.shape}")
    return {"decode": stats(times), "rss_ready_mb": ready, "peak_mb": peak_rss_mb()}


def _job_liff(spec: dict, pixels) -> dict:
    """Factorized query vs `liff.direct_query` from the same RDN features, random weights (timing only)."""
    import torch

    from ..liff import direct_query
    from ..models import build_liff

    side, out = spec["size"], []
    for name, cfg in spec["widths"].items():
        torch.manual_seed(0)
        m = build_liff(cfg).eval()
        for scale in spec["scales"]:
            src = max(1, side // scale)
            with torch.no_grad():
                f = m.features(torch.rand(1, 3, src, src))
                fact, _, pred = measure(lambda: m.query(f, (side, side)), spec["warmup"], spec["repeat"])
                direct, _, ref = measure(lambda: direct_query(m, f, (side, side)), spec["warmup"], spec["repeat"])
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


def child(channel) -> None:
    """A measurement child (`procs.Child`): runs the job of the spec it is sent and answers its result. It
    imports the same libraries as the idle child whatever the job, so that `peak - idle` is the job's own cost."""
    spec = channel.recv()
    import pillow_heif
    import torch

    from .. import api  # noqa: F401
    from ..evaluate import baselines  # noqa: F401

    torch.set_num_threads(spec["threads"])
    pillow_heif.options.DECODE_THREADS = spec["threads"]
    pixels = np.load(spec["image"]) if spec.get("image") else None
    channel.send(JOBS[spec["job"]](spec, pixels))
