"""The lifted machinery: layer penalties, the lifted objective, its solvers and the schemes.

Data flow: a scheme (``schemes.py``) turns a network into an objective (``objective.py``, with a
penalty of ``penalties.py``) over stacks of blocks (``stacks.py``) laid out by a ``layout.Layout``,
and a solver (``solvers.py``) minimises it batch by batch.
"""

from dataclasses import replace

from ..registry import fail
from .layout import LOCAL, Layout, Local
from .objective import LiftedProblem, LiftedState
from .schemes import SCHEMES
from .solvers import SOLVERS, solvers_for


def check_solver(scheme_cfg, solver_cfg) -> None:
    """The solver minimises objectives of the scheme's form (one-line ConfigError otherwise)."""
    allowed = solvers_for(SCHEMES.entry(scheme_cfg).info["form"])
    if solver_cfg.name not in allowed:
        fail("solver", solver_cfg.name, f"scheme={scheme_cfg.name} is minimised by solver={'|'.join(allowed)}")


def build_training(model, scheme_cfg, solver_cfg, layout: Layout | None = None):
    """(scheme, solver) for a network; ValueError (one line) for a combination the mathematics does
    not allow (a solver of another form, an activation the penalty does not cover, ...). ``layout``:
    the layers and communicator of this process (``parallel.parallelize``; default: one process).

    ``solver.stacked`` groups runs of equal consecutive blocks into stacks stepped together: ``auto``
    wherever the solver's updates allow it, ``true`` the same but refused in one line where nothing
    can be grouped, ``false`` never (every block a stack of one)."""
    check_solver(scheme_cfg, solver_cfg)
    layout = layout or Layout()
    entry = SOLVERS.get(solver_cfg.name)
    mode = str(solver_cfg.get("stacked", "false")).lower()
    limit = entry.builder.stacking_limit(solver_cfg) if entry.info["form"] == "lifted" else None
    if mode == "true" and limit is not None:
        fail("solver.stacked", "true", limit + "; use solver.stacked=auto or false")
    scheme = SCHEMES.build(scheme_cfg, model, replace(layout, grouped=mode != "false" and limit is None))
    if mode == "true" and all(stack.d == 1 for stack in scheme.problem.stacks):
        fail("solver.stacked", "true", "this network has no two consecutive equal blocks below the output layer; "
             "use solver.stacked=auto or false")
    return scheme, SOLVERS.build(solver_cfg, scheme, layout.comm)


__all__ = ["LOCAL", "SCHEMES", "SOLVERS", "Layout", "LiftedProblem", "LiftedState", "Local", "build_training",
           "check_solver", "solvers_for"]
