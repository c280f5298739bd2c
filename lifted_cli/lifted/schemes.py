"""Training schemes (config group ``scheme``): the objective that one mini-batch update decreases
(docs/method.md, section 4.4).

A scheme is a choice of objective (penalty terms); a solver (``solvers.py``) is the way it is
minimised. Every scheme declares the interface it offers (``form``):

* ``form="gradient"``: ``gradient(y, x) -> stats`` stores a gradient in ``.grad`` of every parameter
  of ``model`` (``backprop``: autograd of the squared error; ``contrastive``: nudged minus free phase
  of the lifted Bregman energy), applied by a torch optimiser (``adam``, ``sgd``);
* ``form="lifted"``: ``problem`` is the lifted objective (``objective.LiftedProblem``) with the
  scheme's layer penalty (``bregman``, ``fenchel``, ``mac``), minimised by ``isgm`` or ``bcd``.

Every scheme also has ``begin_epoch(epoch)`` (e.g. MAC's penalty continuation), ``state_dict`` /
``load_state_dict`` and ``hyperparameters()``. A new lifted scheme is a layer penalty
(``penalties.LayerPenalty``) and a registration::

    @SCHEMES.register("my_penalty", LiftedSchemeConfig, form="lifted")
    def build_my_scheme(cfg, model, layout=None):
        return LiftedScheme(cfg, model, MyPenalty(), layout)

``layout`` (``layout.Layout``): the layers a process owns, their grouping into stacks and the
communicator; a scheme hands it to its lifted problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from omegaconf import OmegaConf
from torch import nn

from ..registry import Registry, Schema, check, check_choice, check_interval, check_nonnegative, check_positive, option
from .layout import Layout
from .objective import LiftedProblem
from .penalties import BregmanPenalty, FenchelPenalty, LayerPenalty, QuadraticPenalty
from .solvers import LAYER_ORDERS, AuxiliaryUpdater

#: the schemes by name; ``info["form"]``: the interface their solvers need (see ``solvers.py``)
SCHEMES = Registry("scheme", configs=True)

OUTPUTS = ("auto", "clamped", "free")


def sparsity_term(states: list[torch.Tensor], layer: int | None, weight: float, batch: float | None = None):
    """alpha ||x_l||_1 summed over the samples and divided by ``batch`` (default: their number;
    0 when unused)."""
    if layer is None or weight == 0:
        return 0.0
    return weight * states[layer].abs().sum() / (states[layer].shape[0] if batch is None else batch)


def _plain(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


class Scheme:
    """The defaults of the scheme interface: nothing changes between epochs and there is no state."""

    def begin_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def sequential_depth(self) -> int:
        """The longest chain of dependent layer operations in one gradient: a forward pass and the
        backward pass through it (back-propagation's 2 L)."""
        return 2 * self.model.depth


# ------------------------------------------------------------------------------------- backprop
@dataclass
class BackpropSchemeConfig(Schema):
    name: str = option("backprop", "the scheme")
    sparsity: float = option(0.0, "weight alpha of alpha ||x_l||_1 on the output of layer sparsity_layer")
    sparsity_layer: Optional[int] = option(None, "1-based layer index (null: no sparsity term)")

    def validate(self):
        check_nonnegative("sparsity", self.sparsity)


@SCHEMES.register("backprop", BackpropSchemeConfig, form="gradient")
class BackpropScheme(Scheme):
    """Back-propagation baseline: the gradient of (1/|S|) sum_i 1/2 ||N(y_i) - x_i||^2 (+ alpha ||u_l||_1)
    through autograd."""

    def __init__(self, cfg, model: nn.Module, layout=None):
        self.model = model
        self.cfg = cfg
        layer = cfg.sparsity_layer
        if layer is not None and cfg.sparsity > 0 and not 1 <= layer <= model.depth:
            raise ValueError(f"sparsity_layer={layer}: must be a layer index 1..{model.depth}")

    def loss(self, y: torch.Tensor, x: torch.Tensor, batch: float | None = None) -> torch.Tensor:
        """The objective of the samples (y, x), summed and divided by ``batch`` (default: their
        number, the mean; data-parallel ranks divide their share by the per-rank batch)."""
        self.model.train()
        y_flat = y.flatten(1)
        states = self.model.forward_states(y_flat)
        x_flat = x.flatten(1)
        n = y.shape[0] if batch is None else batch
        data = 0.5 * (self.model.readout(states[-1], y_flat) - x_flat).pow(2).sum() / n
        return data + sparsity_term(states, self.cfg.sparsity_layer, self.cfg.sparsity, n)

    def gradient(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        loss = self.loss(y, x)
        loss.backward()
        return {"loss": float(loss.detach())}

    def hyperparameters(self) -> dict:
        return {"scheme": _plain(self.cfg)}


# --------------------------------------------------------------------------------- lifted schemes
@dataclass
class LiftedSchemeConfig(Schema):
    name: str = option("bregman", "the scheme")
    layer_weights: Optional[List[float]] = option(None, "one lambda per layer (relative weights), e.g. [1, 1, 1]")
    rho: float = option(1.0, "architecture penalty rho (residual and proximal blocks; unused by mlp, unrolled_pnn)")
    sparsity: float = option(0.0, "alpha of alpha ||u_k||_1 on an auxiliary variable")
    sparsity_layer: Optional[int] = option(None, "1-based layer k (null: none)")

    def validate(self):
        check_nonnegative("sparsity", self.sparsity)
        check_positive("rho", self.rho)
        if self.layer_weights is not None:
            check(all(w > 0 for w in self.layer_weights), "layer_weights", self.layer_weights, "all weights must be > 0")


@dataclass
class BregmanSchemeConfig(LiftedSchemeConfig):
    name: str = option("bregman", "the scheme")
    penalty_weight: float = option(1.0, "lambda_l of every layer")
    output_weight: Optional[float] = option(None, "lambda of the last layer alone (clamped output: the data term), in "
                                            "place of penalty_weight x layer_weights there; null: like the others")
    output: str = option("auto", "clamped: u_L = target (the last penalty is the data term); free: 1/2||K u_L - x||^2; "
                         "auto: clamped when the network outputs its last state, else free")

    def validate(self):
        super().validate()
        check_positive("penalty_weight", self.penalty_weight)
        if self.output_weight is not None:
            check_positive("output_weight", self.output_weight)
        check_choice("output", self.output, OUTPUTS)


@dataclass
class FenchelSchemeConfig(BregmanSchemeConfig):
    name: str = option("fenchel", "the scheme")


@dataclass
class MACSchemeConfig(LiftedSchemeConfig):
    name: str = option("mac", "the scheme")
    mu: float = option(1.0, "penalty weight in the first epoch")
    mu_growth: float = option(1.5, "factor per epoch (>= 1)")
    mu_max: float = option(100.0, "cap of the continuation")
    output: str = option("auto", "clamped | free | auto (see scheme=bregman)")

    def validate(self):
        super().validate()
        check_positive("mu", self.mu)
        check(self.mu_growth >= 1, "mu_growth", self.mu_growth, "must be >= 1 (the penalty weight increases over training)")
        check(self.mu_max >= self.mu, "mu_max", self.mu_max, f"must be >= scheme.mu ({self.mu})")
        check_choice("output", self.output, OUTPUTS)


def layer_weights(cfg, depth: int, base: float) -> list[float]:
    """lambda_l = base * layer_weights[l] (or base for every layer)."""
    if cfg.layer_weights is None:
        return [float(base)] * depth
    if len(cfg.layer_weights) != depth:
        raise ValueError(f"layer_weights={list(cfg.layer_weights)}: need one weight per layer ({depth})")
    return [float(base) * float(w) for w in cfg.layer_weights]


class LiftedScheme(Scheme):
    """A lifted scheme: the lifted objective of ``objective.LiftedProblem`` with the layer penalty
    ``penalty``, every layer weighted by ``penalty_weight`` (times ``layer_weights``)."""

    def __init__(self, cfg, model: nn.Module, penalty: LayerPenalty, layout: Layout | None = None):
        self.cfg = cfg
        self.model = model
        self.weights = layer_weights(cfg, model.depth, self.base_weight())
        if getattr(cfg, "output_weight", None) is not None:
            # the last layer's weight on its own (with a clamped output: the data term's against the
            # hidden layers' penalties), whatever the depth
            self.weights[-1] = float(cfg.output_weight)
        self.problem = LiftedProblem(model, penalty, self.weights, cfg.rho, cfg.output, cfg.sparsity, cfg.sparsity_layer,
                                     layout=layout)

    def base_weight(self) -> float:
        return self.cfg.penalty_weight

    def hyperparameters(self) -> dict:
        return {"scheme": _plain(self.cfg), "layer_weights": self.problem.lambdas, "output": self.problem.output}


@SCHEMES.register("bregman", BregmanSchemeConfig, form="lifted")
def build_bregman(cfg, model, layout=None) -> LiftedScheme:
    """Lifted Bregman (Wang & Benning 2023): lambda_l B_Psi_l; no activation is ever differentiated."""
    return LiftedScheme(cfg, model, BregmanPenalty(), layout)


@SCHEMES.register("fenchel", FenchelSchemeConfig, form="lifted")
def build_fenchel(cfg, model, layout=None) -> LiftedScheme:
    """Fenchel lifted networks (Gu, Askari, El Ghaoui 2020): 2 lambda_l (1/2||z||^2 + 1/2||a_+||^2 - <z, a>),
    z >= 0, ReLU and identity layers only."""
    return LiftedScheme(cfg, model, FenchelPenalty(), layout)


@SCHEMES.register("mac", MACSchemeConfig, form="lifted")
class MACScheme(LiftedScheme):
    """Method of auxiliary coordinates (Carreira-Perpinan & Wang 2014): mu_e/2 ||z_l - sigma(a_l)||^2 on
    the hidden layers with the continuation mu_e = min(mu * mu_growth^e, mu_max) in epoch e; the
    clamped output layer is the data term 1/2 ||t - sigma(a_L)||^2 (weight 1, as in MAC)."""

    def __init__(self, cfg, model: nn.Module, layout=None):
        super().__init__(cfg, model, QuadraticPenalty(), layout)
        self.begin_epoch(0)

    def base_weight(self) -> float:
        return 1.0  # mu_e multiplies the relative layer weights in begin_epoch

    def mu(self, epoch: int) -> float:
        c = self.cfg
        return min(c.mu * c.mu_growth**epoch, c.mu_max)

    def begin_epoch(self, epoch: int) -> None:
        p = self.problem
        mu = self.mu(epoch)
        # a clamped dense output layer is the data term (weight 1); a clamped state block (proxnet)
        # keeps its z_L as a hidden auxiliary variable, penalised with mu like the others
        data_layer = p.L if p.output == "clamped" and not p.blocks[-1].has_state else None
        p.lambdas = [w * (1.0 if l == data_layer else mu) for l, w in enumerate(self.weights, 1)]


# ---------------------------------------------------------------------------------- contrastive
@dataclass
class ContrastiveSchemeConfig(LiftedSchemeConfig):
    name: str = option("contrastive", "the scheme")
    beta: float = option(0.1, "nudging weight of the output loss (the gradient tends to back-propagation's as beta -> 0)")
    penalty_weight: float = option(1.0, "lambda_l of every layer")
    nudge_steps: int = option(3, "X-sweeps of the nudged phase per mini-batch")
    layer_order: str = option("gauss_seidel", "gauss_seidel (top-down) | jacobi | red_black")
    step_safety: float = option(0.9, "X-steps are step_safety / Lipschitz estimate")
    power_iters: int = option(2, "power iterations per operator-norm estimate")

    def validate(self):
        super().validate()
        for key in ("beta", "penalty_weight", "nudge_steps", "power_iters"):
            check_positive(key, getattr(self, key))
        check_choice("layer_order", self.layer_order, LAYER_ORDERS)
        check_interval("step_safety", self.step_safety, 0.0, 1.0, closed_low=False, closed_high=True)


@SCHEMES.register("contrastive", ContrastiveSchemeConfig, form="gradient")
class ContrastiveScheme(Scheme):
    """Lifted contrastive learning (Zach & Estellers 2019) on the lifted Bregman energy E(X; W):

        J_beta(W) = (1/beta) [ min_X {beta loss(K u_L, t) + E(X; W)} - min_X E(X; W) ].

    The free phase min_X E is the forward pass (E = 0 there); the nudged phase is approximated by
    ``nudge_steps`` X-sweeps from the forward pass. The gradient
    (1/beta) [grad_W (beta loss + E)(X_beta) - grad_W E(X_free)] tends to the back-propagation
    gradient as beta -> 0. No activation is differentiated."""

    def __init__(self, cfg, model: nn.Module, layout=None):
        # its gradient is a gradient solver's: the processes sharing out a batch average it there, so
        # the problem here is one process's
        self.cfg = cfg
        self.model = model
        self.beta = float(cfg.beta)
        self.problem = LiftedProblem(model, BregmanPenalty(), layer_weights(cfg, model.depth, cfg.penalty_weight), cfg.rho,
                                     "free", cfg.sparsity, cfg.sparsity_layer, loss_weight=self.beta)
        self.xs = AuxiliaryUpdater(self.problem, cfg.layer_order, cfg.step_safety, cfg.power_iters)

    @torch.no_grad()
    def gradient(self, y: torch.Tensor, x: torch.Tensor) -> dict:
        """Store the contrastive gradient in ``.grad`` of every parameter; return statistics."""
        p = self.problem
        st = p.init_state(y.flatten(1), x.flatten(1))  # free phase: the forward pass
        self.xs.invalidate()
        free = [p.weight_gradients(st, stack, with_loss=False) for stack in p.stacks]
        for _ in range(self.cfg.nudge_steps):
            self.xs.sweep(st)
            p.refresh(st, first=2)
        for stack, gf in zip(p.stacks, free):
            gn = p.weight_gradients(st, stack)
            for q, name in zip(stack.tensors, stack.names):
                q.grad = ((gn[name] - gf[name]) / self.beta).view_as(q)
        return {"loss": st.forward_loss, "objective": p.objective(st) / self.beta, "gap": p.hidden_gap(st)}

    def sequential_depth(self) -> int:
        """The forward pass (L), the nudged sweeps each followed by a refresh, the gradients (1)."""
        return self.model.depth + self.cfg.nudge_steps * (self.xs.depth() + 1) + 1

    def state_dict(self) -> dict:
        return {"xs": self.xs.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.xs.load_state_dict(state["xs"])

    def hyperparameters(self) -> dict:
        return {"scheme": _plain(self.cfg), "layer_weights": self.problem.lambdas}
