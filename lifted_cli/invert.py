"""``lifted invert``: recover the inputs of a trained network from its (noisy) outputs.

The network comes from a ``lifted train`` checkpoint (rebuilt from the checkpoint alone), from a plain
``state_dict`` of an ``nn.Sequential`` of ``Linear`` layers and activations described by
``arch=sequential``, or is the random ReLU perceptron of the chapter's experiment. ``upto=layerK``
inverts only the first K layers (the encoder of an autoencoder). The data are the outputs of MNIST
test images with noise of level ``delta``, or a tensor file of outputs. The methods are in
``inversion.py``; this module loads, runs and writes the results folder.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import io
from .data import ensure_mnist, load_mnist
from .inversion import LiftedInversion, invert_backprop, regularizer_value
from .metrics import IMPLEMENTATION, per_image_metrics, summarise
from .networks import MLP, UnifiedNet, build_network
from .training import TrainingError, samples_image, select_device

log = logging.getLogger("lifted.invert")


class InversionError(RuntimeError):
    """A bad checkpoint, network description or data file; the message is one line."""


# ------------------------------------------------------------------------------------- network
def _load(path: Path):
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InversionError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), path
    except Exception as err:
        raise InversionError(f"checkpoint {path} cannot be read ({type(err).__name__}); is it complete?") from None


def _sequential_state(state: dict, model: UnifiedNet, path: Path) -> dict:
    """Map the keys of an ``nn.Sequential`` state_dict (``0.weight``, ``0.bias``, ``2.weight``, ...)
    onto the MLP's blocks, checking every shape against the described widths."""
    if all(k.startswith("blocks.") for k in state):
        return state
    linear_ids = sorted({int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()})
    if len(linear_ids) != model.depth or any(not k.split(".")[0].isdigit() for k in state):
        raise InversionError(f"state_dict {path} has {len(linear_ids)} Linear layers ({', '.join(sorted(state))[:120]}); "
                             f"arch.widths describe {model.depth}")
    out = {}
    for block, idx in enumerate(linear_ids):
        for part in ("weight", "bias"):
            key = f"{idx}.{part}"
            if key not in state:
                raise InversionError(f"state_dict {path} lacks {key}; need a weight and a bias per Linear layer")
            out[f"blocks.{block}.linear.{part}"] = state[key]
    return out


