"""Encoder-side latent refinement: stochastic Gumbel annealing (Yang, Bamler, Mandt, NeurIPS 2020).

The analysis transforms g_a and h_a are amortized: one network guesses the latents of every image, and the
guess is not the best the decoder could be given. Per image, `refine_latents` improves y and z by gradient
descent on the codec's own loss, R + lambda(q) * 255^2 * MSE, where the bits are those of the two entropy
models and rounding is relaxed by SGA: each value is rounded down or up at random with odds that depend on its
distance to the two integers, and a temperature that anneals towards hard rounding; `compress_refined` then codes
the refined or the plain latents, whichever cost less. Only the encoder changes: the decoder, the file format and
the decoded symbol check are those of an unrefined encode. Everything goes through the codec's public steps
(`analyse`, `rate`, `synthesise`, `compress`).

Cost: one forward and backward pass through h_s and g_s per step (on one thread, so that files stay identical
whatever the thread count), and the memory of a training step on the whole image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .codec import MeanScaleHyperprior
from .blocks import one_thread
from .quality import rd_cost


@dataclass(frozen=True)
class RefineConfig:
    """Adam on y and z for `steps` steps; the SGA temperature falls from `tau_start` to `tau_end` geometrically."""

    steps: int = 100
    lr: float = 0.01
    tau_start: float = 0.5
    tau_end: float = 0.05
    seed: int = 0

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"refinement steps must be >= 0, got {self.steps}")

    def tau(self, step: int) -> float:
        frac = step / max(1, self.steps - 1)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac


def _gumbel(shape, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))


def sga_round(v: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Soft rounding of v: floor(v) + a relaxed Bernoulli "round up", differentiable in v.

    The logits of rounding down and up are -atanh(distance)/tau: a value at an integer rounds to it, one halfway
    is a coin toss. The Gumbel-softmax sample over the two has temperature tau as well (as in the reference code).
    """
    lo = torch.floor(v)
    d = (v - lo).clamp(1e-6, 1.0 - 1e-6)
    down = -torch.atanh(d) / tau + _gumbel(v.shape, v, generator)
    up = -torch.atanh(1.0 - d) / tau + _gumbel(v.shape, v, generator)
    return lo + torch.sigmoid((up - down) / tau)


def refine_latents(codec: MeanScaleHyperprior, x: torch.Tensor, q: float, latents: dict,
                   config: RefineConfig) -> dict:
    """Refined gained latents {"y", "z"} for image `x` (1, 3, H, W) coded by `codec` at quality q, starting from
    `latents` (the codec's `analyse`). Deterministic for a given seed; the codec's parameters get no gradients
    and are not changed. Runs on one thread, so that files stay identical whatever the thread count."""
    generator = torch.Generator(device=x.device).manual_seed(config.seed)
    shape = tuple(x.shape[-2:])
    y = latents["y"].detach().clone().requires_grad_(True)
    z = latents["z"].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=config.lr)
    with torch.enable_grad(), one_thread():
        for step in range(config.steps):
            tau = config.tau(step)
            out = codec.rate({"y": y, "z": z}, q, shape, lambda v: sga_round(v, tau, generator))
            bpp = -sum(lik.log2().sum() for lik in out["likelihoods"].values()) / (shape[0] * shape[1])
            x_hat = codec.synthesise(out["y_hat"], q, shape, differentiable=True)
            loss = rd_cost(bpp, torch.mean((x_hat - x) ** 2), q, codec.config.lambda_range)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"latent refinement diverged at step {step} (loss {loss.item()})")
            y.grad, z.grad = torch.autograd.grad(loss, [y, z])
            opt.step()
    return {"y": y.detach(), "z": z.detach()}


@torch.no_grad()
def compress_refined(codec: MeanScaleHyperprior, x: torch.Tensor, q: float, config: RefineConfig,
                     reconstruct: bool = True) -> dict:
    """`codec.compress` of image `x` at quality q with refined latents, or with the plain ones when those have
    the lower real cost (coded bits per pixel + lambda * 255^2 * MSE of the decoded image, `quality.rd_cost`):
    refinement descends a relaxed cost and may, rarely, not pay."""
    plain = codec.analyse(x, q)
    if config.steps == 0:
        return codec.compress(x, q, reconstruct, plain)
    refined = refine_latents(codec, x, q, plain, config)
    candidates = [codec.compress(x, q, True, latents) for latents in (plain, refined)]

    def cost(coded: dict) -> float:
        bpp = sum(len(s) for s in coded["strings"]) * 8 / x[0, 0].numel()
        return rd_cost(bpp, torch.mean((coded["x_hat"] - x) ** 2).item(), q, codec.config.lambda_range)

    best = min(candidates, key=cost)
    return best if reconstruct else {**best, "x_hat": None}
