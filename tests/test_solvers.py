"""lifted/solvers.py: ISGM and BCD against closed forms and independent minimisers; safe steps never
increase the objective; no activation is ever differentiated (docs/method.md, section 5)."""

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.lifted import Layout, build_training
from lifted_cli.lifted.objective import LiftedProblem
from lifted_cli.lifted.penalties import BregmanPenalty
from lifted_cli.lifted.schemes import BregmanSchemeConfig
from lifted_cli.lifted.solvers import SOLVERS
from lifted_cli.nets.activations import ReLU, make_activation
from lifted_cli.nets.blocks import DenseBlock, UnifiedNet
from lifted_cli.lifted.stacks import ALL
from tests.conftest import batch, images, net, select, small_net

pytestmark = pytest.mark.usefixtures("float64")


def cfg(kind, **kw):
    return OmegaConf.structured(SOLVERS.get(kind).schema(name=kind, **kw))


def solver(kind, problem, **kw):
    """The registered lifted solver ``kind`` on ``problem`` (a scheme is what offers the problem)."""
    return SOLVERS.build(cfg(kind, **kw), SimpleNamespace(problem=problem))


def test_bcd_decreases_objective_monotonically():
    """Gauss-Seidel BCD with safe steps (exact norms: many power iterations) never increases E."""
    model = net()
    problem = LiftedProblem(model, BregmanPenalty(), [1.0, 1.0, 1.0], output="free", sparsity=0.05, sparsity_layer=2)
    bcd = solver("bcd", problem, power_iters=200, step_safety=0.99, weight_update="gd")
    u0, t = batch()
    st = problem.init_state(u0, t)
    prev = problem.objective(st)
    values = [prev]
    with torch.no_grad():
        for _ in range(60):
            bcd.xs.sweep(st)
            problem.refresh(st)
            e = problem.objective(st)
            assert e <= prev + 1e-10
            prev = e
            bcd.w_step(st)
            problem.refresh(st)
            e = problem.objective(st)
            assert e <= prev + 1e-10
            prev = e
            values.append(e)
    assert values[-1] < 0.5 * values[0]


def _isgm_objective_relu(W, b, z, t, W0, b0, tau):
    """(1/s) sum_i B_relu(t_i, W z_i + b) + 1/(2 tau) ||[W, b] - [W0, b0]||^2, closed form
    B(y, a) = y^2/2 - y a + max(a, 0)^2/2 (independent of the implementation form)."""
    a = z @ W.t() + b
    B = (t**2 / 2 - t * a + torch.relu(a) ** 2 / 2).sum(1).mean()
    return B + ((W - W0) ** 2).sum() / (2 * tau) + ((b - b0) ** 2).sum() / (2 * tau)


@pytest.mark.parametrize("metric", [pytest.param("scalar", marks=pytest.mark.slow), "majorizer"])  # scalar: long iterations
def test_isgm_one_layer_reaches_minimiser(metric):
    """One ReLU layer, clamped output: the implicit step is a convex problem in (W, b). ISGM with
    many inner iterations reaches the minimiser found independently by L-BFGS."""
    model = net(widths=(5, 3), acts=("relu",))
    u0, t = batch(s=12, n_in=5, n_out=3)
    tau = 0.7
    W0, b0 = model.blocks[0].linear.weight.detach().clone(), model.blocks[0].linear.bias.detach().clone()

    W = W0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        f = _isgm_objective_relu(W, b, u0, t, W0, b0, tau)
        f.backward()
        return f

    opt.step(closure)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0], output="clamped")
    isgm = solver("isgm", problem, tau=tau, n_inner=3000, power_iters=50, w_metric=metric)
    isgm.begin_epoch(0)
    isgm.step(u0, t)
    assert torch.allclose(model.blocks[0].linear.weight, W.detach(), atol=1e-6)
    assert torch.allclose(model.blocks[0].linear.bias, b.detach(), atol=1e-6)


def test_majorized_step_is_exact_for_identity_layer():
    """For sigma = identity the majorised implicit step solves the ridge problem exactly."""
    model = net(widths=(5, 4), acts=("identity",))
    u0, t = batch(s=7, n_in=5, n_out=4)
    tau = 0.3
    W0 = torch.cat([model.blocks[0].linear.weight, model.blocks[0].linear.bias[:, None]], 1).detach().clone()
    Z = torch.cat([u0, torch.ones(7, 1)], 1)
    # argmin_W 1/(2s) ||Z W^T - T||^2 + 1/(2 tau) ||W - W0||^2
    A = Z.t() @ Z / 7 + torch.eye(6) / tau
    W_star = torch.linalg.solve(A, Z.t() @ t / 7 + W0.t() / tau).t()
    problem = LiftedProblem(model, BregmanPenalty(), [1.0], output="clamped")
    isgm = solver("isgm", problem, tau=tau, n_inner=1)
    isgm.begin_epoch(0)
    isgm.step(u0, t)
    W = torch.cat([model.blocks[0].linear.weight, model.blocks[0].linear.bias[:, None]], 1)
    assert torch.allclose(W, W_star, atol=1e-10)


