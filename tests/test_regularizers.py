"""inversion/regularizers.py: values, proxes and the TV operator's exact adjoint."""

import pytest
import torch

from lifted_cli.inversion.regularizers import REGULARIZERS, build_regularizer, grad2d, grad2d_adjoint

pytestmark = pytest.mark.usefixtures("float64")


def test_gradient_adjoint_is_exact():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 9, 9, generator=g)
    p = torch.randn(3, 2, 9, 9, generator=g)
    assert float((grad2d(u) * p).sum()) == pytest.approx(float((u * grad2d_adjoint(p)).sum()), rel=1e-12)
    tv = build_regularizer("tv", 4)
    assert float(tv.value(torch.ones(2, 16)).abs().max()) == 0.0
    v, q = torch.randn(2, 16, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    assert float((tv.apply(v) * q).sum()) == pytest.approx(float((v * tv.adjoint(q)).sum()), rel=1e-12)
    assert float(tv.apply(torch.randn(50, 16, generator=g)).pow(2).sum(dim=(1, 2, 3)).max()) <= tv.norm_sq * 16 * 9


@pytest.mark.parametrize("name", [n for n in REGULARIZERS.names() if build_regularizer(n, 1).operator is None])
def test_closed_form_prox_is_the_minimiser_of_its_definition(name):
    """prox_{tJ}(v) = argmin_u 1/2 ||u - v||^2 + t J(u), checked against a grid search per pixel."""
    reg = build_regularizer(name, 1)
    t = 0.3
    grid = torch.linspace(-3, 3, 60001)[:, None]
    for v in (-1.7, -0.2, 0.1, 0.5, 2.4):
        objective = 0.5 * (grid[:, 0] - v) ** 2 + t * reg.value(grid)
        best = float(grid[torch.argmin(objective)])
        assert float(reg.prox(torch.tensor([[v]]), t)) == pytest.approx(best, abs=2e-4)


def test_tv_dual_projection_lands_in_the_ball_and_fixes_it():
    g = torch.Generator().manual_seed(1)
    p = 3 * torch.randn(4, 2, 5, 5, generator=g)
    tv = build_regularizer("tv", 5)
    q = tv.dual_projection(p, 0.7)
    assert float(q.norm(dim=1).max()) <= 0.7 + 1e-12
    assert torch.allclose(tv.dual_projection(q, 0.7), q)


def test_box_is_an_indicator():
    box = build_regularizer("box", 2)
    assert box.indicator and not build_regularizer("l1", 2).indicator
    assert torch.isinf(box.value(torch.tensor([[1.5, 0.5, 0.2, 0.1]])))[0]
