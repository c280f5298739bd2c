"""Stable inversion of a trained network (METHOD.md section 6).

Given network outputs ``f_delta`` (possibly noisy), recover inputs u by the lifted Bregman
variational model

    min_{u, Z}  sum_l lambda_l B_Psi_l(z_l, a_l) + rho/2 sum ||u_l - S_l u_{l-1} - V_l z_l||^2 + alpha J(u)

with the last state clamped to f_delta (``output=clamped``, the form of the perceptron theorem:
for one layer it is ``min_u B_Psi(f_delta, W u + b) + alpha J(u)``) or free with the data term
``data_weight/2 ||K u_L - f_delta||^2``. A clamped ``f_delta`` is first projected onto the closed
range of the output activation (dom Psi), the only outputs with a finite Bregman distance. The hidden
auxiliary variables take the proximal-gradient X-steps of training (``solvers.AuxiliaryUpdater``, same
penalties and prox maps), from an inertial point when ``momentum`` > 0 (iPALM, Pock & Sabach 2016:
y_l = z_l + beta_k (z_l - z_l^prev), beta_k = min(momentum, (k-1)/(k+2)), restarted per variable by the
gradient test of O'Donoghue & Candes 2015 when <y_l - z_l^new, z_l^new - z_l> > 0); the input u takes

* for a plain first layer a_1 = W u + b: full-splitting PDHG (Chambolle-Pock) on
  min_u h(W u + b) + alpha J(u) (+ box), h = the first layer's Bregman penalty in its pre-activation,
  dualised through h*(q) = w Phi(q/w + z_1) (``LiftedInversion._pdhg_step``), J through its prox or
  (TV) a second dual variable [lit: METHOD.md section 6 solves TV inversion by PDHG];
* otherwise (a proximal first block) PDHG in Condat-Vu form when J is isotropic total variation:
      u <- u - tau (grad_u E + alpha grad^T p)              (= u - tau (grad_u E - alpha div p))
      p <- proj_{||.||_{2,inf} <= 1}(p + s alpha grad(2 u_new - u_old)),
  with tau (L/2 + s ||alpha grad||^2) <= 1, ||grad||^2 <= 8, s = 1/(sqrt(8) alpha);
  and FISTA with adaptive restart otherwise (J = l1, 1/2||.||^2, or the box [0, 1]).
With ``box`` the iterates are also kept in [0, 1] (the prox of the box indicator, composed exactly).

The baseline ``backprop`` minimises 1/2 ||N(u) - f_delta||^2 + alpha J(u) through autograd with Adam
(total variation smoothed as sum sqrt(|grad u|^2 + eps^2) - eps; the box by projection).
Every quantity is per image and summed over the images, which are independent problems.
"""

from __future__ import annotations

import math

import torch

from .lifted import LiftedProblem
from .penalties import BregmanPenalty, soft_threshold
from .solvers import AuxiliaryUpdater

REGULARIZERS = ("tv", "l1", "l2", "box")


