"""The lifted machinery: layer penalties, the lifted objective, its solvers and the schemes.

Data flow: a scheme (``schemes.py``) turns a network into an objective (``objective.py``, with a
penalty of ``penalties.py``), and a solver (``solvers.py``) minimises it batch by batch.
"""

from ..registry import fail
from .objective import LiftedProblem, LiftedState
from .schemes import SCHEMES
from .solvers import SOLVERS, solvers_for


def check_solver(scheme_cfg, solver_cfg) -> None:
    """The solver minimises objectives of the scheme's form (one-line ConfigError otherwise)."""
    allowed = solvers_for(SCHEMES.entry(scheme_cfg).info["form"])
    if solver_cfg.name not in allowed:
        fail("solver", solver_cfg.name, f"scheme={scheme_cfg.name} is minimised by solver={'|'.join(allowed)}")


def build_training(model, scheme_cfg, solver_cfg, configure=None):
    """(scheme, solver) for a network; ValueError (one line) for a combination the mathematics does
    not allow (a solver of another form, an activation the penalty does not cover, ...).
    ``configure(scheme)``, when given, runs before the solver is built (layer-parallel hands the
    problem its layers there)."""
    check_solver(scheme_cfg, solver_cfg)
    scheme = SCHEMES.build(scheme_cfg, model)
    if configure is not None:
        configure(scheme)
    return scheme, SOLVERS.build(solver_cfg, scheme)


__all__ = ["SCHEMES", "SOLVERS", "LiftedProblem", "LiftedState", "build_training", "check_solver", "solvers_for"]
