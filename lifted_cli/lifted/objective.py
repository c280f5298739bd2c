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

Solvers see only per-variable and per-block methods (``x_gradient``, ``x_prox``, ``x_lipschitz``,
``weight_gradients``, ``block_energy``, ``implicit_weight_step``): no architecture or scheme is a
special case. All methods run under ``torch.no_grad`` except the autograd of the *affine* block maps
in ``weight_gradients``; an activation is differentiated only by the MAC penalty, whose definition
needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .penalties import LayerPenalty, l1_penalty, soft_threshold
from .stacking import Stack, gather, stack_ranges


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
    ``loss_weight``: beta of the free-output data loss."""

    def __init__(self, model, penalty: LayerPenalty, lambdas, rho: float = 1.0, output: str = "clamped",
                 sparsity: float = 0.0, sparsity_layer=None, loss_weight: float = 1.0):
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
        self.stacks: list[Stack] = []
        self.stack_of: dict[int, tuple[Stack, int]] = {}  # layer -> (its stack, its index there)
        self._lambda_cache: dict = {}
        # data-parallel (parallel.Comm): the samples of a batch are shared out over processes, and the
        # sums over samples of the W-steps (gradients, block energies, Gram matrices) are combined
        self.comm = None
        self._gathered: dict = {}  # data-parallel: (X, R) of the majorised steps, fetched for all blocks at once
        # layer-parallel (partition.LayerPart): this process owns the layers part.first..part.last
        self.part = None

    def _mean(self, tensors):
        """Means over this process's samples -> means over the global batch (in place)."""
        return tensors if self.comm is None else self.comm.mean_(tensors)

    def _rows(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """The rows of every sample of the global batch (this process's alone in a single process)."""
        return t if self.comm is None else self.comm.all_rows(t, dim)

    def _majorizer_inputs(self, st: LiftedState, unit) -> tuple:
        """(X, R) of the majorised step of a unit: the inputs u_{l-1} and residuals sigma(a_l) - z_l,
        and for a block with state (Z, E): its z_l and architecture residuals r_l = u_l - S_l u_{l-1}
        - V_l z_l (the ridge step in V); shaped (s, n) for a block and (d, s, n) for a stack; from
        ``gather_majorizer_rows`` when fetched there."""
        key = unit.first if isinstance(unit, Stack) else unit
        if key in self._gathered:
            return self._gathered.pop(key)
        if isinstance(unit, Stack):
            layers = unit.layers(unit.select())
            z = self._stacked(st, "z", layers)
            out = (gather([st.u[l - 1] for l in layers]), unit.act(self._stacked(st, "a", layers)) - z)
            if unit.has_state:
                out += (z, self.stack_residual(st, unit, unit.select()))
            return tuple(self._rows(t, dim=1) for t in out)
        out = (st.u[unit - 1], self.acts[unit - 1](st.a[unit]) - st.z[unit])
        if self.blocks[unit - 1].has_state:
            out += (st.z[unit], self.residual(st, unit))
        return tuple(self._rows(t) for t in out)

    def gather_majorizer_rows(self, st: LiftedState, units: list) -> None:
        """Data-parallel: the rows that the majorised steps of ``units`` need (their Gram matrices
        couple the samples of every process), fetched in one all-gather for all of them."""
        self._gathered = {}
        comm, self.comm = self.comm, None  # the local rows
        try:
            pieces = [(unit, self._majorizer_inputs(st, unit)) for unit in units]
        finally:
            self.comm = comm
        flat = [t.movedim(1, 0).reshape(t.shape[1], t.shape[0] * t.shape[2]) if t.dim() == 3 else t  # samples first
                for _, local in pieces for t in local]
        if not flat:
            return
        full = comm.all_rows(torch.cat(flat, dim=1))
        cols = iter(full.split([t.shape[1] for t in flat], dim=1))
        for unit, local in pieces:
            rows = []
            for t in local:
                c = next(cols)
                rows.append(c.reshape(c.shape[0], t.shape[0], t.shape[2]).movedim(0, 1) if t.dim() == 3 else c)
            self._gathered[unit.first if isinstance(unit, Stack) else unit] = tuple(rows)

    # ----------------------------------------------------------------------------- stacking
    def stackable(self) -> list[tuple[int, int]]:
        """The runs of equal blocks that can be stepped together (docs/method.md, section 5.10): at
        least two consecutive blocks of one signature, never the output layer (clamped, or tied to
        the read-out) nor the layer of the sparsity term."""
        ranges = stack_ranges(self.blocks, excluded={self.L, self.sparsity_layer})
        if self.part is not None:  # a stack never crosses processes
            f, t = self.part.first, self.part.last
            ranges = [(max(a, f), min(b, t)) for a, b in ranges if min(b, t) > max(a, f)]
        return ranges

    def owned(self) -> range:
        """The layers this process works on: all, or its part under layer-parallel training."""
        return range(1, self.L + 1) if self.part is None else range(self.part.first, self.part.last + 1)

    def stack(self, ranges) -> None:
        """Store the parameters of each run (first, last) as stacked tensors (the blocks' parameters
        become views of them) and step those blocks together from now on."""
        for first, last in ranges:
            st = Stack(self.blocks[first - 1:last], first)
            self.stacks.append(st)
            for k in range(st.d):
                self.stack_of[first + k] = (st, k)

    def units(self) -> list:
        """The blocks in layer order, each stack as one unit: ``Stack`` objects and layer numbers."""
        out, l = [], self.owned()[0]
        while l <= self.owned()[-1]:
            if l in self.stack_of:
                out.append(self.stack_of[l][0])
                l = self.stack_of[l][0].last + 1
            else:
                out.append(l)
                l += 1
        return out

    def unit_params(self, unit) -> list[torch.Tensor]:
        """The tensors that hold a unit's parameters: a stack's storage, or a block's parameters."""
        if isinstance(unit, Stack):
            return [unit.storage[name] for name in unit.names]
        return self.block_params(unit)

    def stack_lambdas(self, layers: list[int], ref: torch.Tensor) -> torch.Tensor:
        """lambda_l of ``layers`` (consecutive, or every other one) as a (K, 1, 1) view of one tensor
        of all the weights, made again only when ``lambdas`` is replaced (MAC's continuation does)."""
        key = (ref.dtype, ref.device)
        hit = self._lambda_cache.get(key)
        if hit is None or hit[0] is not self.lambdas:
            hit = (self.lambdas, torch.tensor(self.lambdas, dtype=ref.dtype, device=ref.device).view(-1, 1, 1))
            self._lambda_cache[key] = hit
        step = layers[1] - layers[0] if len(layers) > 1 else 1
        return hit[1][layers[0] - 1:layers[-1]:step]

    # ------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def init_state(self, y: torch.Tensor, target: torch.Tensor) -> LiftedState:
        """Warm start by a forward pass: z_l = sigma_l(a_l), u_l = post_l(u_{l-1}, z_l), so every
        penalty is zero (the free phase); a clamped output then takes the target. Layer-parallel: a
        pipeline over the processes (the forward loss is the last one's, 0 elsewhere)."""
        L, part = self.L, self.part
        u, z, a = [None] * (L + 1), [None] * (L + 1), [None] * (L + 1)
        u[0] = self.model.input_state(y)
        layers = self.owned()
        if part is not None and part.below is not None:
            u[layers[0] - 1] = part.receive_input(y)
        for l in layers:
            blk = self.blocks[l - 1]
            a[l] = blk.pre(u[l - 1], y)
            z[l] = blk.act(a[l])
            u[l] = blk.post(u[l - 1], z[l]) if blk.has_state else z[l]
        if part is not None:
            part.send_output(u[layers[-1]])
        loss = 0.0
        if layers[-1] == L:
            out = self.model.readout(u[L], y)
            loss = float(0.5 * (out - target).pow(2).sum(dim=1).mean())
        st = LiftedState(y=y, target=target, u=u, z=z, a=a, forward_loss=loss)
        if self.output == "clamped" and layers[-1] == L:
            u[-1] = target.clone()
            if not self.blocks[-1].has_state:
                z[-1] = u[-1]
        return st

    def set_var(self, st: LiftedState, kind: str, l: int, value: torch.Tensor) -> None:
        if kind == "u":
            st.u[l] = value
        else:
            st.z[l] = value
            if not self.blocks[l - 1].has_state:
                st.u[l] = value

    @torch.no_grad()
    def refresh(self, st: LiftedState, first: int = 1, last: int | None = None) -> None:
        """Recompute the cached pre-activations a_l, ``first`` <= l <= ``last`` (default L), for the
        current U, W."""
        last = self.owned()[-1] if last is None else min(last, self.owned()[-1])
        l = max(first, self.owned()[0])
        while l <= last:
            if l in self.stack_of:
                stack, k = self.stack_of[l]
                top = min(last, stack.last)
                self.stack_refresh(st, stack, slice(k, top - stack.first + 1, 1))
                l = top + 1
            else:
                st.a[l] = self.blocks[l - 1].pre(st.u[l - 1], st.y)
                l += 1

    def stack_refresh(self, st: LiftedState, stack: Stack, ks: slice) -> None:
        layers = stack.layers(ks)
        a = stack.call("pre", gather([st.u[l - 1] for l in layers]), ks=ks, shared=(st.y,))
        for l, v in zip(layers, a.unbind(0)):
            st.a[l] = v

    def refresh_parity(self, st: LiftedState, layers: list[int], parity: int) -> None:
        """Recompute a_l for ``layers`` (all of one parity): stacked layers in one call per stack."""
        done = set()
        for l in layers:
            if l in self.stack_of:
                stack = self.stack_of[l][0]
                if stack.first not in done:
                    done.add(stack.first)
                    self.stack_refresh(st, stack, stack.select(parity))
            else:
                st.a[l] = self.blocks[l - 1].pre(st.u[l - 1], st.y)

    def residual(self, st: LiftedState, l: int) -> torch.Tensor:
        """r_l = u_l - S_l u_{l-1} - V_l z_l (state blocks)."""
        return st.u[l] - self.blocks[l - 1].post(st.u[l - 1], st.z[l])

    def output_residual(self, st: LiftedState) -> torch.Tensor:
        return self.model.readout(st.u[-1], st.y) - st.target

    # ---------------------------------------------------------------------------- objective
    @torch.no_grad()
    def objective_per_sample(self, st: LiftedState) -> torch.Tensor:
        """E(theta, Z, U) of every sample (shape (s,)) at the cached pre-activations."""
        value = 0.0
        for unit in self.units():
            if isinstance(unit, Stack):
                ks = unit.select()
                layers = unit.layers(ks)
                lam = self.stack_lambdas(layers, st.y)[:, :, 0]
                z, a = gather([st.z[l] for l in layers]), gather([st.a[l] for l in layers])
                value = value + (lam * self.penalty.value(unit.act, z, a)).sum(dim=0)
                if unit.has_state:
                    value = value + 0.5 * self.rho * self.stack_residual(st, unit, ks).pow(2).sum(dim=2).sum(dim=0)
                continue
            l = unit
            value = value + self.lambdas[l - 1] * self.penalty.value(self.acts[l - 1], st.z[l], st.a[l])
            if self.blocks[l - 1].has_state:
                value = value + 0.5 * self.rho * self.residual(st, l).pow(2).sum(dim=1)
        if self.output == "free" and self.L in self.owned():
            value = value + 0.5 * self.loss_weight * self.output_residual(st).pow(2).sum(dim=1)
        if self.sparsity_layer is not None and self.sparsity_layer in self.owned():
            value = value + self.sparsity * l1_penalty(st.u[self.sparsity_layer])
        return value

    def objective(self, st: LiftedState) -> float:
        """E(theta, Z, U) averaged over the samples."""
        return float(self.objective_per_sample(st).mean())

    @torch.no_grad()
    def layer_gaps(self, st: LiftedState) -> list[float]:
        """Mean over samples of ||u_l - post_l(u_{l-1}, sigma_l(a_l))||: how far each layer
        equation is from holding, l = 1..L."""
        gaps = []
        for unit in self.units():
            if isinstance(unit, Stack):
                layers = unit.layers(unit.select())
                u_prev, a = gather([st.u[l - 1] for l in layers]), gather([st.a[l] for l in layers])
                post = unit.call("post", u_prev, unit.act(a))
                gaps.append((gather([st.u[l] for l in layers]) - post).norm(dim=2).mean(dim=1))
            else:
                blk = self.blocks[unit - 1]
                gaps.append((st.u[unit] - blk.post(st.u[unit - 1], blk.act(st.a[unit]))).norm(dim=1).mean()[None])
        return torch.cat(gaps).tolist()

    def hidden_gap(self, st: LiftedState) -> float:
        """The mean of the layer gaps over the hidden layers (and a free output); layer-parallel:
        this process's share of that mean (the shares sum to it)."""
        gaps = dict(zip(self.owned(), self.layer_gaps(st)))
        hidden = [l for l in range(1, self.L + 1) if not (l == self.L and self.output == "clamped")]
        return sum(gaps[l] for l in hidden if l in gaps) / max(len(hidden), 1)

    # ---------------------------------------------------------------------- auxiliary steps
    def variables(self) -> list[tuple[str, int]]:
        """The free auxiliary variables, top-down: (``u``, l) for state blocks, then (``z``, l)."""
        out = []
        for l in reversed(self.owned()):
            clamped_last = l == self.L and self.output == "clamped"
            if self.blocks[l - 1].has_state:
                if not clamped_last:
                    out.append(("u", l))
                out.append(("z", l))
            elif not clamped_last:
                out.append(("z", l))
        return out

    def downstream_gradient(self, st: LiftedState, l: int) -> torch.Tensor:
        """Gradient in u_l of the terms of block l+1 (or of the data loss when l = L); l = 0 gives the
        gradient in the input state."""
        if l == self.L:
            return self.loss_weight * self.model.readout_adjoint(self.output_residual(st))
        if self.part is not None and l == self.part.last:  # block l+1 is the next process's: its back-projection
            return self.part.back
        nxt = self.blocks[l]
        g = self.lambdas[l] * nxt.pre_adjoint(self.penalty.grad_a(self.acts[l], st.z[l + 1], st.a[l + 1]))
        if nxt.has_state and nxt.skip:
            g = g - self.rho * self.residual(st, l + 1)
        return g

    def x_gradient(self, st: LiftedState, kind: str, l: int) -> torch.Tensor:
        """Gradient of the smooth part of E (per sample) in the variable (kind, l):

            z_l:  lambda_l grad_z D_l - rho V_l^T r_l (state block) | + downstream (dense block)
            u_l:  rho r_l + downstream,
            downstream = lambda_{l+1} W_{l+1}^T grad_a D_{l+1} - rho S_{l+1}^T r_{l+1}  (or the data loss).
        """
        blk = self.blocks[l - 1]
        if kind == "u":
            return self.rho * self.residual(st, l) + self.downstream_gradient(st, l)
        g = self.lambdas[l - 1] * self.penalty.grad_z(self.acts[l - 1], st.z[l], st.a[l])
        if blk.has_state:
            return g - self.rho * blk.post_adjoint(self.residual(st, l))
        return g + self.downstream_gradient(st, l)

    def x_prox(self, kind: str, l: int, v: torch.Tensor, mu: float) -> torch.Tensor:
        """prox of mu times the non-smooth part in (kind, l): lambda_l (non-smooth part of D_l) and
        alpha ||.||_1 on u_k, composed as prox_D o S_{mu alpha} (exact in 1-D when 0 is in dPhi(0))."""
        if l == self.sparsity_layer and (kind == "u" or not self.blocks[l - 1].has_state):
            v = soft_threshold(v, mu * self.sparsity)
        if kind == "u":
            return v
        return self.penalty.prox_z(self.acts[l - 1], v, mu * self.lambdas[l - 1])

    def x_lipschitz(self, kind: str, l: int, norm_sq) -> float:
        """Lipschitz constant of ``x_gradient`` in (kind, l); ``norm_sq(which, l)`` returns the
        squared norm of W_l (``pre``), V_l (``post``) or the read-out (``readout``)."""
        down = self.down_lipschitz(l, norm_sq)
        if kind == "u":
            return self.rho + down
        own = self.lambdas[l - 1] * self.penalty.lip_z
        if self.blocks[l - 1].has_state:
            return own + self.rho * norm_sq("post", l)
        return own + down

    def down_lipschitz(self, l: int, norm_sq) -> float:
        """Lipschitz constant in u_l of the terms of block l+1 (or of the data loss when l = L)."""
        if l == self.L:
            return self.loss_weight * (1.0 if self.model.readout_identity else norm_sq("readout", l))
        remote = self.part is not None and l == self.part.last
        down = self.lambdas[l] * self.penalty.lip_a * (self.part.next_norm_sq if remote else norm_sq("pre", l + 1))
        if self.blocks[l].has_state and self.blocks[l].skip:
            down += self.rho
        return down

    # ------------------------------------------------------------------ stacked auxiliary steps
    # The methods below are the per-layer ones above for the layers ``stack.layers(ks)`` of a stack
    # at once: tensors carry the selected layers as their first dimension.
    def _stacked(self, st: LiftedState, kind: str, layers: list[int]) -> torch.Tensor:
        return gather([(st.u if kind == "u" else st.z if kind == "z" else st.a)[l] for l in layers])

    def stack_residual(self, st: LiftedState, stack: Stack, ks: slice) -> torch.Tensor:
        layers = stack.layers(ks)
        prev = gather([st.u[l - 1] for l in layers])
        return self._stacked(st, "u", layers) - stack.call("post", prev, self._stacked(st, "z", layers), ks=ks)

    def stack_downstream(self, st: LiftedState, stack: Stack, ks: slice) -> torch.Tensor:
        """``downstream_gradient`` of the selected layers: blocks l+1 inside the stack in one call,
        the block after the stack by the per-layer method."""
        layers = stack.layers(ks)
        inner = [l for l in layers if l < stack.last]
        parts = []
        if inner:
            kn = slice(ks.indices(stack.d)[0] + 1, stack.d, ks.indices(stack.d)[2])
            nxt = [l + 1 for l in inner]
            g_a = self.penalty.grad_a(stack.act, self._stacked(st, "z", nxt), self._stacked(st, "a", nxt))
            g = self.stack_lambdas(nxt, st.y) * stack.call("pre_adjoint", g_a, ks=kn)
            if stack.has_state and stack.skip:
                g = g - self.rho * self.stack_residual(st, stack, kn)
            parts.append(g)
        if layers[-1] == stack.last:
            parts.append(self.downstream_gradient(st, stack.last)[None])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def stack_x_gradient(self, st: LiftedState, stack: Stack, kind: str, ks: slice) -> torch.Tensor:
        if kind == "u":
            return self.rho * self.stack_residual(st, stack, ks) + self.stack_downstream(st, stack, ks)
        layers = stack.layers(ks)
        g = self.stack_lambdas(layers, st.y) * self.penalty.grad_z(stack.act, self._stacked(st, "z", layers),
                                                                   self._stacked(st, "a", layers))
        if stack.has_state:
            return g - self.rho * stack.call("post_adjoint", self.stack_residual(st, stack, ks), ks=ks)
        return g + self.stack_downstream(st, stack, ks)

    def stack_x_step(self, st: LiftedState, stack: Stack, kind: str, ks: slice, mu: torch.Tensor) -> torch.Tensor:
        """One proximal-gradient step, step ``mu`` (K, 1, 1), on (kind, l) for the selected layers."""
        layers = stack.layers(ks)
        v = self._stacked(st, kind, layers) - mu * self.stack_x_gradient(st, stack, kind, ks)
        if kind == "u":
            return v
        return self.penalty.prox_z(stack.act, v, mu * self.stack_lambdas(layers, st.y))

    def stack_x_lipschitz(self, stack: Stack, kind: str, ks: slice, norms, norm_sq) -> torch.Tensor:
        """``x_lipschitz`` of the selected layers (shape (K,)); ``norms(which)``: the stack's squared
        norms (d,), ``norm_sq`` the per-layer estimate (for the block after the stack)."""
        layers = stack.layers(ks)
        start, _, step = ks.indices(stack.d)
        ref = stack.storage[stack.names[0]]
        inner = [l for l in layers if l < stack.last]
        parts = []
        if inner:
            lam_next = self.stack_lambdas([l + 1 for l in inner], ref).flatten()
            down = lam_next * self.penalty.lip_a * norms("pre")[start + 1::step]
            parts.append(down + self.rho if stack.has_state and stack.skip else down)
        if layers[-1] == stack.last:
            parts.append(ref.new_tensor([self.down_lipschitz(stack.last, norm_sq)]))
        down = parts[0] if len(parts) == 1 else torch.cat(parts)
        if kind == "u":
            return self.rho + down
        own = self.stack_lambdas(layers, ref).flatten() * self.penalty.lip_z
        if stack.has_state:
            return own + self.rho * norms("post")[start::step]
        return own + down

    # ----------------------------------------------------------------------- stacked weight steps
    def stack_weight_gradients(self, st: LiftedState, stack: Stack, generic: bool = False) -> dict:
        """``weight_gradients`` of every block of the stack, stacked by parameter name: the block
        class's closed form where it has one (``generic``: never), else ``vmap(grad(.))``."""
        layers = stack.layers(stack.select())
        u_prev, z, u = (gather([st.u[l - 1] for l in layers]), self._stacked(st, "z", layers),
                        self._stacked(st, "u", layers))
        a = stack.call("pre", u_prev, shared=(st.y,))
        g_a = self.stack_lambdas(layers, st.y) * self.penalty.grad_a(stack.act, z, a)
        s, y, rho, has_state = st.y.shape[0], st.y, self.rho, stack.has_state
        fast = None if generic else stack.fast_gradients()
        if fast is not None:
            grads = fast(stack.storage, u_prev, u, z, g_a, rho, s)
            self._mean(list(grads.values()))
            return grads

        def surrogate(call, up, uk, zk, ga):
            total = (ga * call("pre", up, y)).sum()
            if has_state:
                total = total + 0.5 * rho * (uk - call("post", up, zk)).pow(2).sum()
            return total / s

        grads = stack.grad(surrogate, u_prev, u, z, g_a)
        self._mean(list(grads.values()))
        return grads

    def stack_block_energy(self, st: LiftedState, stack: Stack, params: dict | None = None,
                           rows: torch.Tensor | None = None) -> torch.Tensor:
        """``block_energy`` of the blocks of the stack (shape (d,)), or of the blocks ``rows``
        (indices into the stack) only, at the stacked ``params`` of those blocks (default: the
        current ones)."""
        layers = stack.layers(stack.select())
        u_prev, z = gather([st.u[l - 1] for l in layers]), self._stacked(st, "z", layers)
        lam = self.stack_lambdas(layers, st.y).flatten()
        u = self._stacked(st, "u", layers) if stack.has_state else None
        if rows is not None:
            u_prev, z, lam = u_prev[rows], z[rows], lam[rows]
            u = None if u is None else u[rows]
        a = stack.call("pre", u_prev, params=params, shared=(st.y,))
        value = lam * self.penalty.energy_a(stack.act, z, a).sum(dim=1)
        if stack.has_state:
            value = value + 0.5 * self.rho * (u - stack.call("post", u_prev, z, params=params)).pow(2).sum(dim=(1, 2))
        value = value / st.y.shape[0]
        self._mean([value])
        return value

    @torch.no_grad()
    def stack_implicit_weight_step(self, st: LiftedState, stack: Stack, anchor: list, tau: float,
                                   at_anchor: bool = False) -> None:
        """``implicit_weight_step`` on every block of a dense stack: batched products and one batched
        Cholesky factorisation of the (d, s, s) matrices c_l I + X_l X_l^T."""
        layers = stack.layers(stack.select())
        x_prev, r, *state = self._majorizer_inputs(st, stack)
        d, s = x_prev.shape[0], x_prev.shape[1]
        if state:  # the ridge step in V first: it reads nothing that the step in (W, b) changes
            name = stack.post_weight_name
            self._ridge_post_step(stack.storage[name], *state, None if anchor is None else anchor[stack.names.index(name)],
                                  tau, at_anchor)
        w_name, b_name = stack.affine_names
        W, b = stack.storage[w_name], stack.storage[b_name]
        kappa = self.stack_lambdas(layers, x_prev) * self.penalty.lip_a
        k = torch.bmm(x_prev, x_prev.transpose(1, 2))
        k.add_(1.0).diagonal(dim1=1, dim2=2).add_(s / (kappa.view(d, 1) * tau))
        if anchor is None:
            coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ r
            W.baddbmm_(coef.transpose(1, 2), x_prev, alpha=-1.0)
            b.sub_(coef.sum(dim=1))
            return
        W0, b0 = (anchor[stack.names.index(w_name)], anchor[stack.names.index(b_name)])
        rhs = r if at_anchor else r - torch.baddbmm((b - b0)[:, None, :], x_prev, (W - W0).transpose(1, 2))
        coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ rhs
        torch.baddbmm(W0, coef.transpose(1, 2), x_prev, alpha=-1.0, out=W)
        torch.sub(b0, coef.sum(dim=1), out=b)

    # -------------------------------------------------------------------------- weight steps
    def block_params(self, l: int) -> list[torch.nn.Parameter]:
        return list(self.blocks[l - 1].parameters())

    def _block_terms(self, st: LiftedState, l: int, a: torch.Tensor, with_loss: bool):
        """The parts of E that depend on block l's parameters, for pre-activation ``a``: returns
        (penalty per sample, architecture + loss terms summed over samples, differentiable)."""
        blk = self.blocks[l - 1]
        extra = a.new_zeros(())
        if blk.has_state:
            extra = extra + 0.5 * self.rho * (st.u[l] - blk.post(st.u[l - 1], st.z[l])).pow(2).sum()
        if with_loss and l == self.L and self.output == "free" and not self.model.readout_identity:
            extra = extra + 0.5 * self.loss_weight * self.output_residual(st).pow(2).sum()
        return extra

    def weight_gradients(self, st: LiftedState, l: int, with_loss: bool = True) -> list[torch.Tensor]:
        """Gradient of E in block l's parameters, for fixed auxiliary variables. The penalty enters
        through the surrogate <lambda_l grad_a D_l (fixed), a_l(theta)>, whose parameter gradient is
        the chain rule through the affine map a_l only; the architecture and read-out terms are
        polynomial in the parameters and go through autograd. ``with_loss=False`` leaves out the
        data loss (the free phase of the contrastive scheme)."""
        blk = self.blocks[l - 1]
        params = self.block_params(l)
        s = st.y.shape[0]
        with torch.enable_grad():
            a = blk.pre(st.u[l - 1], st.y)
            g_a = self.lambdas[l - 1] * self.penalty.grad_a(self.acts[l - 1], st.z[l], a.detach())
            total = (g_a * a).sum() + self._block_terms(st, l, a, with_loss)
            grads = torch.autograd.grad(total / s, params, allow_unused=True)
        return self._mean([torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)])

    @torch.no_grad()
    def block_energy(self, st: LiftedState, l: int, a: torch.Tensor | None = None) -> float:
        """The parts of E that depend on block l's parameters, up to a constant (for line
        searches); ``a``: the current pre-activation when known."""
        if a is None:
            a = self.blocks[l - 1].pre(st.u[l - 1], st.y)
        pen = self.lambdas[l - 1] * self.penalty.energy_a(self.acts[l - 1], st.z[l], a).sum()
        value = (pen + self._block_terms(st, l, a, True)) / st.y.shape[0]
        return float(value if self.comm is None else self.comm.mean(value.reshape(1)))

    def majorizable(self, l: int) -> bool:
        """The exact majorised implicit step applies: an affine block with a penalty whose a-gradient
        is lip_a (sigma(a) - z), and either no state or a state whose map V is a parameter of its own
        (an untied residual block: the step in V is an exact ridge step)."""
        blk = self.blocks[l - 1]
        return (self.penalty.majorizable and blk.affine() is not None
                and (not blk.has_state or blk.post_weight() is not None))

    def operator_majorizable(self, l: int) -> bool:
        """The majorised implicit step applies in operator form (conjugate gradients): a block without
        state whose pre-activation is affine in its parameters but has no closed form (convolutions),
        or is smooth in them (unrolled blocks: the step of their linearisation, line-searched)."""
        blk = self.blocks[l - 1]
        return (self.penalty.majorizable and (blk.params_affine or blk.params_smooth) and not blk.has_state
                and blk.affine() is None and l not in self.stack_of)

    def _quadratic_terms(self, st: LiftedState, l: int):
        """The architecture and read-out terms of E in block l's parameters (the last unrolled block's
        read-out loss 1/2 w ||y - L_K^* u_K - x||^2 for fixed u_K), which are quadratic in them: their
        gradient and their exact Hessian-vector product, each a mean over samples (and processes);
        (None, None) where block l has none."""
        params = self.block_params(l)
        with torch.enable_grad():
            extra = self._block_terms(st, l, st.a[l], True) / st.y.shape[0]
            if not extra.requires_grad:
                return None, None
            grads = [g if g is not None else torch.zeros_like(q)
                     for g, q in zip(torch.autograd.grad(extra, params, create_graph=True, allow_unused=True), params)]

        def hvp(d):
            with torch.enable_grad():
                out = torch.autograd.grad(grads, params, grad_outputs=d, retain_graph=True, allow_unused=True)
            return self._mean([torch.zeros_like(q) if h is None else h for h, q in zip(out, params)])

        return self._mean([g.detach() for g in grads]), hvp

    @torch.no_grad()
    def operator_weight_step(self, st: LiftedState, l: int, anchor: list, tau: float, iters: int) -> int:
        """The implicit step of section 5.5 on a block whose pre-activation a(theta) is an operator (a
        convolution, an unrolled iteration), not a matrix: minimise over the step D

            (1/s) sum_i [<g_i, (J D)_i> + kappa/2 ||(J D)_i||^2] + q(D) + 1/(2 tau) ||theta + D - theta^k||^2,

        g_i = kappa (sigma(a_l^i) - z_l^i), J the derivative of a at theta and q the change of the
        block's quadratic architecture/read-out terms, by conjugate gradients on its normal equations
        (kappa/s J^T J + H_q + I/tau) D = -(J^T g/s + grad q + (theta - theta^k)/tau); J^T by one
        vector-Jacobian product of the map. CG from D = 0 decreases this convex quadratic model at every
        iteration; ``iters`` iterations are taken, or fewer when the residual falls below 1e-6 of the
        right-hand side. Where a is affine in theta (convolutions), J D = a(D) - a(0) (two forward
        maps) and the model majorises the ISGM subproblem: the step never increases it. Where a is only
        smooth (unrolled blocks, quadratic in L), J D is the linearisation's forward-mode product and
        the model is Gauss-Newton's, no longer a majoriser; the step D is then searched,
        theta + 2^-j D with the first j that decreases the subproblem by the Armijo rule, and dropped
        if none of 30 does. Data-parallel: sums over samples are means over the processes. Returns the
        CG iterations taken."""
        from .stacking import _Method

        blk, call = self.blocks[l - 1], _Method(self.blocks[l - 1])
        names = [n for n, _ in blk.named_parameters()]
        theta = {n: q.detach() for n, q in blk.named_parameters()}
        u, y, s = st.u[l - 1], st.y, st.y.shape[0]

        def pre(params):
            return torch.func.functional_call(call, {f"block.{n}": v for n, v in params.items()}, ("pre", u, y))

        kappa = self.lambdas[l - 1] * self.penalty.lip_a
        if blk.params_affine:
            offset = pre({n: torch.zeros_like(v) for n, v in theta.items()})
            jvp = lambda d: pre(d) - offset  # noqa: E731
        else:
            jvp = lambda d: torch.func.jvp(pre, (theta,), (d,))[1]  # noqa: E731
        _, adjoint = torch.func.vjp(pre, theta)  # for an affine a the adjoint is the same everywhere
        extra_grad, extra_hvp = self._quadratic_terms(st, l)

        def jt(v):  # J^T v / s, a mean over every process's samples
            out = adjoint(v / s)[0] if s else {n: torch.zeros_like(q) for n, q in theta.items()}
            return dict(zip(names, self._mean([out[n] for n in names])))

        def normal(d):
            jtj = jt(jvp(d))
            out = {n: kappa * jtj[n] + d[n] / tau for n in names}
            if extra_hvp is not None:
                for n, h in zip(names, extra_hvp([d[n] for n in names])):
                    out[n] += h
            return out

        dot = lambda a, b: sum(float((a[n] * b[n]).sum()) for n in names)  # noqa: E731
        g = jt(kappa * (self.acts[l - 1](st.a[l]) - st.z[l]))
        if extra_grad is not None:
            g = {n: g[n] + e for n, e in zip(names, extra_grad)}
        rhs = {n: -(g[n] + (theta[n] - q0) / tau) for n, q0 in zip(names, anchor)}
        step = {n: torch.zeros_like(v) for n, v in theta.items()}
        res, direction = {n: v.clone() for n, v in rhs.items()}, {n: v.clone() for n, v in rhs.items()}
        rr = first = dot(res, res)  # CG from D = 0: the residual is the rhs
        taken = 0
        while taken < iters and rr > 1e-12 * first:
            h = normal(direction)
            alpha = rr / dot(direction, h)
            for n in names:
                step[n].add_(direction[n], alpha=alpha)
                res[n].sub_(h[n], alpha=alpha)
            rr, previous = dot(res, res), rr
            for n in names:
                direction[n].mul_(rr / previous).add_(res[n])
            taken += 1
        params = dict(blk.named_parameters())
        if blk.params_affine:
            for n in names:
                params[n].add_(step[n])
            return taken

        def subproblem(a=None):
            return self.block_energy(st, l, a) + sum(
                float((params[n] - q0).pow(2).sum()) for n, q0 in zip(names, anchor)) / (2 * tau)

        f0 = subproblem(st.a[l])  # the pre-activation at theta is current (g above is built from it)
        slope = -dot(rhs, step)  # <grad, D> < 0: D minimises a convex model whose gradient at 0 is -rhs
        slack = 10 * torch.finfo(step[names[0]].dtype).eps * (abs(f0) + 1.0)
        saved = {n: v.clone() for n, v in theta.items()}
        gamma = 1.0
        for _ in range(30):
            for n in names:
                torch.add(saved[n], step[n], alpha=gamma, out=params[n].data)
            if subproblem() <= f0 + 1e-4 * gamma * slope + slack:
                return taken
            gamma *= 0.5
        for n in names:
            params[n].copy_(saved[n])
        return taken

    def _param_index(self, l: int, q: torch.Tensor) -> int:
        return next(i for i, p in enumerate(self.block_params(l)) if p is q)

    @torch.no_grad()
    def _ridge_post_step(self, V: torch.Tensor, z: torch.Tensor, e: torch.Tensor, V0, tau: float, at_anchor: bool) -> None:
        """The ISGM step in the state map V of a residual block (docs/method.md, section 5.5): with
        T = u_l - u_{l-1} fixed, minimise exactly

            (rho/(2s)) sum_i ||t_i - V' z_i||^2 + 1/(2 tau) ||V' - V^k||^2,

        a ridge problem. With Z the rows z_i (s x h), c = s/(rho tau) and E = T - Z V^k^T the residuals
        at the anchor (= the current residuals ``e`` plus Z (V - V^k)^T), the push-through identity
        gives V' = V^k + E^T (c I + Z Z^T)^{-1} Z: one s x s Cholesky factorisation. Batched over a
        stack when the tensors have a leading dimension. ``V0`` None: at the anchor, in place."""
        s = z.shape[-2]
        k = z @ z.transpose(-1, -2)
        k.diagonal(dim1=-2, dim2=-1).add_(s / (self.rho * tau))
        coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ z  # (c I + Z Z^T)^{-1} Z
        if V0 is None:
            V.add_(e.transpose(-1, -2) @ coef)
            return
        E = e if at_anchor else e + z @ (V - V0).transpose(-1, -2)
        torch.add(V0, E.transpose(-1, -2) @ coef, out=V)

    @torch.no_grad()
    def implicit_weight_step(self, st: LiftedState, l: int, anchor, tau: float, at_anchor: bool = False) -> None:
        """Majorised implicit step on a dense layer l (docs/method.md, section 5.5): minimise over
        W = [W_l, b_l] the model

            (1/s) sum_i [<g_i, (W' - W) x_i> + kappa/2 ||(W' - W) x_i||^2] + 1/(2 tau) ||W' - W^k||^2,

        x_i = [u_{l-1}^i; 1], g_i = lambda_l grad_a D_l = kappa (sigma(a_l^i) - z_l^i), kappa = lambda_l
        lip_a. It majorises the ISGM subproblem because sigma is 1-Lipschitz and is exact when sigma
        is the identity. With X = [U_{l-1}, 1] (s x n), R = G/kappa, D = W - W^k, c = s/(kappa tau),
        Woodbury in sample space gives [der]

            W' = W^k - (R^T - D X^T) (c I + X X^T)^{-1} X,

        an s x s Cholesky factorisation (s = batch size). ``at_anchor``: W = W^k, so D = 0; ``anchor``
        None: at the anchor, with no copy of it (the weights are updated in place)."""
        x_prev, r, *state = self._majorizer_inputs(st, l)  # data-parallel: the Gram matrix couples every process's samples
        s = x_prev.shape[0]
        blk = self.blocks[l - 1]
        if state:  # the ridge step in V first: it reads nothing that the step in (W, b) changes
            V = blk.post_weight()
            self._ridge_post_step(V, *state, None if anchor is None else anchor[self._param_index(l, V)], tau, at_anchor)
        W, b = blk.affine()
        kappa = self.lambdas[l - 1] * self.penalty.lip_a
        c = s / (kappa * tau)
        k = x_prev @ x_prev.t()
        k.add_(1.0).diagonal().add_(c)  # c I + X X^T
        if anchor is None:  # at the anchor, and no copy of it: update in place
            coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ r
            W.addmm_(coef.t(), x_prev, alpha=-1.0)
            b.sub_(coef.sum(dim=0))
            return
        W0, b0 = anchor[self._param_index(l, W)], anchor[self._param_index(l, b)]
        rhs = r if at_anchor else r - torch.addmm(b - b0, x_prev, (W - W0).t())  # R - X D^T
        coef = torch.cholesky_inverse(torch.linalg.cholesky(k)) @ rhs  # eigenvalues of k >= c
        torch.addmm(W0, coef.t(), x_prev, alpha=-1.0, out=W)
        torch.sub(b0, coef.sum(dim=0), out=b)
