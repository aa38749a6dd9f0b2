"""Encoder-side latent refinement: stochastic Gumbel annealing (Yang, Bamler, Mandt, NeurIPS 2020).

The analysis transforms g_a and h_a are amortized: one network guesses the latents of every image, and the
guess is not the best the decoder could be given. Per image, `refine_latents` improves y and z by gradient
descent on the codec's own loss, R + lambda(q) * 255^2 * MSE, where the bits are those of the two entropy
models and rounding is relaxed by SGA: each value is rounded down or up at random with odds that depend on its
distance to the two integers, and a temperature that anneals towards hard rounding. Only the encoder changes:
the decoder, the file format and the decoded symbol check are those of an unrefined encode.

Cost: one forward and backward pass through h_s and g_s per step (on one thread, so that files stay identical
whatever the thread count), and the memory of a training step on the whole image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .quality import q_to_lambda


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


def refine_latents(codec, x: torch.Tensor, q: float, y: torch.Tensor, z: torch.Tensor,
                   config: RefineConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined (y, z) for image `x` (1, 3, H, W) coded by `codec` (a MeanScaleHyperprior) at quality q.

    y and z are the gained latents `compress` codes (y = g_a(x) * gain, z = h_a(y) * hyper_gain), the start
    point. Deterministic for a given seed. The codec's parameters get no gradients and are not changed.
    """
    generator = torch.Generator(device=x.device).manual_seed(config.seed)
    qq = torch.full((1,), float(q), device=x.device)
    with torch.no_grad():
        _, inv_gain, _, hyper_inv = codec.gains(qq)
    img, hyp = codec.latent_sizes(*x.shape[-2:])
    medians = codec.entropy_bottleneck.medians().view(1, -1, 1, 1)
    lam = q_to_lambda(float(q), codec.config.lambda_range) * 255 ** 2
    pixels = x.shape[-2] * x.shape[-1]
    y = y.detach().clone().requires_grad_(True)
    z = z.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y, z], lr=config.lr)
    with torch.enable_grad():
        for step in range(config.steps):
            tau = config.tau(step)
            z_soft = sga_round(z - medians, tau, generator) + medians
            scales, means = codec._hyper_synthesis(z_soft, hyper_inv, hyp)
            y_soft = sga_round(y - means, tau, generator) + means
            bits = codec.gaussian_conditional.likelihood(y_soft, scales, means).log2().sum()
            bits = bits + codec.entropy_bottleneck.likelihood(z_soft).log2().sum()
            x_hat = codec.g_s(y_soft * inv_gain, img[-2::-1])
            loss = -bits / pixels + lam * torch.mean((x_hat - x) ** 2)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"latent refinement diverged at step {step} (loss {loss.item()})")
            y.grad, z.grad = torch.autograd.grad(loss, [y, z])
            opt.step()
    return y.detach(), z.detach()
