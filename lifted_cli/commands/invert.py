"""``lifted invert``: recover the inputs of a trained network from its (noisy) outputs.

The network comes from a ``lifted train`` checkpoint (rebuilt from the checkpoint alone), from a plain
``state_dict`` of an ``nn.Sequential`` of ``Linear`` layers and activations described by
``arch=sequential``, or is the random ReLU perceptron of the chapter's experiment. ``upto=layerK``
inverts only the first K layers (the encoder of an autoencoder). The data are the outputs of test
images of an image source (``source``; by default the one the checkpoint was trained on, else MNIST)
with noise of level ``delta``, or a tensor file of outputs. The methods are in
``lifted_cli/inversion``; this module loads, runs and writes the results folder.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .. import loggers
from ..data import SOURCES, build_source, load_images, load_train_val
from ..errors import ConfigError, InputError
from ..inversion import INVERSION_METHODS, REGULARIZERS, build_regularizer
from ..metrics import IMPLEMENTATION, per_image_metrics, summarise
from ..nets import ARCHITECTURES, UnifiedNet, build_network
from ..nets.architectures import MLP
from ..registry import Schema, check, check_choice, check_seed, check_interval, check_nonnegative, check_positive, fail, typed
from ..runs import (RunConfig, divergence, flush_denormals, require_source, out_of_memory, set_threads, split_dataset, is_train_checkpoint, load_checkpoint, load_tensor, samples_image, save_image,
                    save_torch, select_device, write_csv, write_json)
from . import run_task

log = logging.getLogger("lifted.invert")


# ---------------------------------------------------------------------------------------- config
@dataclass
class PerceptronConfig(Schema):
    out_dim: int = 512
    image_size: int = 64
    seed: int = 0
    bias: float = 0.0


@dataclass
class InvertConfig(RunConfig):
    command: str = "invert"
    checkpoint: Optional[str] = None
    network: str = "checkpoint"
    arch: Any = None
    source: Any = None
    perceptron: PerceptronConfig = field(default_factory=PerceptronConfig)
    upto: Optional[str] = None
    method: str = "lifted_bregman"
    regularizer: str = "tv"
    alpha: float = 0.01
    delta: float = 0.0
    noise: str = "relative"
    outputs: Optional[str] = None
    truth: Optional[str] = None
    images: str = "test"
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

    def validate(self):
        check_choice("command", self.command, ("invert",))
        RunConfig.validate(self)
        check_choice("network", self.network, list(NETWORKS))
        if self.network == "checkpoint":
            check(bool(self.checkpoint), "checkpoint", self.checkpoint,
                  "give a run folder, a checkpoint.pt or a state_dict file (checkpoint=PATH)")
        check_choice("method", self.method, INVERSION_METHODS.names())
        check_choice("regularizer", self.regularizer, REGULARIZERS.names())
        check_nonnegative("alpha", self.alpha)
        check_nonnegative("delta", self.delta)
        check_choice("noise", self.noise, ("relative", "absolute"))
        check_choice("output", self.output, ("clamped", "free"))
        check_choice("images", self.images, ("test", "val"))
        if self.images == "val":
            check(self.network == "checkpoint" and self.outputs is None, "images", self.images,
                  "the validation images of a lifted train run: needs network=checkpoint and no outputs file")
        for key in ("num_images", "iterations", "data_weight", "rho", "primal_step", "hidden_weight", "power_iters", "lr",
                    "log_every"):
            check_positive(key, getattr(self, key))
        check_interval("step_safety", self.step_safety, 0.0, 1.0, closed_low=False, closed_high=True)
        check_interval("momentum", self.momentum, 0.0, 1.0, closed_low=True, closed_high=False)
        check_nonnegative("tv_smoothing", self.tv_smoothing)
        check(math.isfinite(self.init), "init", self.init, "must be a finite number")
        for key in ("out_dim", "image_size"):
            check_positive(f"perceptron.{key}", self.perceptron[key])
        check_seed("perceptron.seed", self.perceptron.seed)


ConfigStore.instance().store(name="invert_schema", node=InvertConfig)


def validate(cfg: DictConfig) -> None:
    """Ranges and choices of every option (files are checked when they are loaded)."""
    InvertConfig.validate(typed(cfg, InvertConfig))
    if cfg.arch is not None:
        ARCHITECTURES.validate(cfg.arch)
    if cfg.source is not None:
        SOURCES.validate(cfg.source)
        check(cfg.images != "val", "images", cfg.images, "images=val inverts the validation images of the checkpoint's "
              "own training run, from its own source: leave source unset")
    method = INVERSION_METHODS.get(cfg.method).builder
    method.check(cfg, REGULARIZERS.get(cfg.regularizer).builder(1))


def prevalidate(cfg: DictConfig) -> None:
    """``validate``, the network (it loads, and ``upto`` names one of its layers) and the trackers'
    stores reached."""
    validate(cfg)
    model, source = load_network(cfg)
    usable_network(model, cfg)
    validation_split(cfg, source)
    loggers.reach(cfg)


# ------------------------------------------------------------------------------------- network
def _sequential_state(state: dict, model: UnifiedNet, path: Path) -> dict:
    """Map the keys of an ``nn.Sequential`` state_dict (``0.weight``, ``0.bias``, ``2.weight``, ...)
    onto the MLP's blocks, checking every shape against the described widths."""
    if all(k.startswith("blocks.") for k in state):
        return state
    linear_ids = sorted({int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()})
    if len(linear_ids) != model.depth or any(not k.split(".")[0].isdigit() for k in state):
        raise InputError(f"state_dict {path} has {len(linear_ids)} Linear layers ({', '.join(sorted(state))[:120]}); "
                         f"arch.widths describe {model.depth}")
    out = {}
    for block, idx in enumerate(linear_ids):
        for part in ("weight", "bias"):
            key = f"{idx}.{part}"
            if key not in state:
                raise InputError(f"state_dict {path} lacks {key}; need a weight and a bias per Linear layer")
            out[f"blocks.{block}.linear.{part}"] = state[key]
    return out


