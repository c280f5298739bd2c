"""inversion/usteps.py: the u-step follows the problem's structure, and each one decreases the
inversion objective (alternating with the hidden layers' sweeps) to a level where it settles."""

import pytest
import torch

from lifted_cli.inversion.problem import LiftedInversion
from lifted_cli.inversion.regularizers import build_regularizer
from lifted_cli.inversion.usteps import CondatVu, FISTA, FullSplittingPDHG
from lifted_cli.nets.activations import make_activation
from lifted_cli.nets.architectures import MLP
from lifted_cli.nets.blocks import ProxBlock, UnifiedNet

pytestmark = pytest.mark.usefixtures("float64")
SIDE = 4


def problem(first_block_has_state: bool, reg: str, seed: int = 0):
    torch.manual_seed(seed)
    if first_block_has_state:  # a proximal layer u_1 = W^T relu(W u + b): u_1 is a second variable
        model = UnifiedNet([ProxBlock(SIDE * SIDE, 20, make_activation("relu"))])
    else:
        model = MLP([SIDE * SIDE, 12], ["relu"])
    g = torch.Generator().manual_seed(seed + 1)
    truth = torch.rand(3, SIDE * SIDE, generator=g)
    with torch.no_grad():
        f = model.readout(model.forward_states(truth)[-1], truth)
    return LiftedInversion(model, f, build_regularizer(reg, SIDE), 0.01, output="free", box=True,
                           init=torch.full_like(truth, 0.5), momentum=0.0)


@pytest.mark.parametrize("has_state,reg,cls", [(False, "tv", FullSplittingPDHG), (False, "l1", FullSplittingPDHG),
                                               (True, "tv", CondatVu), (True, "l1", FISTA), (True, "l2", FISTA)])
def test_the_u_step_follows_the_structure_and_converges(has_state, reg, cls):
    inv = problem(has_state, reg)
    assert type(inv.ustep) is cls and inv.settings()["u_step"] == cls.__name__
    start = float(inv.objective().sum())
    for _ in range(600):
        inv.step()
    before = float(inv.objective().sum())
    for _ in range(100):
        inv.step()
    end = float(inv.objective().sum())
    assert end < 0.5 * start and abs(before - end) <= 0.05 * abs(end)
    assert float(inv.u.min()) >= 0 and float(inv.u.max()) <= 1  # the box
