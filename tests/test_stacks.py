"""lifted/stacks.py: the lifted problem is written once over stacks of blocks. Equal consecutive
blocks stepped together give the iterates of the same blocks as stacks of one (every architecture
that stacks, both solvers, both parallel layer orders, both warm starts, the conjugate-gradient
steps); a stack evaluates a block map on all its blocks at once, batched or by vmap, as the blocks
themselves would; where grouping is impossible ``solver.stacked=true`` is refused in one line
(docs/method.md, 5.10)."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.commands.train import build
from lifted_cli.errors import ConfigError
from lifted_cli.lifted import Layout
from lifted_cli.lifted.objective import LiftedProblem
from lifted_cli.lifted.penalties import BregmanPenalty
from lifted_cli.lifted.stacks import ALL, Stack, gather, plan, stack_ranges
from lifted_cli.nets.architectures import MLP
from tests.conftest import images

pytestmark = pytest.mark.usefixtures("float64")

#: (architecture overrides, the first layers of the stacks of several blocks they form)
STACKING = {
    "mlp": (["arch=mlp", "arch.depth=4", "arch.width=12"], [2]),
    "resnet": (["arch=resnet", "arch.depth=4", "arch.width=12"], [2]),
    "resnet_tied": (["arch=resnet", "arch.depth=3", "arch.width=12", "arch.tied=true"], [2]),
    "proxnet": (["arch=proxnet", "arch.depth=3", "arch.hidden=800"], [1]),
    "unrolled_conv": (["arch=unrolled_pnn", "arch.depth=3", "arch.channels=2", "arch.kernel=3"], [1]),
    "unrolled_dense": (["arch=unrolled_pnn", "arch.depth=3", "arch.operator=dense", "arch.dual_dim=40"], [1]),
}

SOLVER_VARIANTS = {
    "isgm_jacobi": ["solver.layer_order=jacobi"],
    "isgm_red_black_persistent": ["solver.layer_order=red_black", "solver.warm_start=persistent"],
    "isgm_scalar_two_inner": ["solver.layer_order=jacobi", "solver.w_metric=scalar", "solver.n_inner=2"],
    "isgm_cg": ["solver.layer_order=jacobi", "solver.cg_iters=3"],
    "bcd_gd": ["solver=bcd", "solver.layer_order=red_black"],
    "bcd_adam": ["solver=bcd", "solver.layer_order=jacobi", "solver.weight_update=adam", "solver.lr=1e-3"],
}


def trained(compose_train, overrides, stacked, steps=3):
    """The network and solver after ``steps`` mini-batches (two alternating batches of 10 images), with
    the schemes' and solvers' own defaults (``~tuned``: the tuned settings of a pair are not what is
    tested here, and heavier tuned weights only amplify rounding)."""
    cfg = compose_train([*overrides, "~tuned", f"solver.stacked={stacked}"], output_dir="/tmp/unused")
    torch.manual_seed(0)
    model, _, solver = build(cfg, torch.device("cpu"))
    solver.prepare(20)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(20, 1, 28, 28, generator=g)
    y = x + 0.1 * torch.randn(x.shape, generator=g)
    stats = []
    for k in range(steps):
        idx = torch.arange(10) + 10 * (k % 2)
        stats.append(solver.step(y[idx], x[idx], idx))
    return model, solver, stats


def grouped(solver) -> list[int]:
    return [s.first for s in solver.problem.stacks if s.d > 1]


@pytest.mark.parametrize("variant", SOLVER_VARIANTS)
@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "proxnet" else a for a in STACKING])
def test_stacked_iterates_equal_those_of_stacks_of_one(compose_train, arch, variant):
    overrides = [*STACKING[arch][0], *SOLVER_VARIANTS[variant]]
    m_loop, s_loop, st_loop = trained(compose_train, overrides, "false")
    m_stack, s_stack, st_stack = trained(compose_train, overrides, "true")
    assert grouped(s_loop) == [] and grouped(s_stack) == STACKING[arch][1]
    for (name, a), b in zip(m_loop.state_dict().items(), m_stack.state_dict().values()):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9), name  # float64: rounding, amplified by long steps
    for a, b in zip(st_loop, st_stack):
        assert a == pytest.approx(b, rel=1e-7, abs=1e-10)
    assert s_loop.gamma == pytest.approx(s_stack.gamma, rel=1e-7)


def test_the_blocks_parameters_are_views_of_the_stack():
    torch.manual_seed(0)
    model = MLP([5, 4, 4, 4, 3], ["relu", "relu", "relu", "identity"])
    before = [q.detach().clone() for q in model.parameters()]
    stack = Stack(list(model.blocks[1:3]), first=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # same values
    with torch.no_grad():
        stack.storage["linear.weight"][1].fill_(7.0)
        model.blocks[1].linear.bias.fill_(-1.0)
    assert bool((model.blocks[2].linear.weight == 7.0).all()) and bool((stack.storage["linear.bias"][0] == -1.0).all())
    u = torch.randn(2, 3, 4)  # (blocks, samples, width)
    assert torch.allclose(stack.call("pre", u, shared=(None,)),
                          torch.stack([model.blocks[k + 1].pre(u[k], None) for k in range(2)]))
    one = Stack([model.blocks[0]], first=1)  # a stack of one: the block's own parameters, viewed
    assert one.tensors == list(model.blocks[0].parameters()) and one.storage["linear.weight"].shape == (1, 4, 5)
    with torch.no_grad():
        one.storage["linear.bias"].fill_(3.0)
    assert bool((model.blocks[0].linear.bias == 3.0).all())


def test_stack_ranges_need_two_equal_blocks_and_leave_out_the_output_and_sparsity_layers():
    torch.manual_seed(0)
    model = MLP([5, 4, 4, 4, 4, 4], ["relu", "relu", "relu", "relu", "relu"])
    assert stack_ranges(model.blocks) == [(2, 5)]
    assert stack_ranges(model.blocks, excluded={5}) == [(2, 4)]
    assert stack_ranges(model.blocks, excluded={5, 3}) == []  # single blocks are not stacks of several
    assert stack_ranges(model.blocks, first=3, last=4) == [(3, 4)]  # within a process's layers
    mixed = MLP([5, 4, 4, 4, 4], ["relu", "relu", "soft_threshold:0.1", "soft_threshold:0.1"])
    assert stack_ranges(mixed.blocks) == [(3, 4)]


def test_the_plan_covers_the_layers_in_order():
    torch.manual_seed(0)
    model = MLP([5, 4, 4, 4, 4, 4], ["relu"] * 5)
    assert plan(model.blocks, 1, 5, grouped=True, excluded={5}) == [(1, 1), (2, 4), (5, 5)]
    assert plan(model.blocks, 1, 5, grouped=False) == [(l, l) for l in range(1, 6)]
    assert plan(model.blocks, 3, 5, grouped=True) == [(3, 5)]


def test_gather_is_a_view_for_consecutive_slices_and_a_copy_otherwise():
    base = torch.randn(5, 3, 2)
    parts = list(base.unbind(0))
    view = gather(parts[1:4])
    assert view.data_ptr() == parts[1].data_ptr() and torch.equal(view, base[1:4])
    shuffled = gather([parts[2], parts[1]])
    assert shuffled.data_ptr() != base.data_ptr() and torch.equal(shuffled, base[[2, 1]])
    assert torch.equal(gather([torch.ones(3, 2), parts[0]]), torch.stack([torch.ones(3, 2), parts[0]]))
    assert gather([parts[2]]).data_ptr() == parts[2].data_ptr()  # one: a view with a leading dimension


@pytest.mark.parametrize("overrides,fragment", [
    (["arch=mlp", "arch.depth=4", "solver.layer_order=gauss_seidel"], "gauss_seidel"),
    (["arch=mlp", "arch.depth=4", "solver=bcd", "solver.layer_order=jacobi", "solver.weight_update=heavyball"], "heavyball"),
    (["arch=mlp", "arch.hidden=[16,8]", "solver.layer_order=jacobi"], "no two consecutive equal blocks"),
    (["arch=conv_autoencoder", "solver.layer_order=jacobi"], "no two consecutive equal blocks"),
])
def test_stacked_true_where_impossible_is_refused_in_one_line(compose_train, overrides, fragment):
    cfg = compose_train([*overrides, "arch.width=8" if "arch.depth=4" in overrides else "seed=0", "solver.stacked=true"],
                        output_dir="/tmp/unused")
    with pytest.raises(ConfigError, match=fragment) as err:
        build(cfg, torch.device("cpu"))
    assert "solver.stacked" in str(err.value) and "\n" not in str(err.value)
    auto = OmegaConf.merge(cfg, {"solver": {"stacked": "auto"}})
    assert grouped(build(auto, torch.device("cpu"))[2]) == []  # auto: every block a stack of one


def test_auto_stacks_wherever_the_layer_order_allows(compose_train):
    cfg = compose_train(["arch=resnet", "arch.depth=5", "arch.width=8", "solver.layer_order=red_black"], output_dir="/tmp/x")
    stacks = build(cfg, torch.device("cpu"))[2].problem.stacks
    assert [(s.first, s.last) for s in stacks] == [(1, 1), (2, 6), (7, 7)]


def test_the_warm_start_uses_the_extrapolated_weights(compose_train):
    """ISGM with momentum: the batch's forward pass (and so its cached pre-activations) is taken at
    the extrapolated anchor W^k + beta (W^k - W^{k-1}), the weights the implicit step starts from."""
    cfg = compose_train(["arch=mlp", "arch.depth=2", "arch.width=8", "solver.momentum=0.8"], output_dir="/tmp/x")
    torch.manual_seed(0)
    model, _, solver = build(cfg, torch.device("cpu"))
    seen = []
    real = solver.problem.init_state

    def record(y, x):
        seen.append(model.blocks[0].linear.weight.detach().clone())
        return real(y, x)

    solver.problem.init_state = record
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        begin = solver.begin_batch

        def spy():
            begin()
            spy.after = model.blocks[0].linear.weight.detach().clone()

        solver.begin_batch = spy
        solver.step(x, x)
        solver.begin_batch = begin
        assert torch.equal(seen[-1], spy.after)


METHODS = [("pre", 2), ("pre_linear", 1), ("pre_adjoint", 1), ("post", 2), ("post_linear", 1), ("post_adjoint", 1)]


@pytest.mark.parametrize("arch", ["mlp", "resnet", "resnet_tied", "proxnet", "unrolled_conv"])
def test_a_stack_evaluates_a_map_as_its_blocks_do(compose_train, arch):
    """Batched blocks (dense, residual) in one call on a view of the stack, the others by vmap, a
    selection of one block by the block itself: every way gives what each block computes."""
    cfg = compose_train([*STACKING[arch][0], "solver.layer_order=jacobi"], output_dir="/tmp/unused")
    torch.manual_seed(0)
    stack = next(s for s in build(cfg, torch.device("cpu"))[2].problem.stacks if s.d > 1)
    assert stack.batched == (arch in ("mlp", "resnet", "resnet_tied"))
    g = torch.Generator().manual_seed(0)
    blk = stack.template
    sizes = {"pre": blk.in_dim, "pre_linear": blk.in_dim, "pre_adjoint": blk.z_dim, "post": blk.in_dim,
             "post_linear": blk.z_dim, "post_adjoint": blk.out_dim}
    y = torch.randn(5, 784, generator=g)
    for method, n_args in METHODS:
        args = [torch.randn(stack.d, 5, sizes[method], generator=g)]
        if method == "post":
            args.append(torch.randn(stack.d, 5, blk.z_dim, generator=g))
        shared = (y,) if method == "pre" else ()
        want = torch.stack([getattr(b, method)(*(a[k] for a in args), *shared) for k, b in enumerate(stack.blocks)])
        torch.testing.assert_close(stack.call(method, *args, shared=shared), want, atol=1e-12, rtol=1e-12, msg=method)
        ks = slice(1, 2)
        torch.testing.assert_close(stack.call(method, *(a[ks] for a in args), ks=ks, shared=shared), want[ks], msg=method)


@pytest.mark.parametrize("arch", ["mlp", "resnet", "resnet_tied", "proxnet", "unrolled_conv"])
def test_weight_gradients_of_a_stack_equal_those_of_its_blocks_alone(arch):
    """The gradient of a stack's surrogate (autograd through the batched maps or vmap) equals each
    block's own, computed as a stack of one."""
    from lifted_cli.nets import ARCHITECTURES

    node = {"mlp": {"name": "mlp", "depth": 3, "width": 12}, "resnet": {"name": "resnet", "width": 10, "depth": 3},
            "resnet_tied": {"name": "resnet", "width": 10, "depth": 3, "tied": True},
            "proxnet": {"name": "proxnet", "hidden": 800, "depth": 3},
            "unrolled_conv": {"name": "unrolled_pnn", "depth": 3, "channels": 2, "kernel": 3}}[arch]
    torch.manual_seed(0)
    model = ARCHITECTURES.build(ARCHITECTURES.validate(OmegaConf.create(node)), 28)
    y, x = images(s=6)
    one = LiftedProblem(model, BregmanPenalty(), [0.5 + 0.25 * l for l in range(model.depth)], rho=1.5, output="free")
    st = one.init_state(y, x)
    g = torch.Generator().manual_seed(4)
    for l in range(1, model.depth + 1):
        one.set_var(st, "z", l, st.z[l] + 0.1 * torch.randn(st.z[l].shape, generator=g))
        if model.blocks[l - 1].has_state:
            one.set_var(st, "u", l, st.u[l] + 0.1 * torch.randn(st.u[l].shape, generator=g))
    one.refresh(st)
    want = {s.first: one.weight_gradients(st, s) for s in one.stacks}
    many = LiftedProblem(model, BregmanPenalty(), one.lambdas, rho=1.5, output="free", layout=Layout(grouped=True))
    stack = next(s for s in many.stacks if s.d > 1)
    got = many.weight_gradients(st, stack)
    for k, l in enumerate(stack.layers()):
        for name in stack.names:
            torch.testing.assert_close(got[name][k], want[l][name][0], atol=1e-12, rtol=1e-10, msg=f"{l} {name}")
    assert stack.layers(ALL) == list(range(stack.first, stack.last + 1))