def _ridge(X, T, W0, weight, tau):
    """argmin_W weight/(2s) ||X W^T - T||^2 + 1/(2 tau) ||W - W0||^2 in parameter space (n x n)."""
    s = X.shape[0]
    A = weight * X.t() @ X / s + torch.eye(X.shape[1], dtype=X.dtype) / tau
    return torch.linalg.solve(A, weight * X.t() @ T / s + W0.t() / tau).t()


@pytest.mark.parametrize("at_anchor", [True, False])
@pytest.mark.parametrize("stacked", [False, True])
def test_residual_block_steps_are_exact_ridge_steps(at_anchor, stacked):
    """On an untied residual block with the identity activation the ISGM subproblem in (W, b, V) for
    fixed auxiliaries is two ridge problems: (W, b) with data a_l -> z_l, weight lambda_l, and V with
    data z_l -> u_l - u_{l-1}, weight rho. The W-step must land on both minimisers, from the anchor
    or from a point away from it, per block and for a stack of blocks."""
    model = small_net("resnet", act="identity")
    problem = LiftedProblem(model, BregmanPenalty(), [0.7] * len(model.blocks), rho=1.3, output="clamped",
                            layout=Layout(grouped=stacked))
    res = [l for l in range(1, problem.L + 1) if problem.blocks[l - 1].has_state]
    units = [s for s in problem.stacks if s.has_state]
    assert len(res) == 2 and all(problem.majorizable(s) for s in units)
    assert [s.d for s in units] == ([2] if stacked else [1, 1])
    y, t = images(s=9, seed=3)
    st = problem.init_state(y.flatten(1), t.flatten(1))
    g = torch.Generator().manual_seed(5)
    for l in res:  # auxiliaries away from the forward pass: every residual is non-zero
        st.u[l] = st.u[l] + 0.1 * torch.randn(st.u[l].shape, generator=g, dtype=st.u[l].dtype)
        st.z[l] = st.z[l] + 0.1 * torch.randn(st.z[l].shape, generator=g, dtype=st.z[l].dtype)
    tau = 0.4
    anchor = {l: [q.detach().clone() for q in problem.blocks[l - 1].parameters()] for l in res}
    if not at_anchor:
        with torch.no_grad():
            for l in res:
                for q in problem.blocks[l - 1].parameters():
                    q.add_(0.05 * torch.randn(q.shape, generator=g, dtype=q.dtype))
    problem.refresh(st)
    expected = {}
    for l in res:
        names = [n for n, _ in problem.blocks[l - 1].named_parameters()]
        W0, b0, V0 = (anchor[l][names.index(n)] for n in ("linear.weight", "linear.bias", "V"))
        X = torch.cat([st.u[l - 1], torch.ones(9, 1, dtype=y.dtype)], 1)
        Wb = _ridge(X, st.z[l], torch.cat([W0, b0[:, None]], 1), 0.7, tau)
        V = _ridge(st.z[l], st.u[l] - st.u[l - 1], V0, 1.3, tau)
        expected[l] = {"linear.weight": Wb[:, :-1], "linear.bias": Wb[:, -1], "V": V}
    rows = problem.majorizer_inputs(st, units)
    for stack in units:
        stacked_anchor = [torch.stack([anchor[l][i] for l in stack.layers()]) for i in range(len(stack.names))]
        problem.implicit_weight_step(st, stack, rows[stack.first], stacked_anchor, tau, at_anchor=at_anchor)
    for l in res:
        for name, got in problem.blocks[l - 1].named_parameters():
            torch.testing.assert_close(got.detach(), expected[l][name], atol=1e-9, rtol=1e-9, msg=f"{l} {name}")


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return torch.relu(z)

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("the derivative of the activation was requested")


class UndifferentiableReLU(ReLU):
    def __call__(self, z):
        return _NoBackward.apply(z)


