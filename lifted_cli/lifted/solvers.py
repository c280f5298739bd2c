"""Solvers (config group ``solver``): how a scheme's objective is minimised, one mini-batch at a time.

A scheme declares the interface it offers (``form``) and a solver the one it needs, so every pair
with the same form composes:

* ``form="gradient"`` (``adam``, ``sgd``): the scheme stores a gradient in ``.grad`` of the
  parameters (``scheme.gradient(y, x)``, back-propagated or contrastive) and a torch optimiser applies it;
* ``form="lifted"`` (``isgm``, ``bcd``; docs/method.md, section 5): the scheme is a lifted objective
  (``scheme.problem``, a :class:`~lifted_cli.lifted.objective.LiftedProblem`).

The lifted solvers work on a :class:`~lifted_cli.lifted.LiftedProblem` through its per-variable and per-block
methods only, so every scheme (penalty) and architecture is solved without a special case. One
mini-batch:

1. warm start of the auxiliary variables by a forward pass (every penalty is then zero);
2. ``n_inner`` iterations of
   * ``x_sweeps`` X-steps: one proximal-gradient step per auxiliary variable, in Gauss-Seidel order
     (top-down, so the target reaches every layer in one sweep) or Jacobi order (all at once),
     with the closed-form prox of the penalty's non-smooth part (``AuxiliaryUpdater``);
   * a W-step: every block at once (the block problems are independent given the auxiliaries).

Step sizes of the X-steps come from Lipschitz constants with operator norms estimated by
warm-started power iterations (no SVD): ``mu = safety / Lip``. W-steps of dense and untied residual blocks
under ISGM use the exact majorised implicit step (``LiftedProblem.implicit_weight_step``; in a residual
block's V an exact ridge step); all other W-steps
are gradient steps whose length is found by backtracking (Armijo) on the block's own energy,
warm-started from the last accepted step, so any block (residual, proximal, unrolled) is handled
without a hand-derived Lipschitz constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
from omegaconf import OmegaConf

from ..registry import Registry, Schema, check, check_choice, check_interval, check_nonnegative, check_positive
from .objective import LiftedProblem, LiftedState
from .stacking import Stack, gather

#: the solvers by name; ``info["form"]``: the scheme interface each one minimises
SOLVERS = Registry("solver")

#: where a mini-batch's auxiliary variables start: a forward pass, or the values they had when the
#: same samples were last seen (set once by a forward pass, kept for every training sample)
WARM_STARTS = ("forward", "persistent")

#: X-sweep orders: top-down one variable after another; all at once; odd layers at once, then even ones
LAYER_ORDERS = ("gauss_seidel", "jacobi", "red_black")

#: ``solver.stacked``: equal consecutive blocks stepped together wherever possible | always (refused
#: where impossible) | never (one block after another)
STACKED = ("auto", "true", "false")


def check_momentum(key: str, value) -> None:
    check_interval(key, value, 0.0, 1.0, closed_low=True, closed_high=False)


# ------------------------------------------------------------------------------ gradient solvers
@dataclass
class AdamConfig(Schema):
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    lr_decay: float = 1.0

    def validate(self):
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_interval("lr_decay", self.lr_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        check_momentum("beta1", self.beta1)
        check_momentum("beta2", self.beta2)


@dataclass
class SGDConfig(Schema):
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_decay: float = 1.0

    def validate(self):
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_interval("lr_decay", self.lr_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        check_momentum("momentum", self.momentum)


class GradientSolver:
    """A torch optimiser applied to the gradient that the scheme stores in ``.grad``; constrained
    architectures (proxnet) are projected back after every step.

    Data-parallel (``parallel.attach``): ``ddp`` is the scheme's loss under DistributedDataParallel
    (gradients averaged in buckets during the backward pass), or, for a scheme without a loss to
    differentiate (contrastive), ``comm`` averages the stored gradients in one all-reduce."""

    ddp = None
    comm = None

    def __init__(self, cfg, scheme, optimizer: torch.optim.Optimizer):
        self.cfg = cfg
        self.scheme = scheme
        self.optimizer = optimizer

    def prepare(self, n_samples: int) -> int:
        """Nothing is kept per training sample: 0 bytes."""
        return 0

    def step(self, y: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        if self.ddp is not None:  # DDP averages over the ranks: each divides its share by the per-rank batch
            per_rank = self.comm.batch / self.comm.world
            loss = self.ddp(y, x, per_rank)
            loss.backward()
            stats = {"loss": float(loss.detach()) * per_rank / max(y.shape[0], 1)}  # this rank's mean
        else:
            stats = self.scheme.gradient(y, x)
            if self.comm is not None:
                self.comm.mean_([q.grad for group in self.optimizer.param_groups for q in group["params"]
                                 if q.grad is not None])
        self.optimizer.step()
        self.scheme.model.project()
        return stats

    def begin_epoch(self, epoch: int) -> None:
        """lr_e = lr * lr_decay^e for epoch e = 0, 1, ...: the same exponential schedule as ISGM's
        tau_decay (what torch's ExponentialLR gives stepped once per epoch), set from the epoch so a
        resumed run continues it."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * self.cfg.lr_decay**epoch

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])

    def hyperparameters(self) -> dict:
        return OmegaConf.to_container(self.cfg, resolve=True)


