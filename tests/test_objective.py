"""lifted/objective.py: the lifted objective, its per-variable gradients and proxes against autograd
and closed forms (docs/method.md, section 4); the operations are the stacks' (a layer alone is a
stack of one)."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.lifted.objective import LiftedProblem
from lifted_cli.lifted.penalties import BregmanPenalty, QuadraticPenalty
from lifted_cli.lifted.stacks import ALL
from tests.conftest import SMALL_ARCHS, batch, images, net, select, small_net

pytestmark = pytest.mark.usefixtures("float64")

PENALTIES = {"bregman": BregmanPenalty, "mac": QuadraticPenalty}
ARCHS = [v for v in SMALL_ARCHS if v != "sequential"]


def layer_penalties(problem, st):
    return [problem.lambdas[l - 1] * problem.penalty.value(problem.acts[l - 1], st.z[l], st.a[l]).mean()
            for l in range(1, problem.L + 1)]


@pytest.mark.parametrize("output", ["clamped", "free"])
def test_forward_warm_start_has_zero_hidden_penalties(output):
    model = net()
    problem = LiftedProblem(model, BregmanPenalty(), [1.0, 2.0, 0.5], output=output)
    u0, t = batch()
    st = problem.init_state(u0, t)
    pens = layer_penalties(problem, st)
    hidden = pens if output == "free" else pens[:-1]
    assert all(abs(float(p)) < 1e-12 for p in hidden)
    assert all(g < 1e-12 for g in problem.layer_gaps(st)[: len(hidden)])
    with torch.no_grad():
        assert torch.allclose(problem.acts[-1](st.a[-1]), model(u0))
    if output == "clamped":
        assert torch.allclose(pens[-1], 0.5 * 0.5 * ((model(u0) - t) ** 2).sum(1).mean())  # lambda_3 = 0.5


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("penalty", ["bregman", "mac"])
def test_forward_pass_gives_zero_penalties_and_the_network_output(arch, penalty):
    model = small_net(arch)
    y, x = images()
    problem = LiftedProblem(model, PENALTIES[penalty](), [1.0] * model.depth, rho=2.0, output="free")
    st = problem.init_state(y, x)
    assert all(float(v) < 1e-10 for v in layer_penalties(problem, st))
    assert max(problem.layer_gaps(st)) < 1e-10
    with torch.no_grad():
        out = model(y)
        assert torch.allclose(model.readout(st.u[-1], y), out)
        # the objective at the forward pass is the data loss alone (every penalty and rho term is 0)
        assert problem.objective(st) == pytest.approx(float(0.5 * ((out - x) ** 2).sum(1).mean()), rel=1e-10)
        states = model.forward_states(y)
    assert all(torch.allclose(u, v) for u, v in zip(states, st.u))


@pytest.mark.parametrize("arch", ARCHS)
def test_x_gradient_matches_autograd_of_the_smooth_part(arch):
    """x_gradient = gradient of the smooth part of E in every auxiliary variable (Bregman: the
    smooth part in z_l is -lambda <z_l, a_l>, Phi(z_l) goes to the prox)."""
    model = small_net(arch)
    y, x = images()
    lambdas = [0.5 + 0.25 * l for l in range(model.depth)]
    problem = LiftedProblem(model, BregmanPenalty(), lambdas, rho=1.5, output="free")
    st = problem.init_state(y, x)
    g = torch.Generator().manual_seed(3)
    for l in range(1, model.depth + 1):  # move off the forward pass
        problem.set_var(st, "z", l, st.z[l] + 0.1 * torch.randn(st.z[l].shape, generator=g))
        if model.blocks[l - 1].has_state:
            problem.set_var(st, "u", l, st.u[l] + 0.1 * torch.randn(st.u[l].shape, generator=g))
    problem.refresh(st)
    for kind, l in problem.variables():
        v = (st.u[l] if kind == "u" else st.z[l]).clone().requires_grad_(True)

        def smooth(var):
            us = list(st.u)
            zs = list(st.z)
            if kind == "u" or not model.blocks[l - 1].has_state:
                us[l] = var
            if kind == "z":
                zs[l] = var
            total = 0.5 * problem.loss_weight * ((model.readout(us[-1], y) - x) ** 2).sum()
            for k, blk in enumerate(model.blocks, 1):
                a = blk.pre(us[k - 1], y)
                act = blk.act
                total = total + lambdas[k - 1] * (act.phi_conj(a).sum() - (zs[k] * a).sum())
                if blk.has_state:
                    total = total + 0.5 * problem.rho * ((us[k] - blk.post(us[k - 1], zs[k])) ** 2).sum()
            return total / y.shape[0]

        (auto,) = torch.autograd.grad(smooth(v), v)
        stack, ks = select(problem, l)
        ours = problem.x_gradient(st, stack, kind, ks)[0] / y.shape[0]
        assert torch.allclose(ours, auto, atol=1e-9), (kind, l)


@pytest.mark.parametrize("arch", ARCHS)
def test_weight_gradients_match_autograd_of_the_objective(arch):
    """For a smooth activation (tanh) the Bregman penalty can be differentiated by autograd: the
    surrogate-based parameter gradient of each block must agree with it."""
    model = small_net(arch, act="tanh") if arch in ("mlp", "resnet", "resnet_tied", "proxnet") else small_net(arch)
    y, x = images()
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * model.depth, rho=1.5, output="free")
    st = problem.init_state(y, x)
    g = torch.Generator().manual_seed(4)
    for l in range(1, model.depth + 1):
        problem.set_var(st, "z", l, model.blocks[l - 1].act(st.a[l] + 0.3 * torch.randn(st.a[l].shape, generator=g)))
        if model.blocks[l - 1].has_state:
            problem.set_var(st, "u", l, st.u[l] + 0.1 * torch.randn(st.u[l].shape, generator=g))
    for l in range(1, model.depth + 1):
        blk = model.blocks[l - 1]
        params = list(blk.parameters())
        with torch.enable_grad():
            a = blk.pre(st.u[l - 1], y)
            total = problem.penalty.energy_a(blk.act, st.z[l], a).sum()
            if blk.has_state:
                total = total + 0.5 * problem.rho * ((st.u[l] - blk.post(st.u[l - 1], st.z[l])) ** 2).sum()
            if l == model.depth and not model.readout_identity:
                total = total + 0.5 * ((model.readout(st.u[-1], y) - x) ** 2).sum()
            auto = torch.autograd.grad(total / y.shape[0], params)
        stack, _ = select(problem, l)
        ours = problem.weight_gradients(st, stack)
        for name, q in zip(stack.names, auto):
            assert torch.allclose(ours[name][0], q, atol=1e-9)


def test_sparsity_prox_composition_is_exact():
    """prox of mu (lambda Phi + alpha |.|) for soft-threshold = S_{mu lambda beta + mu alpha}(v)/(1+mu lambda)."""
    model = net(widths=(4, 6, 3), acts=("soft_threshold:0.2", "identity"))
    problem = LiftedProblem(model, BregmanPenalty(), [2.0, 1.0], output="clamped", sparsity=0.3, sparsity_layer=1)
    v = torch.linspace(-3, 3, 61)
    mu = 0.4
    expected = torch.sign(v) * torch.relu(v.abs() - mu * 2.0 * 0.2 - mu * 0.3) / (1 + mu * 2.0)
    assert torch.allclose(problem.x_prox(problem.stacks[0], "z", ALL, v[None], [mu])[0], expected)


def test_bad_problem_setups():
    with pytest.raises(ValueError, match="penalty weights"):
        LiftedProblem(net(), BregmanPenalty(), [1.0])
    with pytest.raises(ValueError, match="output"):
        LiftedProblem(net(), BregmanPenalty(), [1.0] * 3, output="tied")
    with pytest.raises(ValueError, match="dPhi"):
        LiftedProblem(net(acts=("sigmoid", "relu", "identity")), BregmanPenalty(), [1.0] * 3, sparsity=0.1, sparsity_layer=1)


def test_objective_is_the_mean_of_the_per_sample_objective():
    model = small_net("resnet")
    y, x = images()
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * model.depth, rho=2.0, output="free", sparsity=0.1, sparsity_layer=2)
    st = problem.init_state(y, x)
    problem.set_var(st, "z", 2, st.z[2] + 0.1)
    problem.refresh(st)
    per = problem.objective_per_sample(st)
    assert per.shape == (y.shape[0],) and problem.objective(st) == pytest.approx(float(per.mean()), rel=1e-12)

