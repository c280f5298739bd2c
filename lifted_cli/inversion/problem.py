"""Stable inversion of a trained network by the lifted Bregman model (docs/method.md, section 6).

Given network outputs ``f_delta`` (possibly noisy), recover inputs u by the lifted Bregman
variational model

    min_{u, Z}  sum_l lambda_l B_Psi_l(z_l, a_l) + rho/2 sum ||u_l - S_l u_{l-1} - V_l z_l||^2 + alpha J(u)

with the last state clamped to f_delta (``output=clamped``, the form of the perceptron theorem:
for one layer it is ``min_u B_Psi(f_delta, W u + b) + alpha J(u)``) or free with the data term
``data_weight/2 ||K u_L - f_delta||^2``. A clamped ``f_delta`` is first projected onto the closed
range of the output activation (dom Psi), the only outputs with a finite Bregman distance. The hidden
auxiliary variables take the proximal-gradient X-steps of training (``lifted.solvers.AuxiliaryUpdater``, same
penalties and prox maps), from an inertial point when ``momentum`` > 0 (iPALM, Pock & Sabach 2016:
y_l = z_l + beta_k (z_l - z_l^prev), beta_k = min(momentum, (k-1)/(k+2)), restarted per variable by the
gradient test of O'Donoghue & Candes 2015 when <y_l - z_l^new, z_l^new - z_l> > 0); the input u takes
the u-step of ``usteps.py`` that the structure of the problem calls for. With ``box`` the iterates are
also kept in [0, 1] (the prox of the box indicator, composed exactly). The objective is the lifted
problem's own (``LiftedProblem.objective_per_sample``) plus alpha J(u), per image: the images are
independent problems.
"""

from __future__ import annotations

import torch

from ..lifted.objective import LiftedProblem
from ..lifted.penalties import BregmanPenalty
from ..lifted.solvers import AuxiliaryUpdater
from .regularizers import Regularizer
from .usteps import choose_ustep


