"""Proximal activation functions (docs/method.md, section 1).

Every activation is a proximal map ``sigma = prox_Psi`` of a proper, convex, lsc function ``Psi``.
With ``Phi = 1/2 ||.||^2 + Psi`` (1-strongly convex) and its conjugate ``Phi*``, ``grad Phi* = sigma``.
Each class gives, elementwise:

* ``__call__(z)``: sigma(z) (plain torch ops, so back-propagation can differentiate it);
* ``psi(u)``: Psi(u), ``+inf`` outside its domain;
* ``phi_conj(z)``: Phi*(z) (used by tests and diagnostics);
* ``prox_phi(v, mu)``: prox of mu*Phi at v, ``argmin_u 1/2 (u - v)^2 + mu Phi(u)`` (the table of
  docs/method.md, section 1; ``mu`` may be a tensor that broadcasts);
* ``bregman(y, z)``: the Bregman (Fenchel-Young) penalty B_Psi(y, z) (docs/method.md, section 2).

Activations are written as specification strings, parameters after colons: ``identity``, ``relu``,
``leaky_relu:0.01``, ``soft_threshold:0.1``, ``clamp:0:1``, ``tanh``, ``sigmoid``. A new activation
is a subclass registered in ``ACTIVATIONS`` with the names of its parameters::

    @ACTIVATIONS.register("my_act", params=("alpha",))
    class MyActivation(ProxActivation): ...
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..registry import Registry

_INF = math.inf

#: the activations by name; ``info['params']``: the names of the spec's numeric parameters
ACTIVATIONS = Registry("activation")


class ProxActivation:
    """Base class; subclasses define ``__call__``, ``psi``, ``phi_conj`` and ``prox_phi``."""

    name = "base"
    #: True when 0 is in the subdifferential of Phi at 0; then (1-D lemma)
    #: prox_{mu Phi + beta |.|} = prox_{mu Phi} o S_beta, used for l1 regularisers on auxiliaries.
    l1_composable = True
    #: the factor by which weights feeding this activation are scaled at initialisation so that a
    #: layer keeps the second moment of its input (``arch.init``; torch.nn.init.calculate_gain)
    gain = 1.0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def psi(self, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def phi(self, u: torch.Tensor) -> torch.Tensor:
        """Phi(u) = u^2/2 + Psi(u)."""
        return 0.5 * u * u + self.psi(u)

    def phi_conj(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prox_phi(self, v: torch.Tensor, mu) -> torch.Tensor:
        raise NotImplementedError

    def bregman(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """B_Psi(y, z) = Phi(y) + Phi*(z) - y z, elementwise, in the implementation form [der]

            B_Psi(y, z) = 1/2 (y - z)^2 + Psi(y) - 1/2 (sigma(z) - z)^2 - Psi(sigma(z)),

        which follows from the Fenchel equality Phi*(z) = sigma(z) z - Phi(sigma(z)) and avoids the
        cancellation of large terms in Phi(y) + Phi*(z) - y z. Its gradient in z is sigma(z) - y.
        """
        s = self(z)
        return 0.5 * (y - z) ** 2 - 0.5 * (s - z) ** 2 + self.psi(y) - self.psi(s)

    def in_domain(self, u: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(self.psi(u))

    def project_range(self, u: torch.Tensor) -> torch.Tensor:
        """Projection onto the closed interval [sigma(-inf), sigma(+inf)], the closure of the range of
        sigma = prox_Psi, which is the closure of dom Psi (1-D proximal maps are monotone): the only
        outputs y with B_Psi(y, z) finite (up to the boundary). For relu it is max(y, 0), for clamp:l:h
        the clamp, for identity, leaky_relu and soft_threshold the identity."""
        ends = self(torch.tensor([-_INF, _INF], dtype=u.dtype, device=u.device))
        lo, hi = float(ends[0]), float(ends[1])
        if not (math.isfinite(lo) or math.isfinite(hi)):
            return u
        return u.clamp(min=lo if math.isfinite(lo) else None, max=hi if math.isfinite(hi) else None)

    def spec(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<activation {self.spec()}>"


@ACTIVATIONS.register("identity", params=())
class Identity(ProxActivation):
    """sigma(z) = z, Psi = 0, Phi*(z) = z^2/2, prox_{mu Phi}(v) = v/(1+mu)."""

    name = "identity"

    def __call__(self, z):
        return z

    def psi(self, u):
        return torch.zeros_like(u)

    def phi_conj(self, z):
        return 0.5 * z * z

    def prox_phi(self, v, mu):
        return v / (1 + mu)

    def bregman(self, y, z):
        return 0.5 * (y - z) ** 2  # the general form with Psi = 0 and sigma(z) = z, in one pass


@ACTIVATIONS.register("relu", params=())
class ReLU(ProxActivation):
    """sigma(z) = max(z, 0), Psi = indicator of u >= 0, Phi*(z) = max(z,0)^2/2,
    prox_{mu Phi}(v) = max(0, v/(1+mu))."""

    name = "relu"
    gain = math.sqrt(2.0)

    def __call__(self, z):
        return torch.relu(z)

    def psi(self, u):
        return torch.where(u >= 0, torch.zeros_like(u), torch.full_like(u, _INF))

    def phi_conj(self, z):
        return 0.5 * torch.relu(z) ** 2

    def prox_phi(self, v, mu):
        return torch.relu(v / (1 + mu))

    def bregman(self, y, z):
        # the general form with Psi(sigma(z)) = 0 and Psi(y) = 0 on y >= 0 (+inf elsewhere), the same values
        # in fewer passes
        s = torch.relu(z)
        return torch.where(y >= 0, 0.5 * (y - z) ** 2 - 0.5 * (s - z) ** 2, _INF)


@ACTIVATIONS.register("leaky_relu", params=("slope",))
class LeakyReLU(ProxActivation):
    """sigma(z) = z (z >= 0), a z (z < 0) with slope a in (0, 1);
    Psi(u) = (1/a - 1) u^2/2 for u < 0 else 0; Phi*(z) = z^2/2 (z>=0), a z^2/2 (z<0);
    prox_{mu Phi}(v) = v/(1+mu) if v >= 0 else v/(1+mu/a)."""

    name = "leaky_relu"

    def __init__(self, slope: float = 0.01):
        if not 0 < slope < 1:
            raise ValueError(f"leaky_relu slope {slope} must be in (0, 1)")
        self.a = float(slope)
        self.gain = math.sqrt(2.0 / (1.0 + self.a**2))

    def __call__(self, z):
        return F.leaky_relu(z, self.a)

    def psi(self, u):
        return torch.where(u < 0, (1 / self.a - 1) * 0.5 * u * u, torch.zeros_like(u))

    def phi_conj(self, z):
        return torch.where(z >= 0, 0.5 * z * z, 0.5 * self.a * z * z)

    def prox_phi(self, v, mu):
        return torch.where(v >= 0, v / (1 + mu), v / (1 + mu / self.a))

    def spec(self):
        return f"leaky_relu:{self.a:g}"


def huber(z, alpha):
    """huber_alpha(z) = z^2/2 if |z| <= alpha else alpha |z| - alpha^2/2."""
    a = z.abs()
    return torch.where(a <= alpha, 0.5 * z * z, alpha * a - 0.5 * alpha * alpha)


@ACTIVATIONS.register("soft_threshold", params=("alpha",))
class SoftThreshold(ProxActivation):
    """sigma = S_alpha (soft-thresholding), Psi(u) = alpha |u|, Phi*(z) = z^2/2 - huber_alpha(z),
    prox_{mu Phi}(v) = S_{mu alpha}(v)/(1+mu)."""

    name = "soft_threshold"

    def __init__(self, alpha: float = 0.1):
        if not alpha > 0:
            raise ValueError(f"soft_threshold alpha {alpha} must be > 0")
        self.alpha = float(alpha)

    def __call__(self, z):
        return F.softshrink(z, self.alpha)

    def psi(self, u):
        return self.alpha * u.abs()

    def phi_conj(self, z):
        return 0.5 * z * z - huber(z, self.alpha)

    def prox_phi(self, v, mu):
        return torch.sign(v) * torch.relu(v.abs() - mu * self.alpha) / (1 + mu)

    def spec(self):
        return f"soft_threshold:{self.alpha:g}"


@ACTIVATIONS.register("clamp", params=("low", "high"))
class Clamp(ProxActivation):
    """sigma(z) = clip(z, l, h) (hard-tanh for [-1, 1]), Psi = indicator of [l, h],
    Phi*(z) = z clip(z) - clip(z)^2/2, prox_{mu Phi}(v) = clip(v/(1+mu), l, h)."""

    name = "clamp"

    def __init__(self, low: float = 0.0, high: float = 1.0):
        if not low < high:
            raise ValueError(f"clamp bounds [{low}, {high}] need low < high")
        self.low, self.high = float(low), float(high)
        self.l1_composable = self.low <= 0 <= self.high

    def __call__(self, z):
        return torch.clamp(z, self.low, self.high)

    def psi(self, u):
        inside = (u >= self.low) & (u <= self.high)
        return torch.where(inside, torch.zeros_like(u), torch.full_like(u, _INF))

    def phi_conj(self, z):
        c = self(z)
        return z * c - 0.5 * c * c

    def prox_phi(self, v, mu):
        return torch.clamp(v / (1 + mu), self.low, self.high)

    def spec(self):
        return f"clamp:{self.low:g}:{self.high:g}"


def _newton_bracketed(v, mu, lo, hi, dphi, d2phi, iters=60, tol=1e-12):
    """Solve u - v + mu Phi'(u) = 0 on (lo, hi) by Newton's method safeguarded by bisection.

    The left side is strictly increasing in u, so the bracket [lo, hi] always holds the root.
    """
    mu = torch.as_tensor(mu, dtype=v.dtype, device=v.device)
    lo_t = torch.full_like(v, lo)
    hi_t = torch.full_like(v, hi)
    u = torch.zeros_like(v) + (lo + hi) / 2
    for _ in range(iters):
        g = u - v + mu * dphi(u)
        lo_t = torch.where(g < 0, u, lo_t)
        hi_t = torch.where(g > 0, u, hi_t)
        step = u - g / (1 + mu * d2phi(u))
        bisect = (lo_t + hi_t) / 2
        ok = (step > lo_t) & (step < hi_t) & torch.isfinite(step)
        u_new = torch.where(ok, step, bisect)
        if torch.max(torch.abs(u_new - u)) <= tol:
            return u_new
        u = u_new
    return u


@ACTIVATIONS.register("tanh", params=())
class Tanh(ProxActivation):
    """sigma = tanh, Psi(u) = u atanh(u) + 1/2 (log(1 - u^2) - u^2) on [-1, 1],
    Phi(u) = (1+u)/2 log(1+u) + (1-u)/2 log(1-u) (stable form, finite at +-1), Phi*(z) = log cosh z;
    prox_{mu Phi}: 1-D Newton on u - v + mu atanh(u) = 0 (no closed form)."""

    name = "tanh"
    l1_composable = True  # Phi is even and smooth at 0 with Phi'(0) = 0
    gain = 5.0 / 3.0

    def __call__(self, z):
        return torch.tanh(z)

    def phi(self, u):
        inside = u.abs() <= 1
        uc = u.clamp(-1, 1)
        val = 0.5 * (torch.xlogy(1 + uc, 1 + uc) + torch.xlogy(1 - uc, 1 - uc))
        return torch.where(inside, val, torch.full_like(u, _INF))

    def psi(self, u):
        return self.phi(u) - 0.5 * u * u

    def phi_conj(self, z):
        a = z.abs()
        return a + F.softplus(-2 * a) - math.log(2.0)

    def prox_phi(self, v, mu):
        return _newton_bracketed(
            v, mu, -1.0, 1.0, lambda u: torch.atanh(u), lambda u: 1 / (1 - u * u)
        )


@ACTIVATIONS.register("sigmoid", params=())
class Sigmoid(ProxActivation):
    """sigma = logistic sigmoid, Psi(u) = u log u + (1-u) log(1-u) - u^2/2 on [0, 1],
    Phi*(z) = softplus(z); prox_{mu Phi}: 1-D Newton on u - v + mu logit(u) = 0."""

    name = "sigmoid"
    l1_composable = False  # 0 is at the boundary of the domain and Phi'(0+) = -inf

    def __call__(self, z):
        return torch.sigmoid(z)

    def phi(self, u):
        inside = (u >= 0) & (u <= 1)
        uc = u.clamp(0, 1)
        val = torch.xlogy(uc, uc) + torch.xlogy(1 - uc, 1 - uc)
        return torch.where(inside, val, torch.full_like(u, _INF))

    def psi(self, u):
        return self.phi(u) - 0.5 * u * u

    def phi_conj(self, z):
        return F.softplus(z)

    def prox_phi(self, v, mu):
        return _newton_bracketed(
            v, mu, 0.0, 1.0, lambda u: torch.logit(u), lambda u: 1 / (u * (1 - u))
        )


def spec_help() -> str:
    """The registered activation specs, e.g. ``identity, relu, leaky_relu[:slope], ...``."""
    out = []
    for name in ACTIVATIONS.names():
        params = ACTIVATIONS.get(name).info["params"]
        out.append(name + (f"[:{':'.join(params)}]" if params else ""))
    return ", ".join(out)


def make_activation(spec: str) -> ProxActivation:
    """Build an activation from a specification string such as ``soft_threshold:0.1``.

    Raises ConfigError with one line naming the bad value and what is allowed.
    """
    parts = str(spec).split(":")
    name, args = parts[0], parts[1:]
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {spec!r}; allowed: {spec_help()}")
    entry = ACTIVATIONS.get(name)
    nargs = len(entry.info["params"])
    if len(args) not in (0, nargs):
        raise ConfigError(f"activation {spec!r} takes {nargs} parameter(s); allowed: {spec_help()}")
    try:
        values = [float(a) for a in args]
    except ValueError:
        raise ConfigError(f"activation {spec!r}: parameters must be numbers; allowed: {spec_help()}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"activation {spec!r}: parameters must be finite numbers")
    try:
        return entry.builder(*values)
    except ValueError as err:
        raise ConfigError(f"activation {spec!r}: {err}") from None