@pytest.mark.parametrize("kind", ["isgm", "bcd"])
def test_bregman_never_differentiates_an_activation(kind):
    model = net(widths=(6, 8, 8, 3), acts=("relu", "relu", "identity"))
    model.blocks[0].act = model.blocks[1].act = UndifferentiableReLU()
    # the network is differentiable through autograd everywhere else: back-propagation must fail
    u0, t = batch(s=16)
    with pytest.raises(RuntimeError, match="derivative of the activation"):
        ((model(u0) - t) ** 2).sum().backward()
    model.zero_grad(set_to_none=True)
    scheme_cfg = OmegaConf.structured(BregmanSchemeConfig())
    solver_cfg = cfg(kind, n_inner=2) if kind == "isgm" else cfg(kind, n_inner=2, weight_update="gd")
    scheme, lifted_solver = build_training(model, scheme_cfg, solver_cfg)
    scheme.begin_epoch(0)
    lifted_solver.begin_epoch(0)
    losses = [lifted_solver.step(u0.view(16, 1, 2, 3), t.view(16, 1, 1, 3))["loss"] for _ in range(40)]
    assert losses[-1] < 0.7 * losses[0]


def test_isgm_momentum_extrapolates_the_anchor():
    """beta > 0: the anchor of batch k is W^k + beta (W^k - W^{k-1}); beta = 0 keeps W^k."""
    model = net()
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * 3)
    for beta, n_inner in ((0.0, 2), (0.8, 2), (0.8, 1)):
        isgm = solver("isgm", problem, momentum=beta, n_inner=n_inner)
        isgm.begin_batch()  # first batch: nothing to extrapolate from
        W_prev = model.blocks[0].linear.weight.detach().clone()
        with torch.no_grad():
            model.blocks[0].linear.weight.add_(0.1)
        W_now = model.blocks[0].linear.weight.detach().clone()
        isgm.begin_batch()
        expected = W_now + beta * (W_now - W_prev)
        assert torch.allclose(model.blocks[0].linear.weight, expected)
        if n_inner == 1:  # one majorised step at the anchor: taken in place, no copy of W^k
            assert isgm.anchor == {}
        else:
            assert torch.allclose(isgm.anchor[1][0], expected)


@pytest.mark.parametrize("arch", ["resnet", "unrolled_pnn"])
def test_bcd_decreases_the_lifted_objective_monotonically_on_any_architecture(arch):
    """Safe X-steps (exact norms) and Armijo W-steps: E never increases, for blocks with state
    (rho terms) and for the data-dependent, non-identity read-out of the unrolled PNN."""
    model = small_net(arch)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * model.depth, rho=1.0, output="free")
    bcd = solver("bcd", problem, power_iters=100, step_safety=0.99, weight_update="gd")
    y, x = images(s=8)
    first, last = descend(bcd, problem, problem.init_state(y, x), 15, tol=1e-9)
    assert last < first


def descend(bcd, problem, st, iters: int, tol: float, w_steps: bool = True):
    """``iters`` X-sweeps (each with fresh norm estimates and a W-step after it when ``w_steps``) from
    ``st``, asserting after every update that E did not increase by more than ``tol``; (first, last) E."""
    prev = first = problem.objective(st)
    with torch.no_grad():
        for _ in range(iters):
            if w_steps:
                bcd.xs.invalidate()
            bcd.xs.sweep(st)
            problem.refresh(st)
            e = problem.objective(st)
            assert e <= prev + tol
            prev = e
            if w_steps:
                bcd.w_step(st)
                problem.refresh(st)
                e = problem.objective(st)
                assert e <= prev + tol
                prev = e
    return first, prev


def test_bcd_weight_updates_are_the_optimisers_they_name():
    problem = LiftedProblem(net(), BregmanPenalty(), [1.0] * 3)
    for rule, cls, momentum in (("gd", torch.optim.SGD, 0.0), ("heavyball", torch.optim.SGD, 0.9),
                                ("nesterov", torch.optim.SGD, 0.9), ("adam", torch.optim.Adam, None)):
        bcd = solver("bcd", problem, weight_update=rule)
        assert type(bcd.optimizer) is cls and bcd.line_search == (rule != "adam")
        if momentum is not None:
            assert bcd.optimizer.defaults["momentum"] == momentum
            assert bcd.optimizer.defaults["nesterov"] == (rule == "nesterov")


