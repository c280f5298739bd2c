"""Training schemes: how one mini-batch updates the network.

A scheme is a choice of objective (penalty terms); its solver is the way that objective is
minimised. Every scheme object has the same interface, used by the training loop:

* ``begin_epoch(epoch)``: called before each epoch (0-based), e.g. for step-size schedules;
* ``step(y, x) -> dict``: one mini-batch update from degraded inputs ``y`` to clean targets ``x``
  (both (B, 1, 28, 28)); returns float statistics, at least ``loss``;
* ``state_dict()`` / ``load_state_dict()``: the solver state, for checkpoints;
* ``hyperparameters() -> dict``: everything that determines the updates, for ``metrics.json``.

Schemes: ``backprop`` (autograd baseline), ``bregman``, ``fenchel``, ``mac`` (one ``LiftedScheme``
each: a layer penalty on the shared lifted objective, minimised by ISGM or BCD) and ``contrastive``
(nudged minus free phase of the lifted Bregman energy, applied by Adam or SGD).
"""

from __future__ import annotations

import torch
from omegaconf import OmegaConf
from torch import nn


def sparsity_term(states: list[torch.Tensor], layer: int | None, weight: float) -> torch.Tensor | float:
    """alpha ||x_l||_1 averaged over the samples of the batch (0 when unused)."""
    if layer is None or weight == 0:
        return 0.0
    return weight * states[layer].abs().sum(dim=1).mean()


def torch_optimizer(params, solver_cfg) -> torch.optim.Optimizer:
    """The torch optimiser of ``solver=adam|sgd`` (back-propagation and contrastive schemes)."""
    if solver_cfg.name == "adam":
        return torch.optim.Adam(params, lr=solver_cfg.lr, betas=(solver_cfg.beta1, solver_cfg.beta2),
                                weight_decay=solver_cfg.weight_decay)
    if solver_cfg.name == "sgd":
        return torch.optim.SGD(params, lr=solver_cfg.lr, momentum=solver_cfg.momentum, weight_decay=solver_cfg.weight_decay)
    raise ValueError(f"solver={solver_cfg.name} is not a gradient optimiser; allowed: adam, sgd")


