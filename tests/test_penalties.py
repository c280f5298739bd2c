"""lifted/penalties.py: the layer penalties are >= 0, zero exactly on the layer equation, with the
gradients they claim (docs/method.md, sections 2 and 4)."""

import pytest
import torch

from lifted_cli.lifted.penalties import BregmanPenalty, FenchelPenalty, QuadraticPenalty
from lifted_cli.nets.activations import make_activation

pytestmark = pytest.mark.usefixtures("float64")

PENALTIES = {"bregman": BregmanPenalty, "fenchel": FenchelPenalty, "mac": QuadraticPenalty}

PENALTY_ACTS = {
    "bregman": ["identity", "relu", "leaky_relu:0.1", "soft_threshold:0.3", "clamp:-0.5:1", "tanh", "sigmoid"],
    "fenchel": ["relu", "identity"],
    "mac": ["identity", "relu", "leaky_relu:0.1", "soft_threshold:0.3", "clamp:-0.5:1", "tanh", "sigmoid"],
}


@pytest.mark.parametrize("name,spec", [(n, s) for n, specs in PENALTY_ACTS.items() for s in specs])
def test_penalty_nonnegative_and_zero_exactly_on_the_layer_equation(name, spec):
    pen, act = PENALTIES[name](), make_activation(spec)
    pen.check(act)
    g = torch.Generator().manual_seed(0)
    a = 2 * torch.randn(200, 7, generator=g)
    z = act(2 * torch.randn(200, 7, generator=g))  # in the range of sigma: inside the domain of Psi
    on = pen.value(act, act(a), a)
    off = pen.value(act, z, a)
    assert torch.all(on.abs() < 1e-9)
    differs = (z - act(a)).abs().amax(dim=1) > 1e-3
    assert torch.all(off[differs] > 0) and torch.all(off >= -1e-9)
    # gradients: grad_a by finite differences of the a-dependent energy
    eps = 1e-6
    d = torch.randn(200, 7, generator=g)
    fd = (pen.energy_a(act, z, a + eps * d) - pen.energy_a(act, z, a - eps * d)) / (2 * eps)
    kink = (a.abs() < 1e-3).any() if spec != "identity" else False
    if not kink:
        assert torch.allclose(fd, (pen.grad_a(act, z, a) * d).sum(dim=1), atol=1e-5)


def test_fenchel_is_twice_bregman_for_relu_and_rejects_other_activations():
    act = make_activation("relu")
    a, z = torch.randn(50, 4), torch.rand(50, 4)
    assert torch.allclose(PENALTIES["fenchel"]().value(act, z, a), 2 * BregmanPenalty().value(act, z, a))
    closed = 2 * (0.5 * z**2 + 0.5 * torch.relu(a) ** 2 - z * a).sum(1)  # Gu et al., official factor 2
    assert torch.allclose(PENALTIES["fenchel"]().value(act, z, a), closed)
    with pytest.raises(ValueError, match="relu and identity"):
        PENALTIES["fenchel"]().check(make_activation("tanh"))