@pytest.mark.parametrize("variant", ["mlp", "resnet", "unrolled_pnn"])
def test_red_black_sweeps_never_increase_the_objective(variant):
    """Odd layers, then even layers: layers of one colour share no term, so each half-sweep is a
    proximal-gradient step on separate blocks, and safe steps decrease E monotonically (unlike Jacobi)."""
    model = small_net(variant)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * model.depth, rho=1.0, output="free")
    bcd = solver("bcd", problem, power_iters=100, step_safety=0.99, layer_order="red_black")
    y, x = images(s=8)
    st = problem.init_state(y, x)
    g = torch.Generator().manual_seed(5)
    for l in range(1, problem.L + 1):  # off the forward pass, so that the sweeps have work to do
        problem.set_var(st, "z", l, st.z[l] + 0.05 * torch.randn(st.z[l].shape, generator=g))
    problem.refresh(st)
    first, last = descend(bcd, problem, st, 20, tol=1e-10, w_steps=False)
    assert last < first


def test_a_red_black_sweep_is_odd_layers_from_the_state_then_even_layers_from_the_new_odd_ones():
    model = net(widths=(6, 5, 5, 5, 3), acts=("relu", "relu", "relu", "identity"))
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * 4, output="free")
    u0, t = batch()
    st = problem.init_state(u0, t)
    for l in range(1, 5):
        problem.set_var(st, "z", l, st.z[l] + 0.1)
    problem.refresh(st)
    rb = solver("bcd", problem, layer_order="red_black", x_step=0.1)
    jac = solver("bcd", problem, layer_order="jacobi", x_step=0.1)

    def copy(state):
        return type(state)(y=state.y, target=state.target, u=list(state.u), z=list(state.z), a=list(state.a))

    ours = copy(st)
    rb.xs.sweep(ours)
    expected = copy(st)  # by hand: a Jacobi step restricted to odd layers, refresh, then to even layers
    def step(state, l):
        stack, ks = select(problem, l)
        return problem.x_prox(stack, "z", ks, state.z[l][None] - 0.1 * problem.x_gradient(state, stack, "z", ks), [0.1])[0]

    odd = {l: step(st, l) for l in (1, 3)}
    for l, v in odd.items():
        problem.set_var(expected, "z", l, v)
    problem.refresh(expected)
    even = {l: step(expected, l) for l in (2, 4)}
    for l, v in even.items():
        problem.set_var(expected, "z", l, v)
    for l in range(1, 5):
        assert torch.allclose(ours.z[l], expected.z[l], atol=1e-12), l


def test_persistent_warm_start_keeps_every_samples_variables_and_starts_from_them():
    """First pass: the same iterates as the forward warm start (each sample is seen for the first
    time); the stored variables are the last ones of each sample; later passes start from them."""
    torch.manual_seed(0)
    data_x = torch.rand(12, 3)
    data_y = torch.randn(12, 6)
    runs = {}
    for mode in ("forward", "persistent"):
        model = net()
        problem = LiftedProblem(model, BregmanPenalty(), [1.0] * 3)
        isgm = solver("isgm", problem, warm_start=mode)
        size = isgm.prepare(12)
        assert size == (12 * (5 + 4) * 8 if mode == "persistent" else 0)  # float64 z_1, z_2 (z_3 is clamped)
        isgm.begin_epoch(0)
        stats = [isgm.step(data_y[i:i + 4], data_x[i:i + 4], torch.arange(i, i + 4)) for i in (0, 4, 8)]
        runs[mode] = (model, isgm, stats)
    (m_f, _, s_f), (m_p, isgm_p, s_p) = runs["forward"], runs["persistent"]
    assert all(torch.equal(p, q) for p, q in zip(m_f.parameters(), m_p.parameters()))
    assert "loss" in s_f[0] and "loss" not in s_p[0] and s_f[0]["objective"] == s_p[0]["objective"]
    assert bool(isgm_p.seen.all()) and isgm_p.aux[("z", 1)].abs().sum() > 0
    st = isgm_p._warm_start(data_y[:4], data_x[:4], torch.arange(0, 4))  # a second pass: the stored values
    assert torch.equal(st.z[1], isgm_p.aux[("z", 1)][:4]) and torch.equal(st.u[3], data_x[:4])
    state = isgm_p.state_dict()
    assert torch.equal(state["aux"]["z:2"], isgm_p.aux[("z", 2)]) and bool(state["seen"].all())


def test_persistent_memory_beyond_the_limit_is_refused_in_one_line():
    from lifted_cli.errors import ConfigError

    problem = LiftedProblem(net(), BregmanPenalty(), [1.0] * 3)
    with pytest.raises(ConfigError, match="solver.aux_memory_gb=1e-06") as err:
        solver("isgm", problem, warm_start="persistent", aux_memory_gb=1e-6).prepare(1000)
    assert "need 0.00" in str(err.value) or "GB" in str(err.value)