class BackpropScheme:
    """Back-propagation baseline: minimise (1/|S|) sum_i 1/2 ||N(y_i) - x_i||^2 (+ alpha ||u_l||_1)
    through autograd, with a torch optimiser (``solver=adam|sgd``); constrained architectures
    (proxnet) are projected back after every step."""

    def __init__(self, model: nn.Module, scheme_cfg, solver_cfg):
        self.model = model
        self.scheme_cfg = scheme_cfg
        self.solver_cfg = solver_cfg
        layer = scheme_cfg.sparsity_layer
        if layer is not None and scheme_cfg.sparsity > 0 and not 1 <= layer <= model.depth:
            raise ValueError(f"sparsity_layer={layer}: must be a layer index 1..{model.depth}")
        self.optimizer = torch_optimizer(model.parameters(), solver_cfg)

    def step(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        self.model.train()
        y_flat = y.reshape(y.shape[0], -1)
        states = self.model.forward_states(y_flat)
        x_flat = x.reshape(x.shape[0], -1)
        data = 0.5 * (self.model.readout(states[-1], y_flat) - x_flat).pow(2).sum(dim=1).mean()
        loss = data + sparsity_term(states, self.scheme_cfg.sparsity_layer, self.scheme_cfg.sparsity)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.project()
        return {"loss": float(loss.detach())}

    def begin_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def hyperparameters(self) -> dict:
        return {
            "scheme": OmegaConf.to_container(self.scheme_cfg, resolve=True),
            "solver": OmegaConf.to_container(self.solver_cfg, resolve=True),
        }


def _layer_weights(scheme_cfg, depth: int, base: float) -> list[float]:
    if scheme_cfg.layer_weights is None:
        return [float(base)] * depth
    if len(scheme_cfg.layer_weights) != depth:
        raise ValueError(f"layer_weights={list(scheme_cfg.layer_weights)}: need one weight per layer ({depth})")
    return [float(base) * float(w) for w in scheme_cfg.layer_weights]


class LiftedScheme:
    """A lifted scheme: the lifted objective of ``lifted.LiftedProblem`` with the scheme's layer
    penalty, minimised by ``solver=isgm|bcd``.

    * ``bregman`` (Wang & Benning 2023): lambda_l B_Psi_l; no activation is ever differentiated;
    * ``fenchel`` (Gu, Askari, El Ghaoui 2020): 2 lambda_l (1/2||z||^2 + 1/2||a_+||^2 - <z, a>),
      z >= 0, ReLU and identity layers only, block-coordinate updates by default;
    * ``mac`` (Carreira-Perpinan & Wang 2014): mu_e/2 ||z_l - sigma(a_l)||^2 on the hidden layers with
      the continuation mu_e = min(mu * mu_growth^e, mu_max) in epoch e; the clamped output layer is
      the data term 1/2 ||t - sigma(a_L)||^2 (weight 1, as in MAC).
    """

    def __init__(self, model: nn.Module, scheme_cfg, solver_cfg):
        from .lifted import LiftedProblem
        from .penalties import PENALTIES
        from .solvers import SOLVERS

        self.scheme_cfg = scheme_cfg
        self.weights = _layer_weights(scheme_cfg, model.depth, 1.0 if scheme_cfg.name == "mac" else scheme_cfg.penalty_weight)
        self.problem = LiftedProblem(model, PENALTIES[scheme_cfg.name](), self.weights, scheme_cfg.rho,
                                     scheme_cfg.output, scheme_cfg.sparsity, scheme_cfg.sparsity_layer)
        if scheme_cfg.name == "mac":
            self.begin_epoch(0)
        self.solver = SOLVERS[solver_cfg.name](self.problem, solver_cfg)

    def step(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        return self.solver.step(y.reshape(y.shape[0], -1), x.reshape(x.shape[0], -1))

    def mu(self, epoch: int) -> float:
        c = self.scheme_cfg
        return min(c.mu * c.mu_growth**epoch, c.mu_max)

    def begin_epoch(self, epoch: int) -> None:
        if self.scheme_cfg.name == "mac":
            p = self.problem
            mu = self.mu(epoch)
            # a clamped dense output layer is the data term (weight 1); a clamped state block (proxnet)
            # keeps its z_L as a hidden auxiliary variable, penalised with mu like the others
            data_layer = p.L if p.output == "clamped" and not p.blocks[-1].has_state else None
            p.lambdas = [w * (1.0 if l == data_layer else mu) for l, w in enumerate(self.weights, 1)]
        if hasattr(self, "solver"):
            self.solver.begin_epoch(epoch)

    def state_dict(self) -> dict:
        return self.solver.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.solver.load_state_dict(state)

    def hyperparameters(self) -> dict:
        return {
            "scheme": OmegaConf.to_container(self.scheme_cfg, resolve=True),
            "solver": self.solver.hyperparameters(),
            "layer_weights": self.problem.lambdas,
            "output": self.problem.output,
        }


class ContrastiveScheme:
    """Lifted contrastive learning (Zach & Estellers 2019) on the lifted Bregman energy E(X; W):

        J_beta(W) = (1/beta) [ min_X {beta loss(K u_L, t) + E(X; W)} - min_X E(X; W) ].

    The free phase min_X E is the forward pass (E = 0 there); the nudged phase is approximated by
    ``nudge_steps`` X-sweeps from the forward pass. The gradient
    (1/beta) [grad_W (beta loss + E)(X_beta) - grad_W E(X_free)] tends to the back-propagation
    gradient as beta -> 0 and is applied by ``solver=adam|sgd``. No activation is differentiated."""

    def __init__(self, model: nn.Module, scheme_cfg, solver_cfg):
        from .lifted import LiftedProblem
        from .penalties import BregmanPenalty
        from .solvers import AuxiliaryUpdater

        c = self.scheme_cfg = scheme_cfg
        self.solver_cfg = solver_cfg
        self.model = model
        self.beta = float(c.beta)
        self.problem = LiftedProblem(model, BregmanPenalty(), _layer_weights(c, model.depth, c.penalty_weight), c.rho,
                                     "free", c.sparsity, c.sparsity_layer, loss_weight=self.beta)
        self.xs = AuxiliaryUpdater(self.problem, c.layer_order, c.step_safety, c.power_iters)
        self.optimizer = torch_optimizer(model.parameters(), solver_cfg)

    @torch.no_grad()
    def gradient(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        """Store the contrastive gradient in ``.grad`` of every parameter; return statistics."""
        p = self.problem
        st = p.init_state(y, x)  # free phase: the forward pass
        self.xs.invalidate()
        free = [p.weight_gradients(st, l, with_loss=False) for l in range(1, p.L + 1)]
        for _ in range(self.scheme_cfg.nudge_steps):
            self.xs.sweep(st)
            p.refresh(st, first=2)
        for l in range(1, p.L + 1):
            nudged = p.weight_gradients(st, l)
            for q, gn, gf in zip(p.block_params(l), nudged, free[l - 1]):
                q.grad = (gn - gf) / self.beta
        return {"loss": st.forward_loss, "objective": p.objective(st) / self.beta, "gap": p.hidden_gap(st)}

    def step(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.gradient(y.reshape(y.shape[0], -1), x.reshape(x.shape[0], -1))
        self.optimizer.step()
        self.model.project()
        return stats

    def begin_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "xs": self.xs.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.xs.load_state_dict(state["xs"])

    def hyperparameters(self) -> dict:
        return {
            "scheme": OmegaConf.to_container(self.scheme_cfg, resolve=True),
            "solver": OmegaConf.to_container(self.solver_cfg, resolve=True),
            "layer_weights": self.problem.lambdas,
        }


SCHEMES = {"backprop": BackpropScheme, "bregman": LiftedScheme, "fenchel": LiftedScheme, "mac": LiftedScheme,
           "contrastive": ContrastiveScheme}


def build_scheme(model: nn.Module, scheme_cfg, solver_cfg):
    """The scheme object of a ``scheme`` config; ValueError (one line) for an invalid combination
    of scheme, architecture and solver."""
    if scheme_cfg.name not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme_cfg.name!r}; allowed: {', '.join(SCHEMES)}")
    return SCHEMES[scheme_cfg.name](model, scheme_cfg, solver_cfg)
