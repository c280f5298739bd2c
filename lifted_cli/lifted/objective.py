"""The lifted objective of a network in unified form (docs/method.md, section 4).

For a ``nets.UnifiedNet`` with blocks l = 1..L (pre-activation ``a_l = pre_l(u_{l-1}, y)``,
auxiliary activation outputs z_l, states u_l; u_l = z_l for dense blocks):

    E(theta, Z, U) = (1/s) sum_i [ sum_l lambda_l D_l(z_l^i, a_l^i)
                                   + rho/2 sum_{l: state blocks} ||u_l^i - S_l u_{l-1}^i - V_l z_l^i||^2
                                   + [free output] beta/2 ||K(u_L^i, y^i) - t^i||^2
                                   + alpha ||u_k^i||_1 ]

D is the scheme's layer penalty (``penalties.LayerPenalty``: Bregman, Fenchel or MAC quadratic),
rho the architecture penalty of ``rho/2 ||M u - V z||^2``. With a ``clamped`` output the last state
is the target (Wang & Benning 2023: the last penalty is then the data term); ``free`` keeps u_L as a
variable with the data loss (weight beta, the nudging weight of the contrastive scheme).

Every operation is written once, over a stack (``stacks.Stack``: consecutive blocks stepped
together, one block being a stack of one) and a selection ``ks`` of its blocks: tensors carry the
selected layers as their first dimension. Solvers see only these per-stack methods (``x_gradient``,
``x_prox``, ``x_lipschitz``, ``weight_gradients``, ``block_energy``, ``implicit_weight_step``,
``operator_weight_step``): no architecture or scheme is a special case. All methods run under
``torch.no_grad`` except the autograd of the block maps in ``weight_gradients``; an activation is
differentiated only by the MAC penalty, whose definition needs it.

The problem is built over a ``layout.Layout``: the layers this process owns (all, in one process),
their grouping and the communicator. Sums over samples of the weight steps go through
``comm.mean_`` / ``comm.all_rows``; where another process owns the layers below or above
(``first > 1``, ``last < L``) the boundary states and gradients go through ``comm.exchange``.

A value per block (a layer weight, a step) is a list of floats, one per selected block; ``per_block``
turns it into a factor: the float itself for one block, so that a stack of one does the arithmetic of
a single layer to the bit, else a (K, 1, 1) tensor.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .layout import Layout
from .penalties import LayerPenalty, l1_penalty, soft_threshold
from .stacks import ALL, FIRST, Stack, gather, plan


def per_block(values, ref: torch.Tensor, dims: int = 3):
    """One value per selected block (a list of floats, or a float64 tensor) as a factor of tensors with
    ``dims`` dimensions, blocks first: for one block a float (a Python float's arithmetic, as a single
    layer computes), else a (K, 1, ...) tensor in ``ref``'s dtype."""
    if isinstance(values, torch.Tensor):
        if values.numel() == 1:
            return values.reshape(())  # float64: rounded only where it meets ``ref``, as a float is
        return values.to(ref.dtype).view((-1,) + (1,) * (dims - 1))
    if len(values) == 1:
        return values[0]
    return torch.tensor(values, dtype=ref.dtype, device=ref.device).view((-1,) + (1,) * (dims - 1))