@pytest.mark.parametrize("transposed", [False, True])
def test_convolution_step_by_conjugate_gradients_is_the_exact_ridge_step(transposed):
    """With the identity activation the majorised model is the ISGM subproblem itself, a ridge problem
    in (W, b) whose matrix is the Jacobian of the convolution: conjugate gradients land on its
    minimiser (computed here with the explicit Jacobian), from a point away from the anchor; with
    one iteration the subproblem already does not increase."""
    from lifted_cli.lifted.stacks import _Method
    from lifted_cli.nets.activations import Identity
    from lifted_cli.nets.blocks import ConvBlock, UnifiedNet

    torch.manual_seed(0)
    blk = ConvBlock(2, 3, 2 if transposed else 4, 2, Identity(), transposed=transposed)
    problem = LiftedProblem(UnifiedNet([blk]), BregmanPenalty(), [0.6], output="free")  # one block
    stack = problem.stacks[0]
    assert problem.operator_majorizable(stack)
    g = torch.Generator().manual_seed(1)
    s, tau = 5, 0.7
    u = torch.randn(s, blk.in_dim, generator=g)
    z = torch.randn(s, blk.out_dim, generator=g)
    anchor = [q.detach().clone() for q in blk.parameters()]
    with torch.no_grad():
        for q in blk.parameters():
            q.add_(0.1 * torch.randn(q.shape, generator=g))
    st = SimpleNamespace(u=[u, None], z=[None, z], a=[None, blk.pre(u, None)], y=torch.zeros(s, 1))
    names, shapes = [n for n, _ in blk.named_parameters()], [q.shape for q in anchor]
    flat0 = torch.cat([q.flatten() for q in anchor])

    def pre_of(flat):
        parts = dict(zip(names, (p.view(shp) for p, shp in zip(flat.split([q.numel() for q in anchor]), shapes))))
        return torch.func.functional_call(_Method(blk), {f"block.{n}": v for n, v in parts.items()}, ("pre", u, None))

    J = torch.autograd.functional.jacobian(pre_of, flat0).reshape(s * blk.out_dim, -1)
    c = pre_of(torch.zeros_like(flat0)).reshape(-1)
    # argmin_theta 0.6/(2s) ||J theta + c - z||^2 + 1/(2 tau) ||theta - theta^k||^2
    A = 0.6 * J.t() @ J / s + torch.eye(J.shape[1]) / tau
    want = torch.linalg.solve(A, 0.6 * J.t() @ (z.reshape(-1) - c) / s + flat0 / tau)

    def subproblem():
        flat = torch.cat([q.detach().flatten() for q in blk.parameters()])
        return float(0.3 * (pre_of(flat) - z).pow(2).sum() / s + (flat - flat0).pow(2).sum() / (2 * tau))

    before = subproblem()
    assert problem.operator_weight_step(st, stack, anchor, tau, iters=1) == 1
    assert subproblem() <= before + 1e-12
    st.a[1] = blk.pre(u, None)
    assert problem.operator_weight_step(st, stack, anchor, tau, iters=200) < 200  # converged before the cap
    torch.testing.assert_close(torch.cat([q.detach().flatten() for q in blk.parameters()]), want, atol=1e-8, rtol=1e-8)


def _last_unrolled_block(seed: int, shift: float):
    """A two-layer unrolled PNN, a batch of auxiliaries, and its last block (layer 2: its input u_1 is
    not zero, so its pre-activation is not affine in L, and it carries the read-out loss) moved
    ``shift`` away from the anchor. Returns what the tests need."""
    from lifted_cli.lifted.stacks import _Method
    from lifted_cli.nets.activations import Identity
    from lifted_cli.nets.blocks import ConvAnalysis, UnifiedNet, UnrolledBlock

    torch.manual_seed(seed)
    op = ConvAnalysis(1, 3, 28)
    blk = UnrolledBlock(op, 0.5, Identity())
    model = UnifiedNet([UnrolledBlock(ConvAnalysis(1, 3, 28), 0.5, Identity()), blk], readout_op=op, zero_input=True)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0, 0.6], output="free")
    g = torch.Generator().manual_seed(seed + 1)
    s = 4
    y, x = images(s=s, seed=seed + 2)
    u1, u2, z = (0.1 * torch.randn(s, blk.out_dim, generator=g) for _ in range(3))
    anchor = [q.detach().clone() for q in blk.parameters()]
    with torch.no_grad():
        for q in blk.parameters():
            q.add_(shift * torch.randn(q.shape, generator=g))
    st = SimpleNamespace(u=[None, u1, u2], z=[None, None, z], a=[None, None, blk.pre(u1, y)], y=y, target=x)
    flat0 = torch.cat([q.flatten() for q in anchor])

    def parts(flat):
        return {"op.weight": flat.view(op.weight.shape)}

    def pre_of(flat):
        return torch.func.functional_call(_Method(blk), {f"block.{n}": v for n, v in parts(flat).items()}, ("pre", u1, y))

    def residual_of(flat):  # the read-out residual y - L^* u_2 - x
        return y - torch.func.functional_call(_Adjoint(op), parts(flat), (u2,)) - x

    def subproblem_of(flat, tau):
        return (0.3 * (pre_of(flat) - z).pow(2).sum() + 0.5 * residual_of(flat).pow(2).sum()) / s \
            + (flat - flat0).pow(2).sum() / (2 * tau)

    return SimpleNamespace(blk=blk, problem=problem, st=st, anchor=anchor, s=s, pre_of=pre_of,
                           residual_of=residual_of, subproblem_of=subproblem_of)


