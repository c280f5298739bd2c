"""``lifted train``: data -> degradation -> network -> scheme + solver -> epochs -> evaluation -> run folder.

``train(cfg)`` is a plain function (the Hydra app only calls it) that returns the final metrics and
writes, into ``cfg.output_dir``: ``metrics.json``, ``history.csv``, ``checkpoint.pt`` and
``samples.png`` (all atomically). It reads as: load the data, build the components, restore a
checkpoint when resuming, run the epochs (each ends with an evaluation and a checkpoint), finish.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
import numpy as np
import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from tqdm import tqdm

from ..data import DEGRADATIONS, SOURCES, build_degradation, build_source, load_images, load_train_val
from ..errors import ConfigError, InputError, LiftedError
from ..lifted import SCHEMES, SOLVERS, build_training, check_solver
from ..metrics import IMPLEMENTATION, per_image_metrics, summarise
from ..nets import ARCHITECTURES, build_network
from .. import loggers, parallel
from ..parallel import PARALLEL
from ..registry import check_choice, check_nonnegative, check_positive, check_seed, fail, typed
from ..runs import (DeferredInterrupt, Interrupted, RunConfig, StepClock, tune_allocator, divergence, flush_denormals, require_source, load_checkpoint, out_of_memory, set_threads, split_dataset, samples_image, save_image, save_torch,
                    select_device, write_csv, write_json)
from . import run_task

log = logging.getLogger("lifted.train")

#: the config groups of a training run and their registries
GROUPS = {"source": SOURCES, "task": DEGRADATIONS, "arch": ARCHITECTURES, "scheme": SCHEMES, "solver": SOLVERS, "parallel": PARALLEL}

#: config keys that may differ between a run and its resumption (``parallel``: its processes, not its mode)
RESUMABLE_CHANGES = ("resume", "progress", "device", "threads", "epochs", "output_dir", "data_root", "eval_every", "parallel")

#: the ``parallel`` options that may change on resume
RESUMABLE_PARALLEL = ("parallel.nproc", "parallel.backend", "parallel.timeout_s")


# ---------------------------------------------------------------------------------------- config
@dataclass
class TrainConfig(RunConfig):
    command: str = "train"
    source: Any = MISSING
    task: Any = MISSING
    arch: Any = MISSING
    scheme: Any = MISSING
    solver: Any = MISSING
    parallel: Any = MISSING
    epochs: int = 5
    batch_size: int = 128
    eval_every: int = 1
    train_size: Optional[int] = None
    test_size: Optional[int] = None
    val_size: int = 0
    val_seed: int = 2024
    resume: Optional[str] = None

    def validate(self):
        check_choice("command", self.command, ("train",))
        RunConfig.validate(self)
        for key in ("epochs", "batch_size", "eval_every"):
            check_positive(key, getattr(self, key))
        check_positive("train_size", self.train_size, allow_none=True)
        check_positive("test_size", self.test_size, allow_none=True)
        check_nonnegative("val_size", self.val_size)
        check_seed("val_seed", self.val_seed)


ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def validate(cfg: DictConfig, resuming: bool = False) -> None:
    """Types, ranges and unknown keys of every option, and the scheme/solver pair. ``resume`` is set
    by ``lifted train resume=<folder>`` alone (``resume``), never as an override of a new run."""
    TrainConfig.validate(typed(cfg, TrainConfig))
    if not resuming and cfg.resume is not None:
        fail("resume", cfg.resume, "continue a run with `lifted train resume=<its folder> [changes]` (not with + or ++)")
    for group, registry in GROUPS.items():
        registry.validate(cfg[group])
    check_solver(cfg.scheme, cfg.solver)
    parallel.validate(cfg, SOLVERS.get(cfg.solver.name).info["form"] == "lifted")


def build(cfg: DictConfig, device: torch.device, comm=None):
    """The network, scheme and solver of a run (weights from torch's global RNG, so every rank of a
    parallel run builds the same ones). A combination the mathematics does not allow fails here
    with one line (ConfigError). Subnormal floats read as zero from here on (``flush_denormals``)."""
    flush_denormals()
    where = f"scheme={cfg.scheme.name} arch={cfg.arch.name} solver={cfg.solver.name}"
    side = build_source(cfg.source).side
    try:
        model = build_network(cfg.arch, side)
        if not maps_images_to_images(model, side):
            raise ValueError(f"training maps {side}x{side} images ({cfg.source.name}) to images of the same size; "
                             "this network does not")
        model = model.to(device)
        parallel.check_build(cfg, model)
        scheme, solver = build_training(model, cfg.scheme, cfg.solver, parallel.parallelize(comm, model))
    except ValueError as err:  # ConfigError included: the builders' own checks
        raise ConfigError(f"{where}: {err}") from None
    except (RuntimeError, MemoryError) as err:
        if not out_of_memory(err):
            raise
        raise ConfigError(f"{where}: the network does not fit in {device.type} memory ({out_of_memory(err)}); "
                          "make it smaller (arch.hidden, arch.width, arch.depth, ...)") from None
    return model, scheme, solver


@torch.no_grad()
def maps_images_to_images(model, side: int) -> bool:
    try:
        return model(torch.zeros(1, 1, side, side)).shape == (1, 1, side, side)
    except RuntimeError:  # the first layer's input size is not the image's
        return False


def prevalidate(cfg: DictConfig) -> None:
    """``validate``, a build on the CPU (on a forked RNG, so no run's seed is touched) and the
    trackers' stores reached."""
    validate(cfg)
    with torch.random.fork_rng(devices=[]):
        build(cfg, torch.device("cpu"))
    loggers.reach(cfg)


# ------------------------------------------------------------------------------------ evaluation
def measure_fixed(degradation, x: torch.Tensor, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and degraded images, the degradation drawn on the CPU from a generator seeded with
    ``seed`` alone (so the same for every run, whatever its seed, scheme, architecture or device)."""
    gen = torch.Generator().manual_seed(int(seed))
    y = torch.cat([degradation.measure(chunk, gen) for chunk in x.split(1000)]) if len(x) else x.clone()
    return x.to(device), y.to(device)


def make_test_set(cfg, degradation, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and degraded test images (the degradation seeded with ``task.test_seed``)."""
    return measure_fixed(degradation, load_images(cfg.source, cfg.data_root, train=False, size=cfg.test_size),
                         cfg.task.test_seed, device)


def make_train_val(cfg, degradation, device) -> tuple[torch.Tensor, tuple | None]:
    """The training images, and the clean and degraded validation images (None for ``val_size=0``):
    ``val_size`` images held out of the source's training split, drawn and degraded from ``val_seed``
    alone, so every run of any seed sees the same validation set and never trains on it."""
    split = torch.Generator().manual_seed(int(cfg.val_seed))
    x_train, x_val = load_train_val(cfg.source, cfg.data_root, cfg.train_size, int(cfg.val_size), split)
    val = measure_fixed(degradation, x_val, int(cfg.val_seed) + 1, device) if cfg.val_size else None
    return x_train.to(device), val


@torch.no_grad()
def reconstruct(model, y: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(chunk) for chunk in y.split(batch)])


def evaluate(model, x: torch.Tensor, y: torch.Tensor) -> dict:
    psnr, ssim = per_image_metrics(reconstruct(model, y), x)
    return {"psnr": summarise(psnr), "ssim": summarise(ssim)}


# ------------------------------------------------------------------------------------ run state
@dataclass
class Progress:
    """Where a run stands: the next epoch and batch, the epoch's permutation and partial sums."""

    epoch: int = 0
    batch: int = 0
    perm: torch.Tensor | None = None
    partial: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def check_resume_config(cfg, saved: dict) -> None:
    now = OmegaConf.to_container(cfg, resolve=True)
    mode = (saved.get("parallel") or {}).get("name", "none")
    if mode != cfg.parallel.name:
        raise ConfigError(f"resume={cfg.resume}: parallel.name differs from the checkpoint ({mode} vs {cfg.parallel.name}); "
                          f"only {', '.join(RESUMABLE_PARALLEL)} may change on resume")
    for key in set(now) | set(saved):
        if key in RESUMABLE_CHANGES:
            continue
        if now.get(key) != saved.get(key):
            raise ConfigError(
                f"resume={cfg.resume}: {key} differs from the checkpoint ({saved.get(key)} vs {now.get(key)}); "
                f"only {', '.join(RESUMABLE_CHANGES)} may change on resume"
            )


def rng_state(gen_perm, gen_noise) -> dict:
    state = {"torch": torch.get_rng_state(), "perm": gen_perm.get_state(), "noise": gen_noise.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(cfg, ckpt: dict, model, scheme, solver, gen_perm, gen_noise, device, comm=None) -> Progress:
    """The state of the checkpoint ``ckpt`` of the run folder ``cfg.resume``, loaded into the components
    and generators (a data-parallel rank takes its share of the stored auxiliaries); InputError (one
    line) for a checkpoint that does not fit the run."""
    check_resume_config(cfg, split_dataset(ckpt["config"]))
    if cfg.epochs < ckpt.get("epoch", 0):
        raise ConfigError(f"resume={cfg.resume}: epochs={cfg.epochs} is below the {ckpt['epoch']} epochs already trained")
    parallel.check_resume(cfg, ckpt)
    try:
        model.load_state_dict(ckpt["model"])
        scheme.load_state_dict(ckpt["scheme"])
        if solver is not None:  # None: the launching process's check of a layer-parallel checkpoint (per-rank states)
            solver.load_state_dict(parallel.local_state(comm, ckpt["solver"]))
        torch.set_rng_state(ckpt["rng"]["torch"])
        gen_perm.set_state(ckpt["rng"]["perm"])
        if device.type == ckpt.get("device_type", "cpu"):
            gen_noise.set_state(ckpt["rng"]["noise"])
        progress = Progress(ckpt["epoch"], ckpt["batch"], ckpt.get("perm"), ckpt.get("partial", {}), list(ckpt["history"]))
    except (KeyError, RuntimeError, TypeError, ValueError) as err:
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise InputError(f"resume={cfg.resume}: its checkpoint does not fit this run ({type(err).__name__}: {detail})") from None
    log.info("resuming %s at epoch %d, batch %d", cfg.resume, ckpt["epoch"] + 1, ckpt["batch"])
    return progress


class DeferredStop(Interrupted):
    """The first stop signal (Ctrl-C, SIGTERM, SIGUSR1), honoured at a batch boundary: the state is
    whole, so it is checkpointed."""


def finite_model(model) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------ train
@dataclass
class Session:
    """Everything a training run works with: its config, folder, data, components, random streams and
    progress. ``train`` is: set up, restore, ``epoch`` after epoch, ``finish``."""

    cfg: DictConfig
    out: Path
    device: torch.device
    degradation: Any
    x_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    val: Optional[tuple]  # (clean, degraded) validation images held out of the training split, or None
    model: Any
    scheme: Any
    solver: Any
    gen_perm: torch.Generator
    gen_noise: torch.Generator
    at: Progress = field(default_factory=Progress)
    clock: Optional[StepClock] = None  # step times and peak memory of this process's steps
    comm: Optional[parallel.Comm] = None  # the process group of a parallel run
    comm_seconds: list = field(default_factory=list)  # time in collectives, per step
    comm_bytes: list = field(default_factory=list)  # bytes this rank handed to collectives, per step
    epoch_start: tuple = (0, 0)  # where the current epoch's steps begin in clock.seconds and comm_seconds
    trackers: loggers.Loggers = field(default_factory=loggers.Loggers)  # logger=...: rank 0 logs, others hold none

    @property
    def batches(self) -> int:
        return math.ceil(self.x_train.shape[0] / self.cfg.batch_size)

    @property
    def writer(self) -> bool:
        """This process writes the run folder: the single process, or rank 0."""
        return self.comm is None or self.comm.rank == 0

    def save_checkpoint(self, epoch: int, batch: int, perm, partial: dict) -> None:
        """checkpoint.pt, the same for every number of processes: a parallel run's rank 0 writes it
        with the state of every rank (``parallel.global_state``)."""
        state = parallel.global_state(self.comm, self.solver, self.model, self.x_train.shape[0])
        if not self.writer:
            return
        save_torch(self.out / "checkpoint.pt", {
            "model": self.model.state_dict(), "config": OmegaConf.to_container(self.cfg, resolve=True), "epoch": epoch,
            "batch": batch, "perm": perm, "partial": partial, "scheme": self.scheme.state_dict(),
            "solver": state, "rng": rng_state(self.gen_perm, self.gen_noise),
            "device_type": self.device.type, "history": self.at.history, "threads": torch.get_num_threads(),
            "parallel": self.comm.describe() if self.comm else None,
        })

    def epoch(self, epoch: int, stop: DeferredInterrupt, show: bool) -> None:
        """One epoch from where the run stands: its batches, then the evaluation, the checkpoint and
        the history row. A deferred Ctrl-C checkpoints the epoch's position and re-raises."""
        cfg, at = self.cfg, self.at
        if at.perm is None:
            at.perm = torch.randperm(self.x_train.shape[0], generator=self.gen_perm)
        self.scheme.begin_epoch(epoch)
        self.solver.begin_epoch(epoch)
        sums, seconds = dict(at.partial.get("sums", {})), at.partial.get("seconds", 0.0)
        self.clock = self.clock or StepClock(self.device)
        first_step, first_comm = len(self.clock.seconds), len(self.comm_seconds)
        self.epoch_start = (first_step, first_comm)
        t0 = time.perf_counter()
        bar = tqdm(total=self.batches, initial=at.batch, desc=f"epoch {epoch + 1}", leave=False,
                   disable=not (show and self.writer))
        b = at.batch
        stopping = False  # a parallel run's ranks stop at the same batch: the flag travels with the statistics
        persistent = getattr(self.solver.cfg, "warm_start", "forward") == "persistent"
        try:
            for b in range(at.batch, self.batches):
                noise_state = self.gen_noise.get_state()
                if stopping or (self.comm is None and stop.requested):
                    raise DeferredStop(stop.signum)
                idx = at.perm[b * cfg.batch_size : (b + 1) * cfg.batch_size].to(self.device)
                x = self.x_train[idx]
                y = self.degradation.measure(x, self.gen_noise)  # every rank draws the whole batch's noise
                self.clock.start()
                if self.comm is not None:
                    before, sent = self.comm.seconds, self.comm.bytes
                    if self.comm.shares_samples:
                        rows, keys = self.comm.shard(idx, persistent)
                        stats = self.solver.step(y[rows], x[rows], keys)
                    else:
                        stats = self.solver.step(y, x, idx)
                    stats, stopping = self.comm.combine_stats(stats, stop.requested)
                    self.comm_seconds.append(self.comm.seconds - before)
                    self.comm_bytes.append(self.comm.bytes - sent)
                else:
                    stats = self.solver.step(y, x, idx)
                self.clock.stop()
                self.add_stats(sums, stats, f"at epoch {epoch + 1}, batch {b + 1}")
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in stats.items() if k in ("loss", "objective")})
            else:
                b = self.batches
                for stats in self.solver.drain():  # pipelined: the batches still in flight
                    self.add_stats(sums, stats, f"at the end of epoch {epoch + 1}")
        except DeferredStop:
            bar.close()
            seconds += time.perf_counter() - t0
            if b < self.batches:  # batch b had not been applied: replay it from its noise state
                self.gen_noise.set_state(noise_state)
            self.save_checkpoint(epoch, b, at.perm, {"sums": sums, "seconds": seconds})
            if self.writer:
                log.warning("interrupted (%s): checkpoint saved at epoch %d, batch %d; continue with resume=%s",
                            signal.Signals(stop.signum).name, epoch + 1, b, self.out)
            raise
        except torch.linalg.LinAlgError as err:  # a factorisation in a W-step met diverged weights
            bar.close()
            raise divergence(f"training diverged at epoch {epoch + 1}, batch {b + 1} ({str(err).splitlines()[0]})",
                             self.out / "checkpoint.pt") from None
        bar.close()
        seconds += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "seconds": seconds, "step_ms": self.clock.median_ms(first_step)}
        if self.comm is not None:  # this epoch's medians per step: time in collectives, bytes handed to them
            row.update(comm_ms=float(np.median(self.comm_seconds[first_comm:])) * 1e3 if self.comm_seconds[first_comm:] else math.nan,
                       comm_bytes=float(np.median(self.comm_bytes[first_comm:])) if self.comm_bytes[first_comm:] else math.nan)
        self.end_epoch(epoch, {**row, **{k: v / self.batches for k, v in sums.items()}})

    def add_stats(self, sums: dict, stats: dict, where: str) -> None:
        """A step's statistics into the epoch's sums; a non-finite one stops the run (divergence)."""
        if not all(math.isfinite(v) for v in stats.values()):
            raise divergence(f"training diverged {where} (statistics {stats})", self.out / "checkpoint.pt")
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v

    def end_epoch(self, epoch: int, row: dict) -> None:
        """Evaluate (every ``eval_every`` epochs and at the end), check the weights, checkpoint, log."""
        cfg, at = self.cfg, self.at
        parallel.gather_model(self.comm, self.model)  # layer-parallel: rank 0 evaluates the whole network
        due = ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs) and self.writer
        ev = evaluate(self.model, self.x_test, self.y_test) if due else None
        row.update(test_psnr=ev["psnr"]["mean"] if ev else math.nan, test_ssim=ev["ssim"]["mean"] if ev else math.nan)
        if self.val is not None:
            ev = evaluate(self.model, *self.val) if due else None
            row.update(val_psnr=ev["psnr"]["mean"] if ev else math.nan, val_ssim=ev["ssim"]["mean"] if ev else math.nan)
        if not parallel.all_ranks(self.comm, finite_model(self.model)):  # once per epoch: a bad batch shows in the next loss
            raise divergence(f"training diverged in epoch {epoch + 1} (non-finite weights)", self.out / "checkpoint.pt")
        at.history.append(row)
        at.perm, at.partial, at.batch = None, {}, 0
        self.save_checkpoint(epoch + 1, 0, None, {})
        if self.writer:
            write_csv(self.out / "history.csv", at.history)
            self.trackers.log_row(row, "epoch")
            log.info("epoch %d/%d: %s", epoch + 1, cfg.epochs, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"))


def setup(cfg: DictConfig, comm: Optional[parallel.Comm] = None) -> tuple[Session, int]:
    """Data, degradation, components (seeded) and random streams of a run; the bytes of its
    persistent auxiliary variables (all ranks together)."""
    out = Path(cfg.output_dir)
    if comm is None or comm.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    tune_allocator()
    device = comm.device if comm is not None else select_device(cfg.device)
    threads = set_threads(cfg.get("threads", "auto"))
    log.info("device: %s, %d thread%s (torch %s)%s", device, threads, "" if threads == 1 else "s", torch.__version__,
             f"; parallel={comm.mode}, {comm.world} processes (grid {comm.data_world} x {comm.layer_world}), {comm.backend}"
             if comm else "")
    provider, source = require_source(cfg), build_source(cfg.source)
    log.info("%s from %s (%s); task %s", source.title, provider, source.where(cfg.data_root), cfg.task.name)
    degradation = build_degradation(cfg.task)
    x_test, y_test = make_test_set(cfg, degradation, device)
    x_train, val = make_train_val(cfg, degradation, device)
    if val is not None:
        log.info("validation: %d images held out of the training split (val_seed=%d); training on %d",
                 val[0].shape[0], cfg.val_seed, x_train.shape[0])
    torch.manual_seed(cfg.seed)
    model, scheme, solver = build(cfg, device, comm)
    n = x_train.shape[0]
    local = len(range(comm.data_rank, n, comm.data_world)) if comm is not None and comm.shares_samples else n
    aux_bytes = parallel.total(comm, solver.prepare(local))  # every rank joins the sum, with or without samples
    if aux_bytes:
        log.info("persistent auxiliary variables: %.3f GB (%d samples)%s", aux_bytes / 1e9, n,
                 f", shared out over {comm.world} processes" if comm else f" on {device}")
    gen_perm = torch.Generator().manual_seed(cfg.seed)
    gen_noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    return Session(cfg, out, device, degradation, x_train, x_test, y_test, val, model, scheme, solver, gen_perm,
                   gen_noise, comm=comm), aux_bytes


def train(cfg: DictConfig, checkpoint: dict | None = None, on_ready=None) -> dict:
    """Train the configured network; returns the final metrics (also written to metrics.json).
    ``cfg`` is a validated ``train`` config (``validate``). With ``cfg.resume``, the run continues from
    ``checkpoint`` (loaded from the folder when not given); ``on_ready()`` is called once everything is
    loaded and restored, before the first batch (a resumption touches its folder only then).

    ``parallel=data|layer`` outside a launched process starts the ranks here (``parallel.launch``),
    each of which runs this function; a rank joins its process group, and all but rank 0 write
    nothing (rank 0's folder is everybody's, so torchrun makes one folder per run). The trackers
    (``logger``) are reached here, before any work, and rank 0 alone logs."""
    if parallel.env_rank() == 0:
        loggers.prepare(cfg)
    if cfg.parallel.name != "none" and not parallel.launched():
        # what would fail in every rank fails here, before any process starts or the folder changes
        with torch.random.fork_rng(devices=[]):
            model, scheme, solver = build(cfg, torch.device("cpu"))
            if cfg.resume:
                ckpt = checkpoint if checkpoint is not None else load_checkpoint(Path(cfg.resume) / "checkpoint.pt")[0]
                restore(cfg, ckpt, model, scheme, solver if cfg.parallel.name == "data" else None,
                        torch.Generator(), torch.Generator(), torch.device("cpu"))
        if on_ready is not None:
            on_ready()
        return parallel.launch(cfg, train)
    comm = parallel.join(cfg)
    try:
        if comm is not None:
            cfg.output_dir = comm.broadcast_object(str(cfg.output_dir))
            if cfg.resume:
                cfg.resume = cfg.output_dir
        run, aux_bytes = setup(cfg, comm)
        if cfg.resume:
            ckpt = checkpoint if checkpoint is not None else load_checkpoint(Path(cfg.resume) / "checkpoint.pt")[0]
            run.at = restore(cfg, ckpt, run.model, run.scheme, run.solver, run.gen_perm, run.gen_noise, run.device, comm)
        if on_ready is not None:
            on_ready()
        stop = DeferredInterrupt()
        show = bool(cfg.progress) and sys.stderr.isatty()
        with loggers.start(cfg, run.out, enabled=run.writer) as run.trackers:
            try:
                for epoch in tqdm(range(run.at.epoch, cfg.epochs), desc="epochs", disable=not (show and run.writer),
                                  initial=run.at.epoch, total=cfg.epochs):
                    run.epoch(epoch, stop, show)
            finally:
                stop.restore()
            parallel.gather_model(comm, run.model)
            steps = run.clock.seconds[run.epoch_start[0]:] if run.clock else []
            ranks = parallel.rank_times(comm, steps, run.comm_seconds[run.epoch_start[1]:])
            if not run.writer:
                return {}
            extra = parallel.metrics(comm, run.comm_seconds, run.comm_bytes, ranks)
            metrics = finish(cfg, run.out, run.model, run.scheme, run.solver, run.device, run.at.history, run.x_test,
                             run.y_test, run.x_train.shape[0], aux_bytes, run.clock, extra, run.val)
            run.trackers.log_final(metrics, cfg.epochs)
            return metrics
    finally:
        parallel.leave(comm)


def finish(cfg, out: Path, model, scheme, solver, device, history, x_test, y_test, n_train, aux_bytes: int = 0,
           clock: Optional[StepClock] = None, extra: Optional[dict] = None, val: Optional[tuple] = None) -> dict:
    """The final evaluation: metrics.json (with the no-learning row, and ``val`` when a validation set
    is held out) and samples.png; ``extra``: more keys (``parallel``)."""
    psnr_in, ssim_in = per_image_metrics(y_test, x_test)
    trained = [r["seconds"] for r in history]
    metrics = {
        "status": "finished",
        "run_dir": str(out),
        "test": evaluate(model, x_test, y_test),
        "no_learning": {"psnr": summarise(psnr_in), "ssim": summarise(ssim_in)},
        "train": {k: v for k, v in history[-1].items()
                  if k not in ("epoch", "seconds", "step_ms", "comm_ms", "comm_bytes", "test_psnr", "test_ssim",
                               "val_psnr", "val_ssim")}
        if history else {},
        "epochs": cfg.epochs,
        "seconds_per_epoch": float(np.mean(trained)) if trained else math.nan,
        "seconds_per_epoch_all": trained,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "seed": cfg.seed,
        "source": cfg.source.name,
        "task": cfg.task.name,
        "image_side": int(x_test.shape[-1]),
        "train_images": n_train,
        "test_images": int(x_test.shape[0]),
        # the held-out validation set, evaluated like the test set: the one to choose settings on
        **({"val": evaluate(model, *val), "val_images": int(val[0].shape[0])} if val is not None else {"val_images": 0}),
        "metric_implementation": IMPLEMENTATION,
        "hyperparameters": {**scheme.hyperparameters(), "solver": solver.hyperparameters()},
        "aux_memory_gb": aux_bytes / 1e9,
        # the longest chain of dependent layer operations in one training step (a forward pass: L)
        "sequential_depth": solver.sequential_depth(),
        "stacks": [[st.first, st.last] for st in getattr(getattr(solver, "problem", None), "stacks", []) if st.d > 1],
        # median wall time of a mini-batch step (CUDA-synchronised) and peak memory, over this process's steps
        "step_ms": clock.median_ms() if clock else math.nan,
        "steps_timed": len(clock.seconds) if clock else 0,
        "peak_memory_mb": clock.peak / 2**20 if clock else math.nan,
        "peak_memory_kind": ("cuda_max_allocated" if device.type == "cuda" else "rss_sampled") if clock else None,
        **(extra or {}),
    }
    if cfg.num_samples > 0:
        k = min(cfg.num_samples, x_test.shape[0])
        save_image(out / "samples.png", samples_image([x_test[:k], y_test[:k], reconstruct(model, y_test[:k])],
                                                      ["truth", "degraded", "reconstruction"]))
    write_json(out / "metrics.json", metrics)
    return metrics


def recorded_epochs(record: Path) -> int | None:
    """``epochs`` of a run folder's ``.hydra/config.yaml`` (read as data: one integer), None if unreadable."""
    import yaml

    try:
        value = (yaml.safe_load(record.read_text()) or {}).get("epochs")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def resume(folder: str, changes: list[str]) -> dict:
    """``lifted train resume=<folder> [changes]``: continue a run from the data of its checkpoint.

    The run is rebuilt from the checkpoint's own resolved config (loaded with ``weights_only=True``);
    nothing of the folder's ``.hydra`` record is replayed, so a received folder cannot name code. Only
    ``RESUMABLE_CHANGES`` may be given; the config is validated like any run's (an unknown key, such
    as ``_target_`` or ``hydra``, is refused). Nothing in the folder changes until the resumption is
    accepted; then the folder is locked, its ``metrics.json`` (which described the previous end) and
    stale temporaries are removed, its ``.hydra`` record is updated, and training continues."""
    from ..runs import RunFolder, configure_logging, end_logging, write_text

    path = Path(folder)
    try:
        ckpt, _ = load_checkpoint(path / "checkpoint.pt")
    except InputError as err:
        raise ConfigError(f"resume={folder}: {err}") from None
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(saved, dict) or "scheme" not in ckpt:
        raise ConfigError(f"resume={folder}: its checkpoint.pt is not a checkpoint of this version of lifted train")
    saved = ckpt["config"] = split_dataset(saved)
    for name in ("metrics.json", "history.csv", "samples.png", "train.log", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        if (path / name).exists() and not (path / name).is_file():  # a resumption rewrites these
            raise ConfigError(f"resume={folder}: {path / name} is not a file; move it out of the way and resume again")
    allowed = [k for k in RESUMABLE_CHANGES if k not in ("resume", "output_dir", "parallel")] + list(RESUMABLE_PARALLEL)
    for change in changes:
        key, _, value = change.partition("=")
        if key not in allowed:
            raise ConfigError(f"resume={folder}: {change} cannot change on resume; only {', '.join(allowed)} may "
                              "(the run is rebuilt from its checkpoint)")
        if "${" in value:
            raise ConfigError(f"resume={folder}: {change}: give a plain value (no interpolation) on resume")
    extended = recorded_epochs(path / ".hydra" / "config.yaml")
    if not any(c.startswith("epochs=") for c in changes) and extended is not None and extended > int(saved.get("epochs", 0)):
        # an extension (resume=... epochs=N) stopped before its first checkpoint: its length is kept
        print(f"lifted train: resume={folder}: continuing to epochs={extended}, the length the folder's last "
              f"resumption asked for (its checkpoint is from before it; give epochs= to choose another)", file=sys.stderr)
        changes = [*changes, f"epochs={extended}"]
    try:
        given = OmegaConf.from_dotlist(changes)
        base = {"parallel": dict(name="none", nproc=None, backend="auto", timeout_s=300.0), "logger": None,
                **saved}  # older checkpoints
        cfg = OmegaConf.merge(OmegaConf.create({k: v for k, v in base.items() if k != "output_dir"}), given)
        cfg.resume, cfg.output_dir = str(path), str(path)
        if "threads" not in given and isinstance(ckpt.get("threads"), int):
            cfg.threads = ckpt["threads"]  # the count it ran with: the numbers of a run that never stopped
        validate(cfg, resuming=True)
    except LiftedError:
        raise
    except Exception as err:  # values that do not parse or resolve
        raise ConfigError(f"resume={folder}: {str(err).splitlines()[0]}") from None
    record = path / ".hydra"
    try:
        kept = OmegaConf.to_container(OmegaConf.load(record / "overrides.yaml")) if (record / "overrides.yaml").is_file() else []
        kept = [str(o) for o in kept if str(o).split("=", 1)[0] not in given]
    except Exception:  # an unreadable record is rewritten from the config alone
        kept = []
    if parallel.launched() and parallel.env_rank() > 0:  # torchrun: rank 0 alone touches the folder
        return train(cfg, checkpoint=ckpt)
    run = RunFolder(path)

    previous = logging.getLogger().handlers[:]  # e.g. an earlier Hydra run's file in this process
    logging.getLogger().handlers = []
    handlers = configure_logging()

    def on_ready():  # everything loaded and restored: now the folder may change
        run.claim()
        (path / "metrics.json").unlink(missing_ok=True)  # it described the end of the previous run
        run.sweep_temporaries()
        write_text(record / "config.yaml", OmegaConf.to_yaml(cfg))
        write_text(record / "overrides.yaml", OmegaConf.to_yaml(kept + changes))
        handlers.extend(configure_logging(path / "train.log"))

    try:
        return train(cfg, checkpoint=ckpt, on_ready=on_ready)
    finally:
        run.release()
        end_logging(handlers)
        logging.getLogger().handlers = previous


def report_done(output_dir, metrics: dict) -> float:
    """The closing line of a run on stdout; returns its test PSNR."""
    t, n = metrics["test"], metrics["no_learning"]
    print(f"lifted train: done in {output_dir}: test PSNR {t['psnr']['mean']:.2f} dB, SSIM {t['ssim']['mean']:.4f} "
          f"(degraded input: {n['psnr']['mean']:.2f} dB, {n['ssim']['mean']:.4f})")
    return t["psnr"]["mean"]


@hydra.main(version_base="1.3", config_path="pkg://lifted_cli.configs", config_name="train")
def app(cfg: DictConfig) -> float:
    metrics = run_task(cfg, validate, train)
    if not metrics:  # a rank other than 0 of a torchrun job: rank 0 reports
        return math.nan
    return report_done(cfg.output_dir, metrics)