def axpy(x: torch.Tensor, alpha, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x + alpha y, alpha one value per block (a list of floats or a float64 tensor (K,)): for one
    block torch's fused ``alpha`` argument (what a single layer's update computes), else a broadcast
    product."""
    if len(alpha) == 1:
        return torch.add(x, y, alpha=float(alpha[0]), out=out)
    return torch.add(x, per_block(alpha, y, y.dim()) * y, out=out)


@dataclass
class LiftedState:
    """Auxiliary variables of one mini-batch (rows = samples): ``u[0..L]`` states (u[0] the input
    state), ``z[1..L]`` activation outputs (the same tensor as u[l] for dense blocks), cached
    pre-activations ``a[1..L]``; ``y`` the flattened network input, ``target`` the clean images."""

    y: torch.Tensor
    target: torch.Tensor
    u: list
    z: list
    a: list
    forward_loss: float = 0.0


class LiftedProblem:
    """Lifted objective of a unified network. ``lambdas``: penalty weight per block (length L);
    ``output``: ``clamped``, ``free`` or ``auto`` (clamped when the read-out is the identity);
    ``sparsity``, ``sparsity_layer``: alpha and the 1-based layer k of alpha ||u_k||_1;
    ``loss_weight``: beta of the free-output data loss; ``layout``: owned layers, grouping and
    communication (default: one process, every block a stack of one)."""

    def __init__(self, model, penalty: LayerPenalty, lambdas, rho: float = 1.0, output: str = "clamped",
                 sparsity: float = 0.0, sparsity_layer=None, loss_weight: float = 1.0, layout: Layout | None = None):
        self.model = model
        self.blocks = list(model.blocks)
        self.L = len(self.blocks)
        self.acts = model.acts
        self.penalty = penalty
        for l, act in enumerate(self.acts, 1):
            try:
                penalty.check(act)
            except ValueError as err:
                raise ValueError(f"layer {l}: {err}") from None
        self.lambdas = [float(v) for v in lambdas]
        if len(self.lambdas) != self.L:
            raise ValueError(f"need {self.L} penalty weights, got {len(self.lambdas)}")
        self.rho = float(rho)
        if output == "auto":
            output = "clamped" if model.readout_identity else "free"
        if output not in ("clamped", "free"):
            raise ValueError(f"output={output!r}; allowed: clamped, free, auto")
        if output == "clamped" and not model.readout_identity:
            raise ValueError("output=clamped needs a network whose output is its last state; this one reads out "
                             "x_net = y - L^* u_K: use output=free or auto")
        last = self.blocks[-1]
        if output == "clamped" and not last.has_state:
            probe = torch.tensor([0.0, 1.0])
            if not bool(last.act.in_domain(probe).all()):
                raise ValueError(f"a clamped output needs targets in [0, 1] inside the range of the output activation "
                                 f"{last.act.spec()}; use output=free or another output activation")
        self.output = output
        self.loss_weight = float(loss_weight)
        self.sparsity = float(sparsity)
        self.sparsity_layer = sparsity_layer if self.sparsity > 0 else None
        k = self.sparsity_layer
        if k is not None:
            if not 1 <= k <= self.L:
                raise ValueError(f"sparsity_layer={k}: must be a layer index 1..{self.L}")
            if self.output == "clamped" and k == self.L:
                raise ValueError("sparsity on the clamped output layer has no effect; use output=free")
            blk = self.blocks[k - 1]
            if not blk.has_state and type(penalty).prox_z is not LayerPenalty.prox_z and not blk.act.l1_composable:
                raise ValueError(f"sparsity on layer {k} needs an activation with 0 in dPhi(0); {blk.act.spec()} has not")
        layout = layout or Layout()
        self.comm = layout.comm
        self.first, self.last = layout.layers or (1, self.L)
        # the output layer (clamped, or tied to the read-out) and the sparsity layer have terms of their
        # own: each is a stack of one
        ranges = plan(self.blocks, self.first, self.last, layout.grouped, excluded={self.L, self.sparsity_layer})
        self.stacks = [Stack(self.blocks[a - 1:b], a) for a, b in ranges]
        self._next = {s.first: n for s, n in zip(self.stacks, self.stacks[1:])}
        self.owns_output = self.last == self.L
        # where another process owns the layers above: the gradient in u_last of their terms and
        # ||W_{last+1}||^2, received before every sweep (``exchange_down``)
        self.back: torch.Tensor | None = None
        self.next_norm_sq: float | None = None
        self._memo: dict | None = None  # the residuals of ``fixed``

    # ------------------------------------------------------------------------------ helpers
    def lam_of(self, stack: Stack, ks: slice) -> list[float]:
        """lambda_l of the selected blocks of a stack."""
        if stack.d == 1:
            return self.lambdas[stack.first - 1:stack.first]
        start, stop, step = ks.indices(stack.d)
        return self.lambdas[stack.first - 1 + start:stack.first - 1 + stop:step]

    def lam_factor(self, stack: Stack, ks: slice, ref: torch.Tensor, dims: int = 3):
        """``per_block`` of ``lam_of``."""
        return per_block(self.lam_of(stack, ks), ref, dims)

    @staticmethod
    def _get(seq: list, layers) -> torch.Tensor:
        return seq[layers[0]].unsqueeze(0) if len(layers) == 1 else gather([seq[l] for l in layers])

    @staticmethod
    def _below(stack: Stack, ks: slice) -> list[int]:
        """l - 1 for the selected layers l."""
        return [l - 1 for l in stack.layers(ks)]

    def kinds(self, stack: Stack) -> tuple:
        """The free auxiliary variables of a stack's blocks: (``u``, ``z``) for blocks with state,
        (``z``,) for dense blocks; the clamped output layer's state is the target."""
        clamped = stack.last == self.L and self.output == "clamped"
        if stack.has_state:
            return ("z",) if clamped else ("u", "z")
        return () if clamped else ("z",)

    def variables(self) -> list[tuple[str, int]]:
        """The free auxiliary variables, top-down: (``u``, l) for state blocks, then (``z``, l)."""
        return [(kind, l) for stack in reversed(self.stacks) for l in reversed(stack.layers())
                for kind in self.kinds(stack)]

    def set_var(self, st: LiftedState, kind: str, l: int, value: torch.Tensor) -> None:
        if kind == "u":
            st.u[l] = value
        else:
            st.z[l] = value
            if not self.blocks[l - 1].has_state:
                st.u[l] = value

    def pack(self, st: LiftedState) -> None:
        """Lay the variables of every stack of several blocks out as one tensor per kind (the states
        with the state below the stack as their first row), the entries of ``st`` becoming its views:
        the stack's later reads (u_{l-1}, u_l, z_l, a_l of all its blocks) are then views, not copies.
        No value changes; called where entries were set one by one (a forward pass, a sweep)."""
        for stack in self.stacks:
            if stack.d == 1:
                continue
            layers, below = stack.layers(), stack.first - 1
            chain = gather([st.u[below]] + [st.u[l] for l in layers]).unbind(0)
            if below >= 1 and not self.blocks[below - 1].has_state:
                st.z[below] = chain[0]
            st.u[below] = chain[0]
            for l, v in zip(layers, chain[1:]):
                st.u[l] = v
            for seq in ([st.a] if not stack.has_state else [st.a, st.z]):
                if seq[layers[0]] is not None:
                    for l, v in zip(layers, gather([seq[l] for l in layers]).unbind(0)):
                        seq[l] = v
            if not stack.has_state:
                for l in layers:
                    st.z[l] = st.u[l]

    def set_vars(self, st: LiftedState, kind: str, stack: Stack, ks: slice, values: torch.Tensor) -> None:
        layers = stack.layers(ks)
        for l, v in zip(layers, values.unbind(0)) if len(layers) > 1 else [(layers[0], values[0])]:
            self.set_var(st, kind, l, v)

    # ------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def init_state(self, y: torch.Tensor, target: torch.Tensor) -> LiftedState:
        """Warm start by a forward pass: z_l = sigma_l(a_l), u_l = post_l(u_{l-1}, z_l), so every
        penalty is zero (the free phase); a clamped output then takes the target. Where other
        processes own the layers below and above, a pipeline (the forward loss is the last one's,
        0 elsewhere)."""
        L = self.L
        u, z, a = [None] * (L + 1), [None] * (L + 1), [None] * (L + 1)
        u[0] = self.model.input_state(y)
        if self.first > 1:
            u[self.first - 1] = self._state_buffer(y)
            self.comm.exchange([], [(u[self.first - 1], "below")])
        for l in range(self.first, self.last + 1):
            blk = self.blocks[l - 1]
            a[l] = blk.pre(u[l - 1], y)
            z[l] = blk.act(a[l])
            u[l] = blk.post(u[l - 1], z[l]) if blk.has_state else z[l]
        if self.last < L:
            self.comm.exchange([(u[self.last].contiguous(), "above")], [])
        loss = 0.0
        if self.owns_output:
            out = self.model.readout(u[L], y)
            loss = float(0.5 * (out - target).pow(2).sum(dim=1).mean())
        st = LiftedState(y=y, target=target, u=u, z=z, a=a, forward_loss=loss)
        if self.output == "clamped" and self.owns_output:
            u[-1] = target.clone()
            if not self.blocks[-1].has_state:
                z[-1] = u[-1]
        self.pack(st)
        return st

    @torch.no_grad()
    def forward_sweep(self, st: LiftedState) -> None:
        """One Jacobi sweep of the forward equations: every free variable from the current state
        below it, all layers at once, z_l = sigma_l(a_l), u_l = post_l(u_{l-1}, z_l) (the cached
        a_l must be current). Its sequential depth is one layer; k sweeps from any state make the
        first k layers those of a forward pass, L sweeps the whole pass."""
        new = []
        for stack in self.stacks:
            kinds = self.kinds(stack)
            if kinds:
                z = stack.act(self._get(st.a, stack.layers()))
                u = stack.call("post", self._get(st.u, self._below(stack, ALL)), z) if "u" in kinds else None
                new.append((stack, z, u))
        for stack, z, u in new:
            self.set_vars(st, "z", stack, ALL, z)
            if u is not None:
                self.set_vars(st, "u", stack, ALL, u)
        self.exchange_up(st)
        self.pack(st)

    def _state_buffer(self, y: torch.Tensor) -> torch.Tensor:
        return y.new_empty(y.shape[0], self.blocks[self.first - 1].in_dim)

    def exchange_down(self, st: LiftedState, norms) -> None:
        """Before a sweep, at boundaries with other processes' layers: the gradient in u_{first-1}
        of the first block's terms and its ||W||^2 go to the process below; those of block last+1
        come from the process above (into ``back``, ``next_norm_sq``)."""
        sends, recvs = [], []
        if self.first > 1:
            first = self.stacks[0]
            g = self.terms_below(st, first, FIRST)[0].contiguous()
            sends += [(g, "below"), (g.new_tensor(norms(first, "pre")[:1]), "below")]
        if self.last < self.L:
            ref = st.u[self.last]
            self.back, norm = ref.new_empty(ref.shape), ref.new_empty(1)
            recvs += [(self.back, "above"), (norm, "above")]
        self.comm.exchange(sends, recvs)
        if self.last < self.L:
            self.next_norm_sq = float(norm)

    def exchange_up(self, st: LiftedState) -> None:
        """After a sweep (and at a persistent warm start): the top state goes up, u_{first-1} comes
        from below."""
        sends, recvs = [], []
        if self.last < self.L:
            sends.append((st.u[self.last].contiguous(), "above"))
        if self.first > 1:
            st.u[self.first - 1] = self._state_buffer(st.y)
            recvs.append((st.u[self.first - 1], "below"))
        self.comm.exchange(sends, recvs)

    @torch.no_grad()
    def refresh(self, st: LiftedState, first: int = 1, parity: int | None = None, free_only: bool = False) -> None:
        """Recompute the cached pre-activations a_l for the current U, W: of the layers >= ``first``,
        of one ``parity``, of the stacks with free variables only (``free_only``)."""
        for stack in self.stacks:
            if stack.last < first or (free_only and not self.kinds(stack)):
                continue
            ks = stack.select(parity)
            if stack.first < first:  # from the first selected block at or above ``first``
                start, _, step = ks.indices(stack.d)
                start += -(-(first - stack.first - start) // step) * step
                if start >= stack.d:
                    continue
                ks = slice(start, stack.d, step)
            layers = stack.layers(ks)
            if not layers:
                continue
            a = stack.call("pre", self._get(st.u, self._below(stack, ks)), ks=ks, shared=(st.y,))
            if len(layers) == 1:
                st.a[layers[0]] = a[0]
            else:
                for l, v in zip(layers, a.unbind(0)):
                    st.a[l] = v

    def residual(self, st: LiftedState, stack: Stack, ks: slice = ALL) -> torch.Tensor:
        """r_l = u_l - S_l u_{l-1} - V_l z_l of the selected (state) blocks; inside ``fixed`` computed
        once per stack."""
        if self._memo is not None:
            full = self._memo.get(stack.first)
            if full is None:
                full = self._memo[stack.first] = self._residual(st, stack, ALL)
            return full if ks is ALL else full[ks]
        return self._residual(st, stack, ks)

    def _residual(self, st: LiftedState, stack: Stack, ks: slice) -> torch.Tensor:
        layers = stack.layers(ks)
        post = stack.call("post", self._get(st.u, self._below(stack, ks)), self._get(st.z, layers), ks=ks)
        return self._get(st.u, layers) - post

    @contextmanager
    def fixed(self):
        """A block of reads during which neither the auxiliaries nor the weights change (the steps of
        a Jacobi sweep are all taken from one state; the diagnostics and the inputs of the majorised
        W-steps too): the residuals r_l are computed once there, not once per use."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def output_residual(self, st: LiftedState) -> torch.Tensor:
        return self.model.readout(st.u[-1], st.y) - st.target

    # ---------------------------------------------------------------------------- objective
    @torch.no_grad()
    def objective_per_sample(self, st: LiftedState) -> torch.Tensor:
        """E(theta, Z, U) of every sample (shape (s,)) at the cached pre-activations (of this
        process's layers)."""
        value = 0.0
        for stack in self.stacks:
            layers = stack.layers()
            z, a = self._get(st.z, layers), self._get(st.a, layers)
            lam = self.lam_factor(stack, ALL, z, dims=2)
            value = value + (lam * self.penalty.value(stack.act, z, a)).sum(dim=0)
            if stack.has_state:
                value = value + 0.5 * self.rho * self.residual(st, stack).pow(2).sum(dim=2).sum(dim=0)
        if self.output == "free" and self.owns_output:
            value = value + 0.5 * self.loss_weight * self.output_residual(st).pow(2).sum(dim=1)
        k = self.sparsity_layer
        if k is not None and self.first <= k <= self.last:
            value = value + self.sparsity * l1_penalty(st.u[k])
        return value

    def objective(self, st: LiftedState) -> float:
        """E(theta, Z, U) averaged over the samples."""
        return float(self.objective_per_sample(st).mean())

    @torch.no_grad()
    def layer_gaps(self, st: LiftedState) -> list[float]:
        """Mean over samples of ||u_l - post_l(u_{l-1}, sigma_l(a_l))||: how far each layer
        equation is from holding, for this process's layers."""
        gaps = []
        for stack in self.stacks:
            layers = stack.layers()
            post = stack.call("post", self._get(st.u, self._below(stack, ALL)), stack.act(self._get(st.a, layers)))
            gaps.append((self._get(st.u, layers) - post).norm(dim=2).mean(dim=1))
        return torch.cat(gaps).tolist()

    def hidden_gap(self, st: LiftedState) -> float:
        """The mean of the layer gaps over the hidden layers (and a free output); over layers owned
        by several processes, this process's share of that mean (the shares sum to it)."""
        gaps = dict(zip(range(self.first, self.last + 1), self.layer_gaps(st)))
        hidden = [l for l in range(1, self.L + 1) if not (l == self.L and self.output == "clamped")]
        return sum(gaps[l] for l in hidden if l in gaps) / max(len(hidden), 1)

    # ---------------------------------------------------------------------- auxiliary steps
    def terms_below(self, st: LiftedState, stack: Stack, ks: slice) -> torch.Tensor:
        """The gradient in u_{l-1} of block l's terms, for the selected blocks l:
        lambda_l W_l^T grad_a D_l (- rho r_l through a skip connection)."""
        layers = stack.layers(ks)
        g_a = self.penalty.grad_a(stack.act, self._get(st.z, layers), self._get(st.a, layers))
        g = self.lam_factor(stack, ks, g_a) * stack.call("pre_adjoint", g_a, ks=ks)
        if stack.has_state and stack.skip:
            g = g - self.rho * self.residual(st, stack, ks)
        return g

    def input_gradient(self, st: LiftedState) -> torch.Tensor:
        """The gradient in the input state u_0 of block 1's terms (the inversion's u-step)."""
        return self.terms_below(st, self.stacks[0], FIRST)[0]

    def add_downstream(self, st: LiftedState, stack: Stack, ks: slice, g: torch.Tensor) -> torch.Tensor:
        """g plus the gradient in u_l of the terms of block l+1 (or of the data loss when l = L), for
        the selected layers l: the blocks inside the stack in one call, the one above the stack's last
        from the next stack, the read-out, or the process above. Added in place where the selection
        has both kinds (``g`` must be a fresh tensor), so that no concatenation is made."""
        layers = stack.layers(ks)
        start, _, step = ks.indices(stack.d)
        inner = layers[0] < stack.last
        if inner:
            below = self.terms_below(st, stack, slice(start + 1, stack.d, step))
            if layers[-1] != stack.last:
                return g + below
            g[:-1] += below
        l, nxt = stack.last, self._next.get(stack.first)
        if l == self.L:
            top = (self.loss_weight * self.model.readout_adjoint(self.output_residual(st))).unsqueeze(0)
        elif nxt is None:  # the layers above are another process's
            top = self.back.unsqueeze(0)
        else:
            top = self.terms_below(st, nxt, FIRST)
        if not inner:
            return g + top
        g[-1:] += top
        return g

    def x_gradient(self, st: LiftedState, stack: Stack, kind: str, ks: slice) -> torch.Tensor:
        """Gradient of the smooth part of E (per sample) in the variables (kind, l) of the selected layers:

            z_l:  lambda_l grad_z D_l - rho V_l^T r_l (state block) | + downstream (dense block)
            u_l:  rho r_l + downstream,
            downstream = lambda_{l+1} W_{l+1}^T grad_a D_{l+1} - rho S_{l+1}^T r_{l+1}  (or the data loss).
        """
        return self._x_gradient(st, stack, kind, ks, None if kind == "u" else self._get(st.z, stack.layers(ks)))

    def _x_gradient(self, st: LiftedState, stack: Stack, kind: str, ks: slice, z: torch.Tensor | None) -> torch.Tensor:
        if kind == "u":
            return self.add_downstream(st, stack, ks, self.rho * self.residual(st, stack, ks))
        g = self.lam_factor(stack, ks, z) * self.penalty.grad_z(stack.act, z, self._get(st.a, stack.layers(ks)))
        if stack.has_state:
            return g - self.rho * stack.call("post_adjoint", self.residual(st, stack, ks), ks=ks)
        return self.add_downstream(st, stack, ks, g)

    def x_prox(self, stack: Stack, kind: str, ks: slice, v: torch.Tensor, mu: list) -> torch.Tensor:
        """prox of mu times the non-smooth part in (kind, l): lambda_l (non-smooth part of D_l) and
        alpha ||.||_1 on u_k, composed as prox_D o S_{mu alpha} (exact in 1-D when 0 is in dPhi(0));
        ``mu`` one step per selected block."""
        if stack.first == self.sparsity_layer and (kind == "u" or not stack.has_state):
            v = soft_threshold(v, per_block([m * self.sparsity for m in mu], v))
        if kind == "u":
            return v
        return self.penalty.prox_z(stack.act, v, per_block([m * lam for m, lam in zip(mu, self.lam_of(stack, ks))], v))

    def x_step(self, st: LiftedState, stack: Stack, kind: str, ks: slice, mu: list) -> torch.Tensor:
        """One proximal-gradient step, step ``mu`` (one per selected block), on (kind, l) for the
        selected layers; returns the new values (stacked)."""
        v = self._get(st.u if kind == "u" else st.z, stack.layers(ks))
        v = v - per_block(mu, v) * self._x_gradient(st, stack, kind, ks, v)
        return self.x_prox(stack, kind, ks, v, mu)

    def x_lipschitz(self, stack: Stack, kind: str, ks: slice, norms) -> list[float]:
        """Lipschitz constants (one per selected block) of ``x_gradient``; ``norms(stack, which)``:
        the squared norms (a list, one per block) of W_l (``pre``) or V_l (``post``) of a stack's
        blocks, ``norms(None, "readout")`` that of the read-out."""
        layers = stack.layers(ks)
        start, _, step = ks.indices(stack.d)
        own = [lam * self.penalty.lip_z for lam in self.lam_of(stack, ks)]
        if kind == "z" and stack.has_state:
            return [o + self.rho * n for o, n in zip(own, norms(stack, "post")[start::step])]
        down = []
        if layers[0] < stack.last:
            inner = slice(start + 1, stack.d, step)
            skip = self.rho if stack.has_state and stack.skip else 0.0
            down = [lam * self.penalty.lip_a * n + skip
                    for lam, n in zip(self.lam_of(stack, inner), norms(stack, "pre")[start + 1::step])]
        if layers[-1] == stack.last:
            down.append(self._lipschitz_above(stack, norms))
        return [self.rho + d for d in down] if kind == "u" else [o + d for o, d in zip(own, down)]

    def _lipschitz_above(self, stack: Stack, norms) -> float:
        """Lipschitz constant in u_last of the terms above a stack."""
        l, nxt = stack.last, self._next.get(stack.first)
        if l == self.L:
            return self.loss_weight * (1.0 if self.model.readout_identity else norms(None, "readout")[0])
        down = self.lambdas[l] * self.penalty.lip_a * (self.next_norm_sq if nxt is None else norms(nxt, "pre")[0])
        blk = self.blocks[l]
        if blk.has_state and blk.skip:
            down += self.rho
        return down

    # -------------------------------------------------------------------------- weight steps
    def majorizable(self, stack: Stack) -> bool:
        """The exact majorised implicit step applies: an affine block with a penalty whose a-gradient
        is lip_a (sigma(a) - z), and either no state or a state whose map V is a parameter of its own
        (an untied residual block: the step in V is an exact ridge step)."""
        return (self.penalty.majorizable and stack.affine_names is not None
                and (not stack.has_state or stack.post_weight_name is not None))

    def operator_majorizable(self, stack: Stack) -> bool:
        """The majorised implicit step applies in operator form (conjugate gradients): a block without
        state whose pre-activation is affine in its parameters but has no closed form (convolutions),
        or is smooth in them (unrolled blocks: the step of their linearisation, line-searched)."""
        blk = stack.template
        return (self.penalty.majorizable and (blk.params_affine or blk.params_smooth) and not blk.has_state
                and stack.affine_names is None)

    def _with_readout(self, stack: Stack, with_loss: bool = True) -> bool:
        """The read-out loss depends on the stack's parameters (the last block of an unrolled PNN)."""
        return with_loss and stack.last == self.L and self.output == "free" and not self.model.readout_identity

    def weight_gradients(self, st: LiftedState, stack: Stack, with_loss: bool = True) -> dict:
        """Gradient of E in the parameters of the stack's blocks (by name, (d, ...)), for fixed
        auxiliary variables. The penalty enters through the surrogate <lambda_l grad_a D_l (fixed),
        a_l(theta)>, whose parameter gradient is the chain rule through the map a_l only; the
        architecture and read-out terms are polynomial in the parameters and go through autograd
        too. ``with_loss=False`` leaves out the data loss (the free phase of the contrastive scheme).
        Means over samples (over every process's samples)."""
        layers = stack.layers()
        u_prev, z = self._get(st.u, self._below(stack, ALL)), self._get(st.z, layers)
        u = self._get(st.u, layers) if stack.has_state else None
        lam = self.lam_factor(stack, ALL, z)
        s, y, readout = st.y.shape[0], st.y, self._with_readout(stack, with_loss)

        def total(call):
            a = call("pre", u_prev, shared=(y,))
            value = (lam * self.penalty.grad_a(stack.act, z, a.detach()) * a).sum()
            extra = a.new_zeros(())
            if stack.has_state:
                extra = extra + 0.5 * self.rho * (u - call("post", u_prev, z)).pow(2).sum()
            if readout:
                extra = extra + 0.5 * self.loss_weight * self.output_residual(st).pow(2).sum()
            return (value + extra) / s

        grads = stack.gradients(total)
        self.comm.mean_(list(grads.values()))
        return grads

    @torch.no_grad()
    def block_energy(self, st: LiftedState, stack: Stack, a: torch.Tensor | None = None,
                     rows: torch.Tensor | None = None) -> torch.Tensor:
        """The parts of E that depend on each block's parameters, up to a constant (for line
        searches; float64, (d,)), at the current parameters; ``a``: the current pre-activations
        when known; ``rows``: only those blocks (indices into the stack)."""
        layers = stack.layers()
        u_prev, z = self._get(st.u, self._below(stack, ALL)), self._get(st.z, layers)
        u = self._get(st.u, layers) if stack.has_state else None
        lam = self.lam_of(stack, ALL)
        params = None
        if rows is not None and rows.numel() < stack.d:
            u_prev, z, lam = u_prev[rows], z[rows], [lam[i] for i in rows.tolist()]
            u = None if u is None else u[rows]
            params = {name: stack.storage[name][rows] for name in stack.names}
        if a is None:
            a = stack.call("pre", u_prev, params=params, shared=(st.y,))
        value = per_block(lam, z, dims=1) * self.penalty.energy_a(stack.act, z, a).sum(dim=1)
        extra = 0.0
        if stack.has_state:
            extra = 0.5 * self.rho * (u - stack.call("post", u_prev, z, params=params)).pow(2).sum(dim=(1, 2))
        if self._with_readout(stack):
            extra = extra + 0.5 * self.loss_weight * self.output_residual(st).pow(2).sum()
        value = (value + extra) / st.y.shape[0]
        self.comm.mean_([value])
        return value.double()

    def majorizer_inputs(self, st: LiftedState, stacks: list) -> dict:
        """(X, R) of the majorised steps of ``stacks`` (by first layer): the inputs u_{l-1} and
        residuals sigma(a_l) - z_l, and for blocks with state (Z, E): z_l and the architecture
        residuals r_l (the ridge step in V); shaped (d, s, n), the rows of every process's samples
        (their Gram matrices couple them), fetched in one collective."""
        local = []
        for stack in stacks:
            layers = stack.layers()
            z = self._get(st.z, layers)
            out = (self._get(st.u, self._below(stack, ALL)), stack.act(self._get(st.a, layers)) - z)
            if stack.has_state:
                out += (z, self.residual(st, stack))
            local.append(out)
        rows = iter(self.comm.all_rows([t for out in local for t in out], dim=1))
        return {stack.first: tuple(next(rows) for _ in out) for stack, out in zip(stacks, local)}

    @staticmethod
    def _anchor(stack: Stack, anchor: list | None) -> dict | None:
        """W^k by parameter name, shaped like the stack's storage."""
        if anchor is None:
            return None
        return {name: q0.view(stack.storage[name].shape) for name, q0 in zip(stack.names, anchor)}

    @torch.no_grad()
    def implicit_weight_step(self, st: LiftedState, stack: Stack, rows: tuple, anchor, tau: float,
                             at_anchor: bool = False) -> None:
        """Majorised implicit step on every block of a stack of dense (or untied residual) blocks
        (docs/method.md, section 5.5): minimise over W = [W_l, b_l] the model

            (1/s) sum_i [<g_i, (W' - W) x_i> + kappa/2 ||(W' - W) x_i||^2] + 1/(2 tau) ||W' - W^k||^2,

        x_i = [u_{l-1}^i; 1], g_i = lambda_l grad_a D_l = kappa (sigma(a_l^i) - z_l^i), kappa = lambda_l
        lip_a. It majorises the ISGM subproblem because sigma is 1-Lipschitz and is exact when sigma
        is the identity. With X = [U_{l-1}, 1] (s x n), R = G/kappa, D = W - W^k, c = s/(kappa tau),
        Woodbury in sample space gives [der]

            W' = W^k - (R^T - D X^T) (c I + X X^T)^{-1} X,

        one s x s Cholesky factorisation per block (s = batch size), batched over the stack.
        ``rows``: ``majorizer_inputs`` of the stack; ``at_anchor``: W = W^k, so D = 0; ``anchor`` None:
        at the anchor, with no copy of it (the weights are updated in place)."""
        x_prev, r, *state = rows
        s = x_prev.shape[1]
        anchor = self._anchor(stack, anchor)
        if state:  # the ridge step in V first: it reads nothing that the step in (W, b) changes
            name = stack.post_weight_name
            self._ridge_post_step(stack.storage[name], *state, None if anchor is None else anchor[name], tau, at_anchor)
        w_name, b_name = stack.affine_names
        W, b = stack.storage[w_name], stack.storage[b_name]
        c = [s / (lam * self.penalty.lip_a * tau) for lam in self.lam_of(stack, ALL)]
        k = torch.bmm(x_prev, x_prev.transpose(1, 2))
        k.add_(1.0).diagonal(dim1=1, dim2=2).add_(per_block(c, k, dims=2))  # c I + X X^T
        if anchor is None:  # at the anchor, and no copy of it: update in place
            coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ r
            W.baddbmm_(coef.transpose(1, 2), x_prev, alpha=-1.0)
            b.sub_(coef.sum(dim=1))
            return
        W0, b0 = anchor[w_name], anchor[b_name]
        rhs = r if at_anchor else r - torch.baddbmm((b - b0).unsqueeze(1), x_prev, (W - W0).transpose(1, 2))  # R - X D^T
        coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ rhs  # eigenvalues of k >= c
        torch.baddbmm(W0, coef.transpose(1, 2), x_prev, alpha=-1.0, out=W)
        torch.sub(b0, coef.sum(dim=1), out=b)

    @torch.no_grad()
    def _ridge_post_step(self, V: torch.Tensor, z: torch.Tensor, e: torch.Tensor, V0, tau: float, at_anchor: bool) -> None:
        """The ISGM step in the state map V of residual blocks (docs/method.md, section 5.5): with
        T = u_l - u_{l-1} fixed, minimise exactly

            (rho/(2s)) sum_i ||t_i - V' z_i||^2 + 1/(2 tau) ||V' - V^k||^2,

        a ridge problem. With Z the rows z_i (s x h), c = s/(rho tau) and E = T - Z V^k^T the residuals
        at the anchor (= the current residuals ``e`` plus Z (V - V^k)^T), the push-through identity
        gives V' = V^k + E^T (c I + Z Z^T)^{-1} Z: one s x s Cholesky factorisation per block.
        ``V0`` None: at the anchor, in place."""
        s = z.shape[-2]
        k = z @ z.transpose(-1, -2)
        k.diagonal(dim1=-2, dim2=-1).add_(s / (self.rho * tau))
        coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ z  # (c I + Z Z^T)^{-1} Z
        if V0 is None:
            V.add_(e.transpose(-1, -2) @ coef)
            return
        E = e if at_anchor else e + z @ (V - V0).transpose(-1, -2)
        torch.add(V0, E.transpose(-1, -2) @ coef, out=V)

    def _readout_terms(self, st: LiftedState, stack: Stack):
        """The read-out loss 1/2 w ||y - L_K^* u_K - x||^2 of the last unrolled block, for fixed u_K:
        quadratic in its parameters; its gradient and exact Hessian-vector product (means over
        samples and processes), shaped like the storage; (None, None) where the stack has none."""
        if not self._with_readout(stack):
            return None, None
        params = stack.tensors  # the output layer is a stack of one: its block's own parameters
        with torch.enable_grad():
            extra = 0.5 * self.loss_weight * self.output_residual(st).pow(2).sum() / st.y.shape[0]
            if not extra.requires_grad:
                return None, None
            grads = [g if g is not None else torch.zeros_like(q)
                     for g, q in zip(torch.autograd.grad(extra, params, create_graph=True, allow_unused=True), params)]
        shapes = [stack.storage[name].shape for name in stack.names]

        def hvp(d):
            with torch.enable_grad():
                out = torch.autograd.grad(grads, params, grad_outputs=[t.view_as(q) for t, q in zip(d, params)],
                                          retain_graph=True, allow_unused=True)
            return self.comm.mean_([(torch.zeros_like(q) if h is None else h).view(shp)
                                    for h, q, shp in zip(out, params, shapes)])

        return self.comm.mean_([g.detach().view(shp) for g, shp in zip(grads, shapes)]), hvp

    @torch.no_grad()
    def operator_weight_step(self, st: LiftedState, stack: Stack, anchor: list, tau: float, iters: int) -> int:
        """The implicit step of section 5.5 on blocks whose pre-activation a(theta) is an operator (a
        convolution, an unrolled iteration), not a matrix: minimise, for each block, over the step D

            (1/s) sum_i [<g_i, (J D)_i> + kappa/2 ||(J D)_i||^2] + q(D) + 1/(2 tau) ||theta + D - theta^k||^2,

        g_i = kappa (sigma(a_l^i) - z_l^i), J the derivative of a at theta and q the change of the
        block's quadratic read-out term, by conjugate gradients on its normal equations
        (kappa/s J^T J + H_q + I/tau) D = -(J^T g/s + grad q + (theta - theta^k)/tau); J^T by one
        vector-Jacobian product of the map. CG from D = 0 decreases this convex quadratic model at every
        iteration; ``iters`` iterations are taken, or fewer when every block's residual falls below
        1e-6 of its right-hand side (a block that got there stops moving). Where a is affine in theta
        (convolutions), J D = a(D) - a(0) (two forward maps) and the model majorises the ISGM
        subproblem: the step never increases it. Where a is only smooth (unrolled blocks, quadratic
        in L), J D is the linearisation's forward-mode product and the model is Gauss-Newton's, no
        longer a majoriser; each block's step D is then searched, theta + 2^-j D with the first j that
        decreases its subproblem by the Armijo rule, and dropped if none of 30 does. Sums over
        samples are means over the processes. Returns the CG iterations taken."""
        names, storage = stack.names, stack.storage
        theta = {n: storage[n] for n in names}
        u_prev, y, s = self._get(st.u, self._below(stack, ALL)), st.y, st.y.shape[0]

        def pre(params):
            return stack.call("pre", u_prev, params=params, shared=(y,))

        kappa = [lam * self.penalty.lip_a for lam in self.lam_of(stack, ALL)]
        if stack.template.params_affine:
            offset = pre({n: torch.zeros_like(v) for n, v in theta.items()})
            jvp = lambda d: pre(d) - offset  # noqa: E731
        else:
            jvp = lambda d: torch.func.jvp(pre, (theta,), (d,))[1]  # noqa: E731
        _, adjoint = torch.func.vjp(pre, theta)  # for an affine a the adjoint is the same everywhere
        extra_grad, extra_hvp = self._readout_terms(st, stack)

        def jt(v):  # J^T v / s, a mean over every process's samples
            out = adjoint(v / s)[0] if s else {n: torch.zeros_like(q) for n, q in theta.items()}
            return dict(zip(names, self.comm.mean_([out[n] for n in names])))

        def normal(d):
            jtj = jt(jvp(d))
            out = {n: per_block_like(kappa, jtj[n]) * jtj[n] + d[n] / tau for n in names}
            if extra_hvp is not None:
                for n, h in zip(names, extra_hvp([d[n] for n in names])):
                    out[n] += h
            return out

        def dot(a, b):  # one inner product per block (float64)
            return sum((a[n] * b[n]).flatten(1).sum(dim=1).double() for n in names)

        residual = stack.act(self._get(st.a, stack.layers())) - self._get(st.z, stack.layers())
        g = jt(per_block(kappa, residual) * residual)
        if extra_grad is not None:
            g = {n: g[n] + e for n, e in zip(names, extra_grad)}
        anchor = self._anchor(stack, anchor)
        rhs = {n: -(g[n] + (theta[n] - anchor[n]) / tau) for n in names}
        step = {n: torch.zeros_like(v) for n, v in theta.items()}
        res, direction = {n: v.clone() for n, v in rhs.items()}, {n: v.clone() for n, v in rhs.items()}
        rr = first = dot(res, res)  # CG from D = 0: the residual is the rhs
        taken = 0
        while taken < iters and bool((rr > 1e-12 * first).any()):
            active = rr > 1e-12 * first
            h = normal(direction)
            alpha = torch.where(active, rr / dot(direction, h), torch.zeros_like(rr))
            for n in names:
                axpy(step[n], alpha, direction[n], out=step[n])
                axpy(res[n], -alpha, h[n], out=res[n])
            rr, previous = dot(res, res), rr
            beta = torch.where(previous > 0, rr / previous.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
            for n in names:
                direction[n].mul_(per_block(beta, direction[n], direction[n].dim())).add_(res[n])
            taken += 1
        if stack.template.params_affine:
            for n in names:
                storage[n].add_(step[n])
            return taken

        def subproblem(a=None):
            return self.block_energy(st, stack, a) + sum(
                (storage[n] - anchor[n]).pow(2).flatten(1).sum(dim=1).double() for n in names) / (2 * tau)

        f0 = subproblem(self._get(st.a, stack.layers()))  # the pre-activation at theta is current (g is built from it)
        slope = -dot(rhs, step)  # <grad, D> < 0: D minimises a convex model whose gradient at 0 is -rhs
        slack = 10 * torch.finfo(u_prev.dtype).eps * (f0.abs() + 1.0)
        saved = {n: v.clone() for n, v in theta.items()}
        gamma = torch.ones_like(f0)
        done = torch.zeros_like(f0, dtype=torch.bool)
        for _ in range(30):
            for n in names:
                axpy(saved[n], gamma, step[n], out=storage[n])
            done = done | (subproblem() <= f0 + 1e-4 * gamma * slope + slack)
            if bool(done.all()):
                return taken
            gamma = torch.where(done, gamma, 0.5 * gamma)
        for n in names:  # no step found: those blocks stay where they were
            storage[n].copy_(torch.where(per_block_like(done, storage[n]), storage[n], saved[n]))
        return taken


def per_block_like(values, t: torch.Tensor):
    """``per_block`` for a tensor of any number of dimensions (blocks first); booleans stay booleans."""
    if isinstance(values, torch.Tensor) and values.dtype == torch.bool:
        return values.view((-1,) + (1,) * (t.dim() - 1))
    return per_block(values, t, t.dim())