class _Adjoint(torch.nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, u):
        return self.op.adjoint(u)


def _flat(blk):
    return torch.cat([q.detach().flatten() for q in blk.parameters()])


@pytest.mark.slow  # long iterations
def test_unrolled_block_step_is_the_line_searched_gauss_newton_step(float64):
    """An unrolled block's pre-activation u - tau L (L^* u - y) is quadratic in L: ISGM's operator step
    minimises the majoriser of its linearisation plus the read-out loss (exactly quadratic in L) and the
    anchor term. Close to the anchor the full Gauss-Newton step is accepted: it equals the step computed
    here with explicit Jacobians, and the ISGM subproblem decreases."""
    c = _last_unrolled_block(seed=0, shift=0.01)
    tau = 0.7
    stack = c.problem.stacks[1]
    assert c.problem.operator_majorizable(stack)
    theta = _flat(c.blk).requires_grad_(True)
    grad = torch.autograd.grad(c.subproblem_of(theta, tau), theta)[0]
    Ja = torch.autograd.functional.jacobian(c.pre_of, theta.detach()).reshape(-1, theta.numel())
    Jr = torch.autograd.functional.jacobian(c.residual_of, theta.detach()).reshape(-1, theta.numel())
    H = (0.6 * Ja.t() @ Ja + Jr.t() @ Jr) / c.s + torch.eye(theta.numel()) / tau
    want = theta.detach() - torch.linalg.solve(H, grad)
    before = float(c.subproblem_of(theta.detach(), tau))
    assert c.problem.operator_weight_step(c.st, stack, c.anchor, tau, iters=50) < 50  # CG's relative residual 1e-6
    assert float((want - theta.detach()).norm()) > 1e-2  # a full step of this length, not a halved one,
    torch.testing.assert_close(_flat(c.blk), want, atol=1e-6, rtol=0)  # to CG's accuracy
    assert float(c.subproblem_of(_flat(c.blk), tau)) < before


def test_unrolled_block_step_is_searched_where_gauss_newton_overshoots(float64):
    """Where the Gauss-Newton model is far from the subproblem, its full step increases it; the step is
    then halved until the subproblem decreases. One 1x1 filter w (L = w I, tau_arch = 1/2), u_1 = y and
    no read-out (u_2 = 0): a(w) = y (1 + w/2 - w^2/2), whose derivative y (1/2 - w) nearly vanishes at
    w = 0.49. With a target z = a + y and a long anchor step, the full step is about +100."""
    from lifted_cli.nets.activations import Identity
    from lifted_cli.nets.blocks import ConvAnalysis, UnifiedNet, UnrolledBlock

    op = ConvAnalysis(1, 1, 28)
    blk = UnrolledBlock(op, 0.5, Identity())
    model = UnifiedNet([UnrolledBlock(ConvAnalysis(1, 1, 28), 0.5, Identity()), blk], readout_op=op, zero_input=True)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0, 1.0], output="free")
    y, x = images(s=3)
    with torch.no_grad():
        op.weight.fill_(0.49)
    a = blk.pre(y, y)
    torch.testing.assert_close(a, y * (1 + 0.49 / 2 - 0.49 ** 2 / 2))
    st = SimpleNamespace(u=[None, y, torch.zeros_like(y)], z=[None, None, a + y], a=[None, None, a], y=y, target=x)
    tau, w0 = 1e6, 0.49
    anchor = [op.weight.detach().clone()]

    def subproblem(w):
        return float(0.5 * (y * (1 + w / 2 - w ** 2 / 2) - (a + y)).pow(2).sum() / 3 + (w - w0) ** 2 / (2 * tau))

    slope = float((-y * y * (0.5 - w0)).sum())  # sum_i (a_i - z_i) a'_i = -y . y (1/2 - w)
    full = -slope / (float((y * y).sum()) * (0.5 - w0) ** 2 + 3 / tau)  # the Gauss-Newton step, 1 parameter
    assert full > 50 and subproblem(w0 + full) > subproblem(w0)
    problem.operator_weight_step(st, problem.stacks[1], anchor, tau, iters=5)
    step = float(op.weight) - w0
    halvings = round(-torch.log2(torch.tensor(step / full)).item())
    assert halvings >= 1
    assert step == pytest.approx(full * 2.0 ** -halvings, rel=1e-6)
    assert subproblem(w0 + step) < subproblem(w0)


