"""LIFF: the factorized (per-source-pixel) evaluation equals the direct formulation of the method."""
import torch
import torch.nn.functional as F

from compass.liff import LIFF, LIFF_SIZES, local_grid, source_index


def direct(m: LIFF, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The method as written: per target pixel, MLP([unfolded feature | r | s]) -> 9C x 3 filter, then f @ filter."""
    H, W = size
    u = m.unfold(x)
    b, d, h, w = u.shape
    f = u[:, :, source_index(H, h)][:, :, :, source_index(W, w)].permute(0, 2, 3, 1)
    r = torch.stack(torch.meshgrid(local_grid(H, h).to(x.dtype), local_grid(W, w).to(x.dtype), indexing="ij"), -1)
    s = torch.tensor([2 * h / H, 2 * w / W], dtype=x.dtype).expand(H, W, 2)
    a = torch.cat([f, r.expand(b, H, W, 2), s.expand(b, H, W, 2)], -1)
    for layer in m.layers[:-1]:
        a = F.relu(layer(a))
    filt = m.layers[-1](a).view(b, H, W, d, 3)
    return 0.5 + 0.5 * torch.einsum("bhwd,bhwdc->bchw", f, filt)


def test_factorized_equals_direct_at_any_scale():
    torch.manual_seed(0)
    m = LIFF(LIFF_SIZES["tiny"])  # default init, float32: outputs of order 1, as in use
    x = torch.rand(2, 3, 7, 9)
    for size in [(7, 9), (17, 13), (28, 36), (10, 20), (8, 30)]:  # 1x, odd, 4x, unequal factors
        ref = direct(m, x, size)
        assert ref.std() > 1e-3
        assert (m(x, size) - ref).abs().max() <= 1e-5
        assert (m(x, size, chunk=37) - ref).abs().max() <= 1e-5  # chunked queries


def test_gradients_match_direct():
    torch.manual_seed(1)
    m = LIFF(LIFF_SIZES["tiny"]).double()
    x = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    g1 = torch.autograd.grad(m(x, (11, 9)).square().sum(), list(m.parameters()))
    g2 = torch.autograd.grad(direct(m, x, (11, 9)).square().sum(), list(m.parameters()))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-9)


def test_source_index_and_grid():
    # 2x: every source pixel feeds two targets, offsets -0.5 / +0.5 source pixels
    assert source_index(4, 2).tolist() == [0, 0, 1, 1]
    assert local_grid(4, 2).tolist() == [-0.5, 0.5, -0.5, 0.5]
    # identity scale maps each pixel to itself with zero offset
    assert source_index(5, 5).tolist() == list(range(5))
    assert local_grid(5, 5).abs().max() == 0
    # offsets stay within half a source pixel on each side at any factor
    for dst, src in [(17, 5), (100, 37), (3, 1)]:
        g = local_grid(dst, src)
        assert g.abs().max() <= 1.0 and source_index(dst, src).max() == src - 1
