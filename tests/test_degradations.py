"""data/degradations.py: the operators of the imaging tasks, the adjoint test over the registry."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.data.degradations import DEGRADATIONS, Blur, Denoising, Inpainting, gaussian_kernel
from lifted_cli.errors import ConfigError

SHAPES = [(2, 1, 28, 28), (3, 1, 13, 17), (1, 2, 9, 5)]


def make(task, **kw):
    """The registered operator of ``task`` with its schema's defaults and ``kw``."""
    schema = DEGRADATIONS.get(task).schema
    return DEGRADATIONS.build(OmegaConf.structured(schema(**kw)))


def operators():
    out = {task: make(task, sigma=0.1) for task in DEGRADATIONS.names()}
    out["deblur_wide"] = make("deblur", sigma=0.0, kernel_size=9, blur_width=3.0)
    out["inpaint_sparse"] = make("inpaint", sigma=0.1, keep_ratio=0.4)
    return out


@pytest.mark.parametrize("name", list(operators()))
@pytest.mark.parametrize("shape", SHAPES)
def test_adjointness(name, shape):
    """<A x, y> = <x, A^T y> on random inputs, odd sizes included."""
    op = operators()[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    mask = op.draw_mask(x, g)
    op_kernel = getattr(op, "kernel", None)
    if op_kernel is not None:
        op.kernel = op_kernel.to(torch.float64)
    ax = op.A(x, mask)
    assert ax.shape == x.shape
    lhs = (ax * y).sum()
    rhs = (x * op.A_adjoint(y, mask)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10)


def test_blur_kernel_is_normalised_gaussian():
    k = gaussian_kernel(7, 1.5)
    assert k.shape == (7, 7) and torch.isclose(k.sum(), torch.tensor(1.0))
    assert k[3, 3] == k.max() and torch.allclose(k, k.flip(0)) and torch.allclose(k, k.t())


def test_blur_zero_boundary_and_size():
    op = make("deblur", sigma=0.0, kernel_size=5, blur_width=1.0)
    x = torch.ones(1, 1, 28, 28)
    ax = op.A(x)
    assert ax.shape == x.shape
    assert torch.isclose(ax[0, 0, 14, 14], torch.tensor(1.0))  # interior preserved
    assert ax[0, 0, 0, 0] < 0.5  # zero outside the image


def test_measure_is_seeded_and_noise_has_std():
    op = make("inpaint", sigma=0.2, keep_ratio=0.5)
    x = torch.rand(64, 1, 28, 28)
    y1 = op.measure(x, torch.Generator().manual_seed(3))
    y2 = op.measure(x, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    n = make("denoise", sigma=0.2).measure(torch.zeros(200, 1, 28, 28), torch.Generator().manual_seed(1))
    assert abs(n.std().item() - 0.2) < 0.005


def test_inpaint_keep_ratio():
    op = make("inpaint", sigma=0.0, keep_ratio=0.3)
    m = op.draw_mask(torch.zeros(100, 1, 28, 28), torch.Generator().manual_seed(0))
    assert abs(m.mean().item() - 0.3) < 0.01
    assert len({tuple(mi.flatten().tolist()) for mi in m[:5]}) == 5  # one mask per image


def test_every_task_is_registered_with_its_operator():
    assert {DEGRADATIONS.get(t).builder for t in DEGRADATIONS.names()} == {Denoising, Blur, Inpainting}


@pytest.mark.parametrize("task,key,value", [("denoise", "sigma", -0.1), ("denoise", "sigma", float("nan")),
                                            ("deblur", "kernel_size", 4), ("deblur", "blur_width", 0.0),
                                            ("inpaint", "keep_ratio", 1.5)])
def test_schemas_refuse_bad_values(task, key, value):
    node = OmegaConf.structured(DEGRADATIONS.get(task).schema())
    node[key] = value
    with pytest.raises(ConfigError, match=f"task.{key}="):
        DEGRADATIONS.validate(node)
