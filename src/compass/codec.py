"""The single-layer learned codec: Minnen 2018 mean-scale hyperprior with gain units for continuous rate.

One model covers every rate: a quality q in [0, 1] selects (by geometric interpolation between learned levels)
a gain vector that scales the latent y before quantization and its inverse after, and a hyper gain for z
(Cui et al., CVPR 2021). The same class serves as the base-layer codec and as the residual codec of every
enhancement layer.

Besides `forward` (training) and `compress`/`decompress` (real bits), the codec's steps are public, in
CompressAI's terms, so that encoder-side tools (`compass.refine`) need nothing private: `analyse` (image -> gained
latents y, z), `code` (latents -> strings and what the decoder sees: y_hat, z_hat, scales_hat, means_hat),
`synthesise` (y_hat -> image) and `rate` (differentiable likelihoods of latents under a given rounding).
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .entropy import CodingError, EntropyBottleneck, GaussianConditional
from .blocks import GDN, STRIPE, Analysis, Synthesis, conv, deconv, one_thread, size_chain
from .limits import check_quality
from .quality import LAMBDA_MAX, LAMBDA_MIN, interpolate_log_gains


@dataclass(frozen=True)
class CodecConfig:
    """Everything needed to rebuild a codec: N (transform width), M (latent channels), gain levels (the sizes are
    the recipes', `compass.models.sizes`), and the lambda that q = 0 and q = 1 were trained for (older weights
    files, without them, get the defaults)."""

    N: int
    M: int
    levels: int
    lambda_min: float = LAMBDA_MIN
    lambda_max: float = LAMBDA_MAX

    @property
    def lambda_range(self) -> tuple[float, float]:
        return self.lambda_min, self.lambda_max

    def to_dict(self) -> dict:
        return asdict(self)


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

    def __init__(self, config: CodecConfig):
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
        """(gain, inverse gain, hyper gain, hyper inverse gain) at qualities q (B,), each (B, C, 1, 1)."""
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

    def _entropy_parameters(self, z_hat: torch.Tensor, q: float, shape: tuple[int, int]):
        """(scales_hat, means_hat) of y from z_hat for an image of `shape`, on one thread: they set the
        probability model, so encoder and decoder must compute the same floats whatever their thread counts."""
        hyper_inv_gain = self.gains(_as_q(q, 1, z_hat.device))[3]
        with one_thread():
            return self._hyper_synthesis(z_hat, hyper_inv_gain, self.latent_sizes(*shape)[1])

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
    def analyse(self, x: torch.Tensor, q: float) -> dict:
        """The gained latents the encoder codes for image x (1, 3, H, W) at quality q: {"y": g_a(x) * gain,
        "z": h_a(y) * hyper gain} (one thread, row stripes: the same floats whatever the thread count)."""
        gain, _, hgain, _ = self.gains(_as_q(q, 1, x.device))
        with one_thread():
            y = self.g_a(x, STRIPE) * gain
            z = self.h_a(y) * hgain
        return {"y": y, "z": z}

    @torch.no_grad()
    def code(self, latents: dict, q: float, shape: tuple[int, int]) -> dict:
        """Entropy-code gained latents {"y", "z"} of an image of `shape` (H, W): {"strings": [y, z]} and what the
        decoder will see, "y_hat", "z_hat", "scales_hat" and "means_hat"."""
        _, hyp = self.latent_sizes(*shape)
        z_string = self.entropy_bottleneck.compress(latents["z"])
        z_hat = self.entropy_bottleneck.decompress(z_string, hyp[-1])
        scales, means = self._entropy_parameters(z_hat, q, shape)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_string = self.gaussian_conditional.compress(latents["y"], indexes, means)
        return {"strings": [y_string, z_string], "y_hat": torch.round(latents["y"] - means) + means, "z_hat": z_hat,
                "scales_hat": scales, "means_hat": means}

    def rate(self, latents: dict, q: float, shape: tuple[int, int],
             quantize: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        """Differentiable rate of gained latents {"y", "z"} of an image of `shape`, each rounded by `quantize`
        about its entropy model's centre: z about the medians, y about the means
        predicted from z_hat. Returns "y_hat", "z_hat", "scales_hat", "means_hat" and "likelihoods" {"y", "z"}:
        what encoder-side refinement descends, with `synthesise(..., differentiable=True)`."""
        medians = self.entropy_bottleneck.medians().view(1, -1, 1, 1)
        z_hat = quantize(latents["z"] - medians) + medians
        scales, means = self._entropy_parameters(z_hat, q, shape)
        y_hat = quantize(latents["y"] - means) + means
        likelihoods = {"y": self.gaussian_conditional.likelihood(y_hat, scales, means),
                       "z": self.entropy_bottleneck.likelihood(z_hat)}
        return {"y_hat": y_hat, "z_hat": z_hat, "scales_hat": scales, "means_hat": means, "likelihoods": likelihoods}

    def synthesise(self, y_hat: torch.Tensor, q: float, shape: tuple[int, int],
                   differentiable: bool = False) -> torch.Tensor:
        """The image (1, 3, H, W), unclamped, that y_hat decodes to at quality q.

        At inference: one thread, row stripes, and channels-last layout, in which oneDNN's transposed
        convolutions skip a layout copy of their input and output at every stage (about 30% of g_s on one
        thread) and give the same floats (a test compares). h_s keeps its layout: there the floats differ, and
        they set the probability model. `differentiable`: the plain transform, whose gradients refinement takes."""
        inv_gain = self.gains(_as_q(q, 1, y_hat.device))[1]
        img, _ = self.latent_sizes(*shape)
        if differentiable:
            return self.g_s(y_hat * inv_gain, img[-2::-1])
        with one_thread():
            y = (y_hat * inv_gain).contiguous(memory_format=torch.channels_last)
            return self.g_s(y, img[-2::-1], STRIPE)

    def check(self, coded: dict) -> int:
        """The symbol check (`symbol_check`) of what `code` or `decompress` saw."""
        return symbol_check(coded["y_hat"], coded["means_hat"], coded["z_hat"], self.entropy_bottleneck.coded_medians)

    @torch.no_grad()
    def compress(self, x: torch.Tensor, q: float, reconstruct: bool = True, latents: dict | None = None) -> dict:
        """Code one image (1, 3, H, W) at quality q: its latents (`analyse`), or the given ones (refined, say).

        Returns {"strings": [y_bytes, z_bytes], "shape": (H, W), "check": symbol CRC, "x_hat": the decoder's
        reconstruction (computed here because a scalable encoder predicts the next layer from it; None with
        `reconstruct=False`, which skips the synthesis transform when nothing is predicted from this layer)}.
        """
        if x.dim() != 4 or x.shape[0] != 1:
            raise ValueError("compress takes one image shaped (1, C, H, W)")
        q = check_quality(q)
        shape = tuple(x.shape[-2:])
        coded = self.code(self.analyse(x, q) if latents is None else latents, q, shape)
        return {"strings": coded["strings"], "shape": shape, "check": self.check(coded),
                "x_hat": self.synthesise(coded["y_hat"], q, shape) if reconstruct else None}

    @torch.no_grad()
    def decompress(self, strings: list[bytes], shape: tuple[int, int], q: float) -> dict:
        """Inverse of `compress`: {"x_hat": (1, 3, H, W) unclamped, "check": CRC of the decoded symbols}."""
        if len(strings) != 2:
            raise CodingError(f"a coded layer holds 2 strings (y, z), got {len(strings)}")
        q = check_quality(q)
        _, hyp = self.latent_sizes(*shape)
        z_hat = self.entropy_bottleneck.decompress(strings[1], hyp[-1])
        scales, means = self._entropy_parameters(z_hat, q, shape)
        indexes = self.gaussian_conditional.build_indexes(scales)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, means)
        return {"x_hat": self.synthesise(y_hat, q, shape),
                "check": self.check({"y_hat": y_hat, "means_hat": means, "z_hat": z_hat})}
