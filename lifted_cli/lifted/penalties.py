"""Layer penalties D(x_l, a_l) of the lifted schemes (docs/method.md, sections 2 and 4).

Each penalty is summed over the units of a layer and returned per sample (shape (B,)).
"""

from __future__ import annotations

import torch

from ..nets.activations import ProxActivation


def bregman_penalty(act: ProxActivation, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """B_Psi(x, a) = Phi(x) + Phi*(a) - <x, a> summed over units (docs/method.md, section 2).

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


# ------------------------------------------------------------------------------ layer penalties
class LayerPenalty:
    """A layer penalty D(z, a) >= 0, zero iff z = sigma(a), split for proximal-gradient steps:

    * ``value(act, z, a)``: D per sample;
    * ``grad_a(act, z, a)``: its gradient in the pre-activation a (for W-steps and the X-step of
      the layer below); ``lip_a``: a bound on the Lipschitz constant of ``grad_a`` in a;
    * ``grad_z(act, z, a)``: the gradient in z of the smooth part; ``lip_z`` its Lipschitz constant;
    * ``prox_z(act, v, mu)``: the prox of mu times the non-smooth part in z.

    ``majorizable``: grad_a = lip_a (sigma(a) - z) with sigma 1-Lipschitz, so lip_a/2 ||a' - a||^2
    majorises the change in a (the exact majorised ISGM step of ``objective.py`` applies).
    ``activations``: the activation names the penalty is defined for (None: every activation)."""

    name = "base"
    lip_a = 1.0
    lip_z = 0.0
    majorizable = False
    activations: tuple | None = None

    def check(self, act: ProxActivation) -> None:
        """Raise ValueError when the penalty is not defined for this activation."""
        if self.activations is not None and act.name not in self.activations:
            raise ValueError(f"{self.name} penalties cover {', '.join(self.activations)} layers only, not {act.spec()}")

    def value(self, act, z, a):
        raise NotImplementedError

    def energy_a(self, act, z, a):
        """D per sample up to terms that do not depend on a (for line searches over the weights)."""
        return self.value(act, z, a)

    def grad_a(self, act, z, a):
        raise NotImplementedError

    def grad_z(self, act, z, a):
        raise NotImplementedError

    def prox_z(self, act, v, mu):
        return v


class BregmanPenalty(LayerPenalty):
    """c B_Psi(z, a) = c (Phi(z) + Phi*(a) - <z, a>) (Wang & Benning 2023; docs/method.md, section 2):
    smooth part in z is -c <z, a>, non-smooth part c Phi(z) (its prox is the activation's prox of
    mu Phi); grad_a = c (sigma(a) - z). No derivative of sigma is used."""

    name = "bregman"
    majorizable = True

    def __init__(self, factor: float = 1.0):
        self.factor = float(factor)
        self.lip_a = self.factor

    def value(self, act, z, a):
        return self.factor * bregman_penalty(act, z, a)

    def energy_a(self, act, z, a):
        """c (Phi*(a) - <z, a>): B without the a-independent Phi(z) (no domain checks needed)."""
        return self.factor * (act.phi_conj(a) - z * a).sum(dim=-1)

    def grad_a(self, act, z, a):
        return self.factor * (act(a) - z)

    def grad_z(self, act, z, a):
        return -self.factor * a

    def prox_z(self, act, v, mu):
        return act.prox_phi(v, mu * self.factor)


class FenchelPenalty(BregmanPenalty):
    """Fenchel lifted networks (Gu, Askari, El Ghaoui 2020) for ReLU layers:

        D(z, a) = 2 (1/2 ||z||^2 + 1/2 ||max(a, 0)||^2 - <z, a>),   z >= 0,

    the factor 2 of the official code (docs/method.md, section 4); the constraint z >= 0 and 1/2||z||^2
    are the non-smooth part (prox: max(0, v/(1+2 mu))). Identity layers (the linear read-out of Gu
    et al.) get the same weighting, 2 * 1/2 ||z - a||^2. Other activations are not covered."""

    name = "fenchel"
    activations = ("relu", "identity")

    def __init__(self):
        super().__init__(factor=2.0)

    def check(self, act):
        if act.name not in self.activations:
            raise ValueError(f"Fenchel lifted networks cover {' and '.join(self.activations)} layers only, not {act.spec()}; "
                             "use scheme=bregman for other proximal activations")


class QuadraticPenalty(LayerPenalty):
    """MAC quadratic penalty (Carreira-Perpinan & Wang 2014): 1/2 ||z - sigma(a)||^2 (the weight
    mu is the layer weight, raised over training by the scheme). Smooth in z (no prox); grad_a =
    sigma'(a) (sigma(a) - z) uses the activation's (sub)gradient, taken by autograd through sigma.
    ``lip_a`` = 1 bounds it for piecewise-linear 1-Lipschitz sigma (ReLU, clamp, soft-threshold)."""

    name = "mac"
    lip_z = 1.0

    def value(self, act, z, a):
        return 0.5 * (z - act(a)).pow(2).sum(dim=-1)

    def grad_a(self, act, z, a):
        with torch.enable_grad():
            a_ = a.detach().requires_grad_(True)
            s = act(a_)
            (g,) = torch.autograd.grad(s, a_, grad_outputs=(s - z).detach())
        return g

    def grad_z(self, act, z, a):
        return z - act(a)
