"""The lifted Bregman objective of a network in unified form (METHOD.md section 4).

For a chain of layers with states x_0 (input), x_1, ..., x_L (auxiliary variables):

    E(theta, X) = (1/s) sum_i [ sum_{l=1..L} lambda_l B_l(x_l^i, W_l x_{l-1}^i + b_l)
                                + [free output] 1/2 ||x_L^i - t^i||^2
                                + alpha ||x_k^i||_1 ]

with x_L = t (the target) when the output is ``clamped`` (Wang & Benning 2023) or a free variable
with a data loss when ``free``. The problem is written per layer block (never a dense block
matrix): the solvers only call per-layer methods (``preactivation``, ``adjoint``,
``weight_gradient``, ``implicit_weight_step``, ``x_smooth_gradient``, ``x_prox``), so other
architectures and penalties can plug in here.

All methods run under ``torch.no_grad``: the Bregman scheme never differentiates an activation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .penalties import bregman_penalty, l1_penalty, soft_threshold


@dataclass
class LiftedState:
    """Auxiliary variables of one mini-batch: ``x[0]`` input, ``x[1..L]`` layer states (rows =
    samples), and the cached pre-activations ``a[l-1] = W_l x_{l-1} + b_l`` for the current X, W."""

    x: list[torch.Tensor]
    a: list[torch.Tensor]
    target: torch.Tensor


class LiftedProblem:
    """Lifted objective of an MLP-type network (``networks.MLP``), layer by layer.

    ``lambdas``: penalty weight per layer (length L); ``output``: ``clamped`` or ``free``;
    ``sparsity``, ``sparsity_layer``: alpha and the 1-based layer k of alpha ||x_k||_1.
    """

    def __init__(self, model, lambdas, output: str = "clamped", sparsity: float = 0.0, sparsity_layer=None):
        self.model = model
        self.L = model.depth
        self.acts = model.acts
        self.lambdas = [float(v) for v in lambdas]
        if len(self.lambdas) != self.L:
            raise ValueError(f"need {self.L} penalty weights, got {len(self.lambdas)}")
        if output not in ("clamped", "free"):
            raise ValueError(f"output={output!r}; allowed: clamped, free")
        self.output = output
        self.sparsity = float(sparsity)
        self.sparsity_layer = sparsity_layer if self.sparsity > 0 else None
        if self.sparsity_layer is not None:
            if self.output == "clamped" and self.sparsity_layer == self.L:
                raise ValueError("sparsity on the clamped output layer has no effect; use output=free")
            if not self.acts[self.sparsity_layer - 1].l1_composable:
                raise ValueError(
                    f"sparsity on layer {self.sparsity_layer} needs an activation with 0 in dPhi(0); "
                    f"{self.acts[self.sparsity_layer - 1].spec()} has not"
                )

    # ------------------------------------------------------------------ per-layer linear blocks
    def weight(self, l: int) -> torch.Tensor:
        """W_l (1-based l)."""
        return self.model.linears[l - 1].weight

    def bias(self, l: int) -> torch.Tensor:
        return self.model.linears[l - 1].bias

    def preactivation(self, l: int, x_prev: torch.Tensor) -> torch.Tensor:
        """a_l = W_l x_{l-1} + b_l."""
        return torch.addmm(self.bias(l), x_prev, self.weight(l).t())

    def adjoint(self, l: int, r: torch.Tensor) -> torch.Tensor:
        """W_l^T r (rows = samples)."""
        return r @ self.weight(l)

    def weight_gradient(self, l: int, x_prev: torch.Tensor, r: torch.Tensor):
        """Gradient of (lambda_l/s) sum_i B_l(x_l^i, W_l x_{l-1}^i + b_l) in (W_l, b_l), given the
        residual r = sigma(a_l) - x_l: (lambda_l/s) r^T x_{l-1} and (lambda_l/s) sum_i r_i."""
        c = self.lambdas[l - 1] / r.shape[0]
        return c * (r.t() @ x_prev), c * r.sum(dim=0)

    def implicit_weight_step(self, l: int, x_prev: torch.Tensor, r: torch.Tensor, anchor, tau: float,
                             at_anchor: bool = False) -> None:
        """Majorised implicit step on layer l: minimise over W = [W_l, b_l] the quadratic model

            (lambda_l/s) sum_i [<r_i, (W' - W) z_i> + 1/2 ||(W' - W) z_i||^2] + 1/(2 tau) ||W' - W^k||^2,

        z_i = [x_{l-1}^i; 1], r_i = sigma(a_l^i) - x_l^i. It majorises the ISGM subproblem because
        grad Phi* = sigma is 1-Lipschitz, and is its exact minimiser when sigma is the identity.
        With Z = [X_{l-1}, 1] (s x n), D = W - W^k, c = s/(lambda_l tau), Woodbury in sample space
        gives [der]

            W' = W^k - (R^T - D Z^T) (c I + Z Z^T)^{-1} Z,

        an s x s Cholesky solve instead of an n x n one (s = batch size). ``at_anchor``: W = W^k
        (first inner iteration), so D = 0 and its product is skipped."""
        s = x_prev.shape[0]
        W, b = self.weight(l), self.bias(l)
        W0, b0 = anchor
        c = s / (self.lambdas[l - 1] * tau)
        k = torch.addmm(torch.ones(s, s, device=x_prev.device, dtype=x_prev.dtype), x_prev, x_prev.t())
        k.diagonal().add_(c)  # c I + Z Z^T
        rhs = r if at_anchor else r - torch.addmm(b - b0, x_prev, (W - W0).t())  # R - Z D^T
        coef = torch.cholesky_solve(rhs, torch.linalg.cholesky(k))
        W.copy_(W0 - coef.t() @ x_prev)
        b.copy_(b0 - coef.sum(dim=0))

    # --------------------------------------------------------------------------- the objective
    @torch.no_grad()
    def init_state(self, u0: torch.Tensor, target: torch.Tensor) -> LiftedState:
        """Warm start by a forward pass: x_l = sigma_l(a_l), so every hidden penalty is zero; the
        output is the target when clamped, the forward output when free."""
        x, a = [u0], []
        for l in range(1, self.L + 1):
            a.append(self.preactivation(l, x[-1]))
            x.append(self.acts[l - 1](a[-1]))
        if self.output == "clamped":
            x[-1] = target.clone()
        return LiftedState(x=x, a=a, target=target)

    @torch.no_grad()
    def refresh(self, st: LiftedState, first: int = 1) -> None:
        """Recompute the cached pre-activations a_l = W_l x_{l-1} + b_l, l >= ``first``, for the
        current X, W (a_l with l < first are known to be current)."""
        for l in range(first, self.L + 1):
            st.a[l - 1] = self.preactivation(l, st.x[l - 1])

    @torch.no_grad()
    def layer_penalties(self, st: LiftedState) -> list[torch.Tensor]:
        """lambda_l B_l(x_l, a_l) averaged over the samples, for l = 1..L (uses the cached a)."""
        return [self.lambdas[l - 1] * bregman_penalty(self.acts[l - 1], st.x[l], st.a[l - 1]).mean() for l in range(1, self.L + 1)]

    @torch.no_grad()
    def objective(self, st: LiftedState) -> float:
        """E(theta, X) at the cached pre-activations."""
        value = sum(self.layer_penalties(st))
        if self.output == "free":
            value = value + 0.5 * (st.x[-1] - st.target).pow(2).sum(dim=1).mean()
        if self.sparsity_layer is not None:
            value = value + self.sparsity * l1_penalty(st.x[self.sparsity_layer]).mean()
        return float(value)

    @torch.no_grad()
    def layer_gaps(self, st: LiftedState) -> list[float]:
        """Mean over samples of ||x_l - sigma_l(W_l x_{l-1} + b_l)|| for l = 1..L."""
        return [float((st.x[l] - self.acts[l - 1](st.a[l - 1])).norm(dim=1).mean()) for l in range(1, self.L + 1)]

    # ------------------------------------------------------------------------ auxiliary steps
    def free_layers(self) -> range:
        """Indices l of the auxiliary variables that are optimised (hidden, and output if free)."""
        return range(1, self.L + (1 if self.output == "free" else 0))

    def x_smooth_gradient(self, st: LiftedState, l: int, x_next: torch.Tensor) -> torch.Tensor:
        """Gradient in x_l of the smooth part of E (per sample):

            -lambda_l a_l + lambda_{l+1} W_{l+1}^T (sigma_{l+1}(a_{l+1}) - x_{l+1})   (hidden l)
            -lambda_L a_L + (x_L - t)                                                 (free output)

        (Phi_l(x_l) is the non-smooth part, handled by its prox.)"""
        g = -self.lambdas[l - 1] * st.a[l - 1]
        if l < self.L:
            r = self.acts[l](st.a[l]) - x_next
            return g + self.lambdas[l] * self.adjoint(l + 1, r)
        return g + (st.x[l] - st.target)

    def x_prox(self, l: int, v: torch.Tensor, mu: float) -> torch.Tensor:
        """prox of mu (lambda_l Phi_l + alpha ||.||_1 [l = k]) at v; the l1 part is composed as
        prox_{mu lambda Phi} o S_{mu alpha}, exact in 1-D when 0 is in dPhi(0)."""
        if l == self.sparsity_layer:
            v = soft_threshold(v, mu * self.sparsity)
        return self.acts[l - 1].prox_phi(v, mu * self.lambdas[l - 1])

    def x_lipschitz(self, l: int, w_norm_sq: float) -> float:
        """Lipschitz constant in x_l of the smooth gradient: lambda_{l+1} ||W_{l+1}||^2 for hidden
        layers (sigma is 1-Lipschitz), 1 for a free output."""
        return self.lambdas[l] * w_norm_sq if l < self.L else 1.0
