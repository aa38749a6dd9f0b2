"""Training stages. Each owns its modules, its loss and its validation; the loop does the rest.

base:  the single-layer codec; RD loss with lambda(q), q ~ U(0, 1) per sample.
liff:  LIFF pretrained as an arbitrary-scale upsampler (L1), on clean downscaled inputs.
joint: LIFF + residual codec trained together with the combined RD loss (CRD) summed over all enhancement
       layers; the base codec is frozen. Every step draws 2-4 layers at random factors in [1, 4].
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..models import build, build_codec, build_liff, module_state, modules_of, with_predictor
from ..quality import rd_cost
from ..resample import pyramid, resize, upsample_bicubic


def memory_format(recipe: dict) -> torch.memory_format:
    """The layout of training activations: channels_last (10-25% faster on CPU, docs/training.md) unless the
    recipe's `train.channels_last` is false."""
    return torch.channels_last if recipe.get("train", {}).get("channels_last", True) else torch.contiguous_format


def compiled(fn, recipe: dict):
    """`fn` through torch.compile when the recipe's `train.compile` asks for it (a whole-step graph: fused
    element-wise work for GDN, noise and likelihoods), else `fn` itself. Static shapes: a stage calls it for
    its square crops only and runs odd sizes eagerly (torch 2.13's dynamic-shape graph of this step fails to
    compile, and a static one per odd size costs a compilation each)."""
    return torch.compile(fn, dynamic=False) if recipe.get("train", {}).get("compile", False) else fn


