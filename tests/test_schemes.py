"""The unified framework (METHOD.md sections 3-4): every penalty, architecture and scheme."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.activations import make_activation
from lifted_cli.config import (SCHEMAS, SOLVERS_FOR_SCHEME, BCDConfig, ContrastiveSchemeConfig, ISGMConfig)
from lifted_cli.lifted import LiftedProblem
from lifted_cli.networks import MLP, ConvAutoencoder, ConvBlock, ProxNet, ResNet, UnifiedNet, UnrolledPNN, stiefel_project
from lifted_cli.penalties import PENALTIES, BregmanPenalty
from lifted_cli.schemes import ContrastiveScheme, build_scheme
from lifted_cli.solvers import BCD


@pytest.fixture(autouse=True)
def _float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def small_net(arch: str, seed: int = 0, act: str | None = None) -> UnifiedNet:
    """Tiny instances of every architecture on 784-pixel images (the unrolled PNN and proxnet
    need image-sized states)."""
    torch.manual_seed(seed)
    if arch == "mlp":
        return MLP([784, 12, 10, 784], [act or "relu", act or "soft_threshold:0.1", "identity"])
    if arch == "resnet":
        return ResNet(784, 10, 2, act or "relu", tied=False, output_activation="identity")
    if arch == "resnet_tied":
        return ResNet(784, 10, 2, act or "relu", tied=True, output_activation="identity")
    if arch == "proxnet":
        return ProxNet(784, 800, 2, act or "soft_threshold:0.05")
    if arch == "unrolled_pnn":
        return UnrolledPNN(3, "conv", 0, 2, 3, 1.0, 0.1)
    if arch == "unrolled_dense":
        return UnrolledPNN(2, "dense", 20, 0, 0, 1.0, 0.1)
    if arch == "conv_ae":
        return ConvAutoencoder([2, 3], 4, 10, act or "relu", "identity")
    raise ValueError(arch)


ARCHS = ["mlp", "resnet", "resnet_tied", "proxnet", "unrolled_pnn", "unrolled_dense", "conv_ae"]


def images(s=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(s, 784, generator=g)
    return (x + 0.3 * torch.randn(s, 784, generator=g)), x


# ------------------------------------------------------------------------------------ penalties
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


# -------------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("penalty", ["bregman", "mac"])
def test_forward_pass_gives_zero_penalties_and_the_network_output(arch, penalty):
    model = small_net(arch)
    y, x = images()
    problem = LiftedProblem(model, PENALTIES[penalty](), [1.0] * model.depth, rho=2.0, output="free")
    st = problem.init_state(y, x)
    assert all(float(v) < 1e-10 for v in problem.layer_penalties(st))
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
        ours = problem.x_gradient(st, kind, l) / y.shape[0]
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
        params = problem.block_params(l)
        with torch.enable_grad():
            a = blk.pre(st.u[l - 1], y)
            total = problem.penalty.energy_a(blk.act, st.z[l], a).sum()
            if blk.has_state:
                total = total + 0.5 * problem.rho * ((st.u[l] - blk.post(st.u[l - 1], st.z[l])) ** 2).sum()
            if l == model.depth and not model.readout_identity:
                total = total + 0.5 * ((model.readout(st.u[-1], y) - x) ** 2).sum()
            auto = torch.autograd.grad(total / y.shape[0], params)
        ours = problem.weight_gradients(st, l)
        for p, q in zip(ours, auto):
            assert torch.allclose(p, q, atol=1e-9)


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


# ------------------------------------------------------------------------------------- schemes
def scheme_cfg(name, **kw):
    node = OmegaConf.structured(SCHEMAS["scheme"][name](**kw))
    return node


def solver_cfg(name, **kw):
    from lifted_cli.config import AdamConfig, SGDConfig
    classes = {"isgm": ISGMConfig, "bcd": BCDConfig, "adam": AdamConfig, "sgd": SGDConfig}
    return OmegaConf.structured(classes[name](**kw))


VALID = [(s, a) for s in ("backprop", "bregman", "fenchel", "mac", "contrastive")
         for a in ("mlp", "resnet", "proxnet", "unrolled_pnn", "conv_ae")
         if not (s == "fenchel" and a in ("proxnet", "unrolled_pnn"))]


@pytest.mark.parametrize("scheme,arch", VALID)
def test_every_scheme_reduces_its_objective_on_a_fixed_batch(scheme, arch):
    torch.manual_seed(0)
    model = small_net(arch, act="relu" if (scheme == "fenchel" and arch == "mlp") else None)
    solver = SOLVERS_FOR_SCHEME[scheme][0]
    kw = {"lr": 3e-3} if solver == "adam" else {}
    sch = build_scheme(model, scheme_cfg(scheme), solver_cfg(solver, **kw))
    y, x = images(s=16)
    sch.begin_epoch(0)
    key = "loss" if scheme == "backprop" else "objective"
    first = sch.step(y, x)
    for _ in range(25):
        last = sch.step(y, x)
    assert last[key] < 0.97 * first[key], (first, last)
    if scheme != "mac":  # the network itself improved on the batch (MAC at a fixed, small mu need not:
        with torch.no_grad():  # its auxiliaries can absorb the data while the weights fit them)
            assert float(((model(y) - x) ** 2).sum(1).mean()) / 2 < first["loss"]
    if arch == "proxnet":
        for blk in model.blocks:
            assert (blk.weight.t() @ blk.weight - torch.eye(784)).abs().max() < 1e-5


@pytest.mark.parametrize("arch", ["resnet", "unrolled_pnn"])
def test_bcd_decreases_the_lifted_objective_monotonically_on_any_architecture(arch):
    """Safe X-steps (exact norms) and Armijo W-steps: E never increases, for blocks with state
    (rho terms) and for the data-dependent, non-identity read-out of the unrolled PNN."""
    model = small_net(arch)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * model.depth, rho=1.0, output="free")
    solver = BCD(problem, solver_cfg("bcd", power_iters=100, step_safety=0.99, weight_update="gd"))
    y, x = images(s=8)
    st = problem.init_state(y, x)
    prev = first = problem.objective(st)
    with torch.no_grad():
        for _ in range(15):
            solver.xs.invalidate()
            solver.xs.sweep(st)
            problem.refresh(st)
            e = problem.objective(st)
            assert e <= prev + 1e-9
            solver.w_step(st)
            problem.refresh(st)
            e2 = problem.objective(st)
            assert e2 <= e + 1e-9
            prev = e2
    assert prev < first


def test_mac_penalty_continuation_schedule():
    model = small_net("mlp")
    sch = build_scheme(model, scheme_cfg("mac", mu=0.5, mu_growth=2.0, mu_max=3.0), solver_cfg("bcd"))
    seen = []
    for e in range(4):
        sch.begin_epoch(e)
        seen.append(list(sch.problem.lambdas))
    # hidden layers follow min(mu 2^e, mu_max); the clamped output layer is the data term (weight 1)
    assert [s[0] for s in seen] == [0.5, 1.0, 2.0, 3.0] and all(s[-1] == 1.0 for s in seen)


def test_contrastive_gradient_tends_to_the_backprop_gradient():
    """(1/beta)[grad_W E(X_beta) - grad_W E(X_0)] -> grad_W loss(N(y)) as beta -> 0 (Zach &
    Estellers 2019), with the nudged phase solved to high accuracy; the error is O(beta)."""
    torch.manual_seed(0)
    model = MLP([5, 4, 3], ["tanh", "identity"])
    g = torch.Generator().manual_seed(2)
    y, x = torch.randn(4, 5, generator=g), torch.rand(4, 3, generator=g)
    loss = 0.5 * ((model(y) - x) ** 2).sum(1).mean()
    bp = torch.autograd.grad(loss, list(model.parameters()))
    bp_flat = torch.cat([t.flatten() for t in bp])
    errors = []
    for beta in (1e-1, 1e-2, 1e-3):
        sch = ContrastiveScheme(model, OmegaConf.structured(ContrastiveSchemeConfig(beta=beta, nudge_steps=3000)),
                                solver_cfg("sgd"))
        sch.gradient(y, x)
        ours = torch.cat([p.grad.flatten() for p in model.parameters()])
        errors.append(float((ours - bp_flat).norm() / bp_flat.norm()))
        model.zero_grad(set_to_none=True)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 5e-3, errors


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