# ------------------------------------------------------------------------------- image operators
def grad2d(u: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary (zero difference at the last row/column):
    (B, H, W) -> (B, 2, H, W)."""
    g = torch.zeros(u.shape[0], 2, *u.shape[1:], dtype=u.dtype, device=u.device)
    g[:, 0, :-1, :] = u[:, 1:, :] - u[:, :-1, :]
    g[:, 1, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return g


def grad2d_adjoint(p: torch.Tensor) -> torch.Tensor:
    """grad^T p = -div p, the exact adjoint of ``grad2d``."""
    out = torch.zeros(p.shape[0], *p.shape[2:], dtype=p.dtype, device=p.device)
    out[:, :-1, :] -= p[:, 0, :-1, :]
    out[:, 1:, :] += p[:, 0, :-1, :]
    out[:, :, :-1] -= p[:, 1, :, :-1]
    out[:, :, 1:] += p[:, 1, :, :-1]
    return out


def regularizer_value(name: str, u: torch.Tensor, side: int, smoothing: float = 0.0) -> torch.Tensor:
    """J(u) per image (u: (B, side*side)): isotropic TV (optionally smoothed), l1, 1/2||u||^2, or the
    box indicator (0 inside [0, 1], inf outside)."""
    if name == "tv":
        g = grad2d(u.reshape(-1, side, side))
        mag = (g.pow(2).sum(dim=1) + smoothing**2).sqrt() - smoothing
        return mag.flatten(1).sum(dim=1)
    if name == "l1":
        return u.abs().sum(dim=1)
    if name == "l2":
        return 0.5 * u.pow(2).sum(dim=1)
    if name == "box":
        inside = ((u >= 0) & (u <= 1)).all(dim=1)
        return torch.where(inside, torch.zeros_like(inside, dtype=u.dtype), torch.full_like(inside, math.inf, dtype=u.dtype))
    raise ValueError(f"regularizer={name}: allowed: {', '.join(REGULARIZERS)}")


def regularizer_prox(name: str, v: torch.Tensor, t: float) -> torch.Tensor:
    """prox of t J (J = l1, l2, box; TV has none in closed form and goes through PDHG)."""
    if name == "l1":
        return soft_threshold(v, t)
    if name == "l2":
        return v / (1.0 + t)
    if name == "box":
        return v.clamp(0.0, 1.0)
    raise ValueError(f"no closed-form prox for regularizer={name}")


# ----------------------------------------------------------------------------------- the solver
class LiftedInversion:
    """The lifted Bregman inversion of a (sub-)network ``model`` (a ``networks.UnifiedNet`` whose
    input is its first state) for outputs ``f_delta`` (rows = images)."""

    def __init__(self, model, f_delta: torch.Tensor, regularizer: str, alpha: float, side: int,
                 output: str = "clamped", data_weight: float = 1.0, rho: float = 1.0,
                 step_safety: float = 0.9, power_iters: int = 30, init: torch.Tensor | None = None,
                 box: bool = False, primal_step: float = 100.0, hidden_weight: float = 1.0,
                 momentum: float = 0.0):
        if model.zero_input:
            raise ValueError("this network takes its input through a data-dependent bias (unrolled_pnn); "
                             "inversion supports networks whose input is their first state")
        self.model, self.reg, self.alpha, self.side, self.box = model, regularizer, float(alpha), side, box
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
        ref = f_delta
        u0 = init.clone() if init is not None else torch.zeros(n, dim, dtype=ref.dtype, device=ref.device)
        self.st = self.problem.init_state(u0, f_delta)
        self.xs = AuxiliaryUpdater(self.problem, "gauss_seidel", step_safety, power_iters)
        p = self.problem
        w_norm_sq = self.xs.norm_sq("pre", 1)
        lip = p.lambdas[0] * p.penalty.lip_a * w_norm_sq
        first = model.blocks[0]
        if first.has_state and first.skip:
            lip += p.rho
        self.lip = lip
        # a plain first block a_1 = W u + b: its penalty is dualised too (full-splitting PDHG)
        self.dualised = not first.has_state
        if self.dualised:
            # tau = primal_step / ||W||, and tau (s_1 ||W||^2 + s_2 ||grad||^2) <= step_safety shared equally
            # between the two duals: the balance of primal and dual steps does not change with the scale of W
            self.tau = float(primal_step) / math.sqrt(max(w_norm_sq, 1e-12))
            self.sigma_w = 0.5 * step_safety / (self.tau * max(w_norm_sq, 1e-12))
            self.sigma = 0.5 * step_safety / (self.tau * 8.0)
            self.q = torch.zeros(n, first.z_dim, dtype=ref.dtype, device=ref.device)
            self.a_prev = self.st.a[1].clone()  # W u_{k-1} + b, for u_bar = 2 u_k - u_{k-1} without a product
        elif regularizer == "tv":
            self.sigma = 1.0 / (math.sqrt(8.0) * self.alpha) if self.alpha > 0 else 0.0
            self.tau = step_safety / (lip / 2 + math.sqrt(8.0) * self.alpha)
        else:
            self.tau = step_safety / lip
        if regularizer == "tv":
            self.dual = torch.zeros(n, 2, side, side, dtype=ref.dtype, device=ref.device)
        self.u_prev = u0.clone()
        self.t = 1.0
        self.restarts = 0
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

    def _set_u(self, u: torch.Tensor) -> None:
        self.st.u[0] = u
        self.st.y = u
        self.st.a[1] = self.problem.blocks[0].pre(u, u)

    def grad_u(self) -> torch.Tensor:
        """Gradient in u of the smooth part: lambda_1 W_1^T (sigma(W_1 u + b_1) - z_1) (- rho r_1 for a skip)."""
        return self.problem._downstream(self.st, 0)

    @torch.no_grad()
    def objective(self) -> torch.Tensor:
        """Per image: the lifted energy plus alpha J(u) (cached pre-activations must be current).
        A clamped output layer contributes B(f_delta, a_L) without its constant Psi(f_delta), which is
        +inf when noise puts f_delta outside the activation's range (negative values for ReLU) but does
        not depend on u: 1/2||f_delta||^2 + Phi*(a_L) - <f_delta, a_L>."""
        p, st = self.problem, self.st
        value = 0.0
        for l in range(1, p.L + 1):
            act, z, a = p.acts[l - 1], st.z[l], st.a[l]
            if l == p.L and p.output == "clamped":
                pen = p.penalty.energy_a(act, z, a) + 0.5 * p.penalty.factor * z.pow(2).sum(dim=1)
            else:
                pen = p.penalty.value(act, z, a)
            value = value + p.lambdas[l - 1] * pen
        for l in range(1, p.L + 1):
            if p.blocks[l - 1].has_state:
                value = value + 0.5 * p.rho * p.residual(st, l).pow(2).sum(dim=1)
        if p.output == "free":
            value = value + 0.5 * p.loss_weight * p.output_residual(st).pow(2).sum(dim=1)
        if self.reg != "box":
            value = value + self.alpha * regularizer_value(self.reg, self.u, self.side)
        return value

    @torch.no_grad()
    def step(self) -> None:
        """One iteration: an X-sweep on the hidden variables, then the u-step."""
        p, st = self.problem, self.st
        if p.variables():
            self._hidden_sweep()
        u = self.u
        if self.dualised:
            self._pdhg_step(u)
        elif self.reg == "tv":
            g = self.grad_u()
            grad_adj = grad2d_adjoint(self.dual).reshape(u.shape)
            u_new = self._primal_prox(u - self.tau * (g + self.alpha * grad_adj), self.tau)  # Condat-Vu, box as prox
            bar = (2 * u_new - u).reshape(-1, self.side, self.side)
            q = self.dual + self.sigma * self.alpha * grad2d(bar)
            self.dual = q / q.norm(dim=1, keepdim=True).clamp(min=1.0)  # proj onto ||.||_{2,inf} <= 1
            self._set_u(u_new)
        else:  # FISTA on u with adaptive (function-value) restart
            before = float(self.objective().sum())
            t_next = (1 + math.sqrt(1 + 4 * self.t * self.t)) / 2
            v = u + ((self.t - 1) / t_next) * (u - self.u_prev)
            self._set_u(v)
            g = self.grad_u()
            u_new = self._primal_prox(v - self.tau * g, self.tau)
            self.u_prev = u
            self._set_u(u_new)
            self.t = t_next
            if float(self.objective().sum()) > before:  # restart the momentum
                self.t = 1.0
                self.restarts += 1
                self.u_prev = u_new.clone()
        self.iterations += 1

    def _hidden(self, var: tuple[str, int]) -> torch.Tensor:
        kind, l = var
        return self.st.u[l] if kind == "u" else self.st.z[l]

    def _hidden_sweep(self) -> None:
        """One Gauss-Seidel proximal-gradient sweep on the hidden variables (top-down), from the
        inertial points y_l = z_l + beta_k (z_l - z_l^prev) when ``momentum`` > 0 (iPALM); a variable
        whose step turned against its last move, <y_l - z_l^new, z_l^new - z_l> > 0, restarts its
        beta sequence (gradient restart). Without it the X-steps of training on the inversion's
        chain are slow: on the convolutional encoder, 2000 plain sweeps stayed at 3x the objective
        that the inertial sweeps reach."""
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

    def _primal_prox(self, v: torch.Tensor, t: float) -> torch.Tensor:
        """prox of t (alpha J + box) for J = l1, l2, box (exact composition in 1-D); for TV (dualised)
        only the box."""
        if self.reg != "tv":
            v = regularizer_prox(self.reg, v, t * self.alpha)
        return v.clamp(0.0, 1.0) if self.box else v

    def _pdhg_step(self, u: torch.Tensor) -> None:
        """One Chambolle-Pock iteration on min_u h(W u + b) + alpha J(u) (+ box), the u-part of the
        lifted objective for a plain first block, with h(a) = c lambda_1 (Phi*(a) - <z_1, a>) (the
        Bregman penalty B_Psi(z_1, a) without its constant Phi(z_1); z_1 = f_delta for one clamped layer):

            q <- prox_{s_1 h*}(q + s_1 (W u_bar + b)),   h*(q) = w Phi(q/w + z_1), w = c lambda_1, so
                 prox_{s h*}(v) = w (prox_{(s/w) Phi}(v/w + z_1) - z_1)           (Moreau, scaling)
            p <- proj_{||.||_{2,inf} <= alpha}(p + s_2 grad u_bar)              (TV only)
            u+ <- prox_{tau (alpha J + box)}(u - tau (W^T q + grad^T p)),    u_bar = 2 u+ - u,

        converging for tau (s_1 ||W||^2 + s_2 ||grad||^2) < 1 (||grad||^2 <= 8). The data term enters
        through its prox, so the step is not limited by 1/||W||^2 as a gradient step would be: the
        regulariser acts at a pace independent of the conditioning of W. At a fixed point
        q = w (sigma(W u + b) - z_1), the gradient of h. tau = primal_step / ||W|| (a large primal step
        suits images recovered through ill-conditioned W; balancing the residuals as in adaptive PDHG
        was tried and converged more slowly to good images on both experiments)."""
        p, st, first = self.problem, self.st, self.problem.blocks[0]
        act, z = p.acts[0], st.z[1]
        w = p.lambdas[0] * p.penalty.factor
        a_bar = 2 * st.a[1] - self.a_prev  # W u_bar + b
        v = self.q + self.sigma_w * a_bar
        self.q = w * (act.prox_phi(v / w + z, self.sigma_w / w) - z)
        g = first.pre_adjoint(self.q)
        if self.reg == "tv":
            u_bar = (2 * u - self.u_prev).reshape(-1, self.side, self.side)
            d = self.dual + self.sigma * grad2d(u_bar)
            self.dual = d / (d.norm(dim=1, keepdim=True) / self.alpha).clamp(min=1.0) if self.alpha > 0 else 0 * d
            g = g + grad2d_adjoint(self.dual).reshape(u.shape)
        u_new = self._primal_prox(u - self.tau * g, self.tau)
        self.a_prev = st.a[1]
        self.u_prev = u
        self._set_u(u_new)


def invert_backprop(model, f_delta: torch.Tensor, regularizer: str, alpha: float, side: int, iterations: int,
                    lr: float, smoothing: float, callback=None, init: torch.Tensor | None = None,
                    box: bool = False) -> torch.Tensor:
    """Baseline: Adam on 1/2 ||N(u) - f_delta||^2 + alpha J(u) per image (summed over images),
    through autograd; TV smoothed by ``smoothing``; the box by projection after every step."""
    if init is None:
        init = torch.zeros(f_delta.shape[0], model.blocks[0].in_dim, dtype=f_delta.dtype, device=f_delta.device)
    u = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=lr)
    for it in range(iterations):
        opt.zero_grad(set_to_none=True)
        loss = 0.5 * (model.readout(model.forward_states(u)[-1], u) - f_delta).pow(2).sum()
        if regularizer != "box":
            loss = loss + alpha * regularizer_value(regularizer, u, side, smoothing).sum()
        loss.backward()
        opt.step()
        if regularizer == "box" or box:
            with torch.no_grad():
                u.clamp_(0.0, 1.0)
        if callback is not None:
            callback(it + 1, u.detach())
    return u.detach()
