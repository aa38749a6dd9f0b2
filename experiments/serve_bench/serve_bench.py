"""Requests per second and latency of `compass serve` per layer size, against pre-rendered PNG renditions served
as static files by the same stack (docs/serving.md, "Benchmark").

    .venv/bin/python experiments/serve_bench/serve_bench.py [--images 8] [--seconds 10] [--clients 2] [--model compass-cpu-mini]
                                          [--json PATH]

Encodes the first IMAGES Kodak images with `compass encode-dir` (layers 0.25, 0.5, 1: 192, 384 and 768 px wide
for a 768x512 image) and writes one PNG per image and layer size (the classical renditions, from the same
pyramid the encoder codes). Then, per layer size, CLIENTS keep-alive connections send requests back to back
for SECONDS, cycling over the images, to: compass serve with its cache off (every request reads the prefix and
decodes it), compass serve with a warm cache (every request a hit), and the renditions (Starlette's
StaticFiles on uvicorn). Servers and clients share this machine's cores.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from compass import bitstream
from compass.encodedir import encode_dir
from compass.evaluate.run import list_images
from compass.imageio import load_image, save_image
from compass.pixels import to_pixels, to_tensor
from compass.paths import data_dir
from compass.resample import plan_from_fractions, pyramid
from compass.serve.process import free_port, serving

LAYERS = (0.25, 0.5, 1.0)
STATIC_APP = ("import sys, uvicorn; from starlette.applications import Starlette; from starlette.routing import Mount; "
              "from starlette.staticfiles import StaticFiles; uvicorn.run(Starlette(routes=[Mount('/', "
              "StaticFiles(directory=sys.argv[1]))]), host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')")


def renditions(images: list[Path], out: Path) -> None:
    """OUT/NAME_K.png: each image downscaled to each layer's size, as a site with one file per size holds it."""
    for path in images:
        pixels = load_image(path).pixels
        plan = plan_from_fractions(*pixels.shape[:2], LAYERS)
        for k, layer in enumerate(pyramid(to_tensor(pixels), plan)):
            save_image(to_pixels(layer), out / f"{path.stem}_{k}.png")


def load(port: int, paths: list[str], clients: int, seconds: float, headers: dict | None = None) -> dict:
    """CLIENTS threads, each on one keep-alive connection, requesting its own share of `paths` in turn (client i
    takes paths i, i + CLIENTS, ...: no two ask for one image at once, so no decode is shared) until SECONDS have
    passed (each sends one at least): requests per second, latency percentiles, mean body and bytes read per
    request."""
    results: list[list[tuple[float, int, int]]] = [[] for _ in range(clients)]
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        mine = paths[i::clients]
        n = 0
        while n == 0 or time.monotonic() < deadline:  # one request at least, even past a short deadline
            t0 = time.perf_counter()
            conn.request("GET", mine[n % len(mine)], headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"{mine[n % len(mine)]}: {response.status} {body[:200]!r}")
            read = int(response.getheader("x-compass-bytes-read", len(body)))
            results[i].append((time.perf_counter() - t0, len(body), read))
            n += 1
        conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    done = [r for rs in results for r in rs]
    latency = sorted(r[0] for r in done)
    return {"requests": len(done), "rps": len(done) / elapsed, "p50_ms": 1000 * statistics.median(latency),
            "p95_ms": 1000 * latency[min(len(latency) - 1, int(0.95 * len(latency)))],
            "body_bytes": statistics.mean(r[1] for r in done), "read_bytes": statistics.mean(r[2] for r in done)}


def run(images: int, seconds: float, clients: int, model: str, workers: int) -> dict:
    load_before = os.getloadavg()[0]
    sources = list_images(data_dir("kodak"))[:images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, served, static = tmp / "src", tmp / "served", tmp / "static"
        for d in (src, static):
            d.mkdir()
        for path in sources:
            (src / path.name).symlink_to(path)
        t0 = time.perf_counter()
        encode_dir(src, served, layers=LAYERS, model=model, progress=False)
        encode_s = time.perf_counter() - t0
        renditions(sources, static)
        names = [p.stem for p in sources]
        infos = {n: bitstream.info((served / f"{n}.cmp").read_bytes()) for n in names}
        sizes = [(l["width"], l["height"]) for l in infos[names[0]]["layers"]]
        cache = ["--cache-mb", "256", "--cache-dir", str(tmp / "cache")]
        setups = {  # label: (server options, request headers)
            "compass serve, decode": (["--cache-mb", "0"], {}),
            "compass serve, cached": (cache, {}),
            "compass serve, cached, WebP": (cache, {"Accept": "image/webp"}),
        }
        for label, (extra, headers) in setups.items():
            port = free_port()
            command = [sys.executable, "-m", "compass", "serve", str(served), "--port", str(port), "--workers",
                       str(workers), "--log-level", "warning", *extra]
            with serving(command, port, tmp / "serve.log"):
                for k in range(len(sizes)):
                    paths = [f"/img/{n}?layer={k}" for n in names]
                    if "cached" in label:  # one request per image first: every timed request is a hit
                        load(port, paths, len(paths), 0, headers)
                    rows.append({"setup": label, "layer": k, "size": sizes[k],
                                 **load(port, paths, clients, seconds, headers)})
        port = free_port()
        with serving([sys.executable, "-c", STATIC_APP, str(static), str(port)], port, tmp / "static.log"):
            for k in range(len(sizes)):
                rows.append({"setup": "pre-rendered PNG", "layer": k, "size": sizes[k],
                             **load(port, [f"/{n}_{k}.png" for n in names], clients, seconds)})
    prefix = [float(np.mean([infos[n]["layers"][k]["total_bytes"] for n in names])) for k in range(len(sizes))]
    return {"images": names, "model": model, "workers": workers, "clients": clients, "seconds": seconds,
            "cpus": os.cpu_count(), "load_average_before": load_before, "encode_dir_s": encode_s,
            "mean_prefix_bytes": prefix,
            "mean_file_bytes": float(np.mean([infos[n]["file_bytes"] for n in names])), "rows": rows}


def table(result: dict) -> str:
    lines = ["| layer | setup | req/s | p50 ms | p95 ms | response bytes | bytes read per request |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        w, h = r["size"]
        lines.append(f"| {r['layer']} ({w}x{h}) | {r['setup']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['body_bytes']:,.0f} | {r['read_bytes']:,.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8, help="first N Kodak images (default 8)")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per setup and layer (default 10)")
    p.add_argument("--clients", type=int, default=2, help="concurrent keep-alive connections (default 2)")
    p.add_argument("--workers", type=int, default=2, help="compass serve --workers (default 2)")
    p.add_argument("--model", default="compass-cpu-mini", help="model the files are encoded with")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    result = run(args.images, args.seconds, args.clients, args.model, args.workers)
    print(table(result))
    print(f"\n{len(result['images'])} Kodak images, {args.model}, mean file {result['mean_file_bytes']:,.0f} B, mean "
          f"prefix per layer {', '.join(f'{b:,.0f}' for b in result['mean_prefix_bytes'])} B; encode-dir "
          f"{result['encode_dir_s']:.1f} s; {args.clients} clients, {args.workers} workers, {result['cpus']} CPUs, "
          f"load average {result['load_average_before']:.2f} before the run")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
