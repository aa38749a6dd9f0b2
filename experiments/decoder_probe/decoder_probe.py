"""Is the single-layer codec's decoder held back by its width or by its training? Decoder-only fine-tuning.

    python experiments/decoder_probe/decoder_probe.py --width 128 --minutes 90 --out runs/probe-w128

Everything but the synthesis transform g_s is frozen: the encoder, the hyperprior and the entropy models, so every
bitstream and its rate stay exactly as they are, and only the decoded image can change. g_s is trained on the
latents the frozen encoder really writes (rounded, as `compress` codes them) with the distortion term of the
training loss, lambda(q) * 255^2 * MSE, q ~ U(0, 1). With `--width` above the codec's N, g_s is first widened
function-preservingly (every hidden channel duplicated, the next layer's input weights and the IGDN's gamma halved,
a little noise to break the symmetry), so step 0 decodes as the shipped codec does. Running the shipped width and a
wider one side by side separates "more training" from "more capacity".

Writes `log.csv` (training every 50 steps, validation every --val-every steps on the 16 held-out photos of the
training split, never Kodak) and `g_s.pt` (atomically, at each validation) under --out.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from compass import DEFAULT_SINGLE
from compass.blocks import GDN, Synthesis, deconv
from compass.models import build_codec, load
from compass.paths import data_dir
from compass.quality import q_to_lambda
from compass.train.config import load_recipe
from compass.train.data import CropSampler, list_images, split, validation_crops
from compass.train.stages import psnr


def widen_synthesis(g_s: Synthesis, width: int, noise: float = 1e-3, seed: int = 0) -> Synthesis:
    """A copy of g_s whose hidden layers have `width` channels (a multiple of the old width), computing the same
    function up to `noise` (relative weight noise that lets the copies of a channel drift apart in training)."""
    old = g_s.acts[0].beta.shape[0]
    if width % old:
        raise ValueError(f"width {width} is not a multiple of the decoder's {old}")
    k = width // old
    idx = torch.arange(width) % old
    cin = g_s.convs[0].in_channels
    cout = g_s.convs[-1].out_channels
    convs = [deconv(cin, width), deconv(width, width), deconv(width, width), deconv(width, cout)]
    acts = [GDN(width, inverse=True) for _ in g_s.acts]
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (new, src) in enumerate(zip(convs, g_s.convs)):
            w = src.weight  # ConvTranspose2d: (in, out, kh, kw)
            if i > 0:
                w = w[idx] / k  # every input channel now arrives k times
            if i < len(convs) - 1:
                w = w[:, idx]
            new.weight.copy_(w + noise * w.std() * torch.randn(w.shape, generator=gen))
            new.bias.copy_(src.bias if i == len(convs) - 1 else src.bias[idx])
        for new, src in zip(acts, g_s.acts):
            beta, gamma = src.effective()
            new.beta.copy_((beta[idx] + src.pedestal).sqrt())
            new.gamma.copy_((gamma[idx][:, idx] / k + src.pedestal).sqrt())
    return Synthesis(convs, acts)


class _DecoderInput(nn.Module):
    """Stands in for g_s so that the codec's own forward returns what g_s would be given."""

    def forward(self, latents, sizes):
        return latents


class FrozenCoder(nn.Module):
    """The frozen encoder side of a codec: the decoder's input (rounded y times the inverse gain) for a batch."""

    def __init__(self, codec):
        super().__init__()
        self.codec = build_codec(codec.config)
        self.codec.load_state_dict(codec.state_dict())
        self.codec.g_s = _DecoderInput()
        self.codec.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, q: torch.Tensor):
        img, _ = self.codec.latent_sizes(*x.shape[-2:])
        return self.codec(x, q, noise=False)["x_hat"], img[-2::-1]


def distortion(g_s, coder, x, q):
    latents, sizes = coder(x, q)
    mse = (g_s(latents, sizes) - x).pow(2).flatten(1).mean(1)
    return (q_to_lambda(q) * 255**2 * mse).mean(), mse


@torch.no_grad()
def validate(g_s, coder, val: torch.Tensor) -> dict:
    """Mean PSNR of the decoded validation crops at q = 0, 0.5, 1 (batches of 4, as the training stages do)."""
    g_s.eval()
    out = {}
    for q in (0.0, 0.5, 1.0):
        mse = torch.cat([distortion(g_s, coder, x, torch.full((len(x),), q))[1] for x in val.split(4)])
        out[f"psnr_q{q}"] = float(psnr(mse).mean())
    g_s.train()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_SINGLE)
    p.add_argument("--width", type=int, help="decoder width (default: the codec's N)")
    p.add_argument("--minutes", type=float, default=60)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    codec = load(args.model).model.base
    g_s = codec.g_s
    if args.width and args.width != codec.config.N:
        g_s = widen_synthesis(g_s, args.width, seed=args.seed)
    g_s = g_s.train().requires_grad_(True)
    coder = FrozenCoder(codec)
    data = load_recipe("cpu")["data"]  # the held-out split and crops every training stage validates on
    train_files, val_files = split(list_images(args.data or data_dir(data["train"])), data["val_count"])
    sampler = CropSampler(train_files, args.crop, args.seed)
    val = validation_crops(val_files, data["val_crop"])
    opt = torch.optim.Adam(g_s.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    log = open(out / "log.csv", "w", newline="")
    writer = csv.writer(log)
    writer.writerow(["step", "seconds", "train_loss", "psnr_q0.0", "psnr_q0.5", "psnr_q1.0"])

    def record(step, seconds, loss):
        v = validate(g_s, coder, val)
        writer.writerow([step, f"{seconds:.0f}", f"{loss:.4f}", *(f"{v[k]:.3f}" for k in sorted(v))])
        log.flush()
        tmp = out / "g_s.pt.tmp"
        torch.save({"width": args.width or codec.config.N, "step": step, "state": g_s.state_dict()}, tmp)
        os.replace(tmp, out / "g_s.pt")
        print(f"step {step} {seconds:.0f}s loss {loss:.4f} " + " ".join(f"{k} {v[k]:.3f}" for k in sorted(v)), flush=True)

    start, running = time.monotonic(), float("nan")
    record(0, 0.0, running)
    step = 0
    while step < args.steps and time.monotonic() - start < args.minutes * 60:
        x = sampler.batch(args.batch).contiguous(memory_format=torch.channels_last)
        q = torch.rand(args.batch, generator=gen)
        loss, _ = distortion(g_s, coder, x, q)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(g_s.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if math.isnan(running) else 0.98 * running + 0.02 * loss.item()
        if step % args.val_every == 0:
            record(step, time.monotonic() - start, running)
    if step % args.val_every:
        record(step, time.monotonic() - start, running)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
