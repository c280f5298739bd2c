"""nets/activations.py: proximal activations and the Bregman penalty (docs/method.md, sections 1-2)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lifted_cli.nets.activations import ACTIVATIONS, make_activation, spec_help

SPECS = ["identity", "relu", "leaky_relu:0.2", "soft_threshold:0.3", "clamp:-0.5:1.5", "tanh", "sigmoid"]
floats = st.floats(-4, 4, allow_nan=False, width=64)
vectors = st.lists(floats, min_size=1, max_size=8)


def to_domain(act, y):
    """Map arbitrary reals into dom Psi (the range of sigma, closed)."""
    name = act.name
    if name == "relu":
        return y.abs()
    if name == "clamp":
        return y.clamp(act.low, act.high)
    if name == "tanh":
        return torch.tanh(y)
    if name == "sigmoid":
        return torch.sigmoid(y)
    return y


def inputs(spec, ys, zs):
    """The activation, y in dom Psi and z (float64, same length)."""
    act = make_activation(spec)
    n = min(len(ys), len(zs))
    z = torch.tensor(zs[:n], dtype=torch.float64)
    return act, to_domain(act, torch.tensor(ys[:n], dtype=torch.float64)), z


def test_every_activation_is_tested():
    assert {make_activation(s).name for s in SPECS} == set(ACTIVATIONS.names())


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=40, deadline=None)
@given(ys=vectors, zs=vectors)
def test_bregman_properties(spec, ys, zs):
    act, y, z = inputs(spec, ys, zs)
    B = act.bregman(y, z)
    s = act(z)
    assert torch.all(B >= -1e-9)  # B >= 0
    assert torch.allclose(act.bregman(s, z), torch.zeros_like(z), atol=1e-9)  # B(sigma(z), z) = 0
    assert torch.all(B >= 0.5 * (y - s) ** 2 - 1e-9)  # B >= 1/2 |y - sigma(z)|^2
    # the implementation form equals the definition Phi(y) + Phi*(z) - y z
    assert torch.allclose(B, act.phi(y) + act.phi_conj(z) - y * z, atol=1e-7)


@pytest.mark.parametrize("spec", ["identity", "relu"])
@settings(max_examples=40, deadline=None)
@given(ys=vectors, zs=vectors)
def test_a_specialised_bregman_gives_the_values_of_the_general_form(spec, ys, zs):
    """Identity and ReLU compute B in fewer passes; the values are those of the implementation form,
    to the last bit, inside the domain and out (+inf)."""
    from lifted_cli.nets.activations import ProxActivation

    act = make_activation(spec)
    n = min(len(ys), len(zs))
    y, z = torch.tensor(ys[:n], dtype=torch.float64), torch.tensor(zs[:n], dtype=torch.float64)
    assert torch.equal(act.bregman(y, z), ProxActivation.bregman(act, y, z))


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=40, deadline=None)
@given(ys=vectors, zs=vectors)
def test_bregman_gradient_is_sigma_minus_y(spec, ys, zs):
    act, y, z = inputs(spec, ys, zs)
    kinks = {"relu": [0.0], "leaky_relu": [0.0], "soft_threshold": [-0.3, 0.3], "clamp": [-0.5, 1.5]}.get(act.name, [])
    for k in kinks:  # autograd is only meaningful where sigma is differentiable
        z = torch.where((z - k).abs() < 1e-6, z + 1e-3, z)
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(act.bregman(y, z).sum(), z)
    assert torch.allclose(grad, act(z).detach() - y, atol=1e-8)


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=25, deadline=None)
@given(v=floats, mu=st.floats(0.01, 5))
def test_prox_of_mu_phi_matches_brute_force(spec, v, mu):
    """prox_{mu Phi}(v) = argmin_u 1/2 (u - v)^2 + mu Phi(u): compare with a fine grid search."""
    act = make_activation(spec)
    lo, hi = {"relu": (0.0, 5.0), "tanh": (-1.0, 1.0), "sigmoid": (0.0, 1.0), "clamp": (-0.5, 1.5)}.get(act.name, (-6.0, 6.0))
    grid = torch.linspace(lo, hi, 200001, dtype=torch.float64)
    obj = lambda u: 0.5 * (u - v) ** 2 + mu * act.phi(u)  # noqa: E731
    u_grid = grid[torch.argmin(obj(grid))]
    u = act.prox_phi(torch.tensor([v], dtype=torch.float64), mu)
    assert float(obj(u)) <= float(obj(u_grid.reshape(1))) + 1e-9
    assert abs(float(u) - float(u_grid)) < 2e-3


def test_fenchel_young_with_sigmoid_is_logistic_loss():
    act = make_activation("sigmoid")
    z = torch.linspace(-3, 3, 7, dtype=torch.float64)
    for y in (0.0, 1.0):
        yt = torch.full_like(z, y)
        logistic = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")
        assert torch.allclose(act.bregman(yt, z), logistic, atol=1e-9)


def test_relu_closed_form():
    act = make_activation("relu")
    y = torch.tensor([0.0, 1.0, 2.0])
    z = torch.tensor([-1.0, 0.5, 3.0])
    assert torch.allclose(act.bregman(y, z), y**2 / 2 - y * z + torch.relu(z) ** 2 / 2)
    assert math.isinf(float(act.bregman(torch.tensor([-1.0]), torch.tensor([0.0]))))


@pytest.mark.parametrize("bad", ["swish", "relu:1", "leaky_relu:2", "clamp:1:0", "soft_threshold:x", "soft_threshold:inf",
                                 "clamp:0:nan"])
def test_bad_specs_fail_with_one_line_naming_the_spec(bad):
    with pytest.raises(ValueError) as err:
        make_activation(bad)
    assert bad.split(":")[0] in str(err.value) and "\n" not in str(err.value)


def test_spec_help_lists_every_registered_activation_with_its_parameters():
    text = spec_help()
    assert all(name in text for name in ACTIVATIONS.names())
    assert "leaky_relu[:slope]" in text and "clamp[:low:high]" in text


@pytest.mark.parametrize("spec", SPECS)
@settings(max_examples=30, deadline=None)
@given(ys=vectors)
def test_project_range_lands_in_the_closed_range_and_fixes_it(spec, ys):
    """project_range(y) has finite Psi (closed dom Psi = closure of the range of sigma), leaves points
    of the range unchanged, and is the nearest such point (a clamp onto an interval)."""
    act = make_activation(spec)
    y = torch.tensor(ys, dtype=torch.float64)
    p = act.project_range(y)
    inside = to_domain(act, y)
    if act.name not in ("tanh", "sigmoid"):  # their Psi is finite on the closed interval too; checked below
        assert torch.isfinite(act.psi(p)).all()
    assert torch.equal(act.project_range(inside), inside)
    assert torch.all((p - y).abs() <= (inside - y).abs() + 1e-12)
    lo, hi = (float(v) for v in act(torch.tensor([-math.inf, math.inf], dtype=torch.float64)))
    assert torch.all((p >= lo) & (p <= hi))
