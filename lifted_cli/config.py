"""Structured-config schemas (registered in Hydra's ConfigStore) and value validation.

Types are enforced by OmegaConf through the schemas (``epochs=abc`` is rejected at composition);
ranges, valid combinations and unknown keys are checked once at start by :func:`validate_train`,
which raises :class:`ConfigError` with one line naming the bad value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

import torch

from .activations import make_activation
from .data import DATA_SOURCES
from .networks import IMAGE_DIM


class ConfigError(ValueError):
    """A bad configuration value; the message is one line."""


# ----------------------------------------------------------------------------------------- dataset
@dataclass
class DenoiseConfig:
    name: str = MISSING
    task: str = "denoise"
    sigma: float = 0.3
    test_seed: int = 1234


@dataclass
class DeblurConfig(DenoiseConfig):
    task: str = "deblur"
    kernel_size: int = 7
    blur_width: float = 1.5


@dataclass
class InpaintConfig(DenoiseConfig):
    task: str = "inpaint"
    keep_ratio: float = 0.5


# -------------------------------------------------------------------------------------------- arch
@dataclass
class MLPConfig:
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [512, 512])
    activation: str = "relu"
    layer_activations: Optional[List[str]] = None
    output_activation: str = "identity"


@dataclass
class ResNetConfig:
    name: str = "resnet"
    width: int = 512
    depth: int = 2
    activation: str = "relu"
    tied: bool = False
    output_activation: str = "identity"


@dataclass
class ProxNetConfig:
    name: str = "proxnet"
    hidden: int = 1024
    depth: int = 2
    activation: str = "soft_threshold:0.05"


@dataclass
class UnrolledPNNConfig:
    name: str = "unrolled_pnn"
    depth: int = 5
    operator: str = "conv"
    channels: int = 8
    kernel: int = 5
    dual_dim: int = 1024
    tau: float = 1.0
    lam: float = 0.1


@dataclass
class ConvAutoencoderConfig:
    name: str = "conv_autoencoder"
    channels: List[int] = field(default_factory=lambda: [16, 32])
    kernel: int = 4
    code: int = 300
    activation: str = "relu"
    output_activation: str = "identity"


# ------------------------------------------------------------------------------------------ scheme
@dataclass
class BackpropSchemeConfig:
    name: str = "backprop"
    sparsity: float = 0.0
    sparsity_layer: Optional[int] = None


@dataclass
class LiftedSchemeOptions:
    """Options shared by the lifted schemes (bregman, fenchel, mac, contrastive)."""

    layer_weights: Optional[List[float]] = None
    rho: float = 1.0
    sparsity: float = 0.0
    sparsity_layer: Optional[int] = None


@dataclass
class BregmanSchemeConfig(LiftedSchemeOptions):
    name: str = "bregman"
    penalty_weight: float = 1.0
    output: str = "auto"


@dataclass
class FenchelSchemeConfig(BregmanSchemeConfig):
    name: str = "fenchel"


@dataclass
class MACSchemeConfig(LiftedSchemeOptions):
    name: str = "mac"
    mu: float = 1.0
    mu_growth: float = 1.5
    mu_max: float = 100.0
    output: str = "auto"


@dataclass
class ContrastiveSchemeConfig(LiftedSchemeOptions):
    name: str = "contrastive"
    beta: float = 0.1
    penalty_weight: float = 1.0
    nudge_steps: int = 3
    layer_order: str = "gauss_seidel"
    step_safety: float = 0.9
    power_iters: int = 2


# ------------------------------------------------------------------------------------------ solver
@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class LiftedSolverConfig:
    """Options shared by the solvers of the lifted objective (see solvers.py)."""

    name: str = MISSING
    n_inner: int = 1
    x_sweeps: int = 1
    layer_order: str = "gauss_seidel"
    step_safety: float = 0.9
    power_iters: int = 2
    x_step: Optional[float] = None


@dataclass
class ISGMConfig(LiftedSolverConfig):
    name: str = "isgm"
    x_sweeps: int = 2
    tau: float = 1.0
    tau_decay: float = 1.0
    w_metric: str = "majorizer"
    w_step: Optional[float] = None
    momentum: float = 0.8


@dataclass
class BCDConfig(LiftedSolverConfig):
    name: str = "bcd"
    weight_update: str = "gd"
    lr: Optional[float] = None
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999


# ------------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    dataset: Any = MISSING
    arch: Any = MISSING
    scheme: Any = MISSING
    solver: Any = MISSING
    experiment: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    epochs: int = 5
    batch_size: int = 128
    eval_every: int = 1
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    data_root: str = "data"
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    num_samples: int = 8
    progress: bool = True
    resume: Optional[str] = None
    output_dir: str = MISSING


@dataclass
class SequentialConfig:
    """A plain ``nn.Sequential`` of ``Linear`` layers and activations (a state_dict from elsewhere)."""

    name: str = "sequential"
    widths: List[int] = field(default_factory=lambda: [784, 512, 784])
    activations: List[str] = field(default_factory=lambda: ["relu", "identity"])


@dataclass
class PerceptronConfig:
    out_dim: int = 512
    image_size: int = 64
    seed: int = 0
    bias: float = 0.0


@dataclass
class InvertConfig:
    checkpoint: Optional[str] = None
    network: str = "checkpoint"
    arch: Any = None
    perceptron: PerceptronConfig = field(default_factory=PerceptronConfig)
    upto: Optional[str] = None
    method: str = "lifted_bregman"
    regularizer: str = "tv"
    alpha: float = 0.01
    delta: float = 0.0
    noise: str = "relative"
    outputs: Optional[str] = None
    truth: Optional[str] = None
    num_images: int = 16
    iterations: int = 500
    init: float = 0.5
    box: bool = True
    output: str = "clamped"
    data_weight: float = 1.0
    rho: float = 1.0
    step_safety: float = 0.9
    primal_step: float = 100.0
    hidden_weight: float = 1.0
    momentum: float = 0.99
    power_iters: int = 30
    lr: float = 0.01
    tv_smoothing: float = 1e-3
    log_every: int = 10
    experiment: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    data_root: str = "data"
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    num_samples: int = 8
    progress: bool = True
    output_dir: str = MISSING


@dataclass
class DataConfig:
    data_root: str = "data"
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    verify: bool = True


SCHEMAS = {
    "dataset": {"denoise": DenoiseConfig, "deblur": DeblurConfig, "inpaint": InpaintConfig},
    "arch": {"mlp": MLPConfig, "resnet": ResNetConfig, "proxnet": ProxNetConfig, "unrolled_pnn": UnrolledPNNConfig,
             "conv_autoencoder": ConvAutoencoderConfig, "sequential": SequentialConfig},
    "scheme": {"backprop": BackpropSchemeConfig, "bregman": BregmanSchemeConfig, "fenchel": FenchelSchemeConfig,
               "mac": MACSchemeConfig, "contrastive": ContrastiveSchemeConfig},
    "solver": {"adam": AdamConfig, "sgd": SGDConfig, "isgm": ISGMConfig, "bcd": BCDConfig},
}

#: the presets of configs/experiment, by command
EXPERIMENTS = {"train": ("sparse_dae", "sparse_dae_10k", "autoencoder", "conv_autoencoder", "prox_mlp"),
               "invert": ("perceptron_inversion", "autoencoder_inversion")}

#: which solvers can minimise which scheme's objective
SOLVERS_FOR_SCHEME = {"backprop": ("adam", "sgd"), "bregman": ("isgm", "bcd"), "fenchel": ("bcd", "isgm"),
                      "mac": ("bcd", "isgm"), "contrastive": ("adam", "sgd")}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="data_schema", node=DataConfig)
    cs.store(name="invert_schema", node=InvertConfig)


def _fail(key: str, value, allowed: str):
    raise ConfigError(f"{key}={value}: {allowed}")


def _check_keys(node: DictConfig, schema, prefix: str) -> None:
    """Reject keys the schema does not define (a misspelt ``+key``) and values of the wrong type."""
    known = OmegaConf.structured(schema)
    for key in node.keys():
        if key not in set(known.keys()):
            _fail(f"{prefix}{key}", node[key], f"unknown key; allowed keys here: {', '.join(sorted(known))}")
    try:
        OmegaConf.merge(known, node)
    except Exception as err:  # omegaconf.ValidationError and friends
        key = getattr(err, "full_key", "") or ""
        raise ConfigError(f"{prefix}{key}: {str(err).splitlines()[0]}") from None


def _positive(cfg, key, value, allow_none=False):
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        _fail(key, value, "must be > 0")


def validate_data(cfg: DictConfig) -> None:
    for s in cfg.data_sources:
        if s not in DATA_SOURCES:
            _fail("data_sources", list(cfg.data_sources), f"allowed sources: {', '.join(DATA_SOURCES)}")


def validate_train(cfg: DictConfig) -> None:
    """Check ranges, combinations and unknown keys of a composed ``train`` config."""
    _check_keys(cfg, TrainConfig, "")
    for group, options in SCHEMAS.items():
        node = cfg[group]
        kind = node.get("task") if group == "dataset" else node.get("name")
        if kind not in options:
            _fail(f"{group}.{'task' if group == 'dataset' else 'name'}", kind, f"allowed: {', '.join(options)}")
        _check_keys(node, options[kind], f"{group}.")

    for key in ("epochs", "batch_size", "eval_every"):
        _positive(cfg, key, cfg[key])
    _positive(cfg, "train_size", cfg.train_size, allow_none=True)
    _positive(cfg, "test_size", cfg.test_size, allow_none=True)
    if cfg.num_samples < 0:
        _fail("num_samples", cfg.num_samples, "must be >= 0")
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        _fail("device", dev, "allowed: auto, cpu, cuda, cuda:N")
    validate_data(cfg)

    d = cfg.dataset
    if d.sigma < 0:
        _fail("dataset.sigma", d.sigma, "noise std must be >= 0")
    if d.task == "deblur":
        if d.kernel_size < 1 or d.kernel_size % 2 == 0 or d.kernel_size > 27:
            _fail("dataset.kernel_size", d.kernel_size, "must be odd, between 1 and 27")
        _positive(cfg, "dataset.blur_width", d.blur_width)
    if d.task == "inpaint" and not 0 < d.keep_ratio <= 1:
        _fail("dataset.keep_ratio", d.keep_ratio, "keep ratio must be in (0, 1]")

    a = cfg.arch
    specs = []
    if a.name == "mlp":
        if len(a.hidden) == 0 or any(w <= 0 for w in a.hidden):
            _fail("arch.hidden", list(a.hidden), "need at least one hidden width, all > 0")
        specs = [a.activation, a.output_activation] + list(a.layer_activations or [])
        if a.layer_activations is not None and len(a.layer_activations) != len(a.hidden):
            _fail("arch.layer_activations", list(a.layer_activations), f"need one per hidden layer ({len(a.hidden)})")
    elif a.name == "resnet":
        _positive(cfg, "arch.width", a.width)
        _positive(cfg, "arch.depth", a.depth)
        specs = [a.activation, a.output_activation]
    elif a.name == "proxnet":
        _positive(cfg, "arch.depth", a.depth)
        if a.hidden < IMAGE_DIM:
            _fail("arch.hidden", a.hidden, f"W^T W = I needs hidden >= {IMAGE_DIM} (the image size)")
        specs = [a.activation]
    elif a.name == "sequential":
        if len(a.widths) < 2 or a.widths[0] != IMAGE_DIM or a.widths[-1] != IMAGE_DIM or min(a.widths) <= 0:
            _fail("arch.widths", list(a.widths), f"training needs [{IMAGE_DIM}, ..., {IMAGE_DIM}], all > 0")
        if len(a.activations) != len(a.widths) - 1:
            _fail("arch.activations", list(a.activations), f"need one per Linear layer ({len(a.widths) - 1})")
        specs = list(a.activations)
    elif a.name == "unrolled_pnn":
        _positive(cfg, "arch.depth", a.depth)
        if a.operator not in ("dense", "conv"):
            _fail("arch.operator", a.operator, "allowed: dense, conv")
        for key in ("channels", "dual_dim", "tau", "lam"):
            _positive(cfg, f"arch.{key}", a[key])
        if a.kernel < 1 or a.kernel % 2 == 0:
            _fail("arch.kernel", a.kernel, "must be odd and >= 1")
    elif a.name == "conv_autoencoder":
        if not 1 <= len(a.channels) <= 2 or min(a.channels) <= 0:
            _fail("arch.channels", list(a.channels), "need 1 or 2 levels (28 = 4 x 7), all > 0")
        if a.kernel < 2 or a.kernel % 2:
            _fail("arch.kernel", a.kernel, "must be even and >= 2 (stride 2, padding (kernel - 2)/2)")
        _positive(cfg, "arch.code", a.code)
        specs = [a.activation, a.output_activation]
    for spec in specs:
        try:
            make_activation(spec)
        except ValueError as err:
            raise ConfigError(f"arch: {err}") from None

    s = cfg.scheme
    allowed = SOLVERS_FOR_SCHEME[s.name]
    if cfg.solver.name not in allowed:
        _fail("solver", cfg.solver.name, f"scheme={s.name} is minimised by solver={'|'.join(allowed)}")
    if s.sparsity < 0:
        _fail("scheme.sparsity", s.sparsity, "must be >= 0")
    for key in ("penalty_weight", "rho", "beta", "mu", "nudge_steps", "power_iters"):
        if key in s:
            _positive(cfg, f"scheme.{key}", s[key])
    if s.get("layer_weights") is not None and min(s.layer_weights, default=1) <= 0:
        _fail("scheme.layer_weights", list(s.layer_weights), "all weights must be > 0")
    if "output" in s and s.output not in ("auto", "clamped", "free"):
        _fail("scheme.output", s.output, "allowed: auto, clamped, free")
    if s.name == "mac":
        if s.mu_growth < 1:
            _fail("scheme.mu_growth", s.mu_growth, "must be >= 1 (the penalty weight increases over training)")
        if s.mu_max < s.mu:
            _fail("scheme.mu_max", s.mu_max, f"must be >= scheme.mu ({s.mu})")
    if s.name == "contrastive":
        if s.layer_order not in ("gauss_seidel", "jacobi"):
            _fail("scheme.layer_order", s.layer_order, "allowed: gauss_seidel, jacobi")
        if not 0 < s.step_safety <= 1:
            _fail("scheme.step_safety", s.step_safety, "must be in (0, 1]")

    o = cfg.solver
    if o.name in ("isgm", "bcd"):
        _positive(cfg, "solver.n_inner", o.n_inner)
        _positive(cfg, "solver.x_sweeps", o.x_sweeps)
        _positive(cfg, "solver.power_iters", o.power_iters)
        if not 0 < o.step_safety <= 1:
            _fail("solver.step_safety", o.step_safety, "must be in (0, 1]")
        if o.layer_order not in ("gauss_seidel", "jacobi"):
            _fail("solver.layer_order", o.layer_order, "allowed: gauss_seidel, jacobi")
        _positive(cfg, "solver.x_step", o.x_step, allow_none=True)
        _positive(cfg, "solver.w_step", o.get("w_step"), allow_none=True)
    if o.name == "isgm":
        _positive(cfg, "solver.tau", o.tau)
        if not 0 < o.tau_decay <= 1:
            _fail("solver.tau_decay", o.tau_decay, "must be in (0, 1]")
        if o.w_metric not in ("majorizer", "scalar"):
            _fail("solver.w_metric", o.w_metric, "allowed: majorizer, scalar")
    if o.name == "bcd":
        if o.weight_update not in ("gd", "heavyball", "nesterov", "adam"):
            _fail("solver.weight_update", o.weight_update, "allowed: gd, heavyball, nesterov, adam")
        _positive(cfg, "solver.lr", o.lr, allow_none=True)
    if o.name in ("adam", "sgd"):
        _positive(cfg, "solver.lr", o.lr)
        if o.weight_decay < 0:
            _fail("solver.weight_decay", o.weight_decay, "must be >= 0")
    if o.name == "adam":
        for k in ("beta1", "beta2"):
            if not 0 <= o[k] < 1:
                _fail(f"solver.{k}", o[k], "must be in [0, 1)")
    if "momentum" in o and not 0 <= o.momentum < 1:
        _fail("solver.momentum", o.momentum, "must be in [0, 1)")
    _check_combination(cfg)


def _check_combination(cfg: DictConfig) -> None:
    """Build the network and the scheme once (on a forked RNG, so the run's seed is untouched):
    every scheme x architecture x solver combination the mathematics does not allow fails here,
    with the reason in one line, before any results folder exists."""
    from .networks import build_network
    from .schemes import build_scheme

    with torch.random.fork_rng(devices=[]):
        try:
            build_scheme(build_network(cfg.arch), cfg.scheme, cfg.solver)
        except ValueError as err:
            raise ConfigError(f"scheme={cfg.scheme.name} arch={cfg.arch.name} solver={cfg.solver.name}: {err}") from None


INVERT_METHODS = ("lifted_bregman", "backprop")
NETWORKS = ("checkpoint", "random_perceptron")


def validate_invert(cfg: DictConfig) -> None:
    """Check ranges and choices of a composed ``invert`` config (files are checked when loaded)."""
    from .inversion import REGULARIZERS

    _check_keys(cfg, InvertConfig, "")
    if cfg.network not in NETWORKS:
        _fail("network", cfg.network, f"allowed: {', '.join(NETWORKS)}")
    if cfg.network == "checkpoint" and not cfg.checkpoint:
        _fail("checkpoint", cfg.checkpoint, "give a run folder, a checkpoint.pt or a state_dict file (checkpoint=PATH)")
    if cfg.arch is not None:
        kind = cfg.arch.get("name")
        if kind not in SCHEMAS["arch"]:
            _fail("arch.name", kind, f"allowed: {', '.join(SCHEMAS['arch'])}")
        _check_keys(cfg.arch, SCHEMAS["arch"][kind], "arch.")
        if kind == "sequential":
            if len(cfg.arch.widths) < 2 or min(cfg.arch.widths) <= 0:
                _fail("arch.widths", list(cfg.arch.widths), "need input and output widths (at least 2), all > 0")
            if len(cfg.arch.activations) != len(cfg.arch.widths) - 1:
                _fail("arch.activations", list(cfg.arch.activations), f"need one per Linear layer ({len(cfg.arch.widths) - 1})")
            for spec in cfg.arch.activations:
                try:
                    make_activation(spec)
                except ValueError as err:
                    raise ConfigError(f"arch.activations: {err}") from None
    if cfg.method not in INVERT_METHODS:
        _fail("method", cfg.method, f"allowed: {', '.join(INVERT_METHODS)}")
    if cfg.regularizer not in REGULARIZERS:
        _fail("regularizer", cfg.regularizer, f"allowed: {', '.join(REGULARIZERS)}")
    if cfg.alpha < 0:
        _fail("alpha", cfg.alpha, "must be >= 0")
    if cfg.regularizer == "tv" and cfg.method == "lifted_bregman" and cfg.alpha == 0:
        _fail("alpha", cfg.alpha, "TV inversion by PDHG needs alpha > 0 (use regularizer=box for none)")
    if cfg.delta < 0:
        _fail("delta", cfg.delta, "noise level must be >= 0")
    if cfg.noise not in ("relative", "absolute"):
        _fail("noise", cfg.noise, "allowed: relative, absolute")
    if cfg.output not in ("clamped", "free"):
        _fail("output", cfg.output, "allowed: clamped, free")
    for key in ("num_images", "iterations", "data_weight", "rho", "primal_step", "hidden_weight", "power_iters", "lr", "log_every"):
        _positive(cfg, key, cfg[key])
    if not 0 < cfg.step_safety <= 1:
        _fail("step_safety", cfg.step_safety, "must be in (0, 1]")
    if not 0 <= cfg.momentum < 1:
        _fail("momentum", cfg.momentum, "must be in [0, 1)")
    if cfg.tv_smoothing < 0:
        _fail("tv_smoothing", cfg.tv_smoothing, "must be >= 0")
    if cfg.num_samples < 0:
        _fail("num_samples", cfg.num_samples, "must be >= 0")
    for key in ("out_dim", "image_size"):
        _positive(cfg, f"perceptron.{key}", cfg.perceptron[key])
    dev = cfg.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        _fail("device", dev, "allowed: auto, cpu, cuda, cuda:N")
    validate_data(cfg)
