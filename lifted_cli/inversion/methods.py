"""Inversion methods (option ``method``): each is built from the network, the outputs ``f_delta``, the
regulariser and the ``invert`` config, and offers ``step()``, ``u`` (the current inputs),
``objective()`` (per image) and ``settings()`` (what determined its iterates, for metrics.json).

* ``lifted_bregman``: the lifted Bregman model (``problem.LiftedInversion``);
* ``backprop`` (docs/method.md, section 6.8): Adam on 1/2 ||N(u) - f_delta||^2 + alpha J(u) per image (summed over images)
  through autograd; total variation smoothed by ``tv_smoothing``; an indicator J and the box by
  projection after every step.
"""

from __future__ import annotations

import torch

from ..registry import Registry, fail
from .problem import LiftedInversion

INVERSION_METHODS = Registry("method")


@INVERSION_METHODS.register("lifted_bregman")
class LiftedBregmanMethod:
    @staticmethod
    def check(cfg, reg) -> None:
        if reg.operator is not None and cfg.alpha == 0:
            fail("alpha", cfg.alpha, f"regularizer={cfg.regularizer} is split by primal-dual steps, which need alpha > 0 "
                                     "(use regularizer=box for none)")

    def __init__(self, net, f_delta, reg, cfg, init):
        self.inv = LiftedInversion(net, f_delta, reg, cfg.alpha, cfg.output, cfg.data_weight, cfg.rho, cfg.step_safety,
                                   cfg.power_iters, init=init, box=cfg.box, primal_step=cfg.primal_step,
                                   hidden_weight=cfg.hidden_weight, momentum=cfg.momentum)

    def step(self) -> None:
        self.inv.step()

    @property
    def u(self) -> torch.Tensor:
        return self.inv.u

    def objective(self) -> torch.Tensor:
        return self.inv.objective()

    def settings(self) -> dict:
        return self.inv.settings()


@INVERSION_METHODS.register("backprop")
class BackpropMethod:
    @staticmethod
    def check(cfg, reg) -> None:
        pass

    def __init__(self, net, f_delta, reg, cfg, init):
        self.net, self.f_delta, self.reg, self.cfg = net, f_delta, reg, cfg
        self._u = init.clone().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self._u], lr=cfg.lr)

    def _data(self, u) -> torch.Tensor:
        return 0.5 * (self.net.readout(self.net.forward_states(u)[-1], u) - self.f_delta).pow(2).sum(dim=1)

    def step(self) -> None:
        u, alpha = self._u, self.cfg.alpha
        self.optimizer.zero_grad(set_to_none=True)
        loss = 0.5 * (self.net.readout(self.net.forward_states(u)[-1], u) - self.f_delta).pow(2).sum()
        if not self.reg.indicator:
            loss = loss + alpha * self.reg.value(u, self.cfg.tv_smoothing).sum()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            if self.reg.indicator:
                u.copy_(self.reg.prox(u, 0.0))
            if self.cfg.box:
                u.clamp_(0.0, 1.0)

    @property
    def u(self) -> torch.Tensor:
        return self._u.detach()

    @torch.no_grad()
    def objective(self) -> torch.Tensor:
        u = self.u
        obj = self._data(u)
        if not self.reg.indicator:
            obj = obj + self.cfg.alpha * self.reg.value(u)
        return obj

    def settings(self) -> dict:
        return {"lr": self.cfg.lr, "tv_smoothing": self.cfg.tv_smoothing}
