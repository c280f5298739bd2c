"""lifted/stacking.py: equal consecutive blocks stepped together give the iterates of the per-layer
loop (every architecture that stacks, both solvers, both parallel layer orders, both warm starts);
where stacking is impossible ``solver.stacked=true`` is refused in one line (docs/method.md, 5.10)."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.commands.train import build
from lifted_cli.errors import ConfigError
from lifted_cli.lifted.stacking import Stack, gather, stack_ranges
from lifted_cli.nets.architectures import MLP

pytestmark = pytest.mark.usefixtures("float64")

#: (architecture overrides, the first layers of the stacks they form)
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


@pytest.mark.parametrize("variant", SOLVER_VARIANTS)
@pytest.mark.parametrize("arch", STACKING)
def test_stacked_iterates_equal_the_per_layer_loop(compose_train, arch, variant):
    overrides = [*STACKING[arch][0], *SOLVER_VARIANTS[variant]]
    m_loop, s_loop, st_loop = trained(compose_train, overrides, "false")
    m_stack, s_stack, st_stack = trained(compose_train, overrides, "true")
    assert s_loop.problem.stacks == [] and [s.first for s in s_stack.problem.stacks] == STACKING[arch][1]
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


def test_stack_ranges_need_two_equal_blocks_and_leave_out_the_output_and_sparsity_layers():
    torch.manual_seed(0)
    model = MLP([5, 4, 4, 4, 4, 4], ["relu", "relu", "relu", "relu", "relu"])
    assert stack_ranges(model.blocks) == [(2, 5)]
    assert stack_ranges(model.blocks, excluded={5}) == [(2, 4)]
    assert stack_ranges(model.blocks, excluded={5, 3}) == []  # single blocks are not stacks
    mixed = MLP([5, 4, 4, 4, 4], ["relu", "relu", "soft_threshold:0.1", "soft_threshold:0.1"])
    assert stack_ranges(mixed.blocks) == [(3, 4)]


def test_gather_is_a_view_for_consecutive_slices_and_a_copy_otherwise():
    base = torch.randn(5, 3, 2)
    parts = list(base.unbind(0))
    view = gather(parts[1:4])
    assert view.data_ptr() == parts[1].data_ptr() and torch.equal(view, base[1:4])
    shuffled = gather([parts[2], parts[1]])
    assert shuffled.data_ptr() != base.data_ptr() and torch.equal(shuffled, base[[2, 1]])
    assert torch.equal(gather([torch.ones(3, 2), parts[0]]), torch.stack([torch.ones(3, 2), parts[0]]))


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
    assert build(auto, torch.device("cpu"))[2].problem.stacks == []  # auto: the per-layer loop


def test_auto_stacks_wherever_the_layer_order_allows(compose_train):
    cfg = compose_train(["arch=resnet", "arch.depth=5", "arch.width=8", "solver.layer_order=red_black"], output_dir="/tmp/x")
    stacks = build(cfg, torch.device("cpu"))[2].problem.stacks
    assert [(s.first, s.last) for s in stacks] == [(2, 6)]


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


@pytest.mark.parametrize("arch", ["mlp", "resnet", "resnet_tied"])
def test_the_batched_block_maps_equal_the_generic_vmap_path(compose_train, arch):
    """Dense and residual blocks give their own batched maps; they agree with vmap over the blocks."""
    cfg = compose_train([*STACKING[arch][0], "solver.layer_order=jacobi"], output_dir="/tmp/unused")
    torch.manual_seed(0)
    stack = build(cfg, torch.device("cpu"))[2].problem.stacks[0]
    g = torch.Generator().manual_seed(0)
    u, z = (torch.randn(stack.d, 5, 12, generator=g) for _ in range(2))
    for method, args in [("pre", (u, None)), ("pre_linear", (u,)), ("pre_adjoint", (z,)), ("post", (u, z)),
                         ("post_linear", (z,)), ("post_adjoint", (u,))]:
        assert stack._fast(method) is not None, method
        shared = args[1:] if method == "pre" else ()
        batched = stack.call(method, *args[:1] if method == "pre" else args, shared=shared)
        generic = stack.call(method, *args[:1] if method == "pre" else args, shared=shared, generic=True)
        assert torch.allclose(batched, generic, atol=1e-12), method


def test_a_block_without_its_own_batched_map_takes_the_vmap_path(compose_train):
    cfg = compose_train([*STACKING["proxnet"][0], "solver.layer_order=jacobi"], output_dir="/tmp/unused")
    stack = build(cfg, torch.device("cpu"))[2].problem.stacks[0]
    assert all(stack._fast(m) is None for m in ("pre", "pre_adjoint", "post", "post_adjoint"))


@pytest.mark.parametrize("arch", ["mlp", "resnet", "resnet_tied", "proxnet"])
def test_closed_form_weight_gradients_equal_vmap_grad(compose_train, arch):
    """Dense and residual blocks differentiate their surrogate by hand; vmap(grad) agrees (and is
    what every other block uses)."""
    model, solver, _ = trained(compose_train, [*STACKING[arch][0], "solver.layer_order=jacobi"], "true", steps=1)
    p, stack = solver.problem, solver.problem.stacks[0]
    x = torch.rand(6, 784, generator=torch.Generator().manual_seed(5))
    st = p.init_state(x, x)
    assert (stack.fast_gradients() is None) == (arch == "proxnet")
    fast, generic = p.stack_weight_gradients(st, stack), p.stack_weight_gradients(st, stack, generic=True)
    assert set(fast) == set(generic) == set(stack.names)
    for name in stack.names:
        assert torch.allclose(fast[name], generic[name], atol=1e-12), name
