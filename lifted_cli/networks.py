"""Networks in the unified lifted form (METHOD.md section 3).

An MLP ``u_l = sigma_l(W_l u_{l-1} + b_l)``, l = 1..L, is the unified form with M dropping u_0,
V = I and K reading u_L. It is stored as a list of affine maps (``nn.Linear``, the blocks W_l, b_l)
and a list of proximal activations (``activations.py``), so a lifted scheme can address each layer
equation on its own while back-propagation sees an ordinary ``nn.Module``.
"""

from __future__ import annotations

import torch
from torch import nn

from .activations import ProxActivation, make_activation

IMAGE_SHAPE = (1, 28, 28)
IMAGE_DIM = 28 * 28


class MLP(nn.Module):
    """Fully connected network, degraded image (flattened) -> reconstruction (flattened).

    ``widths`` = [n_0, n_1, ..., n_L]; ``activations`` = [sigma_1, ..., sigma_L] (spec strings).
    """

    def __init__(self, widths: list[int], activations: list[str]):
        super().__init__()
        if len(activations) != len(widths) - 1:
            raise ValueError(f"{len(widths) - 1} layers need {len(widths) - 1} activations, got {len(activations)}")
        self.widths = list(widths)
        self.activation_specs = list(activations)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.acts: list[ProxActivation] = [make_activation(s) for s in activations]

    @property
    def depth(self) -> int:
        return len(self.linears)

    def preactivation(self, layer: int, u_prev: torch.Tensor) -> torch.Tensor:
        """a_l = W_l u_{l-1} + b_l for layer index ``layer`` (0-based)."""
        lin = self.linears[layer]
        return torch.addmm(lin.bias, u_prev, lin.weight.t())

    def forward_states(self, u0: torch.Tensor) -> list[torch.Tensor]:
        """All states [u_0, u_1, ..., u_L] of the forward pass (rows = samples)."""
        states = [u0]
        for lin, act in zip(self.linears, self.acts):
            states.append(act(lin(states[-1])))
        return states

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """x_net = N(y): flattens each sample; the output takes the input's shape when the sizes
        agree (image to image), else it stays flat."""
        u = y.reshape(y.shape[0], -1)
        for lin, act in zip(self.linears, self.acts):
            u = act(lin(u))
        return u.reshape(y.shape) if u.shape[1] == y[0].numel() else u


ARCHS = ("mlp",)


def mlp_activations(cfg) -> list[str]:
    """Per-layer activation specs of an ``arch=mlp`` config: hidden layers then output layer."""
    hidden = list(cfg.layer_activations) if cfg.layer_activations is not None else [cfg.activation] * len(cfg.hidden)
    return hidden + [cfg.output_activation]


def build_network(arch_cfg, in_dim: int = IMAGE_DIM, out_dim: int = IMAGE_DIM) -> nn.Module:
    """The network described by an ``arch`` config node (weights drawn from torch's global RNG)."""
    if arch_cfg.name == "mlp":
        return MLP([in_dim, *arch_cfg.hidden, out_dim], mlp_activations(arch_cfg))
    raise ValueError(f"unknown arch {arch_cfg.name!r}; allowed: {', '.join(ARCHS)}")
