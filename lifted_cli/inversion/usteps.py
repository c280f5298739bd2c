"""The u-steps of the lifted inversion: how the input u is updated once the hidden variables moved.

Chosen once, from the structure of the problem (``choose_ustep``):

* :class:`FullSplittingPDHG` for a plain first layer a_1 = W u + b: Chambolle-Pock on
  min_u h(W u + b) + alpha J(u) (+ box), with the first layer's Bregman penalty h dualised and J
  through its prox or, when J = g(D u) has an operator (TV), a second dual variable;
* :class:`CondatVu` for a first block with its own state (proximal, residual) and J with an
  operator: u <- prox(u - tau (grad_u E + alpha D^T p)), p <- proj(p + s alpha D (2 u_new - u_old));
* :class:`FISTA` otherwise (J with a closed-form prox): accelerated proximal gradient with
  adaptive (function-value) restart.

Each works on a :class:`~lifted_cli.inversion.problem.LiftedInversion` (its ``st``, ``problem``,
``reg``, ``alpha``) and keeps its own duals and step sizes (docs/method.md, section 6).
"""

from __future__ import annotations

import math

import torch


class UStep:
    restarts = 0

    def __init__(self, inv):
        self.inv = inv

    def step(self, u: torch.Tensor) -> None:
        raise NotImplementedError


class FullSplittingPDHG(UStep):
    """One Chambolle-Pock iteration on min_u h(W u + b) + alpha J(u) (+ box), the u-part of the lifted
    objective for a plain first block, with h(a) = c lambda_1 (Phi*(a) - <z_1, a>) (the Bregman penalty
    B_Psi(z_1, a) without its constant Phi(z_1); z_1 = f_delta for one clamped layer):

        q <- prox_{s_1 h*}(q + s_1 (W u_bar + b)),   h*(q) = w Phi(q/w + z_1), w = c lambda_1, so
             prox_{s h*}(v) = w (prox_{(s/w) Phi}(v/w + z_1) - z_1)           (Moreau, scaling)
        p <- proj_{||.||_{2,inf} <= alpha}(p + s_2 D u_bar)                  (J = g(D u) only)
        u+ <- prox_{tau (alpha J + box)}(u - tau (W^T q + D^T p)),    u_bar = 2 u+ - u,

    converging for tau (s_1 ||W||^2 + s_2 ||D||^2) < 1. The data term enters through its prox, so the
    step is not limited by 1/||W||^2 as a gradient step would be: the regulariser acts at a pace
    independent of the conditioning of W. At a fixed point q = w (sigma(W u + b) - z_1), the gradient
    of h. tau = primal_step / ||W||, and tau (s_1 ||W||^2 + s_2 ||D||^2) <= step_safety shared equally
    between the two duals, so the balance of primal and dual steps does not change with the scale of W."""

    def __init__(self, inv, w_norm_sq: float, step_safety: float, primal_step: float):
        super().__init__(inv)
        w_norm_sq = max(w_norm_sq, 1e-12)
        self.tau = float(primal_step) / math.sqrt(w_norm_sq)
        self.sigma_w = 0.5 * step_safety / (self.tau * w_norm_sq)
        op = inv.reg.operator
        self.sigma = 0.5 * step_safety / (self.tau * (op.norm_sq if op is not None else 8.0))
        st = inv.st
        self.q = torch.zeros(st.u[0].shape[0], inv.problem.blocks[0].z_dim, dtype=st.u[0].dtype, device=st.u[0].device)
        self.a_prev = st.a[1].clone()  # W u_{k-1} + b, for u_bar = 2 u_k - u_{k-1} without a product
        self.u_prev = st.u[0].clone()
        self.dual = op.apply(st.u[0]).zero_() if op is not None else None

    def step(self, u):
        inv = self.inv
        p, st, first = inv.problem, inv.st, inv.problem.blocks[0]
        act, z = p.acts[0], st.z[1]
        w = p.lambdas[0] * p.penalty.factor
        a_bar = 2 * st.a[1] - self.a_prev  # W u_bar + b
        v = self.q + self.sigma_w * a_bar
        self.q = w * (act.prox_phi(v / w + z, self.sigma_w / w) - z)
        g = first.pre_adjoint(self.q)
        op = inv.reg.operator
        if op is not None:
            d = self.dual + self.sigma * op.apply(2 * u - self.u_prev)
            self.dual = op.dual_projection(d, inv.alpha) if inv.alpha > 0 else 0 * d
            g = g + op.adjoint(self.dual)
        u_new = inv.primal_prox(u - self.tau * g, self.tau)
        self.a_prev = st.a[1]
        self.u_prev = u
        inv.set_u(u_new)


class CondatVu(UStep):
    """PDHG in Condat-Vu form for a smooth lifted part with Lipschitz constant L and J = g(D u):

        u <- prox_{tau box}(u - tau (grad_u E + alpha D^T p))
        p <- proj_{||.||_{2,inf} <= 1}(p + s alpha D (2 u_new - u_old)),

    with tau (L/2 + s ||alpha D||^2) <= 1, s = 1/(||D|| alpha)."""

    def __init__(self, inv, lip: float, step_safety: float):
        super().__init__(inv)
        op = inv.reg.operator
        root = math.sqrt(op.norm_sq)
        self.sigma = 1.0 / (root * inv.alpha) if inv.alpha > 0 else 0.0
        self.tau = step_safety / (lip / 2 + root * inv.alpha)
        self.dual = op.apply(inv.st.u[0]).zero_()

    def step(self, u):
        inv = self.inv
        op = inv.reg.operator
        g = inv.grad_u()
        u_new = inv.primal_prox(u - self.tau * (g + inv.alpha * op.adjoint(self.dual)), self.tau)
        q = self.dual + self.sigma * inv.alpha * op.apply(2 * u_new - u)
        self.dual = op.dual_projection(q, 1.0)
        inv.set_u(u_new)


class FISTA(UStep):
    """Accelerated proximal gradient on u (J and the box through their prox), restarted whenever the
    objective increases (O'Donoghue & Candes 2015)."""

    def __init__(self, inv, lip: float, step_safety: float):
        super().__init__(inv)
        self.tau = step_safety / lip
        self.t = 1.0
        self.u_prev = inv.st.u[0].clone()

    def step(self, u):
        inv = self.inv
        before = float(inv.objective().sum())
        t_next = (1 + math.sqrt(1 + 4 * self.t * self.t)) / 2
        v = u + ((self.t - 1) / t_next) * (u - self.u_prev)
        inv.set_u(v)
        u_new = inv.primal_prox(v - self.tau * inv.grad_u(), self.tau)
        self.u_prev = u
        inv.set_u(u_new)
        self.t = t_next
        if float(inv.objective().sum()) > before:  # restart the momentum
            self.t = 1.0
            self.restarts += 1
            self.u_prev = u_new.clone()


def choose_ustep(inv, w_norm_sq: float, lip: float, step_safety: float, primal_step: float) -> UStep:
    """The u-step for the problem's structure (see the module docstring)."""
    if not inv.problem.blocks[0].has_state:
        return FullSplittingPDHG(inv, w_norm_sq, step_safety, primal_step)
    if inv.reg.operator is not None:
        return CondatVu(inv, lip, step_safety)
    return FISTA(inv, lip, step_safety)
