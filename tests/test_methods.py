"""inversion/methods.py: every registered inversion method decreases its objective; a method refuses
settings it cannot run with one line."""

import math
from types import SimpleNamespace

import pytest
import torch

from lifted_cli.errors import ConfigError
from lifted_cli.inversion import INVERSION_METHODS, build_regularizer
from lifted_cli.nets.architectures import MLP

pytestmark = pytest.mark.usefixtures("float64")


def settings(**kw):
    base = dict(alpha=0.01, regularizer="tv", output="free", data_weight=1.0, rho=1.0, step_safety=0.9, power_iters=30,
                box=True, primal_step=100.0, hidden_weight=1.0, momentum=0.99, lr=0.01, tv_smoothing=1e-3)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("method", INVERSION_METHODS.names())
@pytest.mark.parametrize("reg", ["tv", "l1", "box"])
def test_every_method_decreases_its_objective(method, reg):
    torch.manual_seed(0)
    side = 5
    model = MLP([side * side, 40], ["relu"])
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(2, side * side, generator=g)
    f = torch.relu(model(truth))
    cfg = settings(regularizer=reg)
    entry = INVERSION_METHODS.get(method).builder
    entry.check(cfg, build_regularizer(reg, side))
    m = entry(model, f, build_regularizer(reg, side), cfg, torch.full_like(truth, 0.5))
    start = float(m.objective().mean())
    for _ in range(150):
        m.step()
    end = float(m.objective().mean())
    assert math.isfinite(end) and end < start and m.u.shape == truth.shape
    assert float(m.u.min()) >= 0 and float(m.u.max()) <= 1
    assert isinstance(m.settings(), dict)


def test_lifted_bregman_refuses_a_split_regulariser_without_weight():
    with pytest.raises(ConfigError, match="alpha=0"):
        INVERSION_METHODS.get("lifted_bregman").builder.check(settings(alpha=0), build_regularizer("tv", 4))
    INVERSION_METHODS.get("backprop").builder.check(settings(alpha=0), build_regularizer("tv", 4))
