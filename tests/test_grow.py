"""Growing a trained codec's latents (compass.train.grow): same files at the start, and trainable new channels."""
import pytest
import torch

from compass.codec import CodecConfig, MeanScaleHyperprior
from compass.train.grow import grow_latents
from compass.train.stages import rd_loss

from conftest import spread_codec, synthetic_image


def grown(small: MeanScaleHyperprior, M: int) -> MeanScaleHyperprior:
    cfg = small.config
    big = MeanScaleHyperprior(CodecConfig(N=cfg.N, M=M, levels=cfg.levels))
    big.load_state_dict(grow_latents(big, small.state_dict()))
    big.eval().update()
    return big


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
def test_grown_codec_decodes_what_the_original_does(q):
    small = spread_codec()
    big = grown(small, 2 * small.config.M)
    x = synthetic_image(40, 56, seed=1)
    a, b = small.compress(x, q), big.compress(x, q)
    assert b["strings"][1] == a["strings"][1]  # z and its hyperprior are untouched
    assert abs(len(b["strings"][0]) - len(a["strings"][0])) <= 1  # the new channels' zeros cost ~nothing
    assert torch.allclose(b["x_hat"], a["x_hat"], atol=1e-5)
    assert torch.allclose(big.decompress(b["strings"], b["shape"], q)["x_hat"], a["x_hat"], atol=1e-5)


def test_gradients_reach_every_new_connection():
    """At first the new channels round to zero, so g_s's new filters see nothing and learn nothing; everything that
    makes them gets a gradient (through the rounding's straight-through estimate), and once a channel carries a
    value, g_s's filters learn from it."""
    small = spread_codec()
    M, M2 = small.config.M, 2 * small.config.M
    big = grown(small, M2).train()
    x = synthetic_image(32, 32, seed=2).repeat(2, 1, 1, 1)
    q = torch.tensor([0.2, 1.0])
    new = slice(M, M2)
    rd_loss(big(x, q), x, q)[0].backward()
    p = dict(big.named_parameters())
    for name, index in [("g_a.convs.3.weight", (new,)), ("h_a.convs.0.weight", (slice(None), new)),
                        ("h_s.convs.2.weight", (new,)),  # the new channels' scales
                        ("h_s.convs.2.weight", (slice(M2 + M, 2 * M2),)),  # and means
                        ("log_gain", (slice(None), new))]:
        assert p[name].grad[index].abs().sum() > 0, name
    assert p["g_s.convs.0.weight"].grad[new].abs().sum() == 0
    with torch.no_grad():
        p["g_a.convs.3.weight"][new] *= 1000
    big.zero_grad()
    rd_loss(big(x, q), x, q)[0].backward()
    assert p["g_s.convs.0.weight"].grad[new].abs().sum() > 0


def test_shrinking_is_refused():
    small = MeanScaleHyperprior(CodecConfig(N=8, M=6, levels=3))
    with pytest.raises(ValueError, match="shrink"):
        grow_latents(small, spread_codec().state_dict())