class LiftedInversion:
    """The lifted Bregman inversion of a (sub-)network ``model`` (a ``nets.UnifiedNet`` whose input is
    its first state) for outputs ``f_delta`` (rows = images), regulariser ``reg`` with weight ``alpha``."""

    def __init__(self, model, f_delta: torch.Tensor, reg: Regularizer, alpha: float,
                 output: str = "clamped", data_weight: float = 1.0, rho: float = 1.0,
                 step_safety: float = 0.9, power_iters: int = 30, init: torch.Tensor | None = None,
                 box: bool = False, primal_step: float = 100.0, hidden_weight: float = 1.0,
                 momentum: float = 0.0):
        if model.zero_input:
            raise ValueError("this network takes its input through a data-dependent bias (unrolled_pnn); "
                             "inversion supports networks whose input is their first state")
        self.model, self.reg, self.alpha, self.box = model, reg, float(alpha), box
        # lambda_l = hidden_weight for the layers before the output, 1 for the output layer
        lambdas = [float(hidden_weight)] * (model.depth - 1) + [1.0]
        self.problem = LiftedProblem(model, BregmanPenalty(), lambdas, rho, output, loss_weight=data_weight)
        if self.problem.output == "clamped":
            # B_Psi(f, a) is finite only for f in dom Psi: noise that leaves the range of the output
            # activation (negative values for relu) would make the clamped objective unbounded below
            # in a; projecting onto the closed convex range can only bring f_delta closer to f.
            f_delta = model.acts[-1].project_range(f_delta)
        self.f_delta = f_delta
        n, dim = f_delta.shape[0], model.blocks[0].in_dim
        u0 = init.clone() if init is not None else torch.zeros(n, dim, dtype=f_delta.dtype, device=f_delta.device)
        self.st = self.problem.init_state(u0, f_delta)
        self.xs = AuxiliaryUpdater(self.problem, "gauss_seidel", step_safety, power_iters)
        p = self.problem
        w_norm_sq = float(self.xs.norms(p.stacks[0], "pre")[0])
        lip = p.lambdas[0] * p.penalty.lip_a * w_norm_sq
        first = model.blocks[0]
        if first.has_state and first.skip:
            lip += p.rho
        self.lip = lip
        self.ustep = choose_ustep(self, w_norm_sq, lip, step_safety, primal_step)
        self.iterations = 0
        self.momentum = float(momentum)
        # the inertial sweeps' previous iterates and beta counters (only when they are used)
        hidden = self.problem.variables() if self.momentum > 0 else []
        self.hidden_prev = {var: self._hidden(var).clone() for var in hidden}
        self.hidden_k = {var: 1 for var in hidden}
        self.hidden_restarts = 0

    @property
    def u(self) -> torch.Tensor:
        return self.st.u[0]

    def set_u(self, u: torch.Tensor) -> None:
        self.st.u[0] = u
        self.st.y = u
        self.st.a[1] = self.problem.blocks[0].pre(u, u)

    def grad_u(self) -> torch.Tensor:
        """Gradient in u of the smooth part: lambda_1 W_1^T (sigma(W_1 u + b_1) - z_1) (- rho r_1 for a skip)."""
        return self.problem.input_gradient(self.st)

    @torch.no_grad()
    def objective(self) -> torch.Tensor:
        """Per image: the lifted energy plus alpha J(u) (cached pre-activations must be current)."""
        value = self.problem.objective_per_sample(self.st)
        if not self.reg.indicator:
            value = value + self.alpha * self.reg.value(self.u)
        return value

    def primal_prox(self, v: torch.Tensor, t: float) -> torch.Tensor:
        """prox of t (alpha J + box) for J with a closed-form prox (exact composition in 1-D); for J
        with an operator (dualised) only the box."""
        if self.reg.operator is None:
            v = self.reg.prox(v, t * self.alpha)
        return v.clamp(0.0, 1.0) if self.box else v

    @torch.no_grad()
    def step(self) -> None:
        """One iteration: an X-sweep on the hidden variables, then the u-step."""
        if self.problem.variables():
            self._hidden_sweep()
        self.ustep.step(self.u)
        self.iterations += 1

    def settings(self) -> dict:
        return {"tau": self.ustep.tau, "lipschitz_u": self.lip, "restarts": self.ustep.restarts,
                "hidden_restarts": self.hidden_restarts, "u_step": type(self.ustep).__name__}

    def _hidden(self, var: tuple[str, int]) -> torch.Tensor:
        kind, l = var
        return self.st.u[l] if kind == "u" else self.st.z[l]

    def _hidden_sweep(self) -> None:
        """One Gauss-Seidel proximal-gradient sweep on the hidden variables (top-down), from the
        inertial points y_l = z_l + beta_k (z_l - z_l^prev) when ``momentum`` > 0 (iPALM); a variable
        whose step turned against its last move, <y_l - z_l^new, z_l^new - z_l> > 0, restarts its
        beta sequence (gradient restart). Plain X-steps are slow on long chains of layers (docs/method.md,
        section 6.7)."""
        p, st = self.problem, self.st
        variables = p.variables()
        if self.momentum > 0:
            current, anchors = {}, {}
            for var in variables:
                k = self.hidden_k[var]
                beta = min(self.momentum, (k - 1) / (k + 2))
                z = self._hidden(var)
                current[var] = z
                anchors[var] = z + beta * (z - self.hidden_prev[var]) if beta > 0 else z
                p.set_var(st, var[0], var[1], anchors[var])
            p.refresh(st, first=2)
        self.xs.sweep(st)
        p.refresh(st, first=2)
        if self.momentum > 0:
            # the restart tests of all variables in one device-to-host transfer
            tests = torch.stack([((anchors[var] - self._hidden(var)) * (self._hidden(var) - current[var])).sum()
                                 for var in variables]).tolist()
            for var, test in zip(variables, tests):
                self.hidden_prev[var] = current[var]
                if test > 0:
                    self.hidden_k[var] = 1
                    self.hidden_restarts += 1
                else:
                    self.hidden_k[var] += 1