@pytest.mark.parametrize("cg_iters", [0, 3])
@pytest.mark.parametrize("arch", ["conv_ae", "unrolled_pnn"])
def test_cg_iters_chooses_the_step_of_operator_blocks(monkeypatch, cg_iters, arch):
    """cg_iters=0 (default): convolution and unrolled blocks take the backtracked gradient step;
    cg_iters > 0: the (majorised or Gauss-Newton) step by conjugate gradients, on every such block and
    no other."""
    model = small_net(arch)
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * len(model.blocks), output="auto")
    convs = [s.first for s in problem.stacks if problem.operator_majorizable(s)]
    assert convs and not any(problem.majorizable(s) for s in problem.stacks if s.first in convs)
    called = []
    original = LiftedProblem.operator_weight_step
    monkeypatch.setattr(LiftedProblem, "operator_weight_step",
                        lambda self, st, stack, *a: called.append(stack.first) or original(self, st, stack, *a))
    isgm = solver("isgm", problem, cg_iters=cg_iters)
    isgm.begin_epoch(0)
    y, x = images(s=6)
    stats = isgm.step(y, x)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert called == (convs if cg_iters else [])


@pytest.mark.parametrize("grouped", [False, True])
def test_forward_sweeps_make_the_first_k_layers_those_of_the_forward_pass(grouped):
    """From any state, k Jacobi sweeps of the forward equations give the first k layers of the forward
    pass (and not yet layer k + 1); L - 1 sweeps give every free variable of it (the output is clamped)."""
    model = net(widths=(6, 5, 5, 5, 5, 3), acts=("relu",) * 4 + ("identity",))
    problem = LiftedProblem(model, BregmanPenalty(), [1.0] * 5, layout=Layout(grouped=grouped))
    assert max(s.d for s in problem.stacks) == (3 if grouped else 1)
    y, t = batch(s=7, n_in=6, n_out=3)
    exact = problem.init_state(y, t)
    st = problem.init_state(y, t)
    g = torch.Generator().manual_seed(5)
    for l in range(1, 5):
        problem.set_var(st, "z", l, torch.rand(st.z[l].shape, generator=g, dtype=st.z[l].dtype))
    problem.pack(st)
    problem.refresh(st)
    for k in range(1, 5):
        problem.forward_sweep(st)
        problem.refresh(st)
        for l in range(1, 5):
            close = torch.allclose(st.z[l], exact.z[l], atol=1e-12)
            assert close == (l <= k), (k, l)
    assert torch.equal(st.u[5], t)


def test_persistent_with_enough_forward_sweeps_takes_the_forward_warm_start_steps():
    """With L - 1 forward sweeps over the stored variables, a persistent pass starts where a forward
    pass would: the iterates of later passes equal those of the forward warm start."""
    torch.manual_seed(0)
    data_x, data_y = torch.rand(12, 3), torch.randn(12, 6)
    models = {}
    for mode, sweeps in (("forward", 0), ("persistent", 2), ("persistent", 1)):
        model = net()
        isgm = solver("isgm", LiftedProblem(model, BregmanPenalty(), [1.0] * 3), warm_start=mode, refresh_sweeps=sweeps)
        isgm.prepare(12)
        for epoch in range(3):
            isgm.begin_epoch(epoch)
            stats = [isgm.step(data_y[i:i + 4], data_x[i:i + 4], torch.arange(i, i + 4)) for i in (0, 4, 8)]
        models[(mode, sweeps)] = (model, stats)
    ref, stats_f = models[("forward", 0)]
    for key, same in ((("persistent", 2), True), (("persistent", 1), False)):
        model, stats = models[key]
        assert all(torch.allclose(p, q, atol=1e-12) for p, q in zip(ref.parameters(), model.parameters())) == same
    assert models[("persistent", 2)][1][-1]["start_gap"] == pytest.approx(0.0, abs=1e-20)
    assert models[("persistent", 1)][1][-1]["start_gap"] > 0


