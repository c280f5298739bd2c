"""Blocks of networks in the unified lifted form (docs/method.md, section 3).

Every architecture is a chain of blocks l = 1..L acting on states u_0, u_1, ..., u_L:

    a_l = W_l u_{l-1} + b_l(y)         (pre-activation; ``Block.pre``, affine in u_{l-1})
    z_l = sigma_l(a_l)                 (proximal activation; auxiliary variable of the lifted problem)
    u_l = S_l u_{l-1} + V_l z_l        (``Block.post``; S_l = I for a skip connection, else 0)

and the output ``x_net = K(u_L, y)`` (``UnifiedNet.readout``). This is ``M u = V prox_Psi(W u + b)``
with M bidiagonal: one row block per layer. A *dense* block has ``u_l = z_l`` (V = I, no skip), so
the state is the auxiliary variable itself; the other blocks keep u_l as a second auxiliary
variable, tied to z_l by the architecture penalty rho/2 ||u_l - S_l u_{l-1} - V_l z_l||^2.

The architectures built from these blocks are in ``architectures.py``.

Lifted schemes only call the block methods (``pre``, ``pre_adjoint``, ``post``, ``post_adjoint``,
``project``) and never differentiate an activation; back-propagation sees an ordinary ``nn.Module``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .activations import ProxActivation

#: ``arch.init``: the architecture's own draw (PyTorch's layer defaults), or weights redrawn with the
#: gain of the activation they feed: He normal (std gain / sqrt(fan_in)), orthogonal, Glorot normal
INITS = ("default", "kaiming", "orthogonal", "xavier")


@torch.no_grad()
def draw(q: torch.Tensor, init: str, gain: float) -> None:
    """Redraw the weight ``q`` (rows: outputs; fan-in: the product of the other dimensions, torch's
    convention) by ``init`` (one of ``INITS`` but default)."""
    if init == "kaiming":
        q.normal_(0.0, gain / math.sqrt(q[0].numel()))
    elif init == "orthogonal":
        nn.init.orthogonal_(q, gain)
    elif init == "xavier":
        nn.init.xavier_normal_(q, gain)
    else:
        raise ValueError(f"init={init!r}; allowed: {', '.join(INITS[1:])}")


class Block(nn.Module):
    """One layer equation. ``has_state``: u_l is not z_l (a second auxiliary variable);
    ``skip``: S_l = I. ``in_dim``/``out_dim``: sizes of u_{l-1} and u_l; ``z_dim``: size of z_l.

    A block states its maps once. ``batched``: they also accept parameters and states with a
    leading layer dimension (weights (d, m, n), states (d, s, n)), so that d equal blocks run in one
    call (``lifted.stacks``); otherwise the lifted solvers evaluate d blocks with ``torch.func.vmap``."""

    has_state = False
    skip = False
    batched = False

    def __init__(self, act: ProxActivation):
        super().__init__()
        self.act = act

    def pre(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """a_l = W_l u + b_l(y) (rows = samples)."""
        raise NotImplementedError

    def pre_linear(self, v: torch.Tensor) -> torch.Tensor:
        """W_l v (the linear part of ``pre``), for norm estimates."""
        raise NotImplementedError

    def pre_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """W_l^T r."""
        raise NotImplementedError

    def post(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """u_l = S_l u_{l-1} + V_l z_l."""
        return z

    def post_linear(self, z: torch.Tensor) -> torch.Tensor:
        """V_l z."""
        return z

    def post_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """V_l^T r."""
        return r

    def forward(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.post(u, self.act(self.pre(u, y)))

    @torch.no_grad()
    def project(self) -> None:
        """Restore the block's parameter constraints after an update (none by default)."""

    @torch.no_grad()
    def initialize(self, init: str) -> None:
        """Redraw the weights by ``init`` with the gain of the block's activation; biases 0."""
        for q in self.parameters():
            if q.dim() == 1:
                q.zero_()
            else:
                draw(q, init, self.act.gain)

    def affine(self):
        """(W, b) when a_l = W u + b with plain parameters W, b (enables the exact majorised ISGM
        step of ``lifted.LiftedProblem``), else None."""
        return None

    #: the pre-activation is affine in the block's parameters (all of them): ISGM's majorised step then
    #: applies in the operator's own form (``LiftedProblem.operator_weight_step``), where ``affine``
    #: has no closed form (convolutions)
    params_affine = False
    #: the pre-activation is a smooth but not affine function of the block's parameters: ISGM's operator
    #: step then minimises the majoriser of its linearisation (Gauss-Newton) and line-searches the step
    params_smooth = False

    def post_weight(self):
        """V when u_l = S_l u_{l-1} + V z_l with V a plain parameter used nowhere else: the
        architecture term rho/2 ||u_l - S_l u_{l-1} - V z_l||^2 is then a ridge problem in V (solved
        exactly by ISGM's W-step); else None."""
        return None

    def stack_key(self) -> tuple:
        """What, besides the class, the activation and the parameter shapes, fixes the function the
        block computes of its parameters (blocks that agree can be stacked; ``lifted.stacks``)."""
        return ()


