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
from .networks import mlp_activations


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


# ------------------------------------------------------------------------------------------ scheme
@dataclass
class BackpropSchemeConfig:
    name: str = "backprop"
    sparsity: float = 0.0
    sparsity_layer: Optional[int] = None


@dataclass
class BregmanSchemeConfig:
    name: str = "bregman"
    penalty_weight: float = 1.0
    layer_weights: Optional[List[float]] = None
    output: str = "clamped"
    sparsity: float = 0.0
    sparsity_layer: Optional[int] = None


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
class DataConfig:
    data_root: str = "data"
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    verify: bool = True


SCHEMAS = {
    "dataset": {"denoise": DenoiseConfig, "deblur": DeblurConfig, "inpaint": InpaintConfig},
    "arch": {"mlp": MLPConfig},
    "scheme": {"backprop": BackpropSchemeConfig, "bregman": BregmanSchemeConfig},
    "solver": {"adam": AdamConfig, "sgd": SGDConfig, "isgm": ISGMConfig, "bcd": BCDConfig},
}

#: which solvers can minimise which scheme's objective
SOLVERS_FOR_SCHEME = {"backprop": ("adam", "sgd"), "bregman": ("isgm", "bcd")}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="data_schema", node=DataConfig)


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
    if a.name == "mlp":
        if len(a.hidden) == 0 or any(w <= 0 for w in a.hidden):
            _fail("arch.hidden", list(a.hidden), "need at least one hidden width, all > 0")
        specs = [a.activation, a.output_activation] + list(a.layer_activations or [])
        for spec in specs:
            try:
                make_activation(spec)
            except ValueError as err:
                raise ConfigError(f"arch: {err}") from None
        if a.layer_activations is not None and len(a.layer_activations) != len(a.hidden):
            _fail("arch.layer_activations", list(a.layer_activations), f"need one per hidden layer ({len(a.hidden)})")

    s = cfg.scheme
    allowed = SOLVERS_FOR_SCHEME[s.name]
    if cfg.solver.name not in allowed:
        _fail("solver", cfg.solver.name, f"scheme={s.name} is minimised by solver={'|'.join(allowed)}")
    if s.sparsity < 0:
        _fail("scheme.sparsity", s.sparsity, "must be >= 0")
    if s.sparsity_layer is not None:
        n_layers = len(a.hidden) + 1
        if not 1 <= s.sparsity_layer <= n_layers:
            _fail("scheme.sparsity_layer", s.sparsity_layer, f"must be a layer index 1..{n_layers}")

    if s.name == "bregman":
        n_layers = len(a.hidden) + 1
        _positive(cfg, "scheme.penalty_weight", s.penalty_weight)
        if s.layer_weights is not None and (len(s.layer_weights) != n_layers or min(s.layer_weights) <= 0):
            _fail("scheme.layer_weights", list(s.layer_weights), f"need {n_layers} weights, all > 0")
        if s.output not in ("clamped", "free"):
            _fail("scheme.output", s.output, "allowed: clamped, free")
        out_act = make_activation(a.output_activation)
        if s.output == "clamped" and not all(bool(out_act.in_domain(torch.tensor([v]))) for v in (0.0, 1.0)):
            _fail("scheme.output", s.output, f"a clamped output needs targets in [0, 1] inside the range of "
                  f"the output activation {out_act.spec()}; use output=free or another output_activation")
        if s.sparsity_layer is not None:
            acts = mlp_activations(a)
            act = make_activation(acts[s.sparsity_layer - 1])
            if not act.l1_composable:
                _fail("scheme.sparsity_layer", s.sparsity_layer, f"l1 on a {act.spec()} layer is not supported "
                      "(needs 0 in dPhi(0): identity, relu, leaky_relu, soft_threshold, tanh, clamp around 0)")
            if s.output == "clamped" and s.sparsity_layer == n_layers:
                _fail("scheme.sparsity_layer", s.sparsity_layer, "the clamped output layer cannot carry sparsity; use output=free")

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