def draw_q(batch: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Qualities U(0, 1) per sample, drawn where `gen` lives (on a GPU: no host copy, no wait)."""
    return torch.rand(batch, generator=gen, device=gen.device).to(device)


def bits(likelihoods: dict) -> torch.Tensor:
    """Total bits per sample, (B,)."""
    return sum((-torch.log2(v)).flatten(1).sum(1) for v in likelihoods.values())


def psnr(mse: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10(mse.clamp_min(1e-12))


def rd_loss(out: dict, target: torch.Tensor, q: torch.Tensor, lambda_range: tuple[float, float]) -> tuple[torch.Tensor, dict]:
    """Per-sample R + lambda(q) * 255^2 * MSE, averaged; returns (loss, metrics as 0-d tensors: reading them
    is left to the caller, so a GPU step does not wait for its own result)."""
    pixels = target.shape[-2] * target.shape[-1]
    bpp = bits(out["likelihoods"]) / pixels
    mse = (out["x_hat"] - target).pow(2).flatten(1).mean(1)
    loss = rd_cost(bpp, mse, q, lambda_range).mean()
    return loss, {"loss": loss.detach(), "bpp": bpp.mean().detach(), "psnr": psnr(mse).mean().detach()}


class BaseStage:
    """Single-layer codec training."""

    name = "base"

    def __init__(self, recipe: dict, cfg: dict, device: torch.device):
        self.cfg = cfg
        self.format = memory_format(recipe)
        self.base = build_codec(recipe["codec"]).to(device, memory_format=self.format)
        self.device = device
        self._loss = compiled(self._rd, recipe)

    def _rd(self, x: torch.Tensor, q: torch.Tensor):
        return rd_loss(self.base(x, q), x, q, self.base.config.lambda_range)

    def modules(self) -> dict[str, nn.Module]:
        return {"base": self.base}

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.base.named_parameters() if not n.endswith("quantiles")]

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.base.named_parameters() if n.endswith("quantiles")]

    def train_step(self, sampler, gen: torch.Generator):
        crop = None
        if sampler.rng.random() < self.cfg.get("odd_fraction", 0.0):
            # any-size crops train the odd-side pad-and-crop path that square 2^k crops never reach; a recipe's
            # `odd_sizes` draws them from a fixed list instead, so shapes repeat (cuDNN autotuning, compilation)
            odd = self.cfg.get("odd_sizes")
            if odd:
                crop = tuple(int(v) for v in odd[int(sampler.rng.integers(len(odd)))])
            else:
                crop = tuple(int(v) for v in sampler.rng.integers(3 * self.cfg["crop"] // 4, self.cfg["crop"] + 1, 2))
        x = sampler.batch(self.cfg["batch"], crop).to(self.device, memory_format=self.format)
        q = draw_q(x.shape[0], gen, self.device)
        self.base.train()
        loss, metrics = (self._loss if crop is None else self._rd)(x, q)
        return loss, self.base.aux_loss(), metrics

    @torch.no_grad()
    def validate(self, val: torch.Tensor) -> list[dict]:
        self.base.eval()
        rows = []
        for q in (0.0, 0.5, 1.0):
            agg = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0}
            for i in range(0, val.shape[0], 4):
                x = val[i:i + 4].to(self.device)
                qq = torch.full((x.shape[0],), q, device=self.device)
                _, m = rd_loss(self.base(x, qq), x, qq, self.base.config.lambda_range)
                for k in agg:
                    agg[k] += float(m[k]) * x.shape[0] / val.shape[0]
            rows.append({"setting": f"q={q}", **agg})
        return rows


MIN_BASE_SIDE = 16


def sample_sizes(rng: np.random.Generator, top: int, layers: int | None = None,
                 max_el_pixels: float = float("inf")) -> list[tuple[int, int]]:
    """A random layer plan for a top x top crop: 2-4 layers, factors U(1, 4) between neighbours.

    A quarter of the plans use different vertical and horizontal factors. Plans whose base side would fall
    below MIN_BASE_SIDE, or whose enhancement layers hold more than `max_el_pixels` times the top layer's
    pixels (several layers all close to the top size: slow, and far from any real use), are redrawn.
    """
    n = layers or int(rng.choice([2, 3, 4], p=[0.45, 0.45, 0.10]))
    unequal = rng.random() < 0.25
    while True:
        sizes = [(top, top)]
        for _ in range(n - 1):
            fy = rng.uniform(1, 4)
            fx = rng.uniform(1, 4) if unequal else fy
            h, w = sizes[0]
            sizes.insert(0, (max(1, round(h / fy)), max(1, round(w / fx))))
        el_pixels = sum(h * w for h, w in sizes[1:]) / top**2
        if min(sizes[0]) >= MIN_BASE_SIDE and el_pixels <= max_el_pixels:
            return sizes


def plan_buckets(cfg: dict, seed: int) -> list[list[tuple[int, int]]]:
    """With `plan_buckets = K` in a joint stage, K layer plans drawn once (by `seed`, as `sample_sizes` draws
    them) that every step picks from, so tensor shapes repeat (cuDNN autotunes each once; fresh shapes every
    step defeat it). Without it: [] (a fresh plan every step)."""
    count = cfg.get("plan_buckets", 0)
    rng = np.random.default_rng([seed, 17])
    return [sample_sizes(rng, cfg["crop"], max_el_pixels=cfg.get("max_el_pixels", float("inf"))) for _ in range(count)]


class LiffStage:
    """LIFF pretraining as an arbitrary-scale upsampler (L1 loss on clean downscaled inputs)."""

    name = "liff"

    def __init__(self, recipe: dict, cfg: dict, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.liff = build_liff(recipe["liff"]).to(device)

    def modules(self) -> dict[str, nn.Module]:
        return {"liff": self.liff}

    def parameters(self) -> list[nn.Parameter]:
        return list(self.liff.parameters())

    def aux_parameters(self) -> list[nn.Parameter]:
        return []

    def train_step(self, sampler, gen: torch.Generator):
        x = sampler.batch(self.cfg["batch"]).to(self.device)
        low, high = sample_sizes(sampler.rng, x.shape[-1], layers=2)
        src, target = resize(x, low), resize(x, high)
        self.liff.train()
        pred = self.liff(src, high)
        loss = (pred - target).abs().mean()
        mse = (pred.clamp(0, 1) - target).pow(2).flatten(1).mean(1)
        return loss, None, {"loss": loss.detach(), "bpp": loss.new_zeros(()), "psnr": psnr(mse).mean().detach()}

    @torch.no_grad()
    def validate(self, val: torch.Tensor) -> list[dict]:
        self.liff.eval()
        rows = []
        s = val.shape[-1]
        for name, low in (("2.0x", (s // 2, s // 2)), ("3.2x", (round(s / 3.2),) * 2),
                          ("1.5x|2.0x", (round(s / 1.5), s // 2))):
            src = resize(val, low)
            for method, pred in (("liff", self.liff(src, (s, s), 1 << 16)), ("bicubic", upsample_bicubic(src, (s, s)))):
                mse = (pred.clamp(0, 1) - val).pow(2).flatten(1).mean(1)
                rows.append({"setting": f"{method} {name}", "loss": 0.0, "bpp": "", "psnr": psnr(mse).mean().item()})
        return rows


class JointStage:
    """LIFF + residual codec with the combined RD loss over all enhancement layers; frozen base codec."""

    name = "joint"
    frozen = ("base",)  # loaded from `base_from`, never trained: a checkpoint of this stage may leave it out

    def __init__(self, recipe: dict, cfg: dict, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.plans = plan_buckets(cfg, int(recipe.get("seed", 0)))
        # predictor "bicubic": the paper's ablation, the residual codec trained behind bicubic upsampling
        self.model = with_predictor(build(recipe), cfg.get("predictor", "liff"))
        # each module from its `*_from` (None: the caller loads every module, e.g. from a finished checkpoint); the
        # residual codec may start from a single-layer codec, its "base"
        for key, names in (("base_from", ("base",)), ("residual_from", ("residual", "base")), ("liff_from", ("liff",))):
            module = modules_of(self.model).get(names[0])
            if cfg.get(key) and module is not None:
                module.load_state_dict(module_state(cfg[key], *names))
        self.model.base.requires_grad_(False)
        self.model.to(device)

    def modules(self) -> dict[str, nn.Module]:
        return modules_of(self.model)

    def after_resume(self) -> None:
        """With `track_base`, reload the frozen base from `base_from` on every restart, so the enhancement
        layers keep adapting while the base codec is still being trained elsewhere."""
        if self.cfg.get("track_base"):
            self.model.base.load_state_dict(module_state(self.cfg["base_from"], "base"))

    def parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters()
                if p.requires_grad and not n.startswith("base.") and not n.endswith("quantiles")]

    def aux_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.residual.named_parameters() if n.endswith("quantiles")]

    def _train_mode(self, on: bool) -> None:
        self.model.train(on)
        self.model.base.eval()

    def crd_loss(self, layers: list[torch.Tensor], q: torch.Tensor):
        """Combined RD loss: sum over ELs of R^k + lambda * 255^2 * MSE^k (one lambda(q) for all layers)."""
        out = self.model(layers, q)
        loss = 0
        for k in range(1, len(layers)):
            pixels = layers[k].shape[-2] * layers[k].shape[-1]
            bpp = bits(out["likelihoods"][k]) / pixels
            mse = (out["x_hat"][k] - layers[k]).pow(2).flatten(1).mean(1)
            loss = loss + rd_cost(bpp, mse, q, self.model.residual.config.lambda_range).mean()
        top_mse = (out["x_hat"][-1].clamp(0, 1) - layers[-1]).pow(2).flatten(1).mean(1)
        return loss, out, top_mse

    def train_step(self, sampler, gen: torch.Generator):
        x = sampler.batch(self.cfg["batch"]).to(self.device)
        if self.plans:
            sizes = self.plans[int(sampler.rng.integers(len(self.plans)))]
        else:
            sizes = sample_sizes(sampler.rng, x.shape[-1], max_el_pixels=self.cfg.get("max_el_pixels", float("inf")))
        layers = pyramid(x, sizes)
        q = draw_q(x.shape[0], gen, self.device)
        self._train_mode(True)
        loss, out, top_mse = self.crd_loss(layers, q)
        el_bits = sum(bits(l) for l in out["likelihoods"][1:])
        metrics = {"loss": loss.detach(), "bpp": (el_bits / (x.shape[-1] ** 2)).mean().detach(),
                   "psnr": psnr(top_mse).mean().detach()}
        return loss, self.model.residual.aux_loss(), metrics

    @torch.no_grad()
    def validate(self, val: torch.Tensor) -> list[dict]:
        """Accumulated bpp (estimated, base + ELs, over the top layer's pixels) and top PSNR."""
        self._train_mode(False)
        s = val.shape[-1]
        rows = []
        for name, fracs in (("2L 2.0x", (0.5, 1.0)), ("3L 4.0x", (0.25, 0.5, 1.0))):
            sizes = [(round(s * f), round(s * f)) for f in fracs]
            for q in (0.0, 0.5, 1.0):
                agg = {"loss": 0.0, "bpp": 0.0, "psnr": 0.0}
                for i in range(0, val.shape[0], 4):
                    x = val[i:i + 4].to(self.device)
                    layers = pyramid(x, sizes)
                    qq = torch.full((x.shape[0],), q, device=self.device)
                    loss, out, top_mse = self.crd_loss(layers, qq)
                    base_bits = bits(self.model.base(layers[0], qq, noise=False)["likelihoods"])
                    total = base_bits + sum(bits(l) for l in out["likelihoods"][1:])
                    w = x.shape[0] / val.shape[0]
                    agg["loss"] += loss.item() * w
                    agg["bpp"] += (total / s**2).mean().item() * w
                    agg["psnr"] += psnr(top_mse).mean().item() * w
                rows.append({"setting": f"{name} q={q}", **agg})
        return rows


STAGES = {"base": BaseStage, "liff": LiffStage, "joint": JointStage}


def make_stage(name: str, recipe: dict, cfg: dict, device: torch.device):
    try:
        return STAGES[name](recipe, cfg, device)
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(STAGES)}") from None


def final_phase_start(cfg: dict, steps: int | None = None) -> int:
    """The step at which the stage's final lr phase begins: the last `final_fraction` (default 0.2) of its
    `steps` (default cfg["steps"])."""
    return math.floor((cfg["steps"] if steps is None else steps) * (1 - cfg.get("final_fraction", 0.2)))


def lr_at(cfg: dict, step: int) -> float:
    """Constant lr, then lr_final from `final_phase_start`; with `warmup`, the first that many steps ramp up
    linearly (a fresh optimizer at a large batch's lr: every run starts at step 0)."""
    lr = cfg["lr"] if step < final_phase_start(cfg) else cfg.get("lr_final", cfg["lr"])
    warmup = cfg.get("warmup", 0)
    return lr * min(1.0, (step + 1) / warmup) if warmup else lr
