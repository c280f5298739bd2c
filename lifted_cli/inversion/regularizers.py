"""Regularisers J(u) of the inversion (option ``regularizer``; docs/method.md, section 6.4), images as
rows u of (B, side*side).

A regulariser is an object with ``value(u)`` (J per image) and ``prox(v, t)`` (the prox of t J), as
deepinv's priors have ``fn`` and ``prox``. Total variation has no closed-form prox: it is written
J(u) = g(D u) with the linear ``operator`` D (forward differences) and ``dual_projection`` (the prox
of the conjugate g*, a projection), which primal-dual u-steps use instead. ``indicator``: J is the
indicator of a set (0 inside, inf outside), so a gradient method projects instead of adding it.
"""

from __future__ import annotations

import math

import torch

from ..lifted.penalties import soft_threshold
from ..registry import Registry

REGULARIZERS = Registry("regularizer")


# ------------------------------------------------------------------------------- image operators
def grad2d(u: torch.Tensor) -> torch.Tensor:
    """Forward differences with Neumann boundary (zero difference at the last row/column):
    (B, H, W) -> (B, 2, H, W)."""
    g = torch.zeros(u.shape[0], 2, *u.shape[1:], dtype=u.dtype, device=u.device)
    g[:, 0, :-1, :] = u[:, 1:, :] - u[:, :-1, :]
    g[:, 1, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return g


def grad2d_adjoint(p: torch.Tensor) -> torch.Tensor:
    """grad^T p = -div p, the exact adjoint of ``grad2d``."""
    out = torch.zeros(p.shape[0], *p.shape[2:], dtype=p.dtype, device=p.device)
    out[:, :-1, :] -= p[:, 0, :-1, :]
    out[:, 1:, :] += p[:, 0, :-1, :]
    out[:, :, :-1] -= p[:, 1, :, :-1]
    out[:, :, 1:] += p[:, 1, :, :-1]
    return out


class Regularizer:
    """J(u) per image; ``operator``: None, or the linear map D of J(u) = g(D u) (see module doc)."""

    operator = None
    indicator = False

    def __init__(self, side: int):
        self.side = side

    def value(self, u: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        raise NotImplementedError

    def prox(self, v: torch.Tensor, t: float) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no closed-form prox; use its operator")


@REGULARIZERS.register("tv")
class TotalVariation(Regularizer):
    """Isotropic TV, J(u) = sum_pixels |(grad u)_ij| = g(grad u), g = the (2,1)-norm; its conjugate is
    the indicator of the (2, inf)-ball, whose prox is the projection ``dual_projection``.
    ``smoothing`` eps: sum sqrt(|grad u|^2 + eps^2) - eps (for gradient methods)."""

    norm_sq = 8.0  # ||grad||^2 <= 8 for forward differences in 2-D

    def __init__(self, side: int):
        super().__init__(side)
        self.operator = self

    def value(self, u, smoothing=0.0):
        g = grad2d(u.reshape(-1, self.side, self.side))
        mag = (g.pow(2).sum(dim=1) + smoothing**2).sqrt() - smoothing
        return mag.flatten(1).sum(dim=1)

    def apply(self, u: torch.Tensor) -> torch.Tensor:
        """D u: (B, side*side) -> (B, 2, side, side)."""
        return grad2d(u.reshape(-1, self.side, self.side))

    def adjoint(self, p: torch.Tensor) -> torch.Tensor:
        """D^T p, rows of side*side."""
        return grad2d_adjoint(p).reshape(p.shape[0], -1)

    @staticmethod
    def dual_projection(p: torch.Tensor, radius: float) -> torch.Tensor:
        """Projection onto {||p_ij||_2 <= radius for every pixel}."""
        return p / (p.norm(dim=1, keepdim=True) / radius).clamp(min=1.0)


@REGULARIZERS.register("l1")
class L1(Regularizer):
    """J(u) = ||u||_1, prox: soft-thresholding."""

    def value(self, u, smoothing=0.0):
        return u.abs().sum(dim=1)

    def prox(self, v, t):
        return soft_threshold(v, t)


@REGULARIZERS.register("l2")
class L2(Regularizer):
    """J(u) = 1/2 ||u||^2, prox: v / (1 + t)."""

    def value(self, u, smoothing=0.0):
        return 0.5 * u.pow(2).sum(dim=1)

    def prox(self, v, t):
        return v / (1.0 + t)


@REGULARIZERS.register("box")
class Box(Regularizer):
    """J = indicator of [0, 1]^n, prox: the clamp."""

    indicator = True

    def value(self, u, smoothing=0.0):
        inside = ((u >= 0) & (u <= 1)).all(dim=1)
        return torch.where(inside, torch.zeros_like(inside, dtype=u.dtype), torch.full_like(inside, math.inf, dtype=u.dtype))

    def prox(self, v, t):
        return v.clamp(0.0, 1.0)


def build_regularizer(name: str, side: int) -> Regularizer:
    return REGULARIZERS.get(name, key="regularizer").builder(side)
