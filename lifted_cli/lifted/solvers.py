"""Solvers (config group ``solver``): how a scheme's objective is minimised, one mini-batch at a time.

A scheme declares the interface it offers (``form``) and a solver the one it needs, so every pair
with the same form composes:

* ``form="gradient"`` (``adam``, ``sgd``): the scheme stores a gradient in ``.grad`` of the
  parameters (``scheme.gradient(y, x)``, back-propagated or contrastive) and a torch optimiser applies it;
* ``form="lifted"`` (``isgm``, ``bcd``; docs/method.md, section 5): the scheme is a lifted objective
  (``scheme.problem``, a :class:`~lifted_cli.lifted.objective.LiftedProblem`).

The lifted solvers work on a :class:`~lifted_cli.lifted.LiftedProblem` through its per-stack methods
only (a block stepped alone is a stack of one), so every scheme (penalty), architecture and grouping
is solved without a special case. One mini-batch:

1. warm start of the auxiliary variables by a forward pass (every penalty is then zero), or the
   stored ones (``warm_start=persistent``) followed by ``refresh_sweeps`` Jacobi sweeps of the forward
   equations (all layers at once; docs/method.md, section 5.12);
2. ``n_inner`` iterations of
   * ``x_sweeps`` X-steps: one proximal-gradient step per auxiliary variable, in Gauss-Seidel order
     (top-down, so the target reaches every layer in one sweep), Jacobi order (all at once) or
     red-black (odd layers, then even ones), with the closed-form prox of the penalty's non-smooth part;
   * a W-step on every stack (the block problems are independent given the auxiliaries).

Steps of the X-steps are ``safety / Lip``, with operator norms estimated by warm-started power
iterations (no SVD). W-steps of dense and untied residual blocks under ISGM are the exact majorised
implicit step (in a residual block's V an exact ridge step); all other W-steps are gradient steps
whose length is found by backtracking (Armijo) on the block's own energy, warm-started from the last
accepted step, so any block is handled without a hand-derived Lipschitz constant.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import torch
from omegaconf import OmegaConf

from ..registry import Registry, Schema, check, check_choice, check_interval, check_nonnegative, check_positive, option
from .layout import LOCAL
from .objective import LiftedProblem, LiftedState, axpy, per_block
from .stacks import ALL, gather

#: the solvers by name; ``info["form"]``: the scheme interface each one minimises
SOLVERS = Registry("solver", configs=True)

#: where a mini-batch's auxiliary variables start: a forward pass, or the values they had when the
#: same samples were last seen (set once by a forward pass, kept for every training sample)
WARM_STARTS = ("forward", "persistent", "pipelined")

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
    name: str = option("adam", "the solver")
    lr: float = option(1e-3, "learning rate")
    beta1: float = option(0.9, "first-moment decay")
    beta2: float = option(0.999, "second-moment decay")
    weight_decay: float = option(0.0, "L2 weight decay")
    lr_decay: float = option(1.0, "lr of epoch e is lr * lr_decay^e, in (0, 1]")

    def validate(self):
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_interval("lr_decay", self.lr_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        check_momentum("beta1", self.beta1)
        check_momentum("beta2", self.beta2)


@dataclass
class SGDConfig(Schema):
    name: str = option("sgd", "the solver")
    lr: float = option(0.05, "learning rate")
    momentum: float = option(0.9, "momentum in [0, 1)")
    weight_decay: float = option(0.0, "L2 weight decay")
    lr_decay: float = option(1.0, "lr of epoch e is lr * lr_decay^e, in (0, 1]")

    def validate(self):
        check_positive("lr", self.lr)
        check_nonnegative("weight_decay", self.weight_decay)
        check_interval("lr_decay", self.lr_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        check_momentum("momentum", self.momentum)


class GradientSolver:
    """A torch optimiser applied to the gradient that the scheme stores in ``.grad``; constrained
    architectures (proxnet) are projected back after every step. ``comm`` averages the stored
    gradients over the processes that share out the batch, in one all-reduce (the identity in one
    process)."""

    def __init__(self, cfg, scheme, optimizer: torch.optim.Optimizer, comm=LOCAL):
        self.cfg = cfg
        self.scheme = scheme
        self.optimizer = optimizer
        self.comm = comm

    def prepare(self, n_samples: int) -> int:
        """Nothing is kept per training sample: 0 bytes."""
        return 0

    def drain(self) -> list[dict]:
        """Nothing is in flight at the end of an epoch."""
        return []

    def sequential_depth(self) -> int:
        return self.scheme.sequential_depth()

    def step(self, y: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        stats = self.scheme.gradient(y, x)  # means over this process's samples
        self.comm.mean_([q.grad for group in self.optimizer.param_groups for q in group["params"] if q.grad is not None])
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
def build_adam(cfg, scheme, comm=LOCAL) -> GradientSolver:
    opt = torch.optim.Adam(scheme.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    return GradientSolver(cfg, scheme, opt, comm)


@SOLVERS.register("sgd", SGDConfig, form="gradient")
def build_sgd(cfg, scheme, comm=LOCAL) -> GradientSolver:
    opt = torch.optim.SGD(scheme.model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return GradientSolver(cfg, scheme, opt, comm)


def solvers_for(form: str) -> list[str]:
    """The registered solvers that minimise a scheme of interface ``form``."""
    return [n for n in SOLVERS.names() if SOLVERS.get(n).info["form"] == form]


@torch.no_grad()
def power_norm_sq(matvec, rmatvec, v: torch.Tensor, iters: int) -> tuple[list, torch.Tensor]:
    """Estimate ||A_k||_2^2 of K operators at once by ``iters`` power iterations on A_k^T A_k from the
    warm starts ``v`` (K, 1, n; or one operator's (1, n)), ``matvec`` and ``rmatvec`` acting on all of them.

    Returns the Rayleigh quotients ||A_k v_k||^2 (floats; v_k unit: lower bounds that converge to
    ||A_k||^2) and the new unit vectors (an operator that maps v_k to 0 keeps its v_k)."""
    dims = tuple(range(1, v.dim()))
    for _ in range(iters):
        w = rmatvec(matvec(v))
        n = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
        v = torch.where(n > 0, w / n, v)  # NaN (diverged weights) is not > 0 either
    return matvec(v).pow(2).sum(dim=dims).tolist(), v


class AuxiliaryUpdater:
    """X-steps on the auxiliary variables of a lifted problem: proximal gradient with step
    ``x_step`` or ``step_safety / Lipschitz`` per variable, in ``gauss_seidel`` order (stack after
    stack, top-down: the solvers group no blocks in this order), ``jacobi`` (all at once) or
    ``red_black`` (odd layers at once, then even ones). Shared by the solvers, the nudged phase of
    the contrastive scheme and the inversion."""

    def __init__(self, problem: LiftedProblem, layer_order: str, step_safety: float, power_iters: int, x_step=None):
        self.problem = problem
        self.order = layer_order
        self.safety = step_safety
        self.power_iters = power_iters
        self.fixed_step = x_step
        p = problem
        ref = p.stacks[0].tensors[0]
        gen = torch.Generator().manual_seed(0)
        self.vectors = {}
        for l, blk in enumerate(p.blocks, 1):
            self.vectors[("pre", l)] = torch.randn(1, blk.in_dim, generator=gen)
            if blk.has_state:
                self.vectors[("post", l)] = torch.randn(1, blk.z_dim, generator=gen)
        self.vectors[("readout", p.L)] = torch.randn(1, p.blocks[-1].out_dim, generator=gen)
        for key, v in self.vectors.items():
            self.vectors[key] = (v / v.norm()).to(ref.device, ref.dtype)
        self.invalidate()

    def depth(self) -> int:
        """The sequential depth of a sweep: one step per free variable top-down (gauss_seidel), one
        step of all (jacobi), the odd layers' step, the even layers' refresh and step (red_black)."""
        return {"gauss_seidel": len(self.problem.variables()), "jacobi": 1, "red_black": 3}[self.order]

    def invalidate(self) -> None:
        """Forget the norm estimates and steps (the weights moved); the power iterations stay
        warm-started."""
        self._norms, self._steps = {}, {}

    def norms(self, stack, which: str) -> list:
        """||W_l||^2 (``pre``) or ||V_l||^2 (``post``) of every block of ``stack``, or ||K||^2 of the
        read-out (``stack`` None, ``readout``), estimated once per weight update (``invalidate``),
        all blocks of a stack at once."""
        key = (which, None if stack is None else stack.first)
        if key not in self._norms:
            if stack is None:
                model, keys = self.problem.model, [("readout", self.problem.L)]
                maps = (lambda v: model.readout_linear(v[0])[None], lambda v: model.readout_adjoint(v[0])[None])
            else:
                keys = [(which, l) for l in stack.layers()]
                lin, adj = {"pre": ("pre_linear", "pre_adjoint"), "post": ("post_linear", "post_adjoint")}[which]
                maps = (lambda v: stack.call(lin, v), lambda v: stack.call(adj, v))
            if len(keys) == 1 and stack is not None:  # one block: its own maps on its vector
                maps = (getattr(stack.template, lin), getattr(stack.template, adj))
                self._norms[key], self.vectors[keys[0]] = power_norm_sq(*maps, self.vectors[keys[0]], self.power_iters)
            else:
                v = self.vectors[keys[0]].unsqueeze(0) if len(keys) == 1 else gather([self.vectors[k] for k in keys])
                self._norms[key], v = power_norm_sq(*maps, v, self.power_iters)
                self.vectors.update(zip(keys, v.unbind(0)))
        return self._norms[key]

    def step_size(self, stack, kind: str, ks: slice) -> list:
        """The steps (one per selected block) of the variables (kind, l), once per weight update
        (``invalidate``)."""
        key = (stack.first, kind, ks.indices(stack.d))
        if key not in self._steps:
            if self.fixed_step is not None:
                self._steps[key] = [float(self.fixed_step)] * len(stack.layers(ks))
            else:
                self._steps[key] = [self.safety / max(lip, 1e-12)
                                    for lip in self.problem.x_lipschitz(stack, kind, ks, self.norms)]
        return self._steps[key]

    @torch.no_grad()
    def sweep(self, st: LiftedState) -> None:
        """One proximal-gradient step on every free auxiliary variable. Leaves the cached
        pre-activations stale; call ``problem.refresh`` after."""
        p = self.problem

        def jacobi(parity=None):
            """Every variable of the selected layers from the same state, one step per stack and kind."""
            new = []
            with p.fixed():
                for stack in p.stacks:
                    ks = stack.select(parity)
                    if stack.layers(ks):
                        new += [(stack, kind, ks, p.x_step(st, stack, kind, ks, self.step_size(stack, kind, ks)))
                                for kind in p.kinds(stack)]
            for stack, kind, ks, values in new:
                p.set_vars(st, kind, stack, ks, values)

        p.exchange_down(st, self.norms)  # where other processes own the layers around these
        if self.order == "gauss_seidel":
            for stack in reversed(p.stacks):
                for kind in p.kinds(stack):
                    p.set_vars(st, kind, stack, ALL, p.x_step(st, stack, kind, ALL, self.step_size(stack, kind, ALL)))
        elif self.order == "jacobi":
            jacobi()
        else:  # red_black: odd and even layers share no term, so each half is a Jacobi step on separate blocks
            jacobi(1)
            p.refresh(st, parity=0, free_only=True)  # the even layers' inputs (odd states) have moved
            jacobi(0)
        p.exchange_up(st)
        p.pack(st)

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
    name: str = option("isgm", "the solver")
    n_inner: int = option(1, "inner iterations (X-steps, then a W-step) per mini-batch")
    x_sweeps: int = option(1, "X-steps (sweeps over the layers) before each W-step")
    layer_order: str = option("gauss_seidel", "X-step order: gauss_seidel (top-down sweep) | jacobi (all layers at once) "
                              "| red_black (odd layers at once, then even layers at once)")
    step_safety: float = option(0.9, "X-steps are step_safety / Lipschitz estimate")
    power_iters: int = option(2, "warm-started power iterations per operator-norm estimate")
    x_step: Optional[float] = option(None, "fixed step of the auxiliary variables (null: from the Lipschitz estimate)")
    warm_start: str = option("forward", "forward (a forward pass per mini-batch) | persistent (every training sample's "
                             "auxiliary variables kept across epochs, set once by a forward pass: no forward pass per step) "
                             "| pipelined (each step advances every batch in flight by one layer, all layers at once, and "
                             "steps the batch whose pass completes: no sequential pass per step; one process only; "
                             "staleness adds momentum: lower ISGM's momentum to 0.5-0.7)")
    refresh_sweeps: int = option(0, "persistent: Jacobi sweeps of the forward equations over a batch's stored "
                                 "auxiliaries before its X-steps (all layers at once: one layer of sequential depth each)")
    aux_memory_gb: float = option(4.0, "persistent: refuse a run whose stored auxiliaries would exceed this (GB, on "
                                  "the training device)")
    stacked: str = option("auto", "auto: runs of equal consecutive blocks grouped into stacks stepped together where "
                          "the layer order allows (jacobi, red_black); true: the same, refused where nothing can be "
                          "grouped; false: every block stepped alone")

    def validate(self):
        check_choice("stacked", str(self.stacked).lower(), STACKED)
        for key in ("n_inner", "x_sweeps", "power_iters"):
            check_positive(key, getattr(self, key))
        check_interval("step_safety", self.step_safety, 0.0, 1.0, closed_low=False, closed_high=True)
        check_choice("layer_order", self.layer_order, LAYER_ORDERS)
        check_positive("x_step", self.x_step, allow_none=True)
        check_choice("warm_start", self.warm_start, WARM_STARTS)
        check_nonnegative("refresh_sweeps", self.refresh_sweeps)
        check_positive("aux_memory_gb", self.aux_memory_gb)


@dataclass
class ISGMConfig(LiftedSolverConfig):
    name: str = option("isgm", "the solver")
    x_sweeps: int = option(2, "X-steps (sweeps over the layers) before each W-step")
    tau: float = option(1.0, "proximal anchor weight 1/(2 tau) ||W - W^k||^2 (larger: bigger steps)")
    tau_decay: float = option(1.0, "tau of epoch e is tau * tau_decay^e, in (0, 1]")
    w_metric: str = option("majorizer", "majorizer: the exact majorised implicit step on dense and untied residual "
                           "blocks (and, with cg_iters > 0, on convolution and unrolled blocks), gradient steps on others "
                           "| scalar: gradient steps everywhere")
    w_step: Optional[float] = option(None, "fixed weight step of the gradient W-steps (null: backtracking line search)")
    momentum: float = option(0.8, "beta of the extrapolated anchor W^k + beta (W^k - W^{k-1}); 0: plain ISGM")
    cg_iters: int = option(0, "convolution and unrolled blocks: 0 = the backtracked gradient step; N > 0 = the majorised "
                           "(convolutions) or Gauss-Newton (unrolled, line-searched) step by N conjugate-gradient iterations")

    def validate(self):
        super().validate()
        check_positive("tau", self.tau)
        check_nonnegative("cg_iters", self.cg_iters)
        check_interval("tau_decay", self.tau_decay, 0.0, 1.0, closed_low=False, closed_high=True)
        check_choice("w_metric", self.w_metric, ("majorizer", "scalar"))
        check_positive("w_step", self.w_step, allow_none=True)
        check_momentum("momentum", self.momentum)


class LiftedSolver:
    """Shared machinery: X-steps, block weight gradients, backtracking W-steps, persistent
    auxiliaries; every W-step is taken stack by stack (``problem.stacks``)."""

    def __init__(self, cfg, scheme, comm=None):
        problem = scheme.problem  # it holds its communicator; ``comm`` is the gradient solvers' argument
        self.problem = problem
        self.cfg = SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))  # plain attributes: read every step
        self.tau = getattr(self.cfg, "tau", None)
        self.xs = AuxiliaryUpdater(problem, cfg.layer_order, cfg.step_safety, cfg.power_iters, cfg.x_step)
        self.stacks = problem.stacks
        self.group = {stack.first: i for i, stack in enumerate(self.stacks)}
        self.optimizer = self._make_optimizer([{"params": stack.tensors} for stack in self.stacks])
        self.gamma = [1.0] * problem.L  # last accepted backtracking step per block
        self.grow = [True] * problem.L  # the last search accepted its first trial: try a longer step
        self.aux: dict | None = None  # persistent warm start: every training sample's free variables
        self.aux_stores: list = []  # (kind, layers, store (d, samples, width)) per stack and kind
        self.seen: torch.Tensor | None = None
        # pipelined warm start: the batches in flight, oldest first, each with its states so far
        self.pipeline: list[dict] = []

    @staticmethod
    def stacking_limit(cfg) -> str | None:
        """Why the updates of a solver with config ``cfg`` cannot group blocks (None: they can)."""
        if cfg.layer_order == "gauss_seidel":
            return "layer_order=gauss_seidel updates one layer after another; stacking needs jacobi or red_black"
        return None

    def prepare(self, n_samples: int) -> int:
        """With ``warm_start=persistent``, room for the free auxiliary variables of ``n_samples``
        training samples on the training device; returns its size in bytes. ConfigError (one line) when
        it exceeds ``aux_memory_gb``."""
        if self.cfg.warm_start != "persistent":
            return 0
        p = self.problem
        ref = self.stacks[0].tensors[0]
        widths = [(stack, kind, stack.template.out_dim if kind == "u" or not stack.has_state else stack.template.z_dim)
                  for stack in self.stacks for kind in p.kinds(stack)]
        size = n_samples * sum(stack.d * width for stack, _, width in widths) * ref.element_size()
        if size > self.cfg.aux_memory_gb * 1e9:
            from ..registry import fail

            fail("solver.aux_memory_gb", self.cfg.aux_memory_gb,
                 f"the persistent auxiliaries of {n_samples} samples need {size / 1e9:.2f} GB; raise it, train on fewer "
                 "images (train_size) or use solver.warm_start=forward")
        # a stack's variables of one kind live in one (d, samples, width) tensor: one gather and one
        # scatter per batch, whatever the depth; ``aux`` holds every variable's view
        self.aux, self.aux_stores = {}, []
        for stack, kind, width in widths:
            store = torch.zeros(stack.d, n_samples, width, dtype=ref.dtype, device=ref.device)
            self.aux_stores.append((kind, stack.layers(), store))
            self.aux.update({(kind, l): store[k] for k, l in enumerate(stack.layers())})
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
            if p.output == "clamped" and p.owns_output:
                st.u[p.L] = x.clone()
                if not p.blocks[-1].has_state:
                    st.z[p.L] = st.u[p.L]
        else:
            st = p.init_state(y, x)
        for kind, layers, store in self.aux_stores:
            for l, value in zip(layers, store[:, idx].unbind(0)):
                if not all_seen:
                    value = torch.where(seen[:, None], value, st.u[l] if kind == "u" else st.z[l])
                p.set_var(st, kind, l, value)
        p.exchange_up(st)  # where another process owns the layers below: the state there, from its store
        p.pack(st)
        p.refresh(st)
        for _ in range(self.cfg.refresh_sweeps):
            p.forward_sweep(st)
            p.refresh(st)
        return st

    def sequential_depth(self) -> int:
        """The longest chain of dependent layer operations in one step, a layer's pre-activation and
        activation counting one: the warm start (a forward pass: L; persistent: the refresh of the
        stored variables' pre-activations and ``refresh_sweeps`` forward sweeps, whatever the depth;
        pipelined: one layer of every batch in flight, independent of each other, and the refresh),
        then per inner iteration its refresh (after the first), ``x_sweeps`` sweeps each followed by
        a refresh, and the W-step (1: the blocks are independent given the auxiliaries)."""
        c = self.cfg
        warm = {"forward": self.problem.L, "persistent": 1 + c.refresh_sweeps,
                "pipelined": 2}[c.warm_start]  # pipelined: one layer of every batch in flight, then the refresh
        return warm + c.n_inner * (c.x_sweeps * (self.xs.depth() + 1) + 1) + (c.n_inner - 1)

    def _store(self, st: LiftedState, idx: torch.Tensor | None) -> None:
        if self.aux is None or idx is None:
            return
        for kind, layers, store in self.aux_stores:
            store[:, idx] = gather([st.u[l] if kind == "u" else st.z[l] for l in layers])
        self.seen[idx] = True

    def _make_optimizer(self, groups):
        return None

    @torch.no_grad()
    def backtracking(self, st: LiftedState, stack, grads: dict, anchor: list | None = None) -> torch.Tensor:
        """(docs/method.md, section 5.8) For every block of ``stack`` (float64, (d,)) the largest gamma
        in {c gamma_prev, c gamma_prev/2, ...} (c = 2 after a search that accepted its first trial,
        else 1) with the Armijo condition f(theta - gamma g) <= f(theta) - gamma/2 ||g||^2 on the block
        energy f (plus the ISGM anchor 1/(2 tau) ||theta - theta^k||^2 when given; ``grads`` must
        include its gradient). Each block keeps its own step; the blocks still searching try theirs
        together, one energy evaluation per trial. The parameters are left unchanged."""
        p = self.problem
        names, storage = stack.names, stack.storage
        anchor = p._anchor(stack, anchor)
        span = slice(stack.first - 1, stack.last)

        def energy(a=None, rows=None):
            f = p.block_energy(st, stack, a, rows)
            if anchor is not None:
                f = f + sum((storage[n] - anchor[n]).pow(2).flatten(1).sum(dim=1).double()[
                    slice(None) if rows is None else rows] for n in names) / (2 * self.tau)
            return f

        saved = {n: storage[n].clone() for n in names}
        f0 = energy(p._get(st.a, stack.layers()))  # the cached pre-activations are current before the W-step
        gg = sum(grads[n].pow(2).flatten(1).sum(dim=1).double() for n in names)
        device = f0.device
        grow = torch.tensor(self.grow[span], device=device)
        gamma = torch.tensor(self.gamma[span], dtype=torch.float64, device=device) * torch.where(grow, 2.0, 1.0)
        grow = torch.ones_like(grow)
        slack = 10 * torch.finfo(storage[names[0]].dtype).eps * (f0.abs() + 1.0)  # rounding in the energy sums
        done = gg <= 0
        for _ in range(60):
            rows = (~done).nonzero().flatten()
            if rows.numel() == 0:
                break
            every = rows.numel() == stack.d
            for n in names:
                if every:
                    axpy(saved[n], -gamma, grads[n], out=storage[n])
                else:
                    storage[n][rows] = axpy(saved[n][rows], -gamma[rows], grads[n][rows])
            f = energy(rows=None if every else rows)
            ok = f <= f0[rows] - 0.5 * gamma[rows] * gg[rows] + slack[rows]
            done[rows] = ok
            gamma = torch.where(done, gamma, 0.5 * gamma)
            grow = grow & done
        for n in names:
            storage[n].copy_(saved[n])
        self.gamma[span] = gamma.tolist()
        self.grow[span] = grow.tolist()
        return gamma

    def w_inputs(self, st: LiftedState) -> dict:
        """What the W-steps read of the auxiliaries before any weight moves (ISGM: the majorised steps'
        rows, fetched in one collective)."""
        return {}

    @torch.no_grad()
    def w_step(self, st: LiftedState, inputs: dict | None = None) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------------------- one batch
    @torch.no_grad()
    def step(self, y: torch.Tensor, x: torch.Tensor, idx: torch.Tensor | None = None) -> dict:
        """One mini-batch from degraded inputs ``y`` to clean targets ``x`` (both (B, 1, 28, 28));
        ``idx``: the samples' indices in the training set (for the persistent warm start). Pipelined:
        the batch enters the pipeline, and the step is that of the batch whose pass completes (none
        while the pipeline fills: an empty dict)."""
        if self.cfg.warm_start == "pipelined":
            done = self._advance((y.flatten(1), x.flatten(1)))
            return self._lifted_step(*done) if done is not None else {}
        self.begin_batch()  # first: the warm start's pre-activations are those of the batch's starting weights
        st = self._warm_start(y.flatten(1), x.flatten(1), idx)  # flatten: a data-parallel share may be empty
        return self._lifted_step(st, idx)

    def drain(self) -> list[dict]:
        """At the end of an epoch: the batches still in flight, each completed and stepped (their
        statistics, oldest first); nothing for the other warm starts."""
        out = []
        while self.pipeline:
            done = self._advance(None)
            if done is not None:
                out.append(self._lifted_step(*done))
        return out

    # ----------------------------------------------------------------------- pipelined warm start
    def _free_layers(self) -> int:
        """The layers whose states a pass computes: all but a clamped output's."""
        p = self.problem
        return p.L - 1 if p.output == "clamped" else p.L

    @torch.no_grad()
    def _advance(self, batch: tuple | None) -> tuple | None:
        """Every batch in flight (and ``batch``, entering) goes one layer further with the current
        weights; these layer operations are independent of each other (one layer of sequential depth,
        whatever the depth of the network; a GPU or layer-parallel ranks may run them at once). A
        batch whose states are complete leaves the pipeline as its lifted state (the pre-activations
        refreshed at the current weights), with the pass's staleness: the states of layer l were
        computed ``free layers - l`` steps earlier."""
        p = self.problem
        if batch is not None:
            y, x = batch
            self.pipeline.append({"y": y, "x": x, "u": [p.model.input_state(y)], "z": [None]})
        for rec in self.pipeline:
            l = len(rec["u"])  # the next layer of this batch
            blk = p.blocks[l - 1]
            z = blk.act(blk.pre(rec["u"][l - 1], rec["y"]))
            rec["z"].append(z)
            rec["u"].append(blk.post(rec["u"][l - 1], z) if blk.has_state else z)
        if len(self.pipeline[0]["u"]) - 1 < self._free_layers():
            return None
        rec = self.pipeline.pop(0)
        self.begin_batch()
        L = p.L
        u, z = rec["u"] + [None] * (L + 1 - len(rec["u"])), rec["z"] + [None] * (L + 1 - len(rec["z"]))
        st = LiftedState(y=rec["y"], target=rec["x"], u=u, z=z, a=[None] * (L + 1), forward_loss=float("nan"))
        if p.output == "clamped":
            st.u[L] = rec["x"].clone()
            if not p.blocks[-1].has_state:
                st.z[L] = st.u[L]
        p.pack(st)
        p.refresh(st)
        return st, None

    def load_pipeline(self, state: list[dict]) -> None:
        """The batches in flight of a checkpoint (tensors, and z_0's None), on this solver's device."""
        dev = self.stacks[0].tensors[0].device
        self.pipeline = [{k: [t if t is None else t.to(dev) for t in v] if isinstance(v, list) else v.to(dev)
                          for k, v in r.items()} for r in state]

    # ------------------------------------------------------------------------------- one batch
    @torch.no_grad()
    def _lifted_step(self, st: LiftedState, idx: torch.Tensor | None) -> dict:
        """The inner iterations (X-sweeps, W-step) on a batch's lifted state."""
        p = self.problem
        stale = self.aux is not None or self.cfg.warm_start == "pipelined"
        if stale:  # how far the batch's start is from consistent with the current weights
            start_gap = p.hidden_gap(st)
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
            with p.fixed():  # the diagnostics and the W-steps' inputs, at (W, X) before the W-step
                if k == self.cfg.n_inner - 1:
                    objective, gap = p.objective(st), p.hidden_gap(st)
                inputs = self.w_inputs(st)
            self.w_step(st, inputs)
            p.model.project()
        self._store(st, idx)
        if stale:  # no forward pass at the current weights, so no forward loss: the objective is the statistic
            return {"objective": objective, "gap": gap, "start_gap": start_gap}
        return {"loss": st.forward_loss, "objective": objective, "gap": gap}

    def begin_batch(self) -> None:
        pass

    def begin_epoch(self, epoch: int) -> None:
        pass

    def state_dict(self) -> dict:
        state = {"xs": self.xs.state_dict(), "gamma": list(self.gamma), "grow": list(self.grow)}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.aux is not None:
            state["aux"] = {f"{kind}:{l}": t for (kind, l), t in self.aux.items()}
            state["seen"] = self.seen
        if self.pipeline:  # the batches in flight at an interruption: a resumed run goes on with them
            state["pipeline"] = self.pipeline
        return state

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.xs.load_state_dict(state["xs"])
        self.gamma = list(state["gamma"])
        self.grow = list(state["grow"])
        if self.aux is not None and "aux" in state:
            for key, t in state["aux"].items():
                kind, l = key.split(":")
                self.aux[(kind, int(l))].copy_(t)
            self.seen.copy_(state["seen"])
        self.load_pipeline(state.get("pipeline", []))

    def hyperparameters(self) -> dict:
        return dict(vars(self.cfg))


@SOLVERS.register("isgm", ISGMConfig, form="lifted")
class ISGM(LiftedSolver):
    """Implicit stochastic gradient (Toulis & Airoldi; the chapter's main method; docs/method.md,
    sections 5.4-5.7): per mini-batch, approximately solve

        argmin_{W, X} E_S(W, X) + sum_l 1/(2 tau) ||W_l - W_l^k||^2

    by ``n_inner`` proximal-gradient iterations jointly on X and W, from the warm start
    (W^k, forward pass). W-step: the exact majorised implicit step on dense blocks
    (``w_metric=majorizer``), else W_l <- W_l - gamma_l [grad_W E_S + (W_l - W_l^k)/tau]."""

    previous = None  # W^{k-1}, for the momentum extrapolation ({stack.first: tensors like stack.tensors})
    anchor = None  # W^k ({stack.first: tensors like stack.tensors}; empty when the W-steps need no copy)
    needs_anchor = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "previous": self.previous}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("previous") is not None:
            dev = self.stacks[0].tensors[0].device
            self.previous = {key: [q.to(dev) for q in tensors] for key, tensors in state["previous"].items()}

    def begin_epoch(self, epoch: int) -> None:
        """tau_e = tau * tau_decay^e for epoch e = 0, 1, ... (smaller tau: more conservative steps)."""
        self.tau = self.cfg.tau * self.cfg.tau_decay**epoch

    def _snapshot(self) -> dict:
        return {stack.first: [q.detach().clone() for q in stack.tensors] for stack in self.stacks}

    def _needs_anchor(self) -> bool:
        """A copy of W^k is needed unless every W-step is the majorised step taken at the anchor
        itself (one inner iteration), which then updates the weights in place."""
        majorised = self.cfg.w_metric == "majorizer" and all(self.problem.majorizable(s) for s in self.stacks)
        return not (majorised and self.cfg.n_inner == 1)

    @torch.no_grad()
    def begin_batch(self) -> None:
        """Anchor W^k of this implicit step. With ``momentum`` beta > 0 the anchor is extrapolated,
        W^k <- W^k + beta (W^k - W^{k-1}) (heavy-ball/Nesterov-style implicit SGD), then projected
        onto the architecture's constraints; beta = 0 is plain ISGM. A stack's blocks move in one
        operation per parameter tensor; W^{k-1} is kept in buffers that are overwritten."""
        beta = self.cfg.momentum
        if beta > 0:
            if self.previous is None:
                self.previous = self._snapshot()
            else:
                for stack in self.stacks:
                    for q, q1 in zip(stack.tensors, self.previous[stack.first]):
                        step = q - q1
                        q1.copy_(q)
                        q.add_(step, alpha=beta)
                self.problem.model.project()
        if self.needs_anchor is None:
            self.needs_anchor = self._needs_anchor()
        self.anchor = self._snapshot() if self.needs_anchor else {}

    def w_inputs(self, st: LiftedState) -> dict:
        p = self.problem
        majorizer = self.cfg.w_metric == "majorizer"
        return p.majorizer_inputs(st, [s for s in self.stacks if majorizer and p.majorizable(s)])

    @torch.no_grad()
    def w_step(self, st: LiftedState, inputs: dict | None = None) -> None:
        p = self.problem
        majorizer = self.cfg.w_metric == "majorizer"
        rows = self.w_inputs(st) if inputs is None else inputs
        for stack in self.stacks:
            anchor = self.anchor.get(stack.first)
            if stack.first in rows:
                p.implicit_weight_step(st, stack, rows[stack.first], anchor, self.tau, at_anchor=self.inner == 0)
            elif majorizer and self.cfg.cg_iters and p.operator_majorizable(stack):
                p.operator_weight_step(st, stack, anchor, self.tau, self.cfg.cg_iters)
            else:  # a gradient step with each block's own backtracked length
                grads = p.weight_gradients(st, stack)
                for name, q0 in zip(stack.names, anchor):
                    grads[name].add_(stack.storage[name] - q0.view_as(grads[name]), alpha=1.0 / self.tau)
                if self.cfg.w_step is not None:
                    gamma = torch.full((stack.d,), float(self.cfg.w_step), dtype=torch.float64, device=st.y.device)
                else:
                    gamma = self.backtracking(st, stack, grads, anchor)
                for name in stack.names:
                    axpy(stack.storage[name], -gamma, grads[name], out=stack.storage[name])


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
    name: str = option("bcd", "the solver")
    weight_update: str = option("gd", "gd | heavyball | nesterov | adam")
    lr: Optional[float] = option(None, "weight step; null: backtracking line search for gd/heavyball/nesterov, 1e-3 for adam")
    momentum: float = option(0.9, "momentum of heavyball / nesterov")
    beta1: float = option(0.9, "adam's first-moment decay")
    beta2: float = option(0.999, "adam's second-moment decay")
    lr_decay: float = option(1.0, "a fixed lr (or adam's) is lr * lr_decay^e in epoch e, in (0, 1]; 1 with the line search")

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

    def __init__(self, cfg, scheme, comm=None):
        super().__init__(cfg, scheme, comm)
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

    @staticmethod
    def stacking_limit(cfg) -> str | None:
        _, line_search, stateless = WEIGHT_UPDATES[cfg.weight_update]
        if line_search and cfg.lr is None and not stateless:
            return (f"weight_update={cfg.weight_update} with a line search (lr=null) gives every block its own "
                    "step inside one momentum optimiser; stacking needs gd, adam or a fixed lr")
        return LiftedSolver.stacking_limit(cfg)

    @torch.no_grad()
    def w_step(self, st: LiftedState, inputs: dict | None = None) -> None:
        p = self.problem
        for stack in self.stacks:  # one gradient and one optimiser update per stack
            grads = p.weight_gradients(st, stack)
            lr = None
            if self.line_search:
                lr = self.lr
                if lr is None:
                    gamma = self.backtracking(st, stack, grads)
                    if stack.d == 1:  # the block's searched step is the optimiser's learning rate
                        lr = float(gamma)
                    else:  # several blocks in one tensor (stateless updates only): each step folded into its gradient
                        grads = {n: per_block(gamma, g, g.dim()) * g for n, g in grads.items()}
                        lr = 1.0
            for q, name in zip(stack.tensors, stack.names):
                q.grad = grads[name].view_as(q)
            if lr is not None:
                self.optimizer.param_groups[self.group[stack.first]]["lr"] = lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