def test_pipelined_warm_start_steps_each_batch_once_from_a_staggered_pass():
    """Pipelined: a batch enters, each step takes every batch in flight one layer further, and the
    batch whose pass completes is stepped. With L = 3 and a clamped output (two free layers) batch k
    is stepped at step k + 1 and the last at the end of the epoch (``drain``); its layer-1 states are
    one step old. Before any W-step the staggered pass is a forward pass, so the first W-step is the
    forward warm start's; with one free layer (L = 2) every step is."""
    torch.manual_seed(0)
    data_x, data_y = torch.rand(12, 3), torch.randn(12, 6)
    batches = [(data_y[i:i + 4], data_x[i:i + 4]) for i in (0, 4, 8)]
    fwd_model, pip_model = net(), net()
    pip_model.load_state_dict(fwd_model.state_dict())
    fwd = solver("isgm", LiftedProblem(fwd_model, BregmanPenalty(), [1.0] * 3), momentum=0.0)
    pip = solver("isgm", LiftedProblem(pip_model, BregmanPenalty(), [1.0] * 3), momentum=0.0, warm_start="pipelined")
    assert pip.step(*batches[0]) == {} and len(pip.pipeline) == 1  # in flight: layer 1 computed
    fwd.step(*batches[0])
    stats = pip.step(*batches[1])  # batch 0 completes (layer 2) and is stepped
    assert set(stats) == {"objective", "gap", "start_gap"} and stats["start_gap"] == pytest.approx(0.0, abs=1e-12)
    assert all(torch.allclose(p, q, atol=1e-12) for p, q in zip(fwd_model.parameters(), pip_model.parameters()))
    stats = pip.step(*batches[2])  # batch 1: its layer-1 states are from before the first W-step
    assert stats["start_gap"] > 0 and len(pip.pipeline) == 1
    drained = pip.drain()  # batch 2
    assert len(drained) == 1 and not pip.pipeline and pip.drain() == []
    # resumable: the batches in flight are part of the solver's state
    pip.step(*batches[0])
    state = pip.state_dict()
    assert len(state["pipeline"]) == 1
    other = solver("isgm", LiftedProblem(net(), BregmanPenalty(), [1.0] * 3), momentum=0.0, warm_start="pipelined")
    other.load_state_dict(state)
    assert torch.equal(other.pipeline[0]["u"][1], pip.pipeline[0]["u"][1])


def test_pipelined_with_one_free_layer_is_the_forward_warm_start():
    torch.manual_seed(1)
    data_x, data_y = torch.rand(12, 3), torch.randn(12, 6)
    models = []
    for mode in ("forward", "pipelined"):
        torch.manual_seed(2)
        model = UnifiedNet([DenseBlock(6, 5, make_activation("relu")), DenseBlock(5, 3, make_activation("identity"))])
        isgm = solver("isgm", LiftedProblem(model, BregmanPenalty(), [1.0] * 2), momentum=0.0, warm_start=mode)
        for i in (0, 4, 8):
            isgm.step(data_y[i:i + 4], data_x[i:i + 4])
        models.append(model)
    assert all(torch.allclose(p, q, atol=1e-12) for p, q in zip(*(m.parameters() for m in models)))


@pytest.mark.parametrize("kw,expected", [
    ({}, 3 + 2 * (2 + 1) + 1),  # forward pass, two Gauss-Seidel sweeps over z_2, z_1, the W-step
    ({"warm_start": "pipelined"}, 2 + 2 * (2 + 1) + 1),  # one layer of every batch in flight, the refresh
    ({"warm_start": "persistent", "refresh_sweeps": 1}, 2 + 2 * (2 + 1) + 1),
    ({"layer_order": "jacobi"}, 3 + 2 * (1 + 1) + 1),
    ({"layer_order": "red_black", "warm_start": "persistent", "n_inner": 2}, 1 + 2 * (2 * (3 + 1) + 1) + 1),
])
def test_the_sequential_depth_of_a_step(kw, expected):
    problem = LiftedProblem(net(), BregmanPenalty(), [1.0] * 3)
    assert solver("isgm", problem, **kw).sequential_depth() == expected