def linear(u: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """u W^T + b in one fused kernel, for one block (u (s, n), W (m, n), b (m,)) or d stacked ones
    (u (d, s, n), W (d, m, n), b (d, m))."""
    if W.dim() == 2:
        return torch.addmm(b, u, W.t())
    return torch.baddbmm(b.unsqueeze(-2), u, W.mT)


class DenseBlock(Block):
    """u_l = sigma(W u_{l-1} + b)."""

    batched = True

    def __init__(self, n_in: int, n_out: int, act: ProxActivation):
        super().__init__(act)
        self.linear = nn.Linear(n_in, n_out)
        self.in_dim, self.out_dim, self.z_dim = n_in, n_out, n_out

    def pre(self, u, y):
        return linear(u, self.linear.weight, self.linear.bias)

    def pre_linear(self, v):
        return v @ self.linear.weight.mT

    def pre_adjoint(self, r):
        return r @ self.linear.weight

    def affine(self):
        return self.linear.weight, self.linear.bias


class ConvBlock(Block):
    """u_l = sigma(W u_{l-1} + b) with W a stride-2 convolution of the image-shaped state
    (c_in x side x side, flattened), or (``transposed``) the transposed convolution that maps back up.
    Kernel k even, padding (k - 2)/2: a convolution halves the side, a transposed one doubles it.
    ``pre_adjoint`` is the exact adjoint of ``pre_linear`` (conv_transpose2d / conv2d with the same weight)."""

    def __init__(self, c_in: int, c_out: int, side: int, kernel: int, act: ProxActivation, transposed: bool = False):
        super().__init__(act)
        if kernel < 2 or kernel % 2:
            raise ValueError(f"kernel {kernel}: a stride-2 convolution block needs an even kernel >= 2")
        if not transposed and side % 2:
            raise ValueError(f"a stride-2 convolution needs an even side, got {side}")
        self.transposed, self.stride, self.padding = transposed, 2, (kernel - 2) // 2
        cls = nn.ConvTranspose2d if transposed else nn.Conv2d
        self.conv = cls(c_in, c_out, kernel, stride=2, padding=self.padding)
        out = 2 * side if transposed else side // 2
        self.shape_in, self.shape_out = (c_in, side, side), (c_out, out, out)
        self.in_dim, self.out_dim = c_in * side * side, c_out * out * out
        self.z_dim = self.out_dim

    params_affine = True  # a_l = conv(u; W) + b

    def stack_key(self):
        return (self.transposed, self.stride, self.padding, self.shape_in, self.shape_out)

    def _conv(self, v, transposed):
        op = F.conv_transpose2d if transposed else F.conv2d
        return op(v, self.conv.weight, None, self.stride, self.padding)

    def pre(self, u, y):
        return self.conv(u.reshape(-1, *self.shape_in)).flatten(1)

    def pre_linear(self, v):
        return self._conv(v.reshape(-1, *self.shape_in), self.transposed).flatten(1)

    def pre_adjoint(self, r):
        return self._conv(r.reshape(-1, *self.shape_out), not self.transposed).flatten(1)


class ResidualBlock(DenseBlock):
    """u_k = u_{k-1} + V sigma(W u_{k-1} + b); V = W^T when ``tied``. The pre-activation is the
    dense block's; the state adds the skip connection."""

    has_state = True
    skip = True

    def __init__(self, width: int, act: ProxActivation, tied: bool = False):
        super().__init__(width, width, act)
        self.tied = tied
        if not tied:
            self.V = nn.Parameter(torch.empty(width, width))
            nn.init.kaiming_uniform_(self.V, a=math.sqrt(5))
            self.V.data.mul_(0.1)  # near-identity blocks at initialisation

    def stack_key(self):
        return (self.tied,)

    @torch.no_grad()
    def initialize(self, init: str) -> None:
        """W and b as a dense block; V drawn with gain 0.1, so the blocks start near the identity at
        any depth (as the default draw does)."""
        super().initialize(init)
        if not self.tied:
            draw(self.V, init, 0.1)

    def _v(self):
        return self.linear.weight.mT if self.tied else self.V

    def post_weight(self):
        return None if self.tied else self.V  # tied: V = W^T couples the two steps

    def post(self, u, z):
        return u + self.post_linear(z)

    def post_linear(self, z):
        return z @ self._v().mT

    def post_adjoint(self, r):
        return r @ self._v()


def stiefel_project(W: torch.Tensor, tol: float = 1e-6, max_iter: int = 30) -> torch.Tensor:
    """Nearest matrix with orthonormal columns (the polar factor of W, m >= n), by the
    Newton-Schulz iteration X <- X (3 I - G)/2, G = X^T X (started from W/||W||_2 when far).
    An eigenvalue 1 + e of G becomes 1 - 3/4 e^2 + e^3/4, so from e = ||G - I||_F <= 3e-3 (a
    bound on the spectral error) one more step lands below 7e-6 and is returned unchecked (two
    matrix products after a small update). The SVD polar factor U V^T is the fallback when it does not converge."""
    W = W.detach()
    eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
    X = W
    G = X.t() @ X
    err = float(torch.linalg.matrix_norm(G - eye))
    if err > 0.5:  # far: make sure every singular value is below sqrt(3), where the iteration converges
        v = torch.ones(G.shape[0], dtype=W.dtype, device=W.device)
        for _ in range(30):  # power iteration on G (n x n, cheap) for s_max^2
            v = G @ v
            v = v / v.norm()
        s2 = 1.05 * float(v @ (G @ v))
        if s2 > 2.5:
            X, G = X / s2**0.5, G / s2
            err = float(torch.linalg.matrix_norm(G - eye))
    for _ in range(max_iter):
        if err <= tol:
            return X
        X = X @ (1.5 * eye - 0.5 * G)
        if err <= 3e-3:
            return X
        G = X.t() @ X
        err_new = float(torch.linalg.matrix_norm(G - eye))
        if err_new > 0.9 * err:
            break
        err = err_new
    U, _, Vh = torch.linalg.svd(W, full_matrices=False)
    return U @ Vh


class ProxBlock(Block):
    """Proximal (Parseval) layer u_l = W^T sigma(W u_{l-1} + b), W (hidden x dim), W^T W = I."""

    has_state = True

    def __init__(self, dim: int, hidden: int, act: ProxActivation):
        super().__init__(act)
        if hidden < dim:
            raise ValueError(f"arch.hidden={hidden}: W^T W = I needs hidden >= {dim}")
        self.weight = nn.Parameter(torch.empty(hidden, dim))
        nn.init.orthogonal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.in_dim = self.out_dim = dim
        self.z_dim = hidden

    def pre(self, u, y):
        return torch.addmm(self.bias, u, self.weight.t())

    def pre_linear(self, v):
        return v @ self.weight.t()

    def pre_adjoint(self, r):
        return r @ self.weight

    def post(self, u, z):
        return z @ self.weight

    def post_linear(self, z):
        return z @ self.weight

    def post_adjoint(self, r):
        return r @ self.weight.t()

    @torch.no_grad()
    def project(self):
        self.weight.copy_(stiefel_project(self.weight))


class AnalysisOperator(nn.Module):
    """The learnable L of an unrolled PNN layer: images (B, side^2) -> dual variables (B, ``dim``), with
    adjoint L^*; scaled to ||L||_2 = 1 at initialisation (power iteration)."""

    dim: int
    side: int

    @torch.no_grad()
    def _normalise(self) -> None:
        v = torch.randn(1, self.side * self.side, generator=torch.Generator().manual_seed(0)).to(self.weight)
        for _ in range(50):
            v = self.adjoint(self(v))
            v = v / v.norm()
        self.weight.div_(self(v).norm())

    def adjoint(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseAnalysis(AnalysisOperator):
    """L = a ``dual_dim`` x side^2 matrix."""

    def __init__(self, dual_dim: int, side: int):
        super().__init__()
        self.side = side
        self.weight = nn.Parameter(torch.randn(dual_dim, side * side) / side)
        self.dim = dual_dim
        self._normalise()

    def forward(self, x):
        return x @ self.weight.t()

    def adjoint(self, u):
        return u @ self.weight


class ConvAnalysis(AnalysisOperator):
    """L = ``channels`` filters of size ``kernel`` (zero padding, dim = channels * side^2); L^* is the
    transposed convolution."""

    def __init__(self, channels: int, kernel: int, side: int):
        super().__init__()
        self.side = side
        self.weight = nn.Parameter(torch.randn(channels, 1, kernel, kernel) / kernel)
        self.dim = channels * side * side
        self._normalise()

    def forward(self, x):
        out = F.conv2d(x.reshape(-1, 1, self.side, self.side), self.weight, padding=self.weight.shape[-1] // 2)
        return out.reshape(x.shape[0], -1)

    def adjoint(self, u):
        # the transposed convolution, written as a convolution with the flipped filters (same
        # result for stride 1 and "same" padding, and several times faster than conv_transpose2d on CPU)
        c = self.weight.shape[0]
        flipped = self.weight.flip(2, 3).transpose(0, 1)
        out = F.conv2d(u.reshape(-1, c, self.side, self.side), flipped, padding=self.weight.shape[-1] // 2)
        return out.reshape(u.shape[0], -1)


class UnrolledBlock(Block):
    """u_k = prox_{tau g*}(u_{k-1} - tau L (L^* u_{k-1} - y)), g = lam ||.||_1, so the activation is
    clamp to [-lam, lam]: a dense block with W = I - tau L L^* and bias tau L y."""

    def __init__(self, op: AnalysisOperator, tau: float, act: ProxActivation):
        super().__init__(act)
        self.op = op
        self.tau = tau
        self.in_dim = self.out_dim = self.z_dim = op.dim

    params_smooth = True  # a = u - tau L (L^* u - y) is quadratic in L

    def stack_key(self):
        return (self.tau, type(self.op))

    def pre(self, u, y):
        return self.pre_linear(u) + self.tau * self.op(y)

    def pre_linear(self, v):
        return v - self.tau * self.op(self.op.adjoint(v))

    def pre_adjoint(self, r):  # I - tau L L^* is self-adjoint
        return self.pre_linear(r)

    @torch.no_grad()
    def initialize(self, init: str) -> None:
        """L redrawn, then scaled to ||L|| = 1 again (the step size tau assumes it)."""
        draw(self.op.weight, init, 1.0)
        self.op._normalise()


class UnifiedNet(nn.Module):
    """x_net = K(u_L, y) where u_l = post_l(u_{l-1}, sigma_l(pre_l(u_{l-1}, y))), u_0 = ``input_state(y)``.

    ``readout_op``: None (K reads u_L) or the analysis operator L_K of x_net = y - L_K^* u_K."""

    def __init__(self, blocks: list[Block], readout_op: AnalysisOperator | None = None, zero_input: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.readout_op = readout_op
        self.zero_input = zero_input

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def acts(self) -> list[ProxActivation]:
        return [b.act for b in self.blocks]

    @property
    def readout_identity(self) -> bool:
        return self.readout_op is None

    def input_state(self, y: torch.Tensor) -> torch.Tensor:
        """u_0: the flattened input, or zeros (the dual variable of an unrolled PNN)."""
        if self.zero_input:
            return y.new_zeros(y.shape[0], self.blocks[0].in_dim)
        return y

    def readout(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x_net = K(u_L, y): u_L, or y - L_K^* u_K."""
        return u if self.readout_op is None else y - self.readout_op.adjoint(u)

    def readout_linear(self, u: torch.Tensor) -> torch.Tensor:
        """The linear part u -> K(u, y) - K(0, y): u, or -L_K^* u."""
        return u if self.readout_op is None else -self.readout_op.adjoint(u)

    def readout_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Adjoint of u -> K(u, y) - K(0, y): r, or -L_K r."""
        return r if self.readout_op is None else -self.readout_op(r)

    def forward_states(self, y_flat: torch.Tensor) -> list[torch.Tensor]:
        """All states [u_0, ..., u_L] of the forward pass (rows = samples)."""
        states = [self.input_state(y_flat)]
        for block in self.blocks:
            states.append(block(states[-1], y_flat))
        return states

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """x_net = N(y): flattens each sample; the output takes the input's shape when the sizes
        agree (image to image), else it stays flat."""
        y_flat = y.flatten(1)
        out = self.readout(self.forward_states(y_flat)[-1], y_flat)
        return out.reshape(y.shape) if out.shape[1] == y.shape[1:].numel() else out

    @torch.no_grad()
    def project(self) -> None:
        for block in self.blocks:
            block.project()

    @torch.no_grad()
    def initialize(self, init: str) -> None:
        """``arch.init``: keep the architecture's own draw (``default``) or redraw every block's
        weights, then restore the constraints (proxnet's orthonormal columns)."""
        if init != "default":
            for block in self.blocks:
                block.initialize(init)
            self.project()
