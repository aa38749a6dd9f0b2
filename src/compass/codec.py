"""The single-layer learned codec: Minnen 2018 mean-scale hyperprior with gain units for continuous rate.

One model covers every rate: a quality q in [0, 1] selects (by geometric interpolation between learned levels)
a gain vector that scales the latent y before quantization and its inverse after, and a hyper gain for z
(Cui et al., CVPR 2021). The same class serves as the base-layer codec and as the residual codec of every
enhancement layer.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .entropy import CodingError, EntropyBottleneck, GaussianConditional
from .layers import GDN, STRIPE, Analysis, Synthesis, conv, deconv, one_thread, size_chain
from .limits import check_quality
from .quality import LAMBDA_MAX, LAMBDA_MIN, interpolate_log_gains, q_to_lambda
from .refine import RefineConfig, refine_latents


@dataclass(frozen=True)
class CodecConfig:
    """Everything needed to rebuild a codec: N (transform width), M (latent channels), gain levels, and the
    lambda that q = 0 and q = 1 were trained for (older weights files, without them, get the defaults)."""

    N: int = 64
    M: int = 96
    levels: int = 6
    lambda_min: float = LAMBDA_MIN
    lambda_max: float = LAMBDA_MAX

    @property
    def lambda_range(self) -> tuple[float, float]:
        return self.lambda_min, self.lambda_max

    def to_dict(self) -> dict:
        return asdict(self)


CODEC_SIZES = {
    "cpu": CodecConfig(N=64, M=96),
    "paper": CodecConfig(N=128, M=192),
    "tiny": CodecConfig(N=8, M=12, levels=3),
}


def symbol_check(y_hat: torch.Tensor, means: torch.Tensor, z_hat: torch.Tensor, medians: torch.Tensor) -> int:
    """CRC32 of the integer symbols (y then z) that were coded; encoder and decoder must agree on it."""
    y_sym = torch.round(y_hat - means).to(torch.int32).cpu().numpy()
    z_sym = torch.round(z_hat - medians.view(1, -1, 1, 1)).to(torch.int32).cpu().numpy()
    return zlib.crc32(z_sym.astype("<i4").tobytes(), zlib.crc32(y_sym.astype("<i4").tobytes()))


def _as_q(q, batch: int, device) -> torch.Tensor:
    q = torch.as_tensor(q, dtype=torch.float32, device=device)
    return q.expand(batch) if q.dim() == 0 else q


class MeanScaleHyperprior(nn.Module):
    """Mean-scale hyperprior without context model; `forward` trains, `compress`/`decompress` write real bits."""

    def __init__(self, config: CodecConfig = CodecConfig()):
        super().__init__()
        self.config = config
        N, M, L = config.N, config.M, config.levels
        self.g_a = Analysis([conv(3, N), conv(N, N), conv(N, N), conv(N, M)], [GDN(N), GDN(N), GDN(N)])
        self.g_s = Synthesis([deconv(M, N), deconv(N, N), deconv(N, N), deconv(N, 3)],
                             [GDN(N, inverse=True), GDN(N, inverse=True), GDN(N, inverse=True)])
        self.h_a = Analysis([conv(M, N, 3, 1), conv(N, N), conv(N, N)],
                            [nn.LeakyReLU(inplace=True), nn.LeakyReLU(inplace=True)])
        self.h_s = Synthesis([deconv(N, M), deconv(M, M * 3 // 2), conv(M * 3 // 2, 2 * M, 3, 1)],
                             [nn.LeakyReLU(inplace=True), nn.LeakyReLU(inplace=True)])
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional()
        # log-gains per level; initial spread ~ sqrt(lambda range) so every q starts at a different rate
        spread = torch.linspace(-0.5, 0.5, L)[:, None] * math.log(5.0)
        self.log_gain = nn.Parameter(spread.repeat(1, M))
        self.log_inv_gain = nn.Parameter(-spread.repeat(1, M))
        self.log_hyper_gain = nn.Parameter(torch.zeros(L, N))
        self.log_hyper_inv_gain = nn.Parameter(torch.zeros(L, N))

    def gains(self, q: torch.Tensor):
        return (interpolate_log_gains(self.log_gain, q), interpolate_log_gains(self.log_inv_gain, q),
                interpolate_log_gains(self.log_hyper_gain, q), interpolate_log_gains(self.log_hyper_inv_gain, q))

    @staticmethod
    def latent_sizes(height: int, width: int):
        """(sizes of the 4 image-side stages, sizes of the 2 hyper stages); the last entries are y's and z's."""
        img = size_chain(height, width, 4)
        hyp = size_chain(*img[-1], 2)
        return img, hyp

    def _hyper_synthesis(self, z_hat, hyper_inv_gain, hyp_sizes):
        params = self.h_s(z_hat * hyper_inv_gain, hyp_sizes[-2::-1])
        scales, means = params.chunk(2, 1)
        return scales, means

    def forward(self, x: torch.Tensor, q, noise: bool | None = None) -> dict:
        """Training pass: x in [0, 1], q scalar or (B,). Returns x_hat (unclamped), y_hat, likelihoods.

        `noise` (default: self.training) picks uniform-noise likelihoods (training) or rounding (evaluation).
        """
        q = _as_q(q, x.shape[0], x.device)
        gain, inv_gain, hgain, hinv = self.gains(q)
        img, hyp = self.latent_sizes(*x.shape[-2:])
        y = self.g_a(x) * gain
        z = self.h_a(y) * hgain
        z_hat, z_lik = self.entropy_bottleneck(z, noise)
        scales, means = self._hyper_synthesis(z_hat, hinv, hyp)
        y_hat, y_lik = self.gaussian_conditional(y, scales, means, noise)
        x_hat = self.g_s(y_hat * inv_gain, img[-2::-1])
        return {"x_hat": x_hat, "y_hat": y_hat, "likelihoods": {"y": y_lik, "z": z_lik}}

    def aux_loss(self) -> torch.Tensor:
        return self.entropy_bottleneck.loss()

    def update(self) -> None:
        """Build the integer probability tables of both entropy models (call after training or loading)."""
        self.entropy_bottleneck.update()
        self.gaussian_conditional.update()

    @torch.no_grad()
    def compress(self, x: torch.Tensor, q: float, reconstruct: bool = True,
                 refine: RefineConfig | None = None) -> dict:
        """Code one image (1, 3, H, W) at quality q.

        Returns {"strings": [y_bytes, z_bytes], "shape": (H, W), "check": symbol CRC, "x_hat": the decoder's
        reconstruction (computed here because a scalable encoder predicts the next layer from it; None with
        `reconstruct=False`, which skips the synthesis transform when nothing is predicted from this layer)}.
        `refine` optimizes the latents for this image first (`compass.refine`); of the refined and the plain
        latents, the ones with the lower real cost (coded bits / pixel + lambda * 255^2 * MSE) are written.
        """
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError("compress takes one image shaped (1, C, H, W)")
        q = check_quality(q)
        gain, inv_gain, hgain, hinv = self.gains(_as_q(q, 1, x.device))
        img, hyp = self.latent_sizes(*x.shape[-2:])
        with one_thread():
            y = self.g_a(x, STRIPE) * gain
            z = self.h_a(y) * hgain
        out = self._code(y, z, hinv, hyp)
        if refine is not None and refine.steps > 0:
            with one_thread():
                refined = self._code(*refine_latents(self, x, q, y, z, refine), hinv, hyp)
            lam = q_to_lambda(q, self.config.lambda_range) * 255 ** 2
            for c in (out, refined):
                c["x_hat"] = self._synthesis(c["y_hat"] * inv_gain, img)
                c["cost"] = (sum(len(s) for s in c["strings"]) * 8 / x[0, 0].numel()
                             + lam * torch.mean((c["x_hat"] - x) ** 2).item())
            out = min(out, refined, key=lambda c: c["cost"])
        elif reconstruct:
            out["x_hat"] = self._synthesis(out["y_hat"] * inv_gain, img)
        check = symbol_check(out["y_hat"], out["means"], out["z_hat"], self.entropy_bottleneck._medians)
        return {"strings": out["strings"], "shape": tuple(x.shape[-2:]), "check": check,
                "x_hat": out.get("x_hat") if reconstruct else None}

    def _code(self, y: torch.Tensor, z: torch.Tensor, hyper_inv_gain: torch.Tensor, hyp_sizes) -> dict:
        """Entropy-code gained latents y and z: strings [y, z] and what the decoder will see (y_hat, means, z_hat)."""
        z_string = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_string, hyp_sizes[-1])
        with one_thread():
            scales, means = self._hyper_synthesis(z_hat, hyper_inv_gain, hyp_sizes)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_string = self.gaussian_conditional.compress(y, indexes, means)
        return {"strings": [y_string, z_string], "y_hat": torch.round(y - means) + means, "means": means,
                "z_hat": z_hat}

    @torch.no_grad()
    def decompress(self, strings: list[bytes], shape: tuple[int, int], q: float) -> dict:
        """Inverse of `compress`: {"x_hat": (1, 3, H, W) unclamped, "check": CRC of the decoded symbols}."""
        if len(strings) != 2:
            raise CodingError(f"a coded layer holds 2 strings (y, z), got {len(strings)}")
        q = _as_q(check_quality(q), 1, self.log_gain.device)
        _, inv_gain, _, hinv = self.gains(q)
        img, hyp = self.latent_sizes(*shape)
        z_hat = self.entropy_bottleneck.decompress(strings[1], hyp[-1])
        with one_thread():
            scales, means = self._hyper_synthesis(z_hat, hinv, hyp)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, means)
        x_hat = self._synthesis(y_hat * inv_gain, img)
        check = symbol_check(y_hat, means, z_hat, self.entropy_bottleneck._medians)
        return {"x_hat": x_hat, "check": check}

    def _synthesis(self, y: torch.Tensor, img: list[tuple[int, int]]) -> torch.Tensor:
        """g_s at inference: one thread, row stripes, and channels-last layout, in which oneDNN's transposed
        convolutions skip a layout copy of their input and output at every stage (about 30% of g_s on one
        thread) and give the same floats (a test compares). h_s keeps its layout: there the floats differ, and
        they set the probability model."""
        with one_thread():
            return self.g_s(y.contiguous(memory_format=torch.channels_last), img[-2::-1], STRIPE)