@SOLVERS.register("adam", AdamConfig, form="gradient")
def build_adam(cfg, scheme) -> GradientSolver:
    opt = torch.optim.Adam(scheme.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return GradientSolver(cfg, scheme, opt)


@SOLVERS.register("sgd", SGDConfig, form="gradient")
def build_sgd(cfg, scheme) -> GradientSolver:
    opt = torch.optim.SGD(scheme.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return GradientSolver(cfg, scheme, opt)


def solvers_for(form: str) -> list[str]:
    """The registered solvers that minimise a scheme of interface ``form``."""
    return [n for n in SOLVERS.names() if SOLVERS.get(n).info["form"] == form]


@torch.no_grad()
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


class AuxiliaryUpdater:
    """X-steps on the auxiliary variables of a lifted problem: proximal gradient with step
    ``x_step`` or ``step_safety / Lipschitz`` per variable, in ``gauss_seidel`` (top-down) or
    ``jacobi`` order. Shared by the solvers and by the nudged phase of the contrastive scheme."""

    def __init__(self, problem: LiftedProblem, layer_order: str, step_safety: float, power_iters: int, x_step=None):
        self.problem = problem
        self.order = layer_order
        self.safety = step_safety
        self.power_iters = power_iters
        self.fixed_step = x_step
        p = problem
        ref = p.block_params(1)[0]
        gen = torch.Generator().manual_seed(0)
        self.vectors = {}
        for l, blk in enumerate(p.blocks, 1):
            self.vectors[("pre", l)] = torch.randn(1, blk.in_dim, generator=gen)
            if blk.has_state:
                self.vectors[("post", l)] = torch.randn(1, blk.z_dim, generator=gen)
        self.vectors[("readout", p.L)] = torch.randn(1, p.blocks[-1].out_dim, generator=gen)
        for key, v in self.vectors.items():
            self.vectors[key] = (v / v.norm()).to(ref.device, ref.dtype)
        self._norms = {}

    def invalidate(self) -> None:
        """Forget the norm estimates (the weights moved); the power iterations stay warm-started."""
        self._norms = {}

    def norm_sq(self, which: str, l: int) -> float:
        """||W_l||^2 (``pre``), ||V_l||^2 (``post``) or ||K||^2 (``readout``), estimated once per
        weight update (``invalidate``)."""
        key = (which, l)
        if key not in self._norms and l in self.problem.stack_of and which != "readout":
            stack, k = self.problem.stack_of[l]
            self._norms[key] = float(self.stack_norm_sq(stack, which)[k])
        if key not in self._norms:
            blk = self.problem.blocks[l - 1]
            model = self.problem.model
            maps = {"pre": (blk.pre_linear, blk.pre_adjoint), "post": (blk.post_linear, blk.post_adjoint),
                    "readout": (model.readout_linear, model.readout_adjoint)}[which]
            self._norms[key], self.vectors[key] = power_norm_sq(*maps, self.vectors[key], self.power_iters)
        return self._norms[key]

    def stack_norm_sq(self, stack, which: str) -> torch.Tensor:
        """The squared norms (d,) of ``which`` for every block of a stack: the power iterations of
        ``norm_sq`` on all blocks at once."""
        key = (which, stack)
        if key not in self._norms:
            layers = stack.layers(stack.select())
            maps = {"pre": ("pre_linear", "pre_adjoint"), "post": ("post_linear", "post_adjoint")}[which]
            v = gather([self.vectors[(which, l)] for l in layers])
            for _ in range(self.power_iters):
                w = stack.call(maps[1], stack.call(maps[0], v))
                n = w.flatten(1).norm(dim=1).view(-1, 1, 1)
                v = torch.where((n > 0) & torch.isfinite(n), w / n, v)
            self._norms[key] = stack.call(maps[0], v).pow(2).flatten(1).sum(dim=1)
            for l, vl in zip(layers, v.unbind(0)):
                self.vectors[(which, l)] = vl
        return self._norms[key]

    def stack_step_size(self, stack, kind: str, ks: slice) -> torch.Tensor:
        """``step_size`` of (kind, l) for the selected layers of a stack, shape (K, 1, 1)."""
        ref = stack.storage[stack.names[0]]
        if self.fixed_step is not None:
            return ref.new_full((len(stack.layers(ks)), 1, 1), float(self.fixed_step))
        lip = self.problem.stack_x_lipschitz(stack, kind, ks, lambda which: self.stack_norm_sq(stack, which), self.norm_sq)
        return (self.safety / lip.clamp_min(1e-12)).view(-1, 1, 1)

    def step_size(self, kind: str, l: int) -> float:
        if self.fixed_step is not None:
            return float(self.fixed_step)
        return self.safety / max(self.problem.x_lipschitz(kind, l, self.norm_sq), 1e-12)

    @torch.no_grad()
    def sweep(self, st: LiftedState) -> None:
        """One proximal-gradient step on every free auxiliary variable. Leaves the cached
        pre-activations stale; call ``problem.refresh`` after."""
        p = self.problem

        def update(kind, l):
            mu = self.step_size(kind, l)
            v = st.u[l] if kind == "u" else st.z[l]
            return p.x_prox(kind, l, v - mu * p.x_gradient(st, kind, l), mu)

        def jacobi(group, parity=None):
            """Every variable of ``group`` from the same state; stacked layers in one step per stack."""
            new = [(var, update(*var)) for var in group if var[1] not in p.stack_of]
            for stack in p.stacks:
                ks = stack.select(parity)
                if not stack.layers(ks):
                    continue
                for kind in ("u", "z") if stack.has_state else ("z",):
                    values = p.stack_x_step(st, stack, kind, ks, self.stack_step_size(stack, kind, ks))
                    new += [((kind, l), v) for l, v in zip(stack.layers(ks), values.unbind(0))]
            for (kind, l), v in new:
                p.set_var(st, kind, l, v)

        variables = p.variables()
        if p.part is not None:  # layer-parallel: the back-projection from the layer above arrives first
            p.part.exchange_down(st, self.norm_sq)
        if self.order == "gauss_seidel":
            for kind, l in variables:
                p.set_var(st, kind, l, update(kind, l))
        elif self.order == "jacobi":
            jacobi(variables)
        else:  # red_black: odd and even layers share no term, so each half is a Jacobi step on separate blocks
            for parity in (1, 0):
                group = [var for var in variables if var[1] % 2 == parity]
                if parity == 0:  # the even layers' inputs (odd states) have moved
                    p.refresh_parity(st, sorted({l for _, l in group}), parity)
                jacobi(group, parity)
        if p.part is not None:  # and the new top state goes up
            p.part.exchange_up(st)

    def state_dict(self) -> dict:
        return {"vectors": {f"{w}:{l}": v for (w, l), v in self.vectors.items()}}

    def load_state_dict(self, state: dict) -> None:
        for key, v in state["vectors"].items():
            w, l = key.split(":")
            ref = self.vectors[(w, int(l))]
            self.vectors[(w, int(l))] = v.to(ref.device, ref.dtype)


# -------------------------------------------------------------------------------- lifted solvers
@dataclass
class LiftedSolverConfig(Schema):
    """Options shared by the solvers of the lifted objective."""

    name: str = "isgm"
    n_inner: int = 1
    x_sweeps: int = 1
    layer_order: str = "gauss_seidel"
    step_safety: float = 0.9
    power_iters: int = 2
    x_step: Optional[float] = None
    warm_start: str = "forward"
    aux_memory_gb: float = 4.0
    stacked: str = "auto"

    def validate(self):
        check_choice("stacked", str(self.stacked).lower(), STACKED)
        for key in ("n_inner", "x_sweeps", "power_iters"):
            check_positive(key, getattr(self, key))
        check_interval("step_safety", self.step_safety, 0.0, 1.0, closed_low=False, closed_high=True)
        check_choice("layer_order", self.layer_order, LAYER_ORDERS)
        check_positive("x_step", self.x_step, allow_none=True)
        check_choice("warm_start", self.warm_start, WARM_STARTS)
        check_positive("aux_memory_gb", self.aux_memory_gb)


@dataclass
class ISGMConfig(LiftedSolverConfig):
    name: str = "isgm"
    x_sweeps: int = 2
    tau: float = 1.0
    tau_decay: float = 1.0
    w_metric: str = "majorizer"
    w_step: Optional[float] = None
    momentum: float = 0.8
    cg_iters: int = 0

    def validate(self):
        super().validate()
        check_positive("tau", self.tau)
        check_nonnegative("cg_iters", self.cg_iters)
        check_interval("tau_decay", self.tau_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        check_choice("w_metric", self.w_metric, ("majorizer", "scalar"))
        check_positive("w_step", self.w_step, allow_none=True)
        check_momentum("momentum", self.momentum)


class LiftedSolver:
    """Shared machinery: X-steps, block weight gradients, backtracking W-steps, optimiser."""

    def __init__(self, cfg, scheme):
        problem = scheme.problem
        self.problem = problem
        self.cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))  # plain attributes: read every step
        self.tau = getattr(self.cfg, "tau", None)
        self._stack(str(cfg.stacked).lower())
        self.xs = AuxiliaryUpdater(problem, cfg.layer_order, cfg.step_safety, cfg.power_iters, cfg.x_step)
        self.units = problem.units()
        self.group = {(u.first if isinstance(u, Stack) else u): i for i, u in enumerate(self.units)}
        groups = [{"params": problem.unit_params(u)} for u in self.units]  # lr: the optimiser's own (cfg.lr for adam)
        self.optimizer = self._make_optimizer(groups)
        self.gamma = [1.0] * problem.L  # last accepted backtracking step per block
        self.grow = [True] * problem.L  # the last search accepted its first trial: try a longer step
        self.aux: dict | None = None  # persistent warm start: every training sample's free variables
        self.aux_stacks: list = []  # (kind, layers, store) of the stacks under the persistent warm start
        self.seen: torch.Tensor | None = None

    def stacking_limit(self) -> str | None:
        """Why this solver's updates cannot be stacked (None: they can)."""
        if self.cfg.layer_order == "gauss_seidel":
            return "layer_order=gauss_seidel updates one layer after another; stacking needs jacobi or red_black"
        return None

    def _stack(self, mode: str) -> None:
        """Stack the runs of equal blocks (``solver.stacked``): ``auto`` wherever possible, ``true``
        refused with one line where impossible, ``false`` never."""
        if mode == "false":
            return
        p = self.problem
        reason = self.stacking_limit()
        ranges = p.stackable()
        if reason is None and not ranges:
            reason = "this network has no two consecutive equal blocks below the output layer"
        if reason is not None:
            if mode == "true":
                from ..registry import fail

                fail("solver.stacked", "true", reason + "; use solver.stacked=auto or false")
            return
        p.stack(ranges)

    def prepare(self, n_samples: int) -> int:
        """With ``warm_start=persistent``, room for the free auxiliary variables of ``n_samples``
        training samples on the training device; returns its size in bytes. ConfigError (one line) when
        it exceeds ``aux_memory_gb``."""
        if self.cfg.warm_start != "persistent":
            return 0
        p = self.problem
        ref = p.block_params(1)[0]
        dims = {var: (p.blocks[var[1] - 1].out_dim if var[0] == "u" or not p.blocks[var[1] - 1].has_state
                      else p.blocks[var[1] - 1].z_dim) for var in p.variables()}
        size = n_samples * sum(dims.values()) * ref.element_size()
        if size > self.cfg.aux_memory_gb * 1e9:
            from ..registry import fail

            fail("solver.aux_memory_gb", self.cfg.aux_memory_gb,
                 f"the persistent auxiliaries of {n_samples} samples need {size / 1e9:.2f} GB; raise it, train on fewer "
                 "images (train_size) or use solver.warm_start=forward")
        # a stack's variables of one kind live in one (d, samples, width) tensor: one gather and one
        # scatter per batch, whatever the depth; ``aux`` holds every variable's view
        self.aux, self.aux_stacks = {}, []
        for stack in p.stacks:
            layers = stack.layers(stack.select())
            for kind in ("u", "z") if stack.has_state else ("z",):
                store = torch.zeros(stack.d, n_samples, dims[(kind, stack.first)], dtype=ref.dtype, device=ref.device)
                self.aux_stacks.append((kind, layers, store))
                self.aux.update({(kind, l): store[k] for k, l in enumerate(layers)})
        for var, d in dims.items():
            if var not in self.aux:
                self.aux[var] = torch.zeros(n_samples, d, dtype=ref.dtype, device=ref.device)
        self.seen = torch.zeros(n_samples, dtype=torch.bool, device=ref.device)
        return size

    @torch.no_grad()
    def _warm_start(self, y: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None) -> LiftedState:
        """The batch's auxiliary variables: a forward pass, with the stored values of the samples
        already seen in place of it under ``warm_start=persistent``."""
        p = self.problem
        if self.aux is None or idx is None:
            return p.init_state(y, x)
        seen = self.seen[idx]
        all_seen = bool(seen.all())
        if all_seen:  # no forward pass: the state starts from the stored variables
            u = [p.model.input_state(y)] + [None] * p.L
            st = LiftedState(y=y, target=x, u=u, z=[None] * (p.L + 1), a=[None] * (p.L + 1), forward_loss=float("nan"))
            if p.output == "clamped":
                st.u[p.L] = x.clone()
                if not p.blocks[-1].has_state:
                    st.z[p.L] = st.u[p.L]
        else:
            st = p.init_state(y, x)
        stored = {}
        for kind, layers, store in self.aux_stacks:
            stored.update({(kind, l): v for l, v in zip(layers, store[:, idx].unbind(0))})
        for var, store in self.aux.items():
            if var not in stored:
                stored[var] = store[idx]
        for (kind, l), value in stored.items():
            if not all_seen:
                current = st.u[l] if kind == "u" else st.z[l]
                value = torch.where(seen[:, None], value, current)
            p.set_var(st, kind, l, value)
        if p.part is not None:  # layer-parallel: the state below this process's layers, from the stored one there
            p.part.exchange_up(st)
        p.refresh(st)
        return st

    def _store(self, st: LiftedState, idx: torch.Tensor | None) -> None:
        if self.aux is None or idx is None:
            return
        done = set()
        for kind, layers, store in self.aux_stacks:
            store[:, idx] = gather([st.u[l] if kind == "u" else st.z[l] for l in layers])
            done.update((kind, l) for l in layers)
        for (kind, l), store in self.aux.items():
            if (kind, l) not in done:
                store[idx] = st.u[l] if kind == "u" else st.z[l]
        self.seen[idx] = True

    def _make_optimizer(self, groups):
        return torch.optim.SGD(groups, lr=1.0)

    @torch.no_grad()
    def backtracking_step_size(self, st: LiftedState, l: int, grads, anchor=None) -> float:
        """(docs/method.md, section 5.8) Largest gamma in {c gamma_prev, c gamma_prev/2, ...} (c = 2 after a search that accepted
        its first trial, else 1) with the Armijo condition
        f(theta - gamma g) <= f(theta) - gamma/2 ||g||^2 on the block energy f (plus the ISGM anchor
        1/(2 tau) ||theta - theta^k||^2 when given; ``grads`` must include its gradient). The
        parameters are left unchanged."""
        p = self.problem
        params = p.block_params(l)

        def energy(a=None):
            f = p.block_energy(st, l, a)
            if anchor is not None:
                f += sum(float((q - q0).pow(2).sum()) for q, q0 in zip(params, anchor)) / (2 * self.tau)
            return f

        saved = [q.detach().clone() for q in params]
        f0 = energy(st.a[l])  # the cached pre-activation is current before the W-step
        gg = sum(float(g.pow(2).sum()) for g in grads)
        gamma = self.gamma[l - 1] * (2.0 if self.grow[l - 1] else 1.0)
        self.grow[l - 1] = True
        slack = 10 * torch.finfo(saved[0].dtype).eps * (abs(f0) + 1.0)  # rounding in the energy sums
        if gg > 0:
            for _ in range(60):
                for q, q0, g in zip(params, saved, grads):
                    torch.add(q0, g, alpha=-gamma, out=q.data)
                f = energy()
                if f <= f0 - 0.5 * gamma * gg + slack:
                    break
                gamma *= 0.5
                self.grow[l - 1] = False
            for q, q0 in zip(params, saved):
                q.copy_(q0)
        self.gamma[l - 1] = gamma
        return gamma

    @torch.no_grad()
    def stack_backtracking_step_size(self, st: LiftedState, stack: Stack, grads: dict, anchor: list | None = None):
        """``backtracking_step_size`` for every block of a stack at once (shape (d,)): each block
        keeps its own step, the blocks still searching try their steps together, and a trial costs
        one batched energy evaluation of those blocks."""
        p = self.problem
        names, storage = stack.names, stack.storage
        span = slice(stack.first - 1, stack.last)

        def energy(params, rows=None):
            f = p.stack_block_energy(st, stack, params, rows)
            if anchor is not None:
                f = f + sum((params[n] - (q0 if rows is None else q0[rows])).pow(2).flatten(1).sum(dim=1)
                            for n, q0 in zip(names, anchor)) / (2 * self.tau)
            return f

        ref = storage[names[0]]
        f0 = energy(storage)
        gg = sum(grads[n].pow(2).flatten(1).sum(dim=1) for n in names)
        grow = torch.tensor(self.grow[span], device=ref.device)
        gamma = torch.tensor(self.gamma[span], dtype=ref.dtype, device=ref.device) * torch.where(grow, 2.0, 1.0).to(ref.dtype)
        grow = torch.ones_like(grow)
        slack = 10 * torch.finfo(ref.dtype).eps * (f0.abs() + 1.0)
        done = gg <= 0
        bound = f0 - 0.5 * gamma * gg + slack  # recomputed for the rows whose step halves
        for _ in range(60):
            rows = (~done).nonzero().flatten()
            if rows.numel() == 0:
                break
            trial = {n: storage[n][rows] - gamma[rows].view((-1,) + (1,) * (storage[n].dim() - 1)) * grads[n][rows]
                     for n in names}
            done[rows] = energy(trial, rows) <= bound[rows]
            gamma = torch.where(done, gamma, 0.5 * gamma)
            bound = f0 - 0.5 * gamma * gg + slack
            grow = grow & done
        self.gamma[span] = gamma.tolist()
        self.grow[span] = grow.tolist()
        return gamma

    def _apply(self, l: int, grads, lr: float | None) -> None:
        for q, g in zip(self.problem.block_params(l), grads):
            q.grad = g
        if lr is not None:
            self.optimizer.param_groups[self.group[l]]["lr"] = lr

    def _apply_stack(self, stack: Stack, grads: dict, lr: float | None) -> None:
        for name in stack.names:
            stack.storage[name].grad = grads[name]
        if lr is not None:
            self.optimizer.param_groups[self.group[stack.first]]["lr"] = lr

    @torch.no_grad()
    def w_step(self, st: LiftedState) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------- one batch
    @torch.no_grad()
    def step(self, y: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict:
        """One mini-batch from degraded inputs ``y`` to clean targets ``x`` (both (B, 1, 28, 28));
        ``idx``: the samples' indices in the training set (for the persistent warm start)."""
        p = self.problem
        self.begin_batch()  # first: the warm start's pre-activations are those of the batch's starting weights
        st = self._warm_start(y.flatten(1), x.flatten(1), idx)  # flatten: a data-parallel share may be empty
        for k in range(self.cfg.n_inner):
            self.xs.invalidate()
            if k > 0:  # the weights moved: every pre-activation is stale
                p.refresh(st)
            for j in range(self.cfg.x_sweeps):
                if j > 0:
                    p.refresh(st, first=2)
                self.xs.sweep(st)
            p.refresh(st, first=2)  # u_0 and block 1 unchanged since the last refresh: a_1 is current
            self.inner = k
            if k == self.cfg.n_inner - 1:  # diagnostics at (W, X) before the last W-step: free
                objective, gap = p.objective(st), p.hidden_gap(st)
            self.w_step(st)
            p.model.project()
        self._store(st, idx)
        if self.aux is not None:  # no forward pass, so no forward loss: the objective is the statistic
            return {"objective": objective, "gap": gap}
        return {"loss": st.forward_loss, "objective": objective, "gap": gap}

    def begin_batch(self) -> None:
        pass

    def begin_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "xs": self.xs.state_dict(), "gamma": list(self.gamma),
                 "grow": list(self.grow)}
        if self.aux is not None:
            state["aux"] = {f"{kind}:{l}": t for (kind, l), t in self.aux.items()}
            state["seen"] = self.seen
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.xs.load_state_dict(state["xs"])
        self.gamma = list(state["gamma"])
        self.grow = list(state["grow"])
        if self.aux is not None and "aux" in state:
            for key, t in state["aux"].items():
                kind, l = key.split(":")
                self.aux[(kind, int(l))].copy_(t)
            self.seen.copy_(state["seen"])

    def hyperparameters(self) -> dict:
        return dict(vars(self.cfg))


@SOLVERS.register("isgm", ISGMConfig, form="lifted")
class ISGM(LiftedSolver):
    """Implicit stochastic gradient (Toulis & Airoldi; the chapter's main method; docs/method.md,
    sections 5.4-5.7): per mini-batch,
    approximately solve

        argmin_{W, X} E_S(W, X) + sum_l 1/(2 tau) ||W_l - W_l^k||^2

    by ``n_inner`` proximal-gradient iterations jointly on X and W, from the warm start
    (W^k, forward pass). W-step: the exact majorised implicit step on dense blocks
    (``w_metric=majorizer``), else W_l <- W_l - gamma_l [grad_W E_S + (W_l - W_l^k)/tau]."""

    previous = None  # W^{k-1}, for the momentum extrapolation ({unit: tensors like unit_params})
    anchor = None  # W^k ({unit: tensors like unit_params}; empty when the W-steps need no copy)
    needs_anchor = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("previous") is not None:
            dev = self.problem.block_params(1)[0].device
            self.previous = {key: [q.to(dev) for q in tensors] for key, tensors in state["previous"].items()}

    def begin_epoch(self, epoch: int) -> None:
        """tau_e = tau * tau_decay^e for epoch e = 0, 1, ... (smaller tau: more conservative steps)."""
        self.tau = self.cfg.tau * self.cfg.tau_decay**epoch

    def _snapshot(self) -> dict:
        return {(u.first if isinstance(u, Stack) else u): [q.detach().clone() for q in self.problem.unit_params(u)]
                for u in self.units}

    def _needs_anchor(self) -> bool:
        """A copy of W^k is needed unless every W-step is the majorised step taken at the anchor
        itself (one inner iteration), which then updates the weights in place."""
        p = self.problem
        majorised = self.cfg.w_metric == "majorizer" and all(
            p.majorizable(u.first if isinstance(u, Stack) else u) for u in self.units)
        return not (majorised and self.cfg.n_inner == 1)

    @torch.no_grad()
    def begin_batch(self) -> None:
        """Anchor W^k of this implicit step. With ``momentum`` beta > 0 the anchor is extrapolated,
        W^k <- W^k + beta (W^k - W^{k-1}) (heavy-ball/Nesterov-style implicit SGD), then projected
        onto the architecture's constraints; beta = 0 is plain ISGM. A stack's blocks move in one
        operation per parameter tensor; W^{k-1} is kept in buffers that are overwritten."""
        p = self.problem
        beta = self.cfg.momentum
        if beta > 0:
            if self.previous is None:
                self.previous = self._snapshot()
            else:
                for u in self.units:
                    for q, q1 in zip(p.unit_params(u), self.previous[u.first if isinstance(u, Stack) else u]):
                        step = q - q1
                        q1.copy_(q)
                        q.add_(step, alpha=beta)
                p.model.project()
        if self.needs_anchor is None:
            self.needs_anchor = self._needs_anchor()
        self.anchor = self._snapshot() if self.needs_anchor else {}

    @torch.no_grad()
    def w_step(self, st: LiftedState) -> None:
        p = self.problem
        inv_tau = 1.0 / self.tau
        if p.comm is not None and self.cfg.w_metric == "majorizer":  # one collective for every majorised block
            p.gather_majorizer_rows(st, [u for u in self.units if p.majorizable(u.first if isinstance(u, Stack) else u)])
        for unit in self.units:
            if isinstance(unit, Stack):
                self._stack_w_step(st, unit, inv_tau)
                continue
            l = unit
            anchor = self.anchor.get(l)
            if self.cfg.w_metric == "majorizer" and p.majorizable(l):
                p.implicit_weight_step(st, l, anchor, self.tau, at_anchor=self.inner == 0)
                continue
            if self.cfg.w_metric == "majorizer" and self.cfg.cg_iters and p.operator_majorizable(l):
                p.operator_weight_step(st, l, anchor, self.tau, self.cfg.cg_iters)
                continue
            grads = p.weight_gradients(st, l)
            for g, q, q0 in zip(grads, p.block_params(l), anchor):
                g.add_(q - q0, alpha=inv_tau)
            lr = self.cfg.w_step if self.cfg.w_step is not None else self.backtracking_step_size(st, l, grads, anchor)
            self._apply(l, grads, lr)
        params = [q for group in self.optimizer.param_groups for q in group["params"]]
        if any(q.grad is not None for q in params):
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def _stack_w_step(self, st: LiftedState, stack: Stack, inv_tau: float) -> None:
        """The W-step of every block of a stack at once: the batched majorised step, or a gradient
        step with each block's own backtracked length (the update of plain SGD, batched)."""
        p = self.problem
        anchor = self.anchor.get(stack.first)
        if self.cfg.w_metric == "majorizer" and p.majorizable(stack.first):  # equal blocks: as the first one
            p.stack_implicit_weight_step(st, stack, anchor, self.tau, at_anchor=self.inner == 0)
            return
        grads = p.stack_weight_gradients(st, stack)
        for name, q0 in zip(stack.names, anchor):
            grads[name].add_(stack.storage[name] - q0, alpha=inv_tau)
        if self.cfg.w_step is not None:
            gamma = stack.storage[stack.names[0]].new_full((stack.d,), float(self.cfg.w_step))
        else:
            gamma = self.stack_backtracking_step_size(st, stack, grads, anchor)
        for name in stack.names:
            q = stack.storage[name]
            q.sub_(gamma.view((-1,) + (1,) * (q.dim() - 1)) * grads[name])


#: Adam's rate for the BCD W-step when ``lr`` is null
ADAM_LR = 1e-3


def _sgd_rule(momentum: bool, nesterov: bool = False):
    return lambda groups, cfg: torch.optim.SGD(groups, lr=1.0, momentum=cfg.momentum if momentum else 0.0, nesterov=nesterov)


#: BCD weight updates: the torch optimiser over the block parameter groups; whether the step
#: length comes from ``lr`` or a backtracking line search (``line_search``: when ``lr`` is null); and
#: whether the optimiser keeps no state, so that each block's own searched step can be folded into
#: its gradient when the blocks of a stack share one parameter tensor
WEIGHT_UPDATES = {
    "gd": (_sgd_rule(False), True, True),
    "heavyball": (_sgd_rule(True), True, False),
    "nesterov": (_sgd_rule(True, nesterov=True), True, False),
    "adam": (lambda groups, cfg: torch.optim.Adam(groups, lr=cfg.lr if cfg.lr is not None else ADAM_LR,
                                                  betas=(cfg.beta1, cfg.beta2)), False, False),
}


@dataclass
class BCDConfig(LiftedSolverConfig):
    name: str = "bcd"
    weight_update: str = "gd"
    lr: Optional[float] = None
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    lr_decay: float = 1.0

    def validate(self):
        super().validate()
        check_choice("weight_update", self.weight_update, list(WEIGHT_UPDATES))
        check_positive("lr", self.lr, allow_none=True)
        check_interval("lr_decay", self.lr_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        searched = WEIGHT_UPDATES[self.weight_update][1] and self.lr is None
        check(self.lr_decay == 1.0 or not searched, "lr_decay", self.lr_decay,
              f"must be 1 with weight_update={self.weight_update} and lr=null (the line search sets its own step); "
              "set a fixed lr or use weight_update=adam")
        check_momentum("momentum", self.momentum)
        check_momentum("beta1", self.beta1)
        check_momentum("beta2", self.beta2)


@SOLVERS.register("bcd", BCDConfig, form="lifted")
class BCD(LiftedSolver):
    """Mini-batch block-coordinate descent: alternate X-steps and block-local W-steps, the W-step
    by ``weight_update`` = gd (step ``lr``, or backtracking when null), heavyball, nesterov
    (momentum ``momentum``) or adam (learning rate ``lr``). A fixed step or Adam's learning rate is
    annealed per epoch by ``lr_decay``."""

    def __init__(self, cfg, scheme):
        super().__init__(cfg, scheme)
        self.begin_epoch(0)  # self.lr: the fixed weight step of this epoch (None: backtracking)

    def _make_optimizer(self, groups):
        make, self.line_search, _ = WEIGHT_UPDATES[self.cfg.weight_update]
        return make(groups, self.cfg)

    def begin_epoch(self, epoch: int) -> None:
        """lr_e = lr * lr_decay^e for epoch e = 0, 1, ... (back-propagation's ``lr_decay``), set from
        the epoch so that a resumed run continues it; Adam's rate lives in its parameter groups."""
        base = self.cfg.lr
        if base is None and not self.line_search:
            base = ADAM_LR
        self.lr = None if base is None else base * self.cfg.lr_decay**epoch
        if not self.line_search:
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr

    def stacking_limit(self) -> str | None:
        _, line_search, stateless = WEIGHT_UPDATES[self.cfg.weight_update]
        if line_search and self.cfg.lr is None and not stateless:
            return (f"weight_update={self.cfg.weight_update} with a line search (lr=null) gives every block its own "
                    "step inside one momentum optimiser; stacking needs gd, adam or a fixed lr")
        return super().stacking_limit()

    @torch.no_grad()
    def w_step(self, st: LiftedState) -> None:
        p = self.problem
        for unit in self.units:
            if isinstance(unit, Stack):  # one gradient and one optimiser update for the whole stack
                grads = p.stack_weight_gradients(st, unit)
                lr = None
                if self.line_search:
                    lr = self.lr
                    if lr is None:  # plain gd: each block's own step, folded into its gradient
                        gamma = self.stack_backtracking_step_size(st, unit, grads)
                        grads = {n: g * gamma.view((-1,) + (1,) * (g.dim() - 1)) for n, g in grads.items()}
                        lr = 1.0
                self._apply_stack(unit, grads, lr)
                continue
            l = unit
            grads = p.weight_gradients(st, l)
            lr = None
            if self.line_search:
                lr = self.lr if self.lr is not None else self.backtracking_step_size(st, l, grads)
            self._apply(l, grads, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
