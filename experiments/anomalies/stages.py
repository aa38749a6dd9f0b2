"""Per-stage measurements of a scalable file, through the public API only (docs/prediction.md).

For one image, model and quality: every layer's base or residual coding (`ScalableCodec.code_layer`), the
prediction (`ScalableCodec.predict`) from the reconstruction below, and the single-layer codec on the same layer
image at the same q. Numbers per layer: real bytes (layer alone and the file up to it, header excluded),
PSNR of the reconstruction, of the prediction and of the prediction with its per-channel mean removed, the
prediction's per-channel mean offset (levels), high-frequency energy (RMS of a Laplacian, levels) on the smooth
part of the image, and the share of the residual's y symbols that are zero.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from compass.resample import pyramid, upsample_bicubic_pil
from compass.models import load

_MODELS: dict = {}


def model(name: str):
    if name not in _MODELS:
        _MODELS[name] = load(name).model
    return _MODELS[name]


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    e = ((a.clamp(0, 1) - b) ** 2).mean(1, keepdim=True)
    m = e[mask].mean() if mask is not None else e.mean()
    return float(-10 * torch.log10(m.clamp_min(1e-12)))


def laplacian_rms(a: torch.Tensor, mask: torch.Tensor) -> float:
    """RMS of a 4-neighbour Laplacian (in 8-bit levels) over `mask`: the grain / high-frequency energy."""
    k = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=a.dtype).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    lap = F.conv2d(F.pad(a, (1, 1, 1, 1), mode="replicate"), k, groups=3) * 255
    return float((lap**2).mean(1, keepdim=True)[mask].mean().sqrt())


def smooth_mask(x: torch.Tensor, levels: float = 1.5) -> torch.Tensor:
    """Pixels whose 7x7 neighbourhood (grey) has a standard deviation under `levels`, away from the border."""
    g = x.mean(1, keepdim=True) * 255
    mu = F.avg_pool2d(g, 7, 1, 3, count_include_pad=False)
    sd = (F.avg_pool2d(g * g, 7, 1, 3, count_include_pad=False) - mu * mu).clamp(min=0).sqrt()
    m = sd < levels
    m[..., :8, :] = m[..., -8:, :] = m[..., :, :8] = m[..., :, -8:] = False
    return m


def nbytes(code) -> int:
    return sum(len(s) for s in code.strings)


def zero_share(codec, residual: torch.Tensor, q: float) -> float:
    """Share of y symbols round(y - means) that are 0 when `codec` codes `residual` at q."""
    latents = codec.analyse(residual, q)
    means = codec.code(latents, q, tuple(residual.shape[-2:]))["means_hat"]
    return float((torch.round(latents["y"] - means) == 0).float().mean())


@torch.no_grad()
def layer_stats(name: str, x: torch.Tensor, fractions, qualities, single: str = "compass-cpu-single",
                oracle: bool = False) -> list[dict]:
    """Stats per layer of a file of `name` coding x (1, 3, H, W) at layer sizes `fractions` of x, `qualities`."""
    m, s = model(name), model(single)
    H, W = x.shape[-2:]
    sizes = [(max(1, round(H * f)), max(1, round(W * f))) for f in fractions]
    layers = pyramid(x, sizes)
    rows, prev, total = [], None, 0
    for k, (target, q) in enumerate(zip(layers, qualities)):
        mask = smooth_mask(target)
        code, rec = m.code_layer(target, q, prev)
        total += nbytes(code)
        scode, srec = s.code_layer(target, q, None)
        px = target.shape[-2] * target.shape[-1]
        row = {"layer": k, "size": sizes[k], "q": q, "bytes": nbytes(code), "bpp_layer": nbytes(code) * 8 / px,
               "bpp_file": total * 8 / px, "psnr": psnr(rec, target), "psnr_smooth": psnr(rec, target, mask),
               "hf_smooth": laplacian_rms(rec, mask), "hf_target": laplacian_rms(target, mask),
               "smooth_share": float(mask.float().mean()),
               "single_bpp": nbytes(scode) * 8 / px, "single_psnr": psnr(srec, target),
               "single_psnr_smooth": psnr(srec, target, mask), "single_hf_smooth": laplacian_rms(srec, mask)}
        if prev is not None:
            pred = m.predict(prev, sizes[k])
            off = (pred - target).mean((2, 3), keepdim=True)
            bic = upsample_bicubic_pil(prev, sizes[k])
            row.update(pred_psnr=psnr(pred, target), pred_offset=[round(v, 2) for v in (off.flatten() * 255).tolist()],
                       pred_psnr_dc=psnr(pred - off, target), pred_psnr_dc_smooth=psnr(pred - off, target, mask),
                       pred_hf_smooth=laplacian_rms(pred - off, mask), bicubic_psnr=psnr(bic, target),
                       zero_symbols=zero_share(m.residual, target - pred, q))
            if oracle:  # the same layer predicted from the UNCODED image below: what propagation costs
                ocode, orec = m.code_layer(target, q, layers[k - 1])
                row.update(oracle_bytes=nbytes(ocode), oracle_psnr=psnr(orec, target),
                           oracle_pred_psnr=psnr(m.predict(layers[k - 1], sizes[k]), target))
        rows.append(row)
        prev = rec
    return rows


def load_image(path) -> torch.Tensor:
    from PIL import Image
    with Image.open(path) as im:
        a = np.array(im.convert("RGB"))
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
