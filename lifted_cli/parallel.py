"""Training over several processes with torch.distributed (config group ``parallel``; docs/parallel.md).

``parallel=none`` is the single process. ``parallel=data``: every process takes a share of each
mini-batch (and of the persistent auxiliary variables); the X-steps are local, and the sums over
samples that the W-steps need (ISGM's sample-space Gram matrices, the weight gradients, the block
energies of the line searches) are combined with collectives, so every process holds the same
weights and the iterates are those of one process on the same global batches; gradient solvers
(back-propagation, contrastive) average their gradients in one all-reduce. ``parallel=layer``: every
process owns a contiguous range of layers and exchanges the states and gradients at its boundaries
with its neighbours. ``parallel=grid``: both at once, on a data x layer grid of processes
(``parallel.layer_ranks`` layer ranges, each held by world / layer_ranks processes that share out the
samples). ``parallelize`` hands a rank's layers and communicator to the mathematics (``lifted``),
which is written for one process and never asks whether it is distributed.

Processes come from torch's own launcher: ``torchrun`` (or SLURM through it) sets the rendezvous
environment, or ``lifted train parallel=data parallel.nproc=P`` starts P processes itself with
``torch.distributed.launcher.elastic_launch`` (the engine behind torchrun). Rank 0 alone writes the
run folder. A rank that fails or is killed ends every rank: the launcher stops the others and the
run ends with one line naming the rank; collectives time out after ``parallel.timeout_s``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from .errors import ConfigError, LiftedError, RunError
from .lifted.layout import Layout
from .registry import Registry, Schema, check_choice, check_positive, fail, option

log = logging.getLogger("lifted.parallel")

#: the modes by name (``parallel=<name>``)
PARALLEL = Registry("parallel", configs=True)

BACKENDS = ("auto", "gloo", "nccl")

#: the environment that torchrun (and lifted's own launch) gives every process
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class ParallelConfig(Schema):
    name: str = option("none", "none | data | layer | grid")
    nproc: Optional[int] = option(None, "processes lifted starts on this machine (null: 1; under torchrun: its world, leave unset)")
    backend: str = option("auto", "auto (nccl on CUDA, gloo on the CPU) | gloo | nccl")
    timeout_s: float = option(300.0, "a collective that waits longer (a hung rank) ends the run")
    layer_ranks: Optional[int] = option(None, "parallel=grid: the layer ranges (the grid's columns); must divide the processes")

    def validate(self):
        check_positive("nproc", self.nproc, allow_none=True)
        check_choice("backend", self.backend, BACKENDS)
        check_positive("timeout_s", self.timeout_s)
        check_positive("layer_ranks", self.layer_ranks, allow_none=True)
        if self.name != "grid" and self.layer_ranks is not None:
            fail("layer_ranks", self.layer_ranks, "is the layer ranges of parallel=grid; leave it unset here")
        if self.name == "grid" and self.layer_ranks is None:
            fail("layer_ranks", None, "parallel=grid needs the number of layer ranges (a divisor of the processes)")


for _mode, _about in (("none", "one process"), ("data", "every process takes a share of each mini-batch"),
                      ("layer", "every process owns a contiguous range of layers"),
                      ("grid", "a data x layer grid: each range of layers is held by several processes that share out the samples")):
    PARALLEL.register(_mode, ParallelConfig, about=_about)(lambda cfg: cfg)


class RankFailed(RunError):
    """A rank of a parallel run failed or was killed; the launcher stopped the others."""


# ---------------------------------------------------------------------------------- the world
def launched() -> bool:
    """This process is one rank of a torch.distributed job (torchrun or lifted's own launch)."""
    return all(k in os.environ for k in RANK_ENV)


def adopt_slurm() -> bool:
    """Under the submitit launcher (``hydra/launcher=slurm``) with several tasks, every task runs the
    job: torch's rendezvous environment (rank, world, master address and port) is set from SLURM's
    by submitit's own helper. True when it was set here."""
    if launched() or "SUBMITIT_EXECUTOR" not in os.environ:
        return False
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return False
    if JobEnvironment().num_tasks <= 1:
        return False
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return True


def env_world() -> int:
    return int(os.environ["WORLD_SIZE"]) if launched() else 1


def env_rank() -> int:
    return int(os.environ["RANK"]) if launched() else 0


def world_size(cfg) -> int:
    """The number of processes of a run: torchrun's world, else ``parallel.nproc`` (default 1)."""
    if launched():
        return env_world()
    return int(cfg.parallel.nproc or 1)


def backend_for(cfg, device_type: str) -> str:
    backend = cfg.parallel.backend
    if backend == "auto":
        return "nccl" if device_type == "cuda" else "gloo"
    return backend


def planned_device(cfg) -> str:
    """``cpu`` or ``cuda``: where the ranks of a run will train."""
    spec = str(cfg.device)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if spec.startswith("cuda") else "cpu"


def grid_shape(cfg) -> tuple[int, int]:
    """(data ranks, layer ranks) of a run: [P, 1] data-parallel, [1, P] layer-parallel, and
    [P / layer_ranks, layer_ranks] on a grid."""
    world = world_size(cfg)
    mode = cfg.parallel.name
    if mode == "grid":
        return world // int(cfg.parallel.layer_ranks), int(cfg.parallel.layer_ranks)
    return (1, world) if mode == "layer" else (world, 1)


def validate(cfg, lifted_form: bool) -> None:
    """Combinations refused before any process starts (one line each): a backend the device does
    not support, more processes than devices or cores, layer-parallel (or a grid) without a lifted
    solver in a layer order that decouples the layers, a grid whose layer ranges do not divide the
    processes, an ``nproc`` that contradicts torchrun's world."""
    mode = cfg.parallel.name
    if mode == "none":
        if cfg.parallel.nproc not in (None, 1):
            fail("parallel.nproc", cfg.parallel.nproc, "needs parallel=data or parallel=layer")
        return
    if launched() and cfg.parallel.nproc not in (None, env_world()):
        fail("parallel.nproc", cfg.parallel.nproc, f"this process was started by torchrun with a world of {env_world()}; "
             "leave parallel.nproc unset (torchrun's --nproc_per_node decides)")
    world = world_size(cfg)
    kind = planned_device(cfg)
    backend = backend_for(cfg, kind)
    if backend == "nccl" and kind != "cuda":
        fail("parallel.backend", "nccl", "NCCL needs CUDA devices; use parallel.backend=gloo (or auto) on the CPU")
    if backend == "nccl" and not dist.is_nccl_available():
        fail("parallel.backend", "nccl", "this build of torch has no NCCL; use parallel.backend=gloo")
    if not launched():
        if kind == "cuda":
            if ":" in str(cfg.device):
                fail("device", cfg.device, "a parallel run gives rank r the GPU r; use device=cuda or auto")
            if world > torch.cuda.device_count():
                fail("parallel.nproc", world, f"one GPU per process, and this machine has {torch.cuda.device_count()}")
        elif world > (os.cpu_count() or 1):
            fail("parallel.nproc", world, f"at most one process per core on the CPU; this machine has {os.cpu_count()}")
    if mode in ("layer", "grid"):
        if not lifted_form:
            fail("parallel", mode, f"scheme={cfg.scheme.name} with solver={cfg.solver.name} is not a lifted solver: "
                 "back-propagation has no layer problems to decouple; use parallel=data")
        if cfg.solver.layer_order != "jacobi":
            fail("parallel", mode, f"solver.layer_order={cfg.solver.layer_order} does not update the layers at once; "
                 "layer-parallel needs solver.layer_order=jacobi")
    if lifted_form and cfg.solver.get("warm_start") == "pipelined":
        fail("solver.warm_start", "pipelined", f"runs in one process (its batches in flight are this process's); "
             f"with parallel={mode} use solver.warm_start=forward or persistent")
    if mode == "grid":
        ranks = int(cfg.parallel.layer_ranks)
        if world % ranks:
            fail("parallel.layer_ranks", ranks, f"must divide the {world} processes of the data x layer grid "
                 "(parallel.nproc, or torchrun's world)")
    data_ranks = grid_shape(cfg)[0]
    if cfg.batch_size < data_ranks:
        fail("batch_size", cfg.batch_size, f"must be at least the number of processes sharing out a batch ({data_ranks}) "
             "so that every one has samples")


# ------------------------------------------------------------------------------- communication
class Comm:
    """The process group of a rank and the collectives of a parallel run, timed: ``seconds`` is the
    wall time spent in communication (device work queued before a collective is waited for first,
    so it counts as compute).

    The ranks form a grid of ``data_world`` rows by ``layer_world`` columns, rank = row * layer_world
    + column: the ranks of a column own the same layers and share out the samples of every batch
    (their collectives run in ``data_group``), the ranks of a row hold the same samples and own
    consecutive layer ranges (neighbours in a row are ranks r - 1 and r + 1). ``parallel=data`` is
    the grid [P, 1], ``parallel=layer`` the grid [1, P]."""

    def __init__(self, mode: str, device: torch.device, backend: str, layer_ranks: int | None = None):
        self.mode = mode
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.layer_world = {"data": 1, "layer": self.world}.get(mode, layer_ranks or 1)
        self.data_world = self.world // self.layer_world
        self.data_rank, self.layer_rank = divmod(self.rank, self.layer_world)
        self.data_group = None  # the whole world, unless the grid has several columns
        if mode == "grid" and self.layer_world > 1 and self.data_world > 1:
            # every rank takes part in making every group (torch.distributed requires it)
            self.data_group, _ = dist.new_subgroups_by_enumeration(
                [[d * self.layer_world + c for d in range(self.data_world)] for c in range(self.layer_world)])
        self.device = device
        self.backend = backend
        self.seconds = 0.0
        self.bytes = 0
        self.positions: list[torch.Tensor] = []
        self.counts: list[int] = []
        self.batch = 0

    @property
    def shares_samples(self) -> bool:
        """Each process takes a share of every batch (data-parallel, alone or on a grid)."""
        return self.mode in ("data", "grid")

    @property
    def owns_layers(self) -> bool:
        """Each process owns a range of layers (layer-parallel, alone or on a grid)."""
        return self.mode in ("layer", "grid")

    def describe(self) -> dict:
        return {"mode": self.mode, "world_size": self.world, "backend": self.backend,
                "grid": [self.data_world, self.layer_world]}

    def _begin(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _end(self, t0: float, nbytes: int) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t0
        self.bytes += nbytes

    # ---------------------------------------------------------------------- data-parallel
    def shard(self, idx: torch.Tensor, persistent: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch ``idx``: (positions in the batch, sample keys).
        With persistent auxiliaries a sample always belongs to the rank ``index mod P`` (its stored
        variables live there; the key is its slot in that rank's store), else the batch is dealt
        out in turn (positions r, r + P, ...). Every rank knows every share, so rows can be gathered
        back into the batch's own order."""
        b, p = idx.numel(), self.data_world
        if persistent:
            owner = idx % p
            self.positions = [(owner == q).nonzero().flatten() for q in range(p)]
        else:
            self.positions = [torch.arange(q, b, p, device=idx.device) for q in range(p)]
        self.counts = [int(t.numel()) for t in self.positions]
        self.batch = b
        rows = self.positions[self.data_rank]
        keys = idx[rows] // p if persistent else idx[rows]
        return rows, keys

    @property
    def weight(self) -> float:
        """This rank's share of the global batch: local means times it sum to the global mean."""
        return self.counts[self.data_rank] / self.batch

    def mean_(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Local means over this rank's samples -> global means over the batch, in place, in one
        all-reduce (the tensors travel as one flat buffer)."""
        if not tensors or self.data_world == 1:
            return tensors
        w = self.weight
        flat = torch.cat([t.reshape(-1) for t in tensors])
        flat.mul_(w) if w > 0 else flat.zero_()  # an empty share's means are NaN: it adds nothing
        t0 = self._begin()
        dist.all_reduce(flat, group=self.data_group)
        self._end(t0, flat.numel() * flat.element_size())
        offset = 0
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n
        return tensors

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        out = value.clone()
        self.mean_([out])
        return out

    def all_rows(self, tensors: list, dim: int = 0) -> list:
        """The rows (samples along ``dim``) of every rank's share of each tensor, in the global
        batch's order: one all-gather for all of them."""
        if self.data_world == 1 or not tensors:
            return tensors
        flat = [t.movedim(dim, 0).reshape(t.shape[dim], math.prod(t.movedim(dim, 0).shape[1:])) for t in tensors]
        local = torch.cat(flat, dim=1)
        n = max(self.counts)
        if local.shape[0] < n:
            local = torch.cat([local, local.new_zeros((n - local.shape[0], local.shape[1]))])
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.data_world)]
        t0 = self._begin()
        dist.all_gather(parts, local, group=self.data_group)
        self._end(t0, local.numel() * local.element_size() * (self.data_world - 1))
        full = local.new_empty((self.batch, local.shape[1]))
        for q, part in enumerate(parts):
            full[self.positions[q]] = part[:self.counts[q]]
        out = []
        for t, cols in zip(tensors, full.split([f.shape[1] for f in flat], dim=1)):
            shape = t.movedim(dim, 0).shape[1:]
            out.append(cols.reshape(self.batch, *shape).movedim(0, dim))
        return out

    def combine_stats(self, stats: dict, flag: bool = False) -> tuple[dict, bool]:
        """The batch statistics of the whole run, and whether any rank raised ``flag`` (a deferred
        Ctrl-C), in one all-reduce over the whole grid: ranks that share out samples hold local means
        (weighted by their shares), ranks that own layers their layers' parts (summed)."""
        if self.world == 1:
            return stats, flag
        keys = sorted(stats)
        w = self.weight if self.shares_samples else 1.0
        values = torch.tensor([stats[k] * w if w > 0 else 0.0 for k in keys] + [float(flag)], dtype=torch.float64,
                              device=self.device)
        t0 = self._begin()
        dist.all_reduce(values)
        self._end(t0, values.numel() * 8)
        out = values.tolist()
        return dict(zip(keys, out[:-1])), out[-1] > 0

    def exchange(self, sends: list, recvs: list) -> None:
        """Point-to-point with the neighbouring layer ranges in one batch: ``sends`` and ``recvs`` are
        (tensor, ``"below"`` | ``"above"``) pairs, the ranks r - 1 and r + 1 of this rank's row
        (``batch_isend_irecv``)."""
        peer = {"below": self.rank - 1, "above": self.rank + 1}
        ops = ([dist.P2POp(dist.isend, t, peer[side]) for t, side in sends]
               + [dist.P2POp(dist.irecv, t, peer[side]) for t, side in recvs])
        if not ops:
            return
        t0 = self._begin()
        for req in dist.batch_isend_irecv(ops):
            req.wait()
        self._end(t0, sum(t.numel() * t.element_size() for t, _ in sends))

    def gather_shards(self, shard: torch.Tensor, total: int) -> torch.Tensor | None:
        """The per-sample store whose rows i live on rank i mod P, whole, on rank 0 (None elsewhere)."""
        n = -(-total // self.world)
        local = shard
        if local.shape[0] < n:
            local = torch.cat([local, local.new_zeros((n - local.shape[0],) + local.shape[1:])])
        parts = [torch.empty_like(local) for _ in range(self.world)] if self.rank == 0 else None
        t0 = self._begin()
        dist.gather(local.contiguous(), parts, dst=0)
        self._end(t0, local.numel() * local.element_size())
        if self.rank != 0:
            return None
        out = local.new_empty((total,) + local.shape[1:])
        for q, part in enumerate(parts):
            out[q::self.world] = part[:len(range(q, total, self.world))]
        return out

    def local_shard(self, full: torch.Tensor) -> torch.Tensor:
        return full[self.rank::self.world]

    def broadcast_object(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def join(cfg) -> Comm | None:
    """Join the process group of this rank (from the launcher's environment); None for a single
    process. Rank r trains on GPU (local rank) r, or on the CPU with its share of the cores."""
    if cfg.parallel.name == "none":
        return None
    if not launched():
        raise ConfigError(f"parallel={cfg.parallel.name}: this process has no rank; start it with torchrun, or let "
                          "lifted start the processes (lifted train parallel=... parallel.nproc=P)")
    kind = planned_device(cfg)
    local_rank = int(os.environ["LOCAL_RANK"])
    if kind == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")  # its share of the cores: runs.set_threads (threads=auto)
    backend = backend_for(cfg, kind)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(cfg.parallel.timeout_s)),
                                device_id=device if kind == "cuda" else None)
    return Comm(cfg.parallel.name, device, backend, cfg.parallel.get("layer_ranks"))


def leave(comm: Comm | None) -> None:
    if comm is not None and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------ launch
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn, cfg_dict: dict, error_dir: str):
    """The body of every rank that lifted starts itself: ``fn(cfg)`` (``lifted train``'s ``train``),
    and on failure leave a one-line reason (and exit status) for the launching process before failing."""
    from omegaconf import OmegaConf

    from .runs import configure_logging

    rank = env_rank()
    cfg = OmegaConf.create(cfg_dict)
    logging.getLogger().handlers = []
    if rank == 0:  # as the single process: INFO to the console and to the run's train.log
        configure_logging()
        configure_logging(Path(cfg.output_dir) / "train.log")
    else:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        metrics = fn(cfg)
        return metrics if rank == 0 else None
    except KeyboardInterrupt:  # a stop signal passed on by the launcher: rank 0 checkpointed, nothing failed
        raise
    except BaseException as err:
        code = err.exit_code if isinstance(err, LiftedError) else 1
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        if peer_lost(err):  # another rank died first: the launcher reports that one
            message = f"lost the other ranks ({message[:160]})"
        elif not isinstance(err, LiftedError):  # a bug: its traceback, once, from the rank itself
            message = f"{type(err).__name__}: {message}"
            logging.getLogger("lifted.parallel").exception("rank %d failed", rank)
        Path(error_dir, f"rank{rank}.json").write_text(json.dumps({"message": message, "exit_code": code}))
        raise


def peer_lost(err: BaseException) -> bool:
    """A collective failed because another rank's process is gone (its connection reset or closed)."""
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(
        k in text for k in ("connection reset by peer", "connection closed by peer", "broken pipe", "socket closed",
                            "remote process exited", "connection refused"))


def _failure(err, error_dir: Path) -> LiftedError:
    """The one line of the first rank that failed (its own reason, or the signal that killed it)."""
    rank, failure = err.get_first_failure()
    record = error_dir / f"rank{rank}.json"
    if record.is_file():
        data = json.loads(record.read_text())
        cls = ConfigError if data.get("exit_code") == 2 else RankFailed
        return cls(f"rank {rank}: {data['message']}")
    code = failure.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return RankFailed(f"rank {rank} was killed by {name}; the other ranks were stopped")
    return RankFailed(f"rank {rank} ended with exit status {code}; the other ranks were stopped")


def launch(cfg, fn) -> dict:
    """Start ``world_size(cfg)`` ranks of this run on this machine with torch's elastic launcher,
    each running ``fn(cfg)`` (a module-level function), and wait for them; returns rank 0's metrics. A failing or killed rank stops the others within
    a second (the launcher's monitor) and is reported in one line (RankFailed)."""
    from omegaconf import OmegaConf
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .runs import Interrupted

    nproc = world_size(cfg)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{free_port()}", max_restarts=0,
                          monitor_interval=0.2, start_method="spawn")
    # the launcher passes these on to the ranks, which stop at a batch boundary with a checkpoint (SIGUSR1:
    # SLURM's usual warning before the time limit, not among torch's defaults)
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    # the semaphores of ranks killed by a signal are the launcher's to clean; its tracker need not warn of them
    if "ignore:resource_tracker:UserWarning" not in sys.warnoptions:
        sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    quiet = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")  # the line is ours
    for name in [*quiet, *(n for n in logging.root.manager.loggerDict if n.startswith(quiet))]:
        logging.getLogger(name).setLevel(logging.CRITICAL)  # torch's modules set levels of their own
    log.info("starting %d processes (parallel=%s, backend %s)", nproc, cfg.parallel.name,
             backend_for(cfg, planned_device(cfg)))
    with tempfile.TemporaryDirectory(prefix="lifted-ranks-") as error_dir:
        try:
            results = elastic_launch(config, _worker)(fn, OmegaConf.to_container(cfg, resolve=True), error_dir)
        except ChildFailedError as err:
            raise _failure(err, Path(error_dir)) from None
        except SignalException as err:
            # SIGTERM (or SIGINT, SIGUSR1) reached the launcher: torch's agent passed it on to the ranks,
            # which stopped at one batch, rank 0 checkpointing and printing the resume line
            raise Interrupted(err.sigval) from None
    return results[0]


# --------------------------------------------------------------------------- the run's pieces
def partition(costs: list[float], world: int) -> list[tuple[int, int]]:
    """Contiguous layer ranges (first, last), 1-based, one per process, each non-empty, whose largest
    total cost is the least possible (linear partition by dynamic programming; ties keep the earlier
    cut)."""
    L = len(costs)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    best = [[inf] * (L + 1) for _ in range(world + 1)]
    cut = [[0] * (L + 1) for _ in range(world + 1)]
    best[0][0] = 0.0
    for k in range(1, world + 1):
        for i in range(k, L + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    ranges, i = [], L
    for k in range(world, 0, -1):
        j = cut[k][i]
        ranges.append((j + 1, i))
        i = j
    return ranges[::-1]


def layer_ranges(blocks, world: int) -> list[tuple[int, int]]:
    """The layers of each process of a layer-parallel run: balanced by the blocks' parameter counts
    (a dense block's work per sample is its weight count: the 784-wide first and last layers weigh
    three hidden ones of width 256)."""
    return partition([sum(q.numel() for q in blk.parameters()) for blk in blocks], world)


def check_build(cfg, model) -> None:
    """What needs the built network: layer-parallel needs at least one layer per layer range."""
    if cfg.parallel.name not in ("layer", "grid"):
        return
    L, ranks = model.depth, grid_shape(cfg)[1]
    if ranks > L:
        key, what = ("parallel.layer_ranks", "layer range") if cfg.parallel.name == "grid" else ("parallel.nproc", "process")
        raise ConfigError(f"{key}={ranks}: layer-parallel gives every {what} at least one layer, and this "
                          f"network has {L}; use at most {L} {what}{'s' if what == 'layer range' else 'es'} or parallel=data")


def parallelize(comm: Comm | None, model) -> Layout:
    """How this process takes part in a run, given to the lifted mathematics at construction (which
    never asks whether it is distributed): the range of layers it owns (layer-parallel and grid: a
    contiguous range per column of the grid, balanced by the blocks' parameter counts) and the
    communicator (its sums over samples combined over the ranks of its column; its boundary states
    exchanged with the neighbours in its row). Gradient solvers average their gradients with the
    same communicator. One process: every layer, the identity communicator."""
    if comm is None:
        return Layout()
    layers = layer_ranges(list(model.blocks), comm.layer_world)[comm.layer_rank] if comm.owns_layers else None
    return Layout(comm=comm, layers=layers)


def total(comm: Comm | None, nbytes: int) -> int:
    """The sum over the ranks of a per-rank byte count."""
    if comm is None:
        return nbytes
    t = torch.tensor([float(nbytes)], dtype=torch.float64, device=comm.device)
    dist.all_reduce(t)
    return int(t.item())


def all_ranks(comm: Comm | None, ok: bool) -> bool:
    if comm is None:
        return ok
    t = torch.tensor([0.0 if ok else 1.0], device=comm.device)
    dist.all_reduce(t)
    return float(t.item()) == 0.0


def _cpu(obj):
    if isinstance(obj, torch.Tensor):  # a copy: pickling a view (a layer of a stacked store) would carry its whole storage
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def global_state(comm: Comm | None, solver, model, n_samples: int):
    """The solver state that checkpoint.pt holds, on rank 0 (None elsewhere). Data-parallel: the
    ranks' states are equal but for the persistent auxiliaries, which are gathered whole, so the
    checkpoint is that of a single process. Layer-parallel and grid: every rank's own state."""
    state = solver.state_dict()
    if comm is None:
        return state
    if comm.owns_layers:
        states = [None] * comm.world if comm.rank == 0 else None
        dist.gather_object(_cpu(state), states, dst=0)
        return {"ranks": states} if comm.rank == 0 else None
    if "aux" in state:
        state = dict(state)
        state["aux"] = {k: comm.gather_shards(v, n_samples) for k, v in state["aux"].items()}
        state["seen"] = comm.gather_shards(state["seen"], n_samples)
    return state if comm.rank == 0 else None


def local_state(comm: Comm | None, state: dict) -> dict:
    """This rank's part of a checkpoint's solver state (the inverse of ``global_state``)."""
    if comm is None:
        return state
    if comm.owns_layers:
        return state["ranks"][comm.rank]
    if "aux" in state:
        state = dict(state)
        state["aux"] = {k: comm.local_shard(v) for k, v in state["aux"].items()}
        state["seen"] = comm.local_shard(state["seen"])
    return state


def check_resume(cfg, ckpt: dict) -> None:
    """A layer-parallel (or grid) checkpoint holds one solver state per rank: it resumes on the same
    grid of processes (a data-parallel one resumes with any number)."""
    saved = ckpt.get("parallel") or {}
    if saved.get("mode") == "layer" and saved.get("world_size") != world_size(cfg):
        raise ConfigError(f"resume={cfg.resume}: parallel.nproc={world_size(cfg)}: this layer-parallel run was "
                          f"trained on {saved.get('world_size')} processes and resumes on as many")
    if saved.get("mode") == "grid" and saved.get("grid") != list(grid_shape(cfg)):
        raise ConfigError(f"resume={cfg.resume}: parallel.nproc={world_size(cfg)}: this run was trained on a grid of "
                          f"{saved.get('grid')} (data x layer) processes and resumes on the same grid")


def gather_model(comm: Comm | None, model) -> None:
    """Layer-parallel: every rank receives the blocks the others own (rank 0 evaluates and saves
    the whole network). Nothing to do otherwise: the ranks hold the same weights. On a grid the
    ranks of a column hold the same blocks; those of the first row (ranks 0..layer_world-1) send them."""
    if comm is None or not comm.owns_layers:
        return
    blocks = list(model.blocks)
    for q, (first, last) in enumerate(layer_ranges(blocks, comm.layer_world)):
        for blk in blocks[first - 1:last]:
            for t in list(blk.parameters()) + list(blk.buffers()):
                t0 = comm._begin()
                dist.broadcast(t.data, src=q)
                comm._end(t0, t.numel() * t.element_size())


def step_medians_ms(step_seconds: list, comm_seconds: list) -> list:
    """One rank's medians in ms over its last common steps: step, collectives, and the per-step
    difference (the median of differences, not the difference of medians, so it is the rank's work
    in a typical step; the two differ when step times are noisy). NaN when there is no step."""
    import numpy as np

    n = min(len(step_seconds), len(comm_seconds))
    if n == 0:
        return [float("nan")] * 3
    steps, comms = np.asarray(step_seconds[-n:], float), np.asarray(comm_seconds[-n:], float)
    return [float(np.median(steps) * 1e3), float(np.median(comms) * 1e3), float(np.median(steps - comms) * 1e3)]


def rank_times(comm: Comm | None, step_seconds: list, comm_seconds: list) -> list | None:
    """Every rank's medians over the given steps (called by every rank: one all-gather): the step,
    its time in collectives (waits included) and the rest, the rank's own work. Unequal work shows
    as unequal ``compute_ms``: the faster ranks wait in their collectives for the slowest."""
    if comm is None:
        return None
    mine = torch.tensor(step_medians_ms(step_seconds, comm_seconds), dtype=torch.float64, device=comm.device)
    parts = [torch.empty_like(mine) for _ in range(comm.world)]
    dist.all_gather(parts, mine)
    return [{"rank": r, "step_ms": float(p[0]), "comm_ms": float(p[1]), "compute_ms": float(p[2])} for r, p in enumerate(parts)]


def metrics(comm: Comm | None, comm_seconds: list, comm_bytes: list, ranks: list | None = None) -> dict:
    """metrics.json's ``parallel``: mode, world, backend, grid, and rank 0's medians per step of the
    time spent in collectives (``comm_ms``, waiting for the other ranks included) and of the bytes it handed to them (``comm_bytes_per_step``); ``ranks``:
    every rank's medians over the last epoch's steps (``rank_times``)."""
    import numpy as np

    if comm is None:
        return {"parallel": {"mode": "none", "world_size": 1, "backend": None, "grid": [1, 1]}}
    median = float(np.median(comm_seconds)) * 1e3 if comm_seconds else float("nan")
    out = {**comm.describe(), "comm_ms": median,
           "comm_bytes_per_step": float(np.median(comm_bytes)) if comm_bytes else float("nan")}
    if ranks is not None:
        out["ranks"] = ranks
    return {"parallel": out}
