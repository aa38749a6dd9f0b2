"""Training stages. Each owns its modules, its loss and its validation; the loop does the rest.

base: the single-layer codec, rate-distortion loss with lambda(q) and q ~ U(0, 1) per sample.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..codec import CodecConfig, MeanScaleHyperprior
from ..quality import q_to_lambda

# channels_last is 10-25% faster for these convolutions on CPU (measured, docs/training.md)
FORMAT = torch.channels_last


def bits(likelihoods: dict) -> torch.Tensor:
    """Total bits per sample, (B,)."""
    return sum((-torch.log2(v)).flatten(1).sum(1) for v in likelihoods.values())


def psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-12))


def rd_loss(out: dict, target: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Per-sample R + lambda(q) * 255^2 * MSE, averaged; returns (loss, metrics)."""
    pixels = target.shape[-2] * target.shape[-1]
    bpp = bits(out["likelihoods"]) / pixels
    mse = (out["x_hat"] - target).pow(2).flatten(1).mean(1)
    loss = (bpp + q_to_lambda(q) * 255**2 * mse).mean()
    return loss, {"loss": loss.item(), "bpp": bpp.mean().item(), "psnr": psnr(mse).mean().item()}


class BaseStage:
    """Single-layer codec training."""

    name = "base"

    def __init__(self, recipe: dict, cfg: dict, device: torch.device):
        self.cfg = cfg
        self.codec = MeanScaleHyperprior(CodecConfig(**recipe["codec"])).to(device, memory_format=FORMAT)
        self.device = device

    def modules(self) -> dict[str, nn.Module]:
        return {"codec": self.codec}

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.codec.named_parameters() if not n.endswith("quantiles")]

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.codec.named_parameters() if n.endswith("quantiles")]

    def train_step(self, sampler, gen: torch.Generator):
        x = sampler.batch(self.cfg["batch"]).to(self.device, memory_format=FORMAT)
        q = torch.rand(x.shape[0], generator=gen).to(self.device)
        self.codec.train()
        loss, metrics = rd_loss(self.codec(x, q), x, q)
        return loss, self.codec.aux_loss(), metrics

    @torch.no_grad()
    def validate(self, val: torch.Tensor) -> list[dict]:
        self.codec.eval()
        rows = []
        for q in (0.0, 0.5, 1.0):
            agg = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0}
            for i in range(0, val.shape[0], 4):
                x = val[i:i + 4].to(self.device)
                qq = torch.full((x.shape[0],), q, device=self.device)
                _, m = rd_loss(self.codec(x, qq), x, qq)
                for k in agg:
                    agg[k] += m[k] * x.shape[0] / val.shape[0]
            rows.append({"q": q, **agg})
        return rows


STAGES = {"base": BaseStage}


def make_stage(name: str, recipe: dict, cfg: dict, device: torch.device):
    try:
        return STAGES[name](recipe, cfg, device)
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(STAGES)}") from None


def lr_at(cfg: dict, step: int) -> float:
    """Constant lr, then lr_final for the last `final_fraction` of the steps."""
    switch = math.floor(cfg["steps"] * (1 - cfg.get("final_fraction", 0.2)))
    return cfg["lr"] if step < switch else cfg.get("lr_final", cfg["lr"])
