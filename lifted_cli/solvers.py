"""Solvers of the lifted objective (METHOD.md section 5): ISGM and block-coordinate descent.

Both work on a :class:`~lifted_cli.lifted.LiftedProblem` through its per-layer methods only, so
any scheme or architecture that provides them is solved without a special case. One mini-batch:

1. warm start of the auxiliary variables X by a forward pass (every hidden penalty is then zero);
2. ``n_inner`` iterations of
   * an X-step: one proximal-gradient step per auxiliary variable, layers in Gauss-Seidel order
     (top-down, so the target reaches every layer in one sweep) or Jacobi order (all at once),
     with the closed-form prox of mu*Phi;
   * a W-step: every layer at once (the layer problems are independent given X), a gradient step
     on lambda_l/s sum_i B_l(x_l^i, W_l x_{l-1}^i + b_l) (+ the ISGM anchor 1/(2 tau)||W - W^k||^2).

Step sizes come from Lipschitz constants estimated by warm-started power iterations (no SVD):
``mu_l = safety / (lambda_{l+1} ||W_{l+1}||^2)`` and ``gamma_l = safety / (lambda_l ||[X_{l-1}, 1]||^2/s
(+ 1/tau))``. No derivative of an activation is taken anywhere.
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from .lifted import LiftedProblem, LiftedState


def power_norm_sq(matvec, rmatvec, v: torch.Tensor, iters: int) -> tuple[float, torch.Tensor]:
    """Estimate ||A||_2^2 by ``iters`` power iterations on A^T A from the warm start ``v``.

    Returns the Rayleigh quotient ||A v||^2 (v unit; a lower bound that converges to ||A||^2) and
    the new unit vector."""
    for _ in range(iters):
        w = rmatvec(matvec(v))
        n = w.norm()
        if n == 0 or not torch.isfinite(n):
            break
        v = w / n
    return float(matvec(v).pow(2).sum()), v


class LiftedSolver:
    """Shared machinery: X-steps, layer-wise weight gradients, Lipschitz estimates, optimiser."""

    def __init__(self, problem: LiftedProblem, cfg):
        self.problem = problem
        self.cfg = cfg
        self.tau = cfg.get("tau")
        self.order = cfg.layer_order
        L = problem.L
        groups = [{"params": [problem.weight(l), problem.bias(l)], "lr": 1.0} for l in range(1, L + 1)]
        self.optimizer = self._make_optimizer(groups)
        dev, dt = problem.weight(1).device, problem.weight(1).dtype
        gen = torch.Generator().manual_seed(0)
        # warm starts of the power iterations: for ||W_l|| (size n_{l-1}) and ||[X_{l-1}, 1]|| (n_{l-1}+1)
        self.v_weight = [torch.randn(problem.weight(l).shape[1], generator=gen).to(dev, dt) for l in range(1, L + 1)]
        self.v_data = [torch.randn(problem.weight(l).shape[1] + 1, generator=gen).to(dev, dt) for l in range(1, L + 1)]
        for v in self.v_weight + self.v_data:
            v /= v.norm()

    def _make_optimizer(self, groups):
        return torch.optim.SGD(groups, lr=1.0)

    # ------------------------------------------------------------------------------ estimates
    def weight_norm_sq(self, l: int) -> float:
        W = self.problem.weight(l)
        est, self.v_weight[l - 1] = power_norm_sq(lambda v: W @ v, lambda u: W.t() @ u, self.v_weight[l - 1], self.cfg.power_iters)
        return est

    def data_norm_sq(self, l: int, x_prev: torch.Tensor) -> float:
        """||[X_{l-1}, 1]||_2^2 / s: Lipschitz constant of the layer-l weight gradient per lambda."""
        est, self.v_data[l - 1] = power_norm_sq(
            lambda v: x_prev @ v[:-1] + v[-1],
            lambda u: torch.cat([x_prev.t() @ u, u.sum().reshape(1)]),
            self.v_data[l - 1],
            self.cfg.power_iters,
        )
        return est / x_prev.shape[0]

    def x_step_size(self, l: int) -> float:
        if self.cfg.x_step is not None:
            return float(self.cfg.x_step)
        w_sq = self.weight_norm_sq(l + 1) if l < self.problem.L else 0.0
        return self.cfg.step_safety / max(self.problem.x_lipschitz(l, w_sq), 1e-12)

    # ---------------------------------------------------------------------------------- steps
    @torch.no_grad()
    def x_step(self, st: LiftedState) -> None:
        """One proximal-gradient step on every free auxiliary variable (Gauss-Seidel top-down or
        Jacobi). Leaves the cached pre-activations stale; call ``problem.refresh`` after."""
        p = self.problem

        def update(l):
            mu = self.x_step_size(l)
            x_next = st.x[l + 1] if l < p.L else None
            return p.x_prox(l, st.x[l] - mu * p.x_smooth_gradient(st, l, x_next), mu)

        layers = list(p.free_layers())
        if self.order == "gauss_seidel":
            for l in reversed(layers):
                st.x[l] = update(l)
        else:
            for l, v in [(l, update(l)) for l in layers]:
                st.x[l] = v

    @torch.no_grad()
    def weight_gradients(self, st: LiftedState) -> None:
        """Store in ``.grad`` the gradient of E in (W_l, b_l) for every layer (needs fresh ``a``)."""
        p = self.problem
        for l in range(1, p.L + 1):
            r = p.acts[l - 1](st.a[l - 1]) - st.x[l]
            gW, gb = p.weight_gradient(l, st.x[l - 1], r)
            p.weight(l).grad, p.bias(l).grad = gW, gb

    def w_step_size(self, l: int, st: LiftedState, anchor_inv: float = 0.0) -> float:
        if self.cfg.get("w_step") is not None:
            return float(self.cfg.w_step)
        lip = self.problem.lambdas[l - 1] * self.data_norm_sq(l, st.x[l - 1]) + anchor_inv
        return self.cfg.step_safety / max(lip, 1e-12)

    @torch.no_grad()
    def w_step(self, st: LiftedState) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------- one batch
    @torch.no_grad()
    def step(self, u0: torch.Tensor, target: torch.Tensor) -> dict:
        p = self.problem
        st = p.init_state(u0, target)
        forward_loss = 0.5 * (p.acts[-1](st.a[-1]) - target).pow(2).sum(dim=1).mean()
        self.begin_batch()
        for k in range(self.cfg.n_inner):
            if k > 0:  # the weights moved: every pre-activation is stale
                p.refresh(st)
            for j in range(self.cfg.x_sweeps):
                if j > 0:
                    p.refresh(st, first=2)
                self.x_step(st)
            p.refresh(st, first=2)  # x_0 and W_1 unchanged since the last refresh: a_1 is current
            self.inner = k
            if k == self.cfg.n_inner - 1:  # diagnostics at (W, X) before the last W-step: free
                objective, gaps = p.objective(st), p.layer_gaps(st)
            self.w_step(st)
        hidden = gaps[:-1] if p.output == "clamped" else gaps
        return {
            "loss": float(forward_loss),
            "objective": objective,
            "gap": sum(hidden) / max(len(hidden), 1),
        }

    def begin_batch(self) -> None:
        pass

    def begin_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "v_weight": self.v_weight, "v_data": self.v_data,
                "previous": getattr(self, "previous", None)}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("previous") is not None:
            dev = self.v_weight[0].device
            self.previous = [(W.to(dev), b.to(dev)) for W, b in state["previous"]]
        self.v_weight = [v.to(self.v_weight[0].device) for v in state["v_weight"]]
        self.v_data = [v.to(self.v_data[0].device) for v in state["v_data"]]

    def hyperparameters(self) -> dict:
        return OmegaConf.to_container(self.cfg, resolve=True)


class ISGM(LiftedSolver):
    previous = None  # W^{k-1}, for the momentum extrapolation

    """Implicit stochastic gradient (Toulis & Airoldi; the chapter's main method): per mini-batch,
    approximately solve

        argmin_{W, X} E_S(W, X) + sum_l 1/(2 tau) ||W_l - W_l^k||^2

    by ``n_inner`` proximal-gradient iterations jointly on X and W, from the warm start
    (W^k, forward pass). Weight step: W_l <- W_l - gamma_l [grad_W E_S + (W_l - W_l^k)/tau]."""

    def begin_epoch(self, epoch: int) -> None:
        """tau_e = tau * tau_decay^e for epoch e = 0, 1, ... (smaller tau: more conservative steps)."""
        self.tau = self.cfg.tau * self.cfg.tau_decay**epoch

    @torch.no_grad()
    def begin_batch(self) -> None:
        """Anchor W^k of this implicit step. With ``momentum`` beta > 0 the anchor is extrapolated,
        W^k <- W^k + beta (W^k - W^{k-1}) (heavy-ball/Nesterov-style implicit SGD); beta = 0 is
        plain ISGM."""
        p = self.problem
        params = [(p.weight(l), p.bias(l)) for l in range(1, p.L + 1)]
        beta = self.cfg.momentum
        if beta > 0:
            current = [(W.detach().clone(), b.detach().clone()) for W, b in params]
            if self.previous is not None:
                for (W, b), (W1, b1) in zip(params, self.previous):
                    W.add_(W - W1, alpha=beta)
                    b.add_(b - b1, alpha=beta)
            self.previous = current
        self.anchor = [(W.detach().clone(), b.detach().clone()) for W, b in params]

    @torch.no_grad()
    def w_step(self, st: LiftedState) -> None:
        p = self.problem
        if self.cfg.w_metric == "majorizer":
            for l in range(1, p.L + 1):
                r = p.acts[l - 1](st.a[l - 1]) - st.x[l]
                p.implicit_weight_step(l, st.x[l - 1], r, self.anchor[l - 1], self.tau, at_anchor=self.inner == 0)
            return
        self.weight_gradients(st)
        inv_tau = 1.0 / self.tau
        for l in range(1, p.L + 1):
            W, b = p.weight(l), p.bias(l)
            W0, b0 = self.anchor[l - 1]
            W.grad.add_(W - W0, alpha=inv_tau)
            b.grad.add_(b - b0, alpha=inv_tau)
            self.optimizer.param_groups[l - 1]["lr"] = self.w_step_size(l, st, inv_tau)
        self.optimizer.step()


class BCD(LiftedSolver):
    """Mini-batch block-coordinate descent: alternate X-steps and layer-local W-steps, the W-step
    by ``weight_update`` = gd (step 1/L from the power iteration, or ``lr``), heavyball, nesterov
    (momentum ``momentum``) or adam (learning rate ``lr``)."""

    def _make_optimizer(self, groups):
        rule = self.cfg.weight_update
        if rule == "adam":
            lr = self.cfg.lr if self.cfg.lr is not None else 1e-3
            return torch.optim.Adam(groups, lr=lr, betas=(self.cfg.beta1, self.cfg.beta2))
        momentum = 0.0 if rule == "gd" else self.cfg.momentum
        return torch.optim.SGD(groups, lr=1.0, momentum=momentum, nesterov=rule == "nesterov")

    @torch.no_grad()
    def w_step(self, st: LiftedState) -> None:
        self.weight_gradients(st)
        if self.cfg.weight_update != "adam":
            for l in range(1, self.problem.L + 1):
                lr = self.cfg.lr if self.cfg.lr is not None else self.w_step_size(l, st)
                self.optimizer.param_groups[l - 1]["lr"] = lr
        self.optimizer.step()


SOLVERS = {"isgm": ISGM, "bcd": BCD}
