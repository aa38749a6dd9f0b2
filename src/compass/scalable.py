"""The scalable model: a base-layer codec, then ONE enhancement-layer step (predictor + residual codec) in a loop.

Layer 0 codes I^0 with the base codec. For k = 1..K the same weights predict I^k from the reconstruction of
layer k-1 (LIFF, or plain bicubic for the ablation), code the residual I^k - prediction, and reconstruct
Î^k = prediction + decoded residual. Reconstructions are not clamped between layers (only for output), as in
the method. K, every layer size and every layer's quality are chosen at encode time.

Beyond the paper, a layer above the base may be coded intra: on its own by the base codec, as a single-layer
file of it would be. Where the layer below was coded coarsely (its error is passed up through the prediction,
and the residual codec removes little of it), that costs less; mode "auto" picks, per layer, whichever of the
two has the lower rate-distortion cost at the layer's q (docs/prediction.md). The next layer predicts from
whichever reconstruction the layer has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .codec import MeanScaleHyperprior
from .liff import LIFF
from .limits import check_layer_mode
from .pixels import output_mse
from .quality import rd_cost
from .refine import RefineConfig, compress_refined
from .resample import upsample_bicubic


@dataclass
class LayerCode:
    """One coded layer: the codec's strings, the check of its integer symbols, and whether it was coded intra (by
    the base codec on its own; always for layer 0) rather than as a residual to the prediction."""

    strings: list[bytes]
    check: int
    intra: bool = False


class ScalableCodec(nn.Module):
    """COMPASS. `liff=None` gives the ablation that predicts with bicubic upsampling instead; `residual=None`
    the single-layer codec, which codes layer 0 only (the same files as a scalable model's base layer)."""

    def __init__(self, base: MeanScaleHyperprior, residual: MeanScaleHyperprior | None, liff: LIFF | None,
                 chunk: int = 1 << 16):
        super().__init__()
        self.base = base
        self.residual = residual
        self.liff = liff
        self.chunk = chunk

    @property
    def max_layers(self) -> int | None:
        """1 for the single-layer codec; None: no limit of its own."""
        return 1 if self.residual is None else None

    def predict(self, x_prev: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Prediction of the next layer at `size` from the previous reconstruction."""
        if self.liff is None:
            return upsample_bicubic(x_prev, size)
        return self.liff(x_prev, size, None if self.training else self.chunk)

    def forward(self, pyramid: list[torch.Tensor], q) -> dict:
        """Training pass over I^0..I^K (each (B, 3, H^k, W^k)). The base layer is coded with rounding, no grad.

        Returns {"x_hat": [Î^0..Î^K], "pred": [None, Ǐ^1..], "likelihoods": [None, {y, z} per EL]}.
        """
        with torch.no_grad():
            x_prev = self.base(pyramid[0], q, noise=False)["x_hat"]
        x_hats, preds, liks = [x_prev], [None], [None]
        for target in pyramid[1:]:
            pred = self.predict(x_prev, tuple(target.shape[-2:]))
            out = self.residual(target - pred, q)
            x_prev = pred + out["x_hat"]
            x_hats.append(x_prev)
            preds.append(pred)
            liks.append(out["likelihoods"])
        return {"x_hat": x_hats, "pred": preds, "likelihoods": liks}

    @torch.no_grad()
    def compress(self, pyramid: list[torch.Tensor], qualities: list[float], reconstruct_top: bool = True,
                 refine: RefineConfig | None = None, mode: str = "predicted"
                 ) -> tuple[list[LayerCode], list[torch.Tensor | None]]:
        """Code I^0..I^K (each (1, 3, H, W)) with one quality per layer; returns codes and reconstructions.

        `reconstruct_top=False` skips the top layer's synthesis transform, which no prediction needs (the codes
        are the same); its reconstruction is then None. `refine` refines the latents of every layer for that
        layer's own loss (the base for its image, each residual for its residual), in order, so that each
        prediction is made from the reconstruction the decoder will have. `mode`: how layers above the base are
        coded (`code_layer`).
        """
        if len(pyramid) != len(qualities):
            raise ValueError("one quality per layer")
        top = len(pyramid) - 1
        codes, recons = [], []
        for k, (target, q) in enumerate(zip(pyramid, qualities)):
            code, x = self.code_layer(target, q, recons[-1] if k else None, reconstruct_top or k < top, refine,
                                      mode)
            codes.append(code)
            recons.append(x)
        return codes, recons

    @torch.no_grad()
    def code_layer(self, target: torch.Tensor, q: float, x_prev: torch.Tensor | None, reconstruct: bool = True,
                   refine: RefineConfig | None = None, mode: str = "predicted"
                   ) -> tuple[LayerCode, torch.Tensor | None]:
        """Code one layer: the base layer when `x_prev` is None; else, by `mode`, the residual to the prediction
        from `x_prev` (the reconstruction of the layer below; "predicted", the paper's method), the layer on its
        own with the base codec ("intra"), or whichever of the two has the lower `rd_cost` at q ("auto": both are
        coded, so about twice the work). Returns its code and reconstruction (None when not `reconstruct`).
        What `compress` does per layer, callable alone to try qualities for one layer."""
        check_layer_mode(mode)
        if x_prev is not None and self.residual is None:
            raise ValueError("a single-layer codec codes one layer only")
        if x_prev is None or mode == "intra":
            out = self._compress(self.base, target, q, reconstruct, refine)
            return LayerCode(out["strings"], out["check"], intra=True), out["x_hat"]
        pred = self.predict(x_prev, tuple(target.shape[-2:]))
        both = mode == "auto"
        out = self._compress(self.residual, target - pred, q, reconstruct or both, refine)
        code = LayerCode(out["strings"], out["check"])
        x_hat = None if out["x_hat"] is None else pred.add_(out["x_hat"])
        if both:
            alone = self._compress(self.base, target, q, True, refine)
            lambdas = self.residual.config.lambda_range
            if self._cost(alone["strings"], alone["x_hat"], target, q, lambdas) < self._cost(
                    code.strings, x_hat, target, q, lambdas):
                code, x_hat = LayerCode(alone["strings"], alone["check"], intra=True), alone["x_hat"]
        return code, x_hat if reconstruct else None

    @staticmethod
    def _cost(strings: list[bytes], x_hat: torch.Tensor, target: torch.Tensor, q: float, lambdas) -> float:
        """The layer's rate-distortion cost as the decoder will see it (output clamped to [0, 1])."""
        bpp = 8 * sum(len(s) for s in strings) / (target.shape[-2] * target.shape[-1])
        return float(rd_cost(bpp, output_mse(x_hat, target), q, lambdas))

    @staticmethod
    def _compress(codec: MeanScaleHyperprior, x: torch.Tensor, q: float, reconstruct: bool,
                  refine: RefineConfig | None) -> dict:
        if refine is None:
            return codec.compress(x, q, reconstruct)
        return compress_refined(codec, x, q, refine, reconstruct)

    @torch.no_grad()
    def decompress_iter(self, codes: list[LayerCode], sizes: list[tuple[int, int]], qualities: list[float]):
        """Yield (reconstruction, decoded symbol check) for layers 0, 1, ... as far as `codes` go (each coded as
        its `intra` says; layer 0 always by the base codec)."""
        x_prev = None
        for k, (code, size, q) in enumerate(zip(codes, sizes, qualities)):
            if k == 0 or code.intra:
                out = self.base.decompress(code.strings, size, q)
                x_prev = out["x_hat"]
            else:
                pred = self.predict(x_prev, size)
                out = self.residual.decompress(code.strings, size, q)
                x_prev = pred.add_(out["x_hat"])  # pred is fresh and done
            yield x_prev, out["check"]

    def update(self) -> None:
        self.base.update()
        if self.residual is not None:
            self.residual.update()
