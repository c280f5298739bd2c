"""The architectures (config group ``arch``): networks in unified form built from ``blocks.py``.

* ``mlp``: dense blocks ``u_l = sigma_l(W_l u_{l-1} + b_l)``; K reads u_L.
* ``resnet``: a dense input map n -> width (identity activation), ``depth`` residual blocks
  ``u_k = u_{k-1} + V_k sigma(W_k u_{k-1} + b_k)`` (``V_k = W_k^T`` with ``tied``), and a dense
  output map width -> n.
* ``proxnet`` (Hasannasab et al. 2020): ``u_l = W_l^T sigma(W_l u_{l-1} + b_l)``, W_l (hidden x n)
  with orthonormal columns ``W_l^T W_l = I``, restored after every update by ``project``.
* ``unrolled_pnn`` (Wang, Benning, Repetti 2024): dual forward-backward iterations
  ``u_k = clamp_[-lam, lam](u_{k-1} - tau L_k (L_k^* u_{k-1} - y))``, u_0 = 0, output
  ``x_net = y - L_K^* u_K``: a dense block with ``W_k = I - tau L_k L_k^*`` and the data-dependent
  bias ``tau L_k y``; L_k dense or convolutional.
* ``conv_autoencoder``: the chapter's convolutional autoencoder (stride-2 convolutions, a dense code).
* ``sequential``: a plain ``nn.Sequential`` of ``Linear`` layers and activations (a state_dict from
  elsewhere), as an MLP.

Each architecture is a schema (its config keys and their checks) and a builder ``(cfg, side)``
registered in ``ARCHITECTURES``: ``side`` is the image side of the run's data (``source``; n = side^2
pixels), so one architecture serves every source. A new one is one function here (or anywhere) plus
one YAML in ``configs/arch``. Weights are drawn from torch's global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from ..registry import Registry, Schema, check, check_positive, fail, option
from .activations import make_activation
from .blocks import (INITS, ConvAnalysis, ConvBlock, DenseAnalysis, DenseBlock, ProxBlock, ResidualBlock,
                     UnifiedNet, UnrolledBlock)

ARCHITECTURES = Registry("arch", configs=True)


def check_activations(key: str, specs) -> None:
    """Every spec in ``specs`` names a registered activation with valid parameters."""
    for spec in specs:
        try:
            make_activation(spec)
        except ValueError as err:
            fail(key, spec, str(err))


def build_network(arch_cfg, side: int = 28) -> UnifiedNet:
    """The network described by an ``arch`` config node for side x side images, its weights drawn by
    ``arch.init``."""
    net = ARCHITECTURES.build(arch_cfg, side)
    net.initialize(arch_cfg.get("init", "default"))  # a checkpoint written before the key: its default
    return net


@dataclass
class ArchSchema(Schema):
    """The keys every architecture has."""

    init: str = option("default", "weights: default (the architecture's own draw, PyTorch's layer defaults) | kaiming "
                       "(He normal, std gain/sqrt(fan_in), gain of the activation fed: sqrt 2 for relu) | orthogonal "
                       "| xavier (Glorot normal); biases 0")

    def validate(self):
        check(self.init in INITS, "init", self.init, f"allowed: {', '.join(INITS)}")


def MLP(widths: list[int], activations: list[str]) -> UnifiedNet:
    """Fully connected network; ``widths`` = [n_0, ..., n_L], ``activations`` = [sigma_1..sigma_L]."""
    if len(activations) != len(widths) - 1:
        raise ValueError(f"{len(widths) - 1} layers need {len(widths) - 1} activations, got {len(activations)}")
    return UnifiedNet([DenseBlock(a, b, make_activation(s)) for a, b, s in zip(widths[:-1], widths[1:], activations)])


# -------------------------------------------------------------------------------------------- mlp
@dataclass
class MLPConfig(ArchSchema):
    name: str = option("mlp", "the architecture")
    hidden: List[int] = option([512, 512], "hidden widths (input and output: the image's pixels)")
    depth: Optional[int] = option(None, "or a number of hidden layers of equal width (then hidden is not used), e.g. 32")
    width: int = option(512, "the width of each of those `depth` hidden layers")
    activation: str = option("relu", "activation of every hidden layer (an activation spec)")
    layer_activations: Optional[List[str]] = option(None, "or one spec per hidden layer, e.g. [relu, soft_threshold:0.1]")
    output_activation: str = option("identity", "activation of the output layer")

    def widths(self) -> list[int]:
        """The hidden widths: ``depth`` layers of ``width`` when ``depth`` is set, else ``hidden``."""
        return [self.width] * self.depth if self.depth is not None else list(self.hidden)

    def activations(self) -> list[str]:
        """Per-layer activation specs: the hidden layers, then the output layer."""
        n = len(MLPConfig.widths(self))
        hidden = list(self.layer_activations) if self.layer_activations is not None else [self.activation] * n
        return hidden + [self.output_activation]

    def validate(self):
        super().validate()
        check(len(self.hidden) > 0 and min(self.hidden) > 0, "hidden", self.hidden, "need at least one hidden width, all > 0")
        check_positive("depth", self.depth, allow_none=True)
        check_positive("width", self.width)
        n = len(self.widths())
        if self.layer_activations is not None:
            check(len(self.layer_activations) == n, "layer_activations", self.layer_activations,
                  f"need one per hidden layer ({n})")
            check_activations("layer_activations", self.layer_activations)
        check_activations("activation", [self.activation])
        check_activations("output_activation", [self.output_activation])


@ARCHITECTURES.register("mlp", MLPConfig)
def build_mlp(cfg, side: int) -> UnifiedNet:
    return MLP([side * side, *MLPConfig.widths(cfg), side * side], MLPConfig.activations(cfg))


# ----------------------------------------------------------------------------------------- resnet
@dataclass
class ResNetConfig(ArchSchema):
    name: str = option("resnet", "the architecture")
    width: int = option(512, "width of the residual state")
    depth: int = option(2, "number of residual blocks")
    activation: str = option("relu", "sigma of every residual block")
    tied: bool = option(False, "true: V_k = W_k^T (the chapter's ResNet); false: a separate V_k")
    output_activation: str = option("identity", "activation of the output map")

    def validate(self):
        super().validate()
        check_positive("width", self.width)
        check_positive("depth", self.depth)
        check_activations("activation", [self.activation])
        check_activations("output_activation", [self.output_activation])


@ARCHITECTURES.register("resnet", ResNetConfig)
def build_resnet(cfg, side: int) -> UnifiedNet:
    blocks = [DenseBlock(side * side, cfg.width, make_activation("identity"))]
    blocks += [ResidualBlock(cfg.width, make_activation(cfg.activation), cfg.tied) for _ in range(cfg.depth)]
    blocks.append(DenseBlock(cfg.width, side * side, make_activation(cfg.output_activation)))
    return UnifiedNet(blocks)


# ---------------------------------------------------------------------------------------- proxnet
@dataclass
class ProxNetConfig(ArchSchema):
    name: str = option("proxnet", "the architecture")
    hidden: int = option(1024, "rows of W_l (at least the image's pixels, 784 for 28 x 28)")
    depth: int = option(2, "number of layers")
    activation: str = option("soft_threshold:0.05", "a proximal activation: soft_threshold:a, clamp:l:h, relu, ...")

    def validate(self):
        super().validate()
        check_positive("depth", self.depth)
        check_positive("hidden", self.hidden)  # and >= the image's pixels, checked where the side is known
        check_activations("activation", [self.activation])


@ARCHITECTURES.register("proxnet", ProxNetConfig)
def build_proxnet(cfg, side: int) -> UnifiedNet:
    if cfg.hidden < side * side:
        raise ValueError(f"arch.hidden={cfg.hidden}: W^T W = I needs hidden >= {side * side} (the pixels of a "
                         f"{side} x {side} image)")
    return UnifiedNet([ProxBlock(side * side, cfg.hidden, make_activation(cfg.activation)) for _ in range(cfg.depth)])


# ----------------------------------------------------------------------------------- unrolled_pnn
#: the analysis operators L_k of ``arch.operator``
OPERATORS = {"dense": lambda cfg, side: DenseAnalysis(cfg.dual_dim, side),
             "conv": lambda cfg, side: ConvAnalysis(cfg.channels, cfg.kernel, side)}


@dataclass
class UnrolledPNNConfig(ArchSchema):
    name: str = option("unrolled_pnn", "the architecture")
    depth: int = option(5, "unrolled iterations K")
    operator: str = option("conv", "conv: L_k = `channels` convolution filters of size `kernel`; dense: a dual_dim x pixels matrix")
    channels: int = option(8, "filters of a conv operator")
    kernel: int = option(5, "filter size (odd) of a conv operator")
    dual_dim: int = option(1024, "rows of a dense operator")
    tau: float = option(1.0, "step size (L_k is initialised with ||L_k|| = 1)")
    lam: float = option(0.1, "weight of the l1 prior, the clamp bound of the dual variable")

    def validate(self):
        super().validate()
        check_positive("depth", self.depth)
        check(self.operator in OPERATORS, "operator", self.operator, f"allowed: {', '.join(OPERATORS)}")
        for key in ("channels", "dual_dim", "tau", "lam"):
            check_positive(key, getattr(self, key))
        check(self.kernel >= 1 and self.kernel % 2 == 1, "kernel", self.kernel, "must be odd and >= 1")


@ARCHITECTURES.register("unrolled_pnn", UnrolledPNNConfig)
def build_unrolled_pnn(cfg, side: int) -> UnifiedNet:
    ops = [OPERATORS[cfg.operator](cfg, side) for _ in range(cfg.depth)]
    blocks = [UnrolledBlock(op, cfg.tau, make_activation(f"clamp:{-cfg.lam}:{cfg.lam}")) for op in ops]
    return UnifiedNet(blocks, readout_op=ops[-1], zero_input=True)


# ------------------------------------------------------------------------------- conv_autoencoder
@dataclass
class ConvAutoencoderConfig(ArchSchema):
    name: str = option("conv_autoencoder", "the architecture")
    channels: List[int] = option([16, 32], "filters per stride-2 level (1 or 2 levels)")
    kernel: int = option(4, "even; padding (kernel - 2)/2, so each level halves the side exactly")
    code: int = option(300, "size of the dense code layer")
    activation: str = option("relu", "every layer but the last")
    output_activation: str = option("identity", "the last transposed convolution")

    def validate(self):
        super().validate()
        check(1 <= len(self.channels) <= 2 and min(self.channels) > 0, "channels", self.channels,
              "need 1 or 2 levels (the image side must be divisible by 2 per level), all > 0")
        check(self.kernel >= 2 and self.kernel % 2 == 0, "kernel", self.kernel,
              "must be even and >= 2 (stride 2, padding (kernel - 2)/2)")
        check_positive("code", self.code)
        check_activations("activation", [self.activation])
        check_activations("output_activation", [self.output_activation])


def ConvAutoencoder(channels: list[int], kernel: int, code: int, activation: str, output_activation: str,
                    side: int = 28) -> UnifiedNet:
    """The chapter's convolutional autoencoder (docs/method.md, section 7): stride-2 convolutions with
    ``channels`` filters, a dense code layer of size ``code``, then the mirror image (dense, transposed
    convolutions back to one channel); 2 len(channels) + 2 layers, the code is layer len(channels) + 1."""
    if side % (2 ** len(channels)):
        raise ValueError(f"{len(channels)} stride-2 levels need a side divisible by {2 ** len(channels)}, got {side}")
    act = make_activation
    blocks, c, s = [], 1, side
    for ch in channels:
        blocks.append(ConvBlock(c, ch, s, kernel, act(activation)))
        c, s = ch, s // 2
    flat = c * s * s
    blocks += [DenseBlock(flat, code, act(activation)), DenseBlock(code, flat, act(activation))]
    for i, ch in enumerate(reversed([1, *channels[:-1]])):
        last = i == len(channels) - 1
        blocks.append(ConvBlock(c, ch, s, kernel, act(output_activation if last else activation), transposed=True))
        c, s = ch, s * 2
    return UnifiedNet(blocks)


@ARCHITECTURES.register("conv_autoencoder", ConvAutoencoderConfig)
def build_conv_autoencoder(cfg, side: int) -> UnifiedNet:
    return ConvAutoencoder(list(cfg.channels), cfg.kernel, cfg.code, cfg.activation, cfg.output_activation, side)


# ------------------------------------------------------------------------------------- sequential
@dataclass
class SequentialConfig(ArchSchema):
    name: str = option("sequential", "the architecture")
    widths: List[int] = option([784, 512, 784], "[n_0, n_1, ..., n_L] (input and output included)")
    activations: List[str] = option(["relu", "identity"], "one proximal activation per Linear layer")

    def validate(self):
        super().validate()
        check(len(self.widths) >= 2 and min(self.widths) > 0, "widths", self.widths,
              "need input and output widths (at least 2), all > 0")
        check(len(self.activations) == len(self.widths) - 1, "activations", self.activations,
              f"need one per Linear layer ({len(self.widths) - 1})")
        check_activations("activations", self.activations)


@ARCHITECTURES.register("sequential", SequentialConfig)
def build_sequential(cfg, side: int) -> UnifiedNet:  # its widths are given; training checks them against side
    return MLP(list(cfg.widths), list(cfg.activations))
