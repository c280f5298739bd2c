"""Training schemes: how one mini-batch updates the network.

A scheme is a choice of objective (penalty terms); its solver is the way that objective is
minimised. Every scheme object has the same interface, used by the training loop:

* ``begin_epoch(epoch)``: called before each epoch (0-based), e.g. for step-size schedules;
* ``step(y, x) -> dict``: one mini-batch update from degraded inputs ``y`` to clean targets ``x``
  (both (B, 1, 28, 28)); returns float statistics, at least ``loss``;
* ``state_dict()`` / ``load_state_dict()``: the solver state, for checkpoints;
* ``hyperparameters() -> dict``: everything that determines the updates, for ``metrics.json``.
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


class BackpropScheme:
    """Back-propagation baseline: minimise (1/|S|) sum_i 1/2 ||N(y_i) - x_i||^2 (+ alpha ||x_l||_1)
    through autograd, with a torch optimiser (``solver=adam|sgd``)."""

    def __init__(self, model: nn.Module, scheme_cfg, solver_cfg):
        self.model = model
        self.scheme_cfg = scheme_cfg
        self.solver_cfg = solver_cfg
        params = model.parameters()
        if solver_cfg.name == "adam":
            self.optimizer = torch.optim.Adam(
                params, lr=solver_cfg.lr, betas=(solver_cfg.beta1, solver_cfg.beta2), weight_decay=solver_cfg.weight_decay
            )
        elif solver_cfg.name == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=solver_cfg.lr, momentum=solver_cfg.momentum, weight_decay=solver_cfg.weight_decay
            )
        else:
            raise ValueError(f"solver={solver_cfg.name} cannot minimise scheme=backprop; allowed: adam, sgd")

    def step(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        self.model.train()
        states = self.model.forward_states(y.reshape(y.shape[0], -1))
        x_flat = x.reshape(x.shape[0], -1)
        data = 0.5 * (states[-1] - x_flat).pow(2).sum(dim=1).mean()
        loss = data + sparsity_term(states, self.scheme_cfg.sparsity_layer, self.scheme_cfg.sparsity)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
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


class BregmanScheme:
    """Lifted Bregman training (Wang & Benning 2023): minimise the lifted objective of
    ``lifted.LiftedProblem`` (Bregman penalty lambda_l B_Psi_l per layer, clamped or free output,
    optional alpha ||x_k||_1) with ``solver=isgm|bcd``. No activation is ever differentiated."""

    def __init__(self, model: nn.Module, scheme_cfg, solver_cfg):
        from .lifted import LiftedProblem
        from .solvers import SOLVERS

        L = model.depth
        lambdas = list(scheme_cfg.layer_weights) if scheme_cfg.layer_weights is not None else [scheme_cfg.penalty_weight] * L
        self.scheme_cfg = scheme_cfg
        self.problem = LiftedProblem(model, lambdas, scheme_cfg.output, scheme_cfg.sparsity, scheme_cfg.sparsity_layer)
        self.solver = SOLVERS[solver_cfg.name](self.problem, solver_cfg)

    def step(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        return self.solver.step(y.reshape(y.shape[0], -1), x.reshape(x.shape[0], -1))

    def begin_epoch(self, epoch: int) -> None:
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
        }


def build_scheme(model: nn.Module, scheme_cfg, solver_cfg):
    if scheme_cfg.name == "backprop":
        return BackpropScheme(model, scheme_cfg, solver_cfg)
    if scheme_cfg.name == "bregman":
        return BregmanScheme(model, scheme_cfg, solver_cfg)
    raise ValueError(f"unknown scheme {scheme_cfg.name!r}")