def load_network(cfg: DictConfig) -> tuple[UnifiedNet, dict]:
    """The network to invert and a description of where it came from."""
    if cfg.network == "random_perceptron":
        p = cfg.perceptron
        model = MLP([p.image_size**2, p.out_dim], ["relu"])
        g = torch.Generator().manual_seed(p.seed)
        with torch.no_grad():
            model.blocks[0].linear.weight.copy_(torch.randn(p.out_dim, p.image_size**2, generator=g))
            model.blocks[0].linear.bias.fill_(p.bias)
        return model, {"network": "random_perceptron", **OmegaConf.to_container(p)}
    ckpt, path = _load(Path(cfg.checkpoint))
    if isinstance(ckpt, dict) and "model" in ckpt and "config" in ckpt:  # a `lifted train` checkpoint
        arch = OmegaConf.create(ckpt["config"]["arch"])
        state = ckpt["model"]
        source = "lifted train checkpoint"
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        if cfg.arch is None:
            raise InversionError(f"{path} is a plain state_dict: describe the network with arch=sequential "
                                 "arch.widths=[IN,...,OUT] arch.activations=[...]")
        arch = cfg.arch
        state = ckpt
        source = "state_dict"
    else:
        raise InversionError(f"{path} is neither a lifted train checkpoint nor a state_dict of tensors")
    try:
        model = build_network(arch)
    except ValueError as err:
        raise InversionError(f"arch: {err}") from None
    if source == "state_dict" and arch.name == "sequential":
        state = _sequential_state(state, model, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = [ln.strip() for ln in str(err).splitlines() if ln.strip()][1:3]
        raise InversionError(f"{path} does not match the described network ({'; '.join(detail)[:300]})") from None
    return model, {"network": source, "checkpoint": str(path), "arch": OmegaConf.to_container(arch, resolve=True)}


def layer_index(upto, depth: int) -> int:
    """``upto`` = null (the whole network), ``layerK`` or ``K`` (1-based)."""
    if upto is None:
        return depth
    text = str(upto)
    k = text[len("layer"):] if text.startswith("layer") else text
    if not k.isdigit() or not 1 <= int(k) <= depth:
        names = ", ".join(f"layer{i}" for i in range(1, depth + 1))
        raise InversionError(f"upto={upto}: no such layer; this network has {names}")
    return int(k)


def sub_network(model: UnifiedNet, k: int) -> UnifiedNet:
    """Layers 1..k (reading out the state u_k); the whole network when k = depth."""
    if k == model.depth:
        return model
    return UnifiedNet(list(model.blocks[:k]))


# ---------------------------------------------------------------------------------------- data
def _tensor_file(path: str, what: str) -> torch.Tensor:
    p = Path(path)
    if not p.is_file():
        raise InversionError(f"{what}={path} does not exist")
    try:
        t = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InversionError(f"{what}={path} cannot be read ({type(err).__name__})") from None
    if not torch.is_tensor(t):
        raise InversionError(f"{what}={path} holds a {type(t).__name__}, not a tensor")
    return t.to(torch.float32).reshape(t.shape[0], -1)


def make_data(cfg, net: UnifiedNet, side: int, device) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(truth inputs or None, clean outputs f or None, noisy outputs f_delta)."""
    out_dim = net.blocks[-1].out_dim
    if cfg.outputs is not None:
        f_delta = _tensor_file(cfg.outputs, "outputs").to(device)
        if f_delta.shape[1] != out_dim:
            raise InversionError(f"outputs={cfg.outputs} has {f_delta.shape[1]} values per row; the network outputs {out_dim}")
        truth = None
        if cfg.truth is not None:
            truth = _tensor_file(cfg.truth, "truth").to(device)
            if truth.shape != (f_delta.shape[0], side * side):
                raise InversionError(f"truth={cfg.truth} has shape {tuple(truth.shape)}; need ({f_delta.shape[0]}, {side * side})")
        return truth, None, f_delta
    ensure_mnist(cfg.data_root, tuple(cfg.data_sources))
    x = load_mnist(cfg.data_root, train=False, size=cfg.num_images)
    if side != 28:
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
    """Run one inversion and write its results folder; returns the metrics."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, source = load_network(cfg)
    k = layer_index(cfg.upto, model.depth)
    net = sub_network(model, k).to(device).eval()
    if net.zero_input:
        raise InversionError("arch=unrolled_pnn takes its input through a data-dependent bias; inversion supports "
                             "mlp, resnet, proxnet and sequential networks")
    in_dim = net.blocks[0].in_dim
    side = int(round(math.sqrt(in_dim)))
    if side * side != in_dim:
        raise InversionError(f"the network's input has {in_dim} values, not a square image")
    for p in net.parameters():
        p.requires_grad_(False)
    truth, f, f_delta = make_data(cfg, net, side, device)
    log.info("device: %s; network: %s, layers 1..%d of %d; %d outputs of size %d; method %s, J=%s, alpha=%g, delta=%g",
             device, source["network"], k, model.depth, f_delta.shape[0], f_delta.shape[1], cfg.method, cfg.regularizer,
             cfg.alpha, cfg.delta)

    history = []

    def record(it: int, u: torch.Tensor, objective: float | None) -> None:
        with torch.no_grad():
            res = net.readout(net.forward_states(u)[-1], u) - f_delta
            row = {"iteration": it, "objective": objective if objective is not None else math.nan,
                   "residual": float((res.norm(dim=1) / f_delta.norm(dim=1).clamp(min=1e-12)).mean())}
            if truth is not None:
                psnr, _ = per_image_metrics(u.reshape(-1, 1, side, side), truth.reshape(-1, 1, side, side))
                row["psnr"] = float(np.mean(psnr))
        if not all(math.isfinite(v) for key, v in row.items() if key not in ("objective", "psnr")):
            raise TrainingError(f"inversion diverged at iteration {it} (residual {row['residual']}); lower step_safety or lr")
        history.append(row)

    init = torch.full((f_delta.shape[0], in_dim), float(cfg.init), dtype=f_delta.dtype, device=device)
    bar = tqdm(total=cfg.iterations, desc="invert", disable=not cfg.progress, leave=False)
    t0 = time.perf_counter()
    if cfg.method == "lifted_bregman":
        try:
            solver = LiftedInversion(net, f_delta, cfg.regularizer, cfg.alpha, side, cfg.output, cfg.data_weight, cfg.rho,
                                     cfg.step_safety, cfg.power_iters, init=init, box=cfg.box,
                                     primal_step=cfg.primal_step, hidden_weight=cfg.hidden_weight,
                                     momentum=cfg.momentum)
        except ValueError as err:
            raise InversionError(str(err)) from None
        for it in range(1, cfg.iterations + 1):
            solver.step()
            bar.update()
            if it % cfg.log_every == 0 or it == cfg.iterations:
                record(it, solver.u, float(solver.objective().mean()))
        u = solver.u
        extra = {"tau": solver.tau, "lipschitz_u": solver.lip, "restarts": solver.restarts,
                 "hidden_restarts": solver.hidden_restarts}
    else:
        def cb(it, u_now):
            bar.update()
            if it % cfg.log_every == 0 or it == cfg.iterations:
                obj = 0.5 * (net.readout(net.forward_states(u_now)[-1], u_now) - f_delta).pow(2).sum(dim=1)
                if cfg.regularizer != "box":
                    obj = obj + cfg.alpha * regularizer_value(cfg.regularizer, u_now, side)
                record(it, u_now, float(obj.mean()))

        u = invert_backprop(net, f_delta, cfg.regularizer, cfg.alpha, side, cfg.iterations, cfg.lr, cfg.tv_smoothing, cb, init=init, box=cfg.box)
        extra = {"lr": cfg.lr, "tv_smoothing": cfg.tv_smoothing}
    seconds = time.perf_counter() - t0
    bar.close()

    last = history[-1]
    metrics = {
        "status": "finished",
        "method": cfg.method, "regularizer": cfg.regularizer, "alpha": cfg.alpha, "delta": cfg.delta, "noise": cfg.noise,
        "iterations": cfg.iterations, "init": cfg.init, "box": cfg.box, "seconds": seconds, "images": int(f_delta.shape[0]),
        "layers_inverted": k, "network_depth": model.depth, "output_dim": int(f_delta.shape[1]),
        "residual": last["residual"], "objective": last["objective"],
        "source": source, "device": str(device), "torch_version": torch.__version__, "seed": cfg.seed,
        "metric_implementation": IMPLEMENTATION, "settings": extra,
    }
    if truth is not None:
        psnr, ssim = per_image_metrics(u.reshape(-1, 1, side, side), truth.reshape(-1, 1, side, side))
        # the relative error ||u - u_true|| / ||u_true||: the norm in which stability estimates are stated
        rel = ((u - truth).norm(dim=1) / truth.norm(dim=1).clamp(min=1e-12)).cpu().numpy()
        metrics["recovered"] = {"psnr": summarise(psnr), "ssim": summarise(ssim), "rel_error": summarise(rel)}
    io.write_csv(out / "history.csv", history)
    torch_u = u.detach().cpu()
    io.save_torch(out / "recovered.pt", torch_u)
    n = min(cfg.num_samples, u.shape[0])
    if n > 0:
        rows = [vector_image(f_delta[:n], side), u[:n].reshape(-1, 1, side, side)]
        if truth is not None:
            rows.insert(0, truth[:n].reshape(-1, 1, side, side))
        io.save_image(out / "samples.png", samples_image(rows))
    io.write_json(out / "metrics.json", metrics)
    return metrics
