"""inversion/problem.py: the lifted Bregman inversion: the perceptron theorem, PDHG on an
ill-conditioned perceptron, inertial hidden sweeps, the free output's data-fit zone."""

import math

import pytest
import torch

from lifted_cli.inversion.problem import LiftedInversion
from lifted_cli.inversion.regularizers import build_regularizer
from lifted_cli.nets.architectures import MLP

pytestmark = pytest.mark.usefixtures("float64")


def inversion(model, f, reg, alpha, side, **kw):
    return LiftedInversion(model, f, build_regularizer(reg, side), alpha, **kw)


def _perceptron_setup(seed=0, m=20, n=36):
    """A ReLU perceptron f = relu(W u_true + b) with the source condition W^T v = u_true = dJ(u_true)
    for J = 1/2 ||u||^2, all units active (b makes W u_true + b = 3)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    v = 0.5 * torch.rand(m, generator=g, dtype=torch.float64)
    u_true = W.t() @ v
    b = 3.0 - W @ u_true
    model = MLP([n, m], ["relu"]).double()
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(W)
        model.blocks[0].linear.bias.copy_(b)
    return model, W, b, v, u_true


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])  # a second seed: long iterations
def test_perceptron_theorem_bregman_distance_bound(seed):
    """With B(f_delta, W u_true + b) <= delta^2, alpha = sqrt(2) delta / ||v|| and the ReLU bracket
    zero (alpha |v_j| <= f_delta_j), D_J(u_true, u_alpha) <= 2 sqrt(2) ||v|| delta, and it goes to 0
    linearly as delta -> 0 (docs/method.md, section 6). u_alpha is computed by our lifted inversion."""
    model, W, b, v, u_true = _perceptron_setup(seed)
    f = torch.relu(W @ u_true + b)
    g = torch.Generator().manual_seed(10 + seed)
    direction = torch.randn(f.shape, generator=g, dtype=torch.float64)
    direction /= direction.norm()
    ratios = []
    for delta in (0.2, 0.05, 0.0125, 0.003125):
        f_delta = f + math.sqrt(2) * delta * direction  # B_relu(f_delta, W u_true + b) = ||e||^2/2 = delta^2
        a_true = W @ u_true + b
        B = 0.5 * f_delta**2 - f_delta * a_true + 0.5 * torch.relu(a_true) ** 2
        assert float(B.sum()) <= delta**2 + 1e-12
        alpha = math.sqrt(2) * delta / float(v.norm())
        assert torch.all(alpha * v.abs() <= f_delta)  # the Psi bracket of the theorem vanishes
        inv = inversion(model, f_delta[None], "l2", alpha, 6, step_safety=1.0, power_iters=200)
        for _ in range(4000):
            inv.step()
        u_alpha = inv.u[0]
        # independent check of the minimiser: with every unit active it is the ridge solution
        ridge = torch.linalg.solve(W.t() @ W + alpha * torch.eye(W.shape[1], dtype=torch.float64), W.t() @ (f_delta - b))
        assert torch.all(W @ ridge + b > 0) and torch.allclose(u_alpha, ridge, atol=1e-8)
        D = 0.5 * float((u_true - u_alpha).pow(2).sum())  # D_J for J = 1/2||.||^2
        assert D <= 2 * math.sqrt(2) * float(v.norm()) * delta
        ratios.append(D / delta)
    # linear decay: D/delta stays bounded (below the constant of the theorem) while delta shrinks 64x
    assert max(ratios) <= 2 * math.sqrt(2) * float(v.norm())


def test_pdhg_tv_inversion_decreases_the_objective_and_fits():
    """One identity layer: PDHG solves TV denoising of f; the objective of its iterate ends below
    that of f itself and far below the start."""
    torch.manual_seed(0)
    side = 8
    model = MLP([side * side, side * side], ["identity"]).double()
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(torch.eye(side * side))
        model.blocks[0].linear.bias.zero_()
    g = torch.Generator().manual_seed(1)
    clean = torch.zeros(2, side, side, dtype=torch.float64)
    clean[:, 2:6, 2:6] = 1.0
    f = clean.reshape(2, -1) + 0.2 * torch.randn(2, side * side, generator=g, dtype=torch.float64)
    inv = inversion(model, f, "tv", 0.3, side, primal_step=1.0)  # W = I: a balanced step
    start = float(inv.objective().sum())
    for _ in range(1400):
        inv.step()
    before = float(inv.objective().sum())
    for _ in range(100):
        inv.step()
    end = float(inv.objective().sum())
    at_f = float((0.3 * build_regularizer("tv", side).value(f)).sum())  # objective of u = f (data term 0)
    assert end < at_f and end < start and abs(before - end) < 1e-4 * end  # converged below both
    assert float((inv.u - clean.reshape(2, -1)).norm()) < float((f - clean.reshape(2, -1)).norm())


@pytest.mark.parametrize("seed", [0, 1])
def test_inertial_hidden_sweeps_converge_faster_than_plain_sweeps(seed):
    """Three random ReLU layers, free output, small TV weight: 200 iterations with the hidden layers'
    inertial sweeps (momentum 0.99, iPALM with gradient restart) end at an objective at least 20 %
    below 200 plain proximal-gradient sweeps, and not above 800 plain sweeps + 15 %."""
    side = 6
    model = MLP([side * side, 64, 64, 16], ["relu", "relu", "relu"]).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for blk in model.blocks:
            w = blk.linear.weight
            w.copy_(torch.randn(w.shape, generator=g, dtype=torch.float64) / math.sqrt(w.shape[1]))
            blk.linear.bias.fill_(0.1)
    truth = torch.rand(4, side * side, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f = model.readout(model.forward_states(truth)[-1], truth)
    final = {}
    for momentum, its in ((0.0, 200), (0.0, 800), (0.99, 200)):
        inv = inversion(model, f, "tv", 1e-3, side, output="free", momentum=momentum, box=True,
                              init=torch.full_like(truth, 0.5))
        for _ in range(its):
            inv.step()
        final[momentum, its] = float(inv.objective().sum())
        assert (inv.hidden_restarts > 0) == (momentum > 0)
    assert final[0.99, 200] < 0.8 * final[0.0, 200]
    assert final[0.99, 200] < 1.15 * final[0.0, 800]


def test_pdhg_inverts_an_ill_conditioned_random_perceptron():
    """f = relu(W u) with W (96 x 256) N(0, 1) entries (||W||^2 ~ 600, 96 measurements of a 16x16
    piecewise-constant image), small TV weight: the full-splitting PDHG recovers the image (the
    regulariser's null-space work is not slowed by 1/||W||^2 steps), and the clamped noisy output
    is projected onto the range of relu, so the objective stays bounded below."""
    side, g = 16, torch.Generator().manual_seed(0)
    W = torch.randn(96, side * side, generator=g, dtype=torch.float64)
    model = MLP([side * side, 96], ["relu"]).double()
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(W)
        model.blocks[0].linear.bias.zero_()
    truth = torch.zeros(2, side, side, dtype=torch.float64)
    truth[0, 3:12, 4:9] = 1.0
    truth[1, 5:14, 2:14] = 0.6
    truth = truth.reshape(2, -1)
    f = torch.relu(truth @ W.t())
    inv = inversion(model, f, "tv", 0.01, side, init=torch.full_like(truth, 0.5), box=True)
    for _ in range(1500):
        inv.step()
    mse = (inv.u - truth).pow(2).mean(dim=1)
    psnr = -10 * torch.log10(mse)
    # the first image is recovered exactly (up to the TV bias), the second up to what 96 ReLU measurements
    # identify (the TV-minimal consistent image); 1/||W||^2-limited steps reach ~10 dB in this budget
    assert psnr[0] > 40 and psnr[1] > 20, psnr

    noisy = f + 0.05 * f.norm(dim=1, keepdim=True) * torch.randn(f.shape, generator=g, dtype=torch.float64) / math.sqrt(96)
    assert (noisy < 0).any()
    inv = inversion(model, noisy, "tv", 0.01, side, init=torch.full_like(truth, 0.5), box=True)
    assert torch.equal(inv.f_delta, torch.relu(noisy))
    for _ in range(300):
        inv.step()
    assert torch.isfinite(inv.objective()).all()
    # 96 measurements with 5 % noise: far from exact, but well above the start (u = 0.5: 6-8 dB)
    assert torch.all(-10 * torch.log10((inv.u - truth).pow(2).mean(dim=1)) > 12)


@pytest.mark.parametrize("data_weight,pulled", [(1.0, False), (100.0, True)])
def test_free_output_pulls_an_inactive_unit_only_when_its_noise_exceeds_minus_a_over_lambda(data_weight, pulled):
    """Eliminating the free output z from B(z, a) + lambda/2 (z - f)^2 (relu, one unit): z* = max(0, (a + lambda f)
    / (1 + lambda)), so a unit with a < -lambda f feels no data term at all, and one with -lambda f < a < 0 is
    pulled up. Here a = u - 1 with the truth u = 0 (a = -1) and noise f = 0.05: lambda = 1 leaves u at 0,
    lambda = 100 pulls it to the active side (a = f: u = 1, the box's edge)."""
    model = MLP([1, 1], ["relu"]).double()
    with torch.no_grad():
        model.blocks[0].linear.weight.fill_(1.0)
        model.blocks[0].linear.bias.fill_(-1.0)
    f_delta = torch.tensor([[0.05]], dtype=torch.float64)
    inv = inversion(model, f_delta, "l2", 1e-4, 1, output="free", data_weight=data_weight,
                          init=torch.zeros(1, 1, dtype=torch.float64), box=True)
    for _ in range(3000):
        inv.step()
    u = float(inv.u)
    assert (u > 0.99) if pulled else (u < 1e-6), u

