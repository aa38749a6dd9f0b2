"""Shared fixtures: deterministic test images and tiny codecs (recipe "tiny") built to make tests bite.

A randomly initialised codec gives near-zero latents (every symbol 0, every scale clamped to the smallest table
level), which would let most coding bugs pass. The factories below spread the latents over many values, many
scale-table levels and the escape path (`models.random_model(spread=True)`); or they build constructions with a
known property (calibrated scales, constant z). Everything is seeded and runs in ms.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from compass.codec import MeanScaleHyperprior
from compass.models import random_model, save

REPO = Path(__file__).resolve().parents[1]


def synthetic_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A photo-like (1, 3, H, W) image in [0, 1]: smooth colour gradients, oriented waves, hard-edged blocks, noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    chans = []
    for _ in range(3):
        f = torch.rand(3, generator=g) * 20 + 3
        p = torch.rand(3, generator=g) * 6.283
        a, b = torch.rand(2, generator=g) * 0.4 - 0.2
        chans.append(0.5 + a * xx + b * yy + 0.15 * torch.sin(f[0] * xx + p[0]) * torch.cos(f[1] * yy + p[1])
                     + 0.1 * torch.sin(f[2] * (xx - yy) + p[2]))
    img = torch.stack(chans)[None]
    for _ in range(4):  # edges
        y0, x0 = int(torch.randint(0, height, (1,), generator=g)), int(torch.randint(0, width, (1,), generator=g))
        img[..., y0:y0 + max(1, height // 4), x0:x0 + max(1, width // 3)] += torch.rand(3, 1, 1, generator=g) - 0.5
    img = img + 0.04 * torch.randn(img.shape, generator=g)
    return img.clamp(0, 1)


def spread_codec(seed: int = 0) -> MeanScaleHyperprior:
    """Tiny codec whose latents are far from trivial (eval mode, tables built).

    Spread: y over tens of values, z too, the predicted scales over ~20 table levels and the means off zero.
    Predicted scales are badly calibrated, so many y symbols fall outside their tables and take the escape path.
    """
    m = random_model("tiny", seed, single=True, spread=True).base
    m.update()
    return m


def set_constant_prior(m: MeanScaleHyperprior, scales: torch.Tensor, means: torch.Tensor) -> None:
    """Make h_s output the given per-channel scales and means everywhere (its last conv: zero weights, bias)."""
    M = m.config.M
    last = m.h_s.convs[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias[:M] = scales
        last.bias[M:] = means


def calibrated_codec(x: torch.Tensor, q: float, seed: int = 0) -> MeanScaleHyperprior:
    """Tiny codec whose predicted y distribution matches the y it gets from `x` at quality `q`.

    g_a's last conv is scaled per output channel by 3 .. 300 (so the channels use many table levels, from the
    smallest to ~40), and h_s predicts, for each channel, the empirical std and (non-integer) mean of y. Forward's
    likelihoods are then an honest estimate of the rate, which the real coder must reach.
    """
    m = random_model("tiny", seed, single=True).base
    M = m.config.M
    with torch.no_grad():
        m.g_a.convs[-1].weight.mul_(torch.logspace(0.5, 2.5, M).view(-1, 1, 1, 1))
        gain = m.gains(torch.tensor([float(q)]))[0]
        y = m.g_a(x) * gain
    set_constant_prior(m, y.std(dim=(0, 2, 3)), y.mean(dim=(0, 2, 3)))
    m.update()
    return m


def coded_symbols(m: MeanScaleHyperprior, x: torch.Tensor, q: float) -> dict:
    """What the encoder codes for `x`: integer y and z symbols, y table indexes and the number of y escapes."""
    with torch.no_grad():
        latents = m.analyse(x, q)
        coded = m.rate(latents, q, tuple(x.shape[-2:]), torch.round)  # hard rounding: what `code` sees
        gc = m.gaussian_conditional
        z_sym = torch.round(latents["z"] - m.entropy_bottleneck.medians().view(1, -1, 1, 1)).long()
        idx = gc.build_indexes(coded["scales_hat"])
        y_sym = torch.round(latents["y"] - coded["means_hat"]).long()
        escapes = int((y_sym.abs() > gc._offsets.long()[idx]).sum())
    return {"y": y_sym, "z": z_sym, "indexes": idx, "escapes": escapes}


def estimated_bits(m: MeanScaleHyperprior, x: torch.Tensor, q: float) -> float:
    """Bits that forward's (eval-mode, rounded) likelihoods promise for x at q."""
    with torch.no_grad():
        out = m(x, q)
    return float(sum((-torch.log2(v)).sum() for v in out["likelihoods"].values()))


def fifo(path: Path, data: bytes, endless: bool = False) -> Path:
    """A FIFO at `path` that a thread feeds with `data` (then zeros until the reader goes away, if `endless`)."""
    os.mkfifo(path)

    def feed():
        try:
            with open(path, "wb") as f:
                f.write(data)
                while endless:
                    f.write(bytes(1 << 20))
        except BrokenPipeError:  # the reader stopped reading
            pass

    threading.Thread(target=feed, daemon=True).start()
    return path


def run_python(code: str, *args: str, threads: int = 1, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with `threads` torch/OpenMP threads; a hang fails by timeout."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def image_64x48() -> torch.Tensor:
    return synthetic_image(64, 48, seed=1)


@pytest.fixture(scope="session")
def spread_model() -> MeanScaleHyperprior:
    return spread_codec(seed=0)


def tiny_scalable_weights(path: Path, seed: int = 0) -> Path:
    """A tiny scalable model (spread base and residual codecs, tiny LIFF) exported as a weights file."""
    save(random_model("tiny", seed, spread=True), "compass-test-tiny", path)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    return tiny_scalable_weights(tmp_path_factory.mktemp("weights") / "tiny.pt")


@pytest.fixture(scope="session")
def tiny_codec(tiny_weights):
    from compass.api import Compass

    return Compass(tiny_weights)


@pytest.fixture(scope="session")
def photo_pixels():
    """A 45x67 photo-like uint8 image (odd sides)."""
    from compass.pixels import to_pixels

    return to_pixels(synthetic_image(45, 67, seed=3))


def tiny_single_weights_file(path: Path, seed: int = 0) -> Path:
    """A tiny single-layer codec (the spread base codec of `tiny_scalable_weights`) exported as a weights file."""
    save(random_model("tiny", seed, single=True, spread=True), "compass-test-tiny-single", path)
    return path


@pytest.fixture(scope="session")
def tiny_single_weights(tmp_path_factory) -> Path:
    return tiny_single_weights_file(tmp_path_factory.mktemp("weights") / "tiny-single.pt")


@dataclass
class Server:
    """A `compass serve` process on 127.0.0.1:`port`, its output in `log`."""

    port: int
    log: Path

    def get(self, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, dict, bytes]:
        """(status, lower-cased headers, body) of one request sent as given (no normalization of `path`)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


@contextlib.contextmanager
def compass_server(folder: Path, cache: Path, *args: str):
    """Run `compass serve folder` (extra `args`, its cache and log under `cache`) until the block ends."""
    from compass.serve.process import free_port, serving

    cache.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [sys.executable, "-m", "compass", "serve", str(folder), "--port", str(port), "--cache-dir",
               str(cache / "layers"), *args]
    with serving(command, port, cache / "server.log", cwd=REPO):
        yield Server(port, cache / "server.log")
