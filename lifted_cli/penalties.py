"""Layer penalties D(x_l, a_l) of the lifted schemes (METHOD.md sections 2 and 4).

Each penalty is summed over the units of a layer and returned per sample (shape (B,)).
"""

from __future__ import annotations

import torch

from .activations import ProxActivation


def bregman_penalty(act: ProxActivation, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """B_Psi(x, a) = Phi(x) + Phi*(a) - <x, a> summed over units (METHOD.md section 2).

    Non-negative, zero iff x = sigma(a), convex in x and in a, and grad_a B = sigma(a) - x: no
    derivative of sigma is involved.
    """
    return act.bregman(x, a).sum(dim=-1)


def l1_penalty(x: torch.Tensor) -> torch.Tensor:
    """||x||_1 per sample."""
    return x.abs().sum(dim=-1)


def soft_threshold(v: torch.Tensor, t) -> torch.Tensor:
    """S_t(v) = sign(v) max(|v| - t, 0), the prox of t ||.||_1."""
    return torch.sign(v) * torch.relu(v.abs() - t)