def random_perceptron(cfg) -> tuple[UnifiedNet, dict]:
    """The chapter's random ReLU perceptron f = relu(W u + b), W with N(0, 1) entries."""
    p = cfg.perceptron
    model = MLP([p.image_size**2, p.out_dim], ["relu"])
    g = torch.Generator().manual_seed(p.seed)
    with torch.no_grad():
        model.blocks[0].linear.weight.copy_(torch.randn(p.out_dim, p.image_size**2, generator=g))
        model.blocks[0].linear.bias.fill_(p.bias)
    return model, {"network": "random_perceptron", **OmegaConf.to_container(p)}


def checkpoint_network(cfg) -> tuple[UnifiedNet, dict]:
    """A ``lifted train`` checkpoint (rebuilt from it alone) or a plain state_dict described by ``arch``."""
    ckpt, path = load_checkpoint(Path(cfg.checkpoint))
    trained_on = None  # the training run's image source (a lifted train checkpoint)
    if is_train_checkpoint(ckpt):
        if cfg.arch is not None:
            raise ConfigError(f"arch={cfg.arch.get('name')}: {path} is a lifted train checkpoint, whose network is rebuilt "
                              "from the checkpoint itself; arch= describes a plain state_dict only: leave it out")
        try:  # the checkpoint's data only: its nodes are checked like any config (no unknown key, no code)
            config = split_dataset(ckpt["config"])
            arch = ARCHITECTURES.validate(OmegaConf.create(config["arch"]))
            trained_on = SOURCES.validate(OmegaConf.create(config["source"]))
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"{path}: its network description is not usable ({err})") from None
        state, source = ckpt["model"], "lifted train checkpoint"
        held = {"val_size": config.get("val_size", 0), "val_seed": config.get("val_seed")}
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        if cfg.arch is None:
            raise InputError(f"{path} is a plain state_dict: describe the network with arch=sequential "
                             "arch.widths=[IN,...,OUT] arch.activations=[...]")
        arch, state, source, held = cfg.arch, ckpt, "state_dict", None
    else:
        raise InputError(f"{path} is neither a lifted train checkpoint nor a state_dict of tensors")
    side = build_source(trained_on if trained_on is not None else cfg.source or MNIST).side
    try:
        model = build_network(arch, side)
    except ValueError as err:
        raise InputError(f"arch: {err}") from None
    if source == "state_dict":
        state = _sequential_state(state, model, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = [ln.strip() for ln in str(err).splitlines() if ln.strip()][1:3]
        raise InputError(f"{path} does not match the described network ({'; '.join(detail)[:300]})") from None
    info = {"network": source, "checkpoint": str(path), "arch": OmegaConf.to_container(arch, resolve=True)}
    if held is not None:
        info["validation"] = held
    if trained_on is not None:
        info["trained_on"] = OmegaConf.to_container(trained_on, resolve=True)
    return model, info


#: where the network to invert comes from (option ``network``)
NETWORKS = {"checkpoint": checkpoint_network, "random_perceptron": random_perceptron}


def load_network(cfg: DictConfig) -> tuple[UnifiedNet, dict]:
    """The network to invert and a description of where it came from."""
    try:
        return NETWORKS[cfg.network](cfg)
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        raise ConfigError(f"network={cfg.network}: it does not fit in memory ({out_of_memory(err)}); make it smaller "
                          "(perceptron.image_size, perceptron.out_dim)") from None


def layer_index(upto, depth: int) -> int:
    """``upto`` = null (the whole network), ``layerK`` or ``K`` (1-based)."""
    if upto is None:
        return depth
    text = str(upto)
    k = text[len("layer"):] if text.startswith("layer") else text
    if not k.isdigit() or not 1 <= int(k) <= depth:
        names = ", ".join(f"layer{i}" for i in range(1, depth + 1))
        fail("upto", upto, f"no such layer; this network has {names}")
    return int(k)


def sub_network(model: UnifiedNet, k: int) -> UnifiedNet:
    """Layers 1..k (reading out the state u_k); the whole network when k = depth."""
    if k == model.depth:
        return model
    return UnifiedNet(list(model.blocks[:k]))


def usable_network(model: UnifiedNet, cfg) -> tuple[UnifiedNet, int, int]:
    """(layers 1..upto, upto, image side); ConfigError for a network the inversion cannot take."""
    k = layer_index(cfg.upto, model.depth)
    net = sub_network(model, k)
    if net.zero_input:
        raise ConfigError("arch=unrolled_pnn takes its input through a data-dependent bias; inversion supports "
                          "mlp, resnet, proxnet, conv_autoencoder and sequential networks")
    in_dim = net.blocks[0].in_dim
    side = int(round(math.sqrt(in_dim)))
    if side * side != in_dim:
        raise ConfigError(f"the network's input has {in_dim} values, not a square image")
    return net, k, side


# ---------------------------------------------------------------------------------------- data
def validation_split(cfg, source: dict) -> tuple[int, int] | None:
    """``images=val``: (val_size, val_seed) of the checkpoint's training run, whose held-out
    validation images are inverted (to choose alpha and the like without the test set); None for
    ``images=test``. ConfigError when the run held out none, or fewer than ``num_images``."""
    if cfg.images != "val":
        return None
    held = source.get("validation") or {}
    try:  # the checkpoint's own record: data, checked like any input
        size = int(held.get("val_size") or 0)
        seed = None if held.get("val_seed") is None else int(held["val_seed"])
    except (TypeError, ValueError):
        raise InputError(f"images=val: {source.get('checkpoint')} records val_size={held.get('val_size')!r}, "
                         f"val_seed={held.get('val_seed')!r}; need integers") from None
    if size <= 0 or seed is None:
        raise ConfigError(f"images=val: {source.get('checkpoint')} was trained without a validation split; "
                          "train it with val_size=N, or invert images=test")
    if cfg.num_images > size:
        raise ConfigError(f"num_images={cfg.num_images}: the checkpoint's run held out val_size={size} validation images")
    return size, seed


#: the image source of a network not trained by lifted train (a state_dict, the random perceptron)
MNIST = OmegaConf.create({"name": "mnist"})


def images_source(cfg, source: dict) -> DictConfig:
    """The ``source`` whose test (or validation) images are inverted: ``source=`` when given, else the
    one the checkpoint's training run used, else MNIST."""
    if cfg.source is not None:
        return cfg.source
    return OmegaConf.create(source["trained_on"]) if source.get("trained_on") else MNIST


def make_data(cfg, net: UnifiedNet, side: int, device, source: dict | None = None
              ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(truth inputs or None, clean outputs f or None, noisy outputs f_delta). The inputs are the
    first ``num_images`` test images, or with ``images=val`` the first of the validation images that
    the checkpoint's training run held out (drawn as ``lifted train`` draws them, from its val_seed)."""
    out_dim = net.blocks[-1].out_dim
    if cfg.outputs is not None:
        f_delta = load_tensor(cfg.outputs, "outputs").to(device)
        if f_delta.shape[1] != out_dim:
            raise InputError(f"outputs={cfg.outputs} has {f_delta.shape[1]} values per row; the network outputs {out_dim}")
        truth = None
        if cfg.truth is not None:
            truth = load_tensor(cfg.truth, "truth").to(device)
            if truth.shape != (f_delta.shape[0], side * side):
                raise InputError(f"truth={cfg.truth} has shape {tuple(truth.shape)}; need ({f_delta.shape[0]}, {side * side})")
        return truth, None, f_delta
    images = images_source(cfg, source or {})
    require_source(cfg, images)
    held = validation_split(cfg, source or {})
    if held is None:
        x = load_images(images, cfg.data_root, train=False, size=cfg.num_images, key="num_images")
    else:
        x = load_train_val(images, cfg.data_root, None, held[0], torch.Generator().manual_seed(held[1]))[1][:cfg.num_images]
    if x.shape[-1] != side:  # e.g. the perceptron's 64 x 64 inputs
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)
    truth = x.reshape(x.shape[0], -1).to(device)
    with torch.no_grad():
        f = net.readout(net.forward_states(truth)[-1], truth)
    g = torch.Generator().manual_seed(cfg.seed)
    e = torch.randn(f.shape, generator=g).to(device)
    if cfg.noise == "relative":  # ||f_delta - f|| = delta ||f|| per image
        e = e * (f.norm(dim=1, keepdim=True) / e.norm(dim=1, keepdim=True).clamp(min=1e-12))
    return truth, f, f + cfg.delta * e


def vector_image(v: torch.Tensor, side: int) -> torch.Tensor:
    """Rows of output vectors as near-square grey images (min-max scaled per row), resized to
    side x side, for the samples picture."""
    n, m = v.shape
    if m == side * side:
        return v.reshape(n, 1, side, side)
    h = int(math.floor(math.sqrt(m)))
    w = math.ceil(m / h)
    pad = torch.zeros(n, h * w, dtype=v.dtype, device=v.device)
    lo, hi = v.min(dim=1, keepdim=True).values, v.max(dim=1, keepdim=True).values
    pad[:, :m] = (v - lo) / (hi - lo).clamp(min=1e-12)
    img = pad.reshape(n, 1, h, w)
    return torch.nn.functional.interpolate(img, size=(side, side), mode="nearest")


# ----------------------------------------------------------------------------------------- run
def invert(cfg: DictConfig) -> dict:
    """Run one inversion and write its results folder; returns the metrics. ``cfg`` is a validated
    ``invert`` config (``validate``). The trackers (``logger``) are reached before any work and get
    the history and the final metrics."""
    loggers.prepare(cfg)
    with loggers.start(cfg, Path(cfg.output_dir)) as trackers:
        metrics = run_inversion(cfg, trackers)
        trackers.log_final(metrics, cfg.iterations)
    return metrics


def run_inversion(cfg: DictConfig, trackers: loggers.Loggers) -> dict:
    """The inversion of ``invert``, each history row also handed to ``trackers``."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    set_threads(cfg.get("threads", "auto"))
    flush_denormals()
    torch.manual_seed(cfg.seed)
    model, source = load_network(cfg)
    net, k, side = usable_network(model, cfg)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    truth, f, f_delta = make_data(cfg, net, side, device, source)
    reg = build_regularizer(cfg.regularizer, side)
    log.info("device: %s; network: %s, layers 1..%d of %d; %d outputs of size %d; method %s, J=%s, alpha=%g, delta=%g",
             device, source["network"], k, model.depth, f_delta.shape[0], f_delta.shape[1], cfg.method, cfg.regularizer,
             cfg.alpha, cfg.delta)

    history = []

    def record(it: int, u: torch.Tensor, objective: float) -> None:
        with torch.no_grad():
            res = net.readout(net.forward_states(u)[-1], u) - f_delta
            row = {"iteration": it, "objective": objective,
                   "residual": float((res.norm(dim=1) / f_delta.norm(dim=1).clamp(min=1e-12)).mean())}
            if truth is not None:
                psnr, _ = per_image_metrics(u.reshape(-1, 1, side, side), truth.reshape(-1, 1, side, side))
                row["psnr"] = float(np.mean(psnr))
        if not math.isfinite(row["residual"]):
            raise divergence(f"inversion diverged at iteration {it} (residual {row['residual']}); lower step_safety or lr")
        history.append(row)
        trackers.log_row(row, "iteration")

    init = torch.full((f_delta.shape[0], net.blocks[0].in_dim), float(cfg.init), dtype=f_delta.dtype, device=device)
    bar = tqdm(total=cfg.iterations, desc="invert", disable=not (cfg.progress and sys.stderr.isatty()), leave=False)
    t0 = time.perf_counter()
    try:
        method = INVERSION_METHODS.get(cfg.method).builder(net, f_delta, reg, cfg, init)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for it in range(1, cfg.iterations + 1):
        method.step()
        bar.update()
        if it % cfg.log_every == 0 or it == cfg.iterations:
            record(it, method.u, float(method.objective().mean()))
    u = method.u
    seconds = time.perf_counter() - t0
    bar.close()

    last = history[-1]
    metrics = {
        "status": "finished",
        "method": cfg.method, "regularizer": cfg.regularizer, "alpha": cfg.alpha, "delta": cfg.delta, "noise": cfg.noise,
        "iterations": cfg.iterations, "init": cfg.init, "box": cfg.box, "seconds": seconds, "images": int(f_delta.shape[0]),
        "images_from": "outputs file" if cfg.outputs is not None else cfg.images,
        "layers_inverted": k, "network_depth": model.depth, "output_dim": int(f_delta.shape[1]),
        "residual": last["residual"], "objective": last["objective"],
        "network": source, "source": images_source(cfg, source).name if cfg.outputs is None else None,
        "image_side": side, "device": str(device), "threads": torch.get_num_threads(), "torch_version": torch.__version__, "seed": cfg.seed,
        "metric_implementation": IMPLEMENTATION, "settings": method.settings(),
    }
    if truth is not None:
        psnr, ssim = per_image_metrics(u.reshape(-1, 1, side, side), truth.reshape(-1, 1, side, side))
        # the relative error ||u - u_true|| / ||u_true||: the norm in which stability estimates are stated
        rel = ((u - truth).norm(dim=1) / truth.norm(dim=1).clamp(min=1e-12)).cpu().numpy()
        metrics["recovered"] = {"psnr": summarise(psnr), "ssim": summarise(ssim), "rel_error": summarise(rel)}
    write_csv(out / "history.csv", history)
    save_torch(out / "recovered.pt", u.detach().cpu())
    n = min(cfg.num_samples, u.shape[0])
    if n > 0:
        rows = [vector_image(f_delta[:n], side), u[:n].reshape(-1, 1, side, side)]
        labels = ["outputs f_delta", "recovered u"]
        if truth is not None:
            rows.insert(0, truth[:n].reshape(-1, 1, side, side))
            labels.insert(0, "truth")
        save_image(out / "samples.png", samples_image(rows, labels))
    write_json(out / "metrics.json", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path="pkg://lifted_cli.configs", config_name="invert")
def app(cfg: DictConfig) -> float | None:
    metrics = run_task(cfg, validate, invert)
    rec = metrics.get("recovered")
    quality = f"recovered PSNR {rec['psnr']['mean']:.2f} dB, SSIM {rec['ssim']['mean']:.4f}, " if rec else ""
    print(f"lifted invert: done in {cfg.output_dir}: {quality}relative residual {metrics['residual']:.4g}, "
          f"{metrics['seconds']:.1f} s")
    return rec["psnr"]["mean"] if rec else None
