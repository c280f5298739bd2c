"""The training loop: data -> degradation -> network -> scheme/solver -> evaluation -> run folder.

``train(cfg)`` is a plain function (the Hydra app in ``apps.py`` only calls it) that returns the
final metrics and writes, into ``cfg.output_dir``: ``metrics.json``, ``history.csv``,
``checkpoint.pt`` and ``samples.png`` (all atomically).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import io
from .data import ensure_mnist, load_mnist
from .degradations import build_degradation
from .metrics import IMPLEMENTATION, per_image_metrics, summarise
from .networks import build_network
from .schemes import build_scheme

log = logging.getLogger("lifted.train")

#: config keys that may differ between a run and its resumption
RESUMABLE_CHANGES = ("resume", "progress", "device", "epochs", "output_dir", "data_root", "eval_every")


class TrainingError(RuntimeError):
    """A run that cannot go on (divergence, bad resume folder); the message is one line."""


def _job_number() -> int | None:
    """The job number of a multirun job (None in a single run)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return int(HydraConfig.get().job.num)
    except Exception:  # outside Hydra (tests, scripts)
        return None
    return None


def select_device(spec: str) -> torch.device:
    """``auto``: CUDA if present, else the CPU; with several GPUs, job N of a multirun takes GPU
    N mod count (so the jobs of ``hydra/launcher=joblib`` spread over the GPUs)."""
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n, job = torch.cuda.device_count(), _job_number()
        return torch.device(f"cuda:{job % n}") if n > 1 and job is not None else torch.device("cuda")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={spec}: CUDA is not available on this machine; use device=cpu or auto")
    dev = torch.device(spec)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise TrainingError(f"device={spec}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def make_test_set(cfg, degradation, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and degraded test images. The degradation is drawn on the CPU from a generator seeded
    with ``dataset.test_seed`` alone, so the test data are identical for every run, whatever the
    seed, scheme, architecture or device."""
    x = load_mnist(cfg.data_root, train=False, size=cfg.test_size)
    gen = torch.Generator().manual_seed(int(cfg.dataset.test_seed))
    y = torch.cat([degradation.measure(chunk, gen) for chunk in x.split(1000)])
    return x.to(device), y.to(device)


@torch.no_grad()
def reconstruct(model, y: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in y.split(batch)])


def evaluate(model, x: torch.Tensor, y: torch.Tensor) -> dict:
    psnr, ssim = per_image_metrics(reconstruct(model, y), x)
    return {"psnr": summarise(psnr), "ssim": summarise(ssim)}


def samples_image(rows: list[torch.Tensor], scale: int = 3):
    """A PIL image with one row per tensor (truth, degraded, reconstruction), images clamped to [0, 1]."""
    from PIL import Image
    from torchvision.utils import make_grid

    n = rows[0].shape[0]
    grid = make_grid(torch.cat([r.detach().cpu().clamp(0, 1) for r in rows]), nrow=n, padding=2, pad_value=1.0)
    arr = (grid[0].numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)


def _rng_state(gen_perm, gen_noise) -> dict:
    state = {"torch": torch.get_rng_state(), "perm": gen_perm.get_state(), "noise": gen_noise.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _check_resume_config(cfg, saved: dict) -> None:
    now = OmegaConf.to_container(cfg, resolve=True)
    for key in set(now) | set(saved):
        if key in RESUMABLE_CHANGES:
            continue
        if now.get(key) != saved.get(key):
            raise TrainingError(
                f"resume={cfg.resume}: {key} differs from the checkpoint ({saved.get(key)} vs {now.get(key)}); "
                f"only {', '.join(RESUMABLE_CHANGES)} may change on resume"
            )


def load_checkpoint(path) -> dict:
    """Load a checkpoint (``weights_only=True``); one-line TrainingError when missing or corrupt."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise TrainingError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TrainingError(f"checkpoint {path} cannot be read ({type(err).__name__}); is it complete?") from None


def network_from_checkpoint(path):
    """Rebuild the trained network from a run folder or checkpoint file alone."""
    ckpt = load_checkpoint(path)
    model = build_network(OmegaConf.create(ckpt["config"]["arch"]))
    model.load_state_dict(ckpt["model"])
    return model, ckpt


class _DeferredInterrupt:
    """Ctrl-C during training is deferred to the next batch boundary, so that the checkpoint saved
    on interrupt never holds a half-applied update. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def _finite_model(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def train(cfg: DictConfig) -> dict:
    """Train the configured network; returns the final metrics (also written to metrics.json)."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    log.info("device: %s (torch %s)", device, torch.__version__)

    source = ensure_mnist(cfg.data_root, tuple(cfg.data_sources))
    log.info("MNIST from %s (%s)", source, cfg.data_root)
    degradation = build_degradation(cfg.dataset)
    x_test, y_test = make_test_set(cfg, degradation, device)
    x_train = load_mnist(cfg.data_root, train=True, size=cfg.train_size).to(device)
    n_train = x_train.shape[0]
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)

    torch.manual_seed(cfg.seed)
    model = build_network(cfg.arch).to(device)
    scheme = build_scheme(model, cfg.scheme, cfg.solver)
    gen_perm = torch.Generator().manual_seed(cfg.seed)
    gen_noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)

    history: list[dict] = []
    start_epoch, start_batch, perm, partial = 0, 0, None, {}
    if cfg.resume:
        ckpt = load_checkpoint(Path(cfg.resume) / "checkpoint.pt")
        _check_resume_config(cfg, ckpt["config"])
        model.load_state_dict(ckpt["model"])
        scheme.load_state_dict(ckpt["solver"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        gen_perm.set_state(ckpt["rng"]["perm"])
        if device.type == ckpt.get("device_type", "cpu"):
            gen_noise.set_state(ckpt["rng"]["noise"])
        history = list(ckpt["history"])
        start_epoch, start_batch, perm, partial = ckpt["epoch"], ckpt["batch"], ckpt.get("perm"), ckpt.get("partial", {})
        log.info("resuming %s at epoch %d, batch %d", cfg.resume, start_epoch + 1, start_batch)

    psnr_in, ssim_in = per_image_metrics(y_test, x_test)
    no_learning = {"psnr": summarise(psnr_in), "ssim": summarise(ssim_in)}
    resolved = OmegaConf.to_container(cfg, resolve=True)

    def checkpoint(epoch, batch, perm_now, partial_now):
        io.save_torch(
            out / "checkpoint.pt",
            {
                "model": model.state_dict(),
                "config": resolved,
                "epoch": epoch,
                "batch": batch,
                "perm": perm_now,
                "partial": partial_now,
                "solver": scheme.state_dict(),
                "rng": _rng_state(gen_perm, gen_noise),
                "device_type": device.type,
                "history": history,
            },
        )

    def _diverged(where: str):
        raise TrainingError(f"training diverged {where}; the last good checkpoint is kept in {out / 'checkpoint.pt'}")

    stop = _DeferredInterrupt()
    show = bool(cfg.progress) and sys.stderr.isatty()
    epochs_bar = tqdm(range(start_epoch, cfg.epochs), desc="epochs", disable=not show, initial=start_epoch, total=cfg.epochs)
    try:
        for epoch in epochs_bar:
            if perm is None:
                perm = torch.randperm(n_train, generator=gen_perm)
            scheme.begin_epoch(epoch)
            sums = dict(partial.get("sums", {}))
            seconds = partial.get("seconds", 0.0)
            t0 = time.perf_counter()
            bar = tqdm(total=batches_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}", leave=False, disable=not show)
            b = start_batch
            try:
                for b in range(start_batch, batches_per_epoch):
                    noise_state = gen_noise.get_state()
                    if stop.requested:
                        raise KeyboardInterrupt
                    idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size].to(device)
                    x = x_train[idx]
                    y = degradation.measure(x, gen_noise)
                    stats = scheme.step(y, x)
                    if not all(math.isfinite(v) for v in stats.values()):
                        _diverged(f"at epoch {epoch + 1}, batch {b + 1} (statistics {stats})")
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + v
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.4g}")
                else:
                    b = batches_per_epoch
            except KeyboardInterrupt:
                bar.close()
                seconds += time.perf_counter() - t0
                if b < batches_per_epoch:  # batch b had not been applied: replay it from its noise state
                    gen_noise.set_state(noise_state)
                checkpoint(epoch, b, perm, {"sums": sums, "seconds": seconds})
                log.warning("interrupted: checkpoint saved at epoch %d, batch %d; continue with resume=%s", epoch + 1, b, out)
                raise
            bar.close()
            seconds += time.perf_counter() - t0
            row = {"epoch": epoch + 1, "seconds": seconds}
            row.update({k: v / batches_per_epoch for k, v in sums.items()})
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                ev = evaluate(model, x_test, y_test)
                row.update(test_psnr=ev["psnr"]["mean"], test_ssim=ev["ssim"]["mean"])
            else:
                row.update(test_psnr=math.nan, test_ssim=math.nan)
            if not _finite_model(model):  # checked once per epoch: a bad batch shows in the next batch's loss
                _diverged(f"in epoch {epoch + 1} (non-finite weights)")
            history.append(row)
            perm, partial, start_batch = None, {}, 0
            checkpoint(epoch + 1, 0, None, {})
            io.write_csv(out / "history.csv", history)
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))
    finally:
        stop.restore()
    final = evaluate(model, x_test, y_test)
    trained = [r["seconds"] for r in history]
    metrics = {
        "status": "finished",
        "run_dir": str(out),
        "test": final,
        "no_learning": no_learning,
        "train": {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds", "test_psnr", "test_ssim")} if history else {},
        "epochs": cfg.epochs,
        "seconds_per_epoch": float(np.mean(trained)) if trained else math.nan,
        "seconds_per_epoch_all": trained,
        "device": str(device),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        "train_images": n_train,
        "test_images": int(x_test.shape[0]),
        "metric_implementation": IMPLEMENTATION,
        "hyperparameters": scheme.hyperparameters(),
    }
    if cfg.num_samples > 0:
        k = min(cfg.num_samples, x_test.shape[0])
        img = samples_image([x_test[:k], y_test[:k], reconstruct(model, y_test[:k])])
        io.save_image(out / "samples.png", img)
    io.write_json(out / "metrics.json", metrics)
    return metrics
