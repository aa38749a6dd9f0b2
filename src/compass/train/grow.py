"""Grow a trained codec's latent y from M to more channels without changing what it codes.

A codec trained with M latent channels is loaded into one with M' > M: the old channels keep their weights, and
the new ones start so that every coded file and every decoded image stays as it was (tested), while training can
still move them. A new connection is zero on one side and small and random on the other, so gradients reach both:

- g_a makes the new channels from small random filters, 0.01x a fresh initialization: at the start they round
  to zero at every quality; g_s reads them through small random filters (0.1x), which see only zeros until a
  channel starts to carry something.
- h_a reads them with zero weights. h_s makes new hidden channels from small random weights and reads them with
  zero weights; its new outputs (the new channels' scales and means) start at scale 0.11 (the lowest in the
  scale table, where a zero costs almost nothing) and mean 0.
- Gains of a new channel: the mean of the old channels' log-gains at each level.

Why: the decoder of the M=96 codec reaches only ~1 dB below JPEG 2000 at high rates even from ideal latents
(docs/training.md), and more latent channels is how published codecs serve high rates (M=192 to 320).
"""
from __future__ import annotations

import torch

from ..codec import MeanScaleHyperprior

NEW_SCALE = 0.11
GROWN = {"g_a.convs.3.weight", "g_a.convs.3.bias", "g_s.convs.0.weight", "h_a.convs.0.weight", "log_gain",
         "log_inv_gain", *(f"h_s.convs.{i}.{p}" for i in range(3) for p in ("weight", "bias"))}


def grow_latents(codec: MeanScaleHyperprior, state: dict, seed: int = 0) -> dict:
    """A state dict for `codec` (M' latent channels) from `state`, a trained codec's with M <= M' channels."""
    fresh = codec.state_dict()
    M, M2 = state["log_gain"].shape[1], codec.config.M
    if M > M2:
        raise ValueError(f"cannot shrink a codec's latents from {M} to {M2} channels")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, new in fresh.items():
        old = state[key]
        if old.shape == new.shape or key not in GROWN:  # probability tables: sized by the data, kept as trained
            out[key] = old.clone()
            continue
        t = torch.zeros(new.shape, dtype=old.dtype)
        t[tuple(slice(0, s) for s in old.shape)] = old
        out[key] = t

    def small(key: str, index: tuple, factor: float) -> None:
        w = fresh[key][index]
        out[key][index] = factor * w.std() * torch.randn(w.shape, generator=gen)

    new_y, hidden = slice(M, M2), slice(M * 3 // 2, M2 * 3 // 2)
    small("g_a.convs.3.weight", (new_y,), 0.01)  # Conv2d: (out, in, k, k)
    small("g_s.convs.0.weight", (new_y,), 0.1)  # ConvTranspose2d: (in, out, k, k)
    small("h_s.convs.0.weight", (slice(None), new_y), 0.1)
    small("h_s.convs.1.weight", (slice(None), hidden), 0.1)
    # the last h_s layer gives scales then means: the old means move from [M, 2M) to [M', M' + M)
    w_old, w = state["h_s.convs.2.weight"], out["h_s.convs.2.weight"]
    w.zero_()
    w[:M, :w_old.shape[1]], w[M2:M2 + M, :w_old.shape[1]] = w_old[:M], w_old[M:]
    b_old, b = state["h_s.convs.2.bias"], out["h_s.convs.2.bias"]
    b.zero_()
    b[:M], b[M:M2], b[M2:M2 + M] = b_old[:M], NEW_SCALE, b_old[M:]
    for key in ("log_gain", "log_inv_gain"):
        out[key][:, new_y] = state[key].mean(1, keepdim=True)
    return out
