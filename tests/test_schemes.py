"""lifted/schemes.py: every scheme decreases its objective on every architecture it accepts, MAC's
penalty continuation, the contrastive gradient's limit (docs/method.md, section 4)."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.lifted import SCHEMES, SOLVERS, build_training, solvers_for
from lifted_cli.lifted.schemes import ContrastiveScheme, ContrastiveSchemeConfig
from lifted_cli.nets.architectures import MLP
from tests.conftest import INVALID, images, small_net

pytestmark = pytest.mark.usefixtures("float64")

BUILT_IN = ("backprop", "bregman", "fenchel", "mac", "contrastive")
#: the solver each scheme's YAML picks by default
DEFAULT_SOLVER = {"backprop": "adam", "bregman": "isgm", "fenchel": "bcd", "mac": "bcd", "contrastive": "adam"}


def scheme_cfg(name, **kw):
    return OmegaConf.structured(SCHEMES.get(name).schema(name=name, **kw))


def solver_cfg(name, **kw):
    return OmegaConf.structured(SOLVERS.get(name).schema(name=name, **kw))


def test_schemes_and_their_solvers():
    assert set(BUILT_IN) <= set(SCHEMES.names())
    assert solvers_for("gradient") == ["adam", "sgd"] and solvers_for("lifted") == ["isgm", "bcd"]
    with pytest.raises(ValueError, match="scheme=bregman is minimised by solver=isgm[|]bcd"):
        build_training(small_net("mlp"), scheme_cfg("bregman"), solver_cfg("adam"))


VALID = [pytest.param(s, a, marks=[pytest.mark.slow] if a == "proxnet" else []) for s in BUILT_IN
         for a in ("mlp", "resnet", "proxnet", "unrolled_pnn", "conv_ae") if (s, a) not in INVALID]


@pytest.mark.parametrize("scheme,arch", VALID)
def test_every_scheme_reduces_its_objective_on_a_fixed_batch(scheme, arch):
    torch.manual_seed(0)
    model = small_net(arch, act="relu" if (scheme == "fenchel" and arch == "mlp") else None)
    solver = DEFAULT_SOLVER[scheme]
    kw = {"lr": 3e-3} if solver == "adam" else {}
    sch, opt = build_training(model, scheme_cfg(scheme), solver_cfg(solver, **kw))
    y, x = images(s=16)
    sch.begin_epoch(0)
    opt.begin_epoch(0)
    key = "loss" if scheme == "backprop" else "objective"
    first = opt.step(y, x)
    for _ in range(25):
        last = opt.step(y, x)
    assert last[key] < 0.97 * first[key], (first, last)
    if scheme != "mac":  # the network itself improved on the batch (MAC at a fixed, small mu need not:
        with torch.no_grad():  # its auxiliaries can absorb the data while the weights fit them)
            assert float(((model(y) - x) ** 2).sum(1).mean()) / 2 < first["loss"]
    if arch == "proxnet":
        for blk in model.blocks:
            assert (blk.weight.t() @ blk.weight - torch.eye(784)).abs().max() < 1e-5


@pytest.mark.parametrize("scheme,arch", sorted(INVALID - {("fenchel", "unrolled_dense")}))
def test_a_penalty_refuses_activations_it_does_not_cover(scheme, arch):
    with pytest.raises(ValueError, match="Fenchel"):
        build_training(small_net(arch), scheme_cfg(scheme), solver_cfg(DEFAULT_SOLVER[scheme]))


def test_mac_penalty_continuation_schedule():
    model = small_net("mlp")
    sch, _ = build_training(model, scheme_cfg("mac", mu=0.5, mu_growth=2.0, mu_max=3.0), solver_cfg("bcd"))
    seen = []
    for e in range(4):
        sch.begin_epoch(e)
        seen.append(list(sch.problem.lambdas))
    # hidden layers follow min(mu 2^e, mu_max); the clamped output layer is the data term (weight 1)
    assert [s[0] for s in seen] == [0.5, 1.0, 2.0, 3.0] and all(s[-1] == 1.0 for s in seen)


def test_output_weight_replaces_the_last_layers_weight_at_any_depth():
    for hidden in ([16], [16, 16, 16]):
        model = MLP([784, *hidden, 784], ["relu"] * len(hidden) + ["identity"])
        sch, _ = build_training(model, scheme_cfg("bregman", penalty_weight=30.0, output_weight=1.0), solver_cfg("isgm"))
        assert sch.problem.lambdas == [30.0] * len(hidden) + [1.0]
    sch, _ = build_training(MLP([784, 16, 16, 784], ["relu", "relu", "identity"]), scheme_cfg("bregman", penalty_weight=2.0, layer_weights=[1.0, 3.0, 5.0]),
                            solver_cfg("isgm"))
    assert sch.problem.lambdas == [2.0, 6.0, 10.0]  # without it: penalty_weight x layer_weights


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_gradient_solvers_learning_rate_schedule(solver):
    """lr_e = lr * lr_decay^e, set from the epoch index (a resumed run at epoch 3 gets epoch 3's lr)."""
    _, opt = build_training(small_net("mlp"), scheme_cfg("backprop"), solver_cfg(solver, lr=0.01, lr_decay=0.5))
    seen = []
    for e in (0, 1, 2, 5):
        opt.begin_epoch(e)
        seen.append([g["lr"] for g in opt.optimizer.param_groups])
    assert seen == [[0.01], [0.005], [0.0025], [0.01 / 32]]


@pytest.mark.parametrize("update", ["gd", "adam"])
def test_bcd_weight_step_schedule(update):
    """BCD's fixed weight step (or Adam's rate) at epoch e is lr * lr_decay^e: a step at epoch 2 with
    lr 0.04 and lr_decay 0.5 moves the weights exactly as a step at epoch 0 with lr 0.01."""
    y, x = images()
    moved = []
    for lr, decay, epoch in ((0.04, 0.5, 2), (0.01, 1.0, 0)):
        net = small_net("mlp")
        _, opt = build_training(net, scheme_cfg("mac"), solver_cfg("bcd", weight_update=update, lr=lr, lr_decay=decay))
        opt.begin_epoch(epoch)
        opt.step(y.view(-1, 1, 28, 28), x.view(-1, 1, 28, 28))
        moved.append(torch.cat([q.detach().flatten() for q in net.parameters()]))
    start = torch.cat([q.detach().flatten() for q in small_net("mlp").parameters()])
    assert not torch.allclose(moved[0], start)
    torch.testing.assert_close(moved[0], moved[1])


def test_bcd_schedule_needs_a_fixed_step():
    """A line-searched step (gd, lr=null) has nothing to anneal: refused with one line."""
    with pytest.raises(Exception, match="lr_decay=0.5: must be 1 with weight_update=gd and lr=null"):
        SOLVERS.get("bcd").schema(name="bcd", lr_decay=0.5).validate()
    SOLVERS.get("bcd").schema(name="bcd", lr_decay=0.5, lr=0.1).validate()
    SOLVERS.get("bcd").schema(name="bcd", lr_decay=0.5, weight_update="adam").validate()


@pytest.mark.slow
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
        sch = ContrastiveScheme(OmegaConf.structured(ContrastiveSchemeConfig(beta=beta, nudge_steps=3000)), model)
        sch.gradient(y, x)
        ours = torch.cat([p.grad.flatten() for p in model.parameters()])
        errors.append(float((ours - bp_flat).norm() / bp_flat.norm()))
        model.zero_grad(set_to_none=True)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 5e-3, errors

