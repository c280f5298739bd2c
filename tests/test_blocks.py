"""nets/blocks.py: every block map has its exact adjoint (over every registered architecture), the
convolution blocks halve or double the side, the Stiefel projection."""

import pytest
import torch

from lifted_cli.nets.activations import make_activation
from lifted_cli.nets.architectures import ConvAutoencoder
from lifted_cli.nets.blocks import ConvBlock, stiefel_project
from tests.conftest import SMALL_ARCHS, small_net

pytestmark = pytest.mark.usefixtures("float64")


def _inner(a, b) -> float:
    return float((a * b).sum())


@pytest.mark.parametrize("variant", list(SMALL_ARCHS))
def test_every_block_map_and_the_readout_have_their_exact_adjoint(variant):
    """<A v, r> = <v, A^T r> for A = W_l (pre), V_l (post) of every block and the read-out K."""
    model = small_net(variant)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for blk in model.blocks:
            v, r = torch.randn(2, blk.in_dim, generator=g), torch.randn(2, blk.z_dim, generator=g)
            assert _inner(blk.pre_linear(v), r) == pytest.approx(_inner(v, blk.pre_adjoint(r)), rel=1e-10)
            z, s = torch.randn(2, blk.z_dim, generator=g), torch.randn(2, blk.out_dim, generator=g)
            assert _inner(blk.post_linear(z), s) == pytest.approx(_inner(z, blk.post_adjoint(s)), rel=1e-10)
        u = torch.randn(2, model.blocks[-1].out_dim, generator=g)
        x = torch.randn(2, model.readout_linear(u).shape[1], generator=g)
        assert _inner(model.readout_linear(u), x) == pytest.approx(_inner(u, model.readout_adjoint(x)), rel=1e-10)


@pytest.mark.slow  # long iterations
def test_proxnet_stays_on_the_stiefel_manifold():
    model = small_net("proxnet")
    eye = torch.eye(784)
    for blk in model.blocks:
        assert (blk.weight.t() @ blk.weight - eye).abs().max() < 1e-10
    # a big perturbation is projected back (float64 and float32)
    for dtype in (torch.float64, torch.float32):
        W = (model.blocks[0].weight + 0.3 * torch.randn(800, 784)).to(dtype)
        X = stiefel_project(W)
        assert (X.t() @ X - eye.to(dtype)).abs().max() < 1e-5
        U, _, Vh = torch.linalg.svd(W.double(), full_matrices=False)
        assert torch.allclose(X.double(), U @ Vh, atol=1e-4)  # the polar factor: the nearest point


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_block_adjoint_is_exact_and_sides_halve_or_double(transposed):
    blk = ConvBlock(3, 5, 14 if not transposed else 7, 4, make_activation("relu"), transposed=transposed).double()
    g = torch.Generator().manual_seed(0)
    v = torch.randn(2, blk.in_dim, generator=g, dtype=torch.float64)
    r = torch.randn(2, blk.out_dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert float((blk.pre_linear(v) * r).sum()) == pytest.approx(float((v * blk.pre_adjoint(r)).sum()), rel=1e-12)
        assert torch.allclose(blk.pre(v, None) - blk.conv.bias.repeat_interleave(blk.shape_out[1] ** 2), blk.pre_linear(v))
    assert blk.shape_out[1] == (14 if transposed else 7)
    net = ConvAutoencoder([16, 32], 4, 300, "relu", "identity")
    assert [b.out_dim for b in net.blocks] == [3136, 1568, 300, 1568, 3136, 784]
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvAutoencoder([4, 4, 4], 4, 10, "relu", "identity")

