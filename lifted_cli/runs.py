"""What the commands share: devices, atomic writes, checkpoints, pictures, the run-folder lifecycle.

Every file of a run folder is written atomically (a temporary file in the destination folder, then
``os.replace``): an interrupted run never leaves half a file; the destination either keeps its old
content or gets the complete new one.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import warnings
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
from omegaconf import MISSING

from . import loggers
from .data.sources import DATA_SOURCES
from .errors import ConfigError, DivergenceError, InputError, WriteError
from .registry import Schema, check, check_seed, fail


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path, write, mode="w"):
    """Write ``path`` through a temporary file in its folder, renamed into place once complete: a reader
    sees the old file or the new one, never half of one. A full disk or a folder that cannot be written
    is one line (WriteError), the old file left as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        # torch.save reports a failed write as a RuntimeError of its stream writer
        if isinstance(err, OSError) or (isinstance(err, RuntimeError) and "write" in str(err).lower()):
            reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]
            raise WriteError(f"could not write {path} ({reason}); the file it would replace is unchanged: free some "
                             "space or make the folder writable, then run again (a training run: resume=<its folder>)") from None
        raise


def _jsonable(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # JSON has no inf/nan: "inf", "nan"
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path, obj) -> None:
    _atomic(path, lambda f: json.dump(_jsonable(obj), f, indent=2, sort_keys=False))


def write_csv(path, rows: list[dict]) -> None:
    def write(f):
        fields = list(rows[0].keys()) if rows else []
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)

    _atomic(path, write)


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_torch(path, obj) -> None:
    _atomic(path, lambda f: torch.save(obj, f), mode="wb")


def write_text(path, text: str) -> None:
    _atomic(path, lambda f: f.write(text))


def save_figure(path, fig, **kwargs) -> None:
    """A matplotlib figure as PNG."""
    _atomic(path, lambda f: fig.savefig(f, format="png", **kwargs), mode="wb")


def save_image(path, image) -> None:
    """``image``: PIL image, written as PNG."""
    _atomic(path, lambda f: image.save(f, format="PNG"), mode="wb")


# -------------------------------------------------------------------------------------- devices
def check_device(spec: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``, and the CUDA device must exist."""
    spec = str(spec)
    if not (spec in ("auto", "cpu", "cuda") or (spec.startswith("cuda:") and spec[5:].isdigit())):
        fail("device", spec, "allowed: auto, cpu, cuda, cuda:N")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            fail("device", spec, "CUDA is not available on this machine; use device=cpu or auto")
        if ":" in spec and int(spec[5:]) >= torch.cuda.device_count():
            fail("device", spec, f"only {torch.cuda.device_count()} CUDA device(s) present")


def job_number() -> int | None:
    """The job number of a multirun job (None in a single run or outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return int(HydraConfig.get().job.num)
    return None


def tune_allocator() -> bool:
    """On glibc (Linux), let freed blocks of up to 32 MiB (mmap threshold, glibc's maximum) return to
    the heap and keep up to 1 GiB of free heap (trim threshold): the large temporaries of a training
    step (stacked blocks: layers x samples x width) are then reused instead of being mapped and
    faulted in anew at every allocation, the effect of a caching allocator such as jemalloc. True
    when applied; elsewhere nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


class StepClock:
    """Wall time of each training step, waiting for the device's queued work first (CUDA runs
    asynchronously), and the peak memory of the run: CUDA's maximum allocated bytes, or on the CPU
    the process's resident set sampled after every step (``/proc/self/statm``; the peak RSS of the
    process would include earlier jobs of a sweep run in the same process)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.seconds: list[float] = []
        self.peak = 0
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._t0)
        self.peak = max(self.peak, self.memory())

    def memory(self) -> int:
        if self.cuda:
            return int(torch.cuda.max_memory_allocated(self.device))
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):  # not Linux: the process's peak so far
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def median_ms(self, since: int = 0) -> float:
        """Median step time in ms over the steps from index ``since`` (nan when there are none)."""
        values = self.seconds[since:]
        return float(np.median(values)) * 1e3 if values else math.nan


def flush_denormals() -> None:
    """Read subnormal floats as zero on the CPU (process-wide). Weight decay drives the weights of dead
    relu units toward zero geometrically; once they are subnormal, every multiplication that touches
    them takes the CPU's slow path: a back-propagation step of the default mlp after 10 epochs took
    121 ms instead of 10 ms, and its wall time grew epoch after epoch. Values below 1.2e-38 are far
    below anything a run reports."""
    torch.set_flush_denormal(True)


def select_device(spec: str) -> torch.device:
    """``auto``: CUDA if present, else the CPU; with several GPUs, job N of a multirun takes GPU
    N mod count (so the jobs of ``hydra/launcher=joblib`` spread over the GPUs)."""
    check_device(spec)
    if spec == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        n, job = torch.cuda.device_count(), job_number()
        return torch.device(f"cuda:{job % n}") if n > 1 and job is not None else torch.device("cuda")
    return torch.device(spec)


# ---------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path) -> tuple[dict, Path]:
    """A ``checkpoint.pt`` (or the one of a run folder), loaded with ``weights_only=True`` on the CPU:
    tensors and plain containers only, never code. One-line InputError when missing or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise InputError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's remarks on a file it then refuses: the line below says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True), path
    except Exception as err:
        raise InputError(f"checkpoint {path} cannot be read ({type(err).__name__}); is it complete?") from None


def is_train_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and "model" in obj and "config" in obj


def network_from_checkpoint(path):
    """Rebuild a ``lifted train`` network from its run folder or checkpoint file alone; returns
    (network, checkpoint)."""
    from omegaconf import OmegaConf

    from .data import SOURCES, image_side
    from .nets import ARCHITECTURES, build_network

    ckpt, path = load_checkpoint(path)
    if not is_train_checkpoint(ckpt):
        raise InputError(f"{path} is not a lifted train checkpoint")
    config = split_dataset(ckpt["config"])
    side = image_side(SOURCES.validate(OmegaConf.create(config["source"])))
    model = build_network(ARCHITECTURES.validate(OmegaConf.create(config["arch"])), side)
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def load_tensor(path: str, what: str) -> torch.Tensor:
    """A tensor file given as ``what=path`` (loaded with ``weights_only=True``), rows flattened."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}={path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's remarks on a file it then refuses: the line below says it
            warnings.simplefilter("ignore")
            t = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"{what}={path} cannot be read ({type(err).__name__})") from None
    if not torch.is_tensor(t):
        raise InputError(f"{what}={path} holds a {type(t).__name__}, not a tensor")
    if t.dim() == 0 or t.numel() == 0:
        raise InputError(f"{what}={path} holds a tensor of shape {tuple(t.shape)}; need (N, values) with N >= 1 rows")
    t = t.to(torch.float32).reshape(t.shape[0], -1)
    if not torch.isfinite(t).all():
        raise InputError(f"{what}={path} holds non-finite values (NaN or inf)")
    return t


# ------------------------------------------------------------------------------------- pictures
def samples_image(rows: list[torch.Tensor], labels: list[str] | None = None, scale: int = 3):
    """A PIL image with one row per tensor (e.g. truth, degraded, reconstruction), images clamped to
    [0, 1], each row named on its left by ``labels``."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    n = rows[0].shape[0]
    grid = make_grid(torch.cat([r.detach().cpu().clamp(0, 1) for r in rows]), nrow=n, padding=2, pad_value=1.0)
    arr = (grid[0].numpy() * 255).round().astype(np.uint8)
    tiles = Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.NEAREST)
    if not labels:
        return tiles
    draw = ImageDraw.Draw(tiles)
    width = max(int(draw.textlength(t)) for t in labels) + 12
    out = Image.new("L", (tiles.width + width, tiles.height), 255)
    out.paste(tiles, (width, 0))
    draw = ImageDraw.Draw(out)
    row = tiles.height / len(rows)
    for i, text in enumerate(labels):
        draw.text((4, int(row * (i + 0.5)) - 5), text, fill=0)
    return out


# ------------------------------------------------------------------------------ run-folder lifecycle
class RunFolder:
    """The lifecycle of a run folder: a run writes only into a folder that is new or empty (or the one
    it resumes), holds an exclusive lock (``.lock``, ``fcntl.flock``) while it writes, and on a refusal
    or failure removes only what it made: the folder itself when it created it and wrote no result
    into it, else only the lock once a result exists. The lock file records whether the run created
    the folder. The folders this process holds are kept in ``_held`` (like its open files), so that the
    code that ends a run releases the lock that its start took."""

    LOCK = ".lock"
    #: the files of a run (and of their interrupted atomic writes: ``.<name>.*.tmp``)
    RESULTS = ("checkpoint.pt", "metrics.json", "history.csv", "samples.png", "recovered.pt")
    EVENTS = loggers.EVENTS  # TensorBoard's event files (``logger=tensorboard``)
    _held: dict = {}

    def __init__(self, path):
        self.path = Path(path)
        self._fd = None

    @classmethod
    def holding(cls, path) -> "RunFolder":
        """The folder as this process holds it (claimed), else a new, unclaimed handle."""
        return cls._held.get(Path(path).resolve(), cls(path))

    @staticmethod
    def check_free(key: str, path) -> None:
        """Refuse a folder that is a file or already holds files (another run's results, a user's notes)."""
        path = Path(str(path))
        if path.exists() and not path.is_dir():
            fail(key, path, "is a file; give a folder for the run's results")
        if path.is_dir() and any(path.iterdir()):
            fail(key, path, "holds files already; continue a run with resume=<its folder>, or give a new or empty folder")

    def claim(self, created: bool | None = None) -> "RunFolder":
        """Create the folder if needed and take its lock (ConfigError when another run holds it).
        ``created``: whether this run made the folder (default: it did not exist before)."""
        import fcntl

        created = not self.path.exists() if created is None else created
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / self.LOCK, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path} is in use by another run (it holds the lock {self.path / self.LOCK})") from None
        try:  # a run killed without releasing: its record of who created the folder stands
            previous = json.loads(os.read(fd, 4096).decode() or "{}")
            created = bool(previous.get("created", created)) if isinstance(previous, dict) else False
        except (ValueError, UnicodeDecodeError):  # not a record of ours: the folder is not ours either
            created = False
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "created": created}).encode())
        self._fd = fd
        RunFolder._held[self.path.resolve()] = self
        return self

    def release(self) -> None:
        """The run is over (finished, failed or interrupted): drop the lock and its file."""
        if self._fd is not None:
            (self.path / self.LOCK).unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
            RunFolder._held.pop(self.path.resolve(), None)

    def _created(self) -> bool:
        try:
            record = json.loads((self.path / self.LOCK).read_text() or "{}")
            return bool(record.get("created", False)) if isinstance(record, dict) else False
        except (OSError, ValueError):
            return False  # no record: nothing says this run made the folder

    def remove_unfinished(self) -> None:
        """After a refusal or a failure: a folder this run created and wrote no result into goes; one
        it did not create loses only what Hydra, the lock and TensorBoard's event files added; one that
        holds a result (the last good checkpoint of a diverged run) keeps everything, for resume and
        ``lifted report``."""
        if not self.path.is_dir():
            return
        entries = list(self.path.iterdir())
        ours = [p for p in entries if p.name in (".hydra", self.LOCK, self.EVENTS) or p.suffix == ".log"]
        if len(ours) < len(entries):
            return
        if self._created():
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for p in ours:
            if p.name != self.LOCK:  # the lock goes with release()
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def sweep_temporaries(self) -> list[str]:
        """Remove the temporary files that interrupted atomic writes of a run's files left behind."""
        stale = [p for name in self.RESULTS for p in self.path.glob(f".{name}.*.tmp") if p.is_file()]
        for p in stale:
            p.unlink()
        return [p.name for p in stale]


def configure_logging(logfile: Path | None = None) -> list:
    """INFO to the console, or (``logfile``) appended to a file, in the format of Hydra's job logging
    (``configs/hydra/job_logging/train.yaml``), for a run that Hydra does not start (a resumption).
    Returns the handlers, for ``end_logging``."""
    import logging

    fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers = [logging.StreamHandler(sys.stdout) if logfile is None else logging.FileHandler(logfile, mode="a")]
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)
    return handlers


def end_logging(handlers: list) -> None:
    import logging

    for handler in handlers:
        logging.getLogger().removeHandler(handler)
        handler.close()


class RunFolderBusy(ConfigError):
    """Another run holds the folder's lock: nothing of the folder is this run's to remove."""


def divergence(what: str, checkpoint: Path | None = None) -> DivergenceError:
    """The error that stops a diverging run; it names the last good checkpoint only when one exists."""
    kept = f"; the last good checkpoint is kept in {checkpoint}" if checkpoint is not None and Path(checkpoint).is_file() else ""
    return DivergenceError(f"{what}{kept}")


#: the signals that stop a run at its next step boundary with a checkpoint, as Ctrl-C does: SIGINT,
#: SIGTERM (how SLURM, Kubernetes and most schedulers stop a job) and SIGUSR1 (SLURM's usual
#: ``--signal`` warning before the time limit)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal; the command exits with 128 + its number (130 for Ctrl-C, 143 for
    SIGTERM, 138 for SIGUSR1), the shells' convention."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def raise_interrupted(signum, frame):
    """The handler of a stop signal outside the training loop: unwind (locks released) and exit 128 + signum."""
    raise Interrupted(signum)


def catch_stop_signals() -> None:
    """SIGTERM and SIGUSR1 unwind the command like Ctrl-C (instead of ending the process on the spot)."""
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            if signum != signal.SIGINT:
                signal.signal(signum, raise_interrupted)


class DeferredInterrupt:
    """A stop signal (``STOP_SIGNALS``) is deferred to the next step boundary (``requested``, ``signum``),
    so that the checkpoint saved on interrupt never holds a half-applied update. A second one
    interrupts at once."""

    def __init__(self):
        self.requested = False
        self.signum = signal.SIGINT
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._old[signum] = signal.signal(signum, self._handler)

    def _handler(self, signum, frame):
        if self.requested:
            raise Interrupted(signum)
        self.requested, self.signum = True, signum

    def restore(self):
        for signum, handler in self._old.items():
            signal.signal(signum, handler)
        self._old = {}


# ------------------------------------------------------------------------------ shared options
@dataclass
class RunConfig(Schema):
    """Options every command that writes a run folder shares. The top-level ``validate`` methods read
    the composed DictConfig lazily: ``output_dir`` is known only once Hydra has made the run folder."""

    command: str = MISSING
    experiment: Optional[str] = None
    seed: int = 0
    device: str = "auto"
    threads: Any = "auto"
    data_root: Optional[str] = None
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    num_samples: int = 8
    progress: bool = True
    logger: Any = None
    output_dir: str = MISSING

    def validate(self):
        loggers.validate(self.logger)
        check_seed("seed", self.seed)
        check(self.threads == "auto" or (isinstance(self.threads, int) and not isinstance(self.threads, bool)
                                         and self.threads >= 1), "threads", self.threads, "auto or an integer >= 1")
        check_device(self.device)
        check_data_sources(self.data_sources)
        check(self.num_samples >= 0, "num_samples", self.num_samples, "must be >= 0")


def require_source(cfg, source_cfg=None) -> str:
    """The images of a run's ``source`` (``data_root``, ``data_sources``), or of ``source_cfg``: missing
    data refuses the run before any work (exit status 2), where ``lifted data`` itself fails while
    working (1). Returns the provider."""
    from .data import build_source
    from .errors import DataError

    try:
        return build_source(source_cfg if source_cfg is not None else cfg.source).ensure(cfg.data_root,
                                                                                          tuple(cfg.data_sources))
    except DataError as err:
        raise InputError(str(err)) from None


def check_data_sources(sources) -> None:
    check(all(s in DATA_SOURCES for s in sources), "data_sources", sources, f"allowed sources: {', '.join(DATA_SOURCES)}")


def split_dataset(config: dict) -> dict:
    """A config from before ``source`` and ``task`` were separate groups (``dataset: {name: mnist_denoise,
    task: denoise, sigma: ...}``), in today's spelling (``source: {name: mnist}``, ``task: {name: denoise,
    sigma: ...}``): the same run."""
    old = config.get("dataset")
    if not isinstance(old, dict) or "source" in config or "task" in config:
        return config
    task = {"name": old.get("task"), **{k: v for k, v in old.items() if k not in ("name", "task")}}
    return {**{k: v for k, v in config.items() if k != "dataset"}, "source": {"name": "mnist"}, "task": task}


def out_of_memory(err: BaseException) -> str | None:
    """The allocation that failed, in words, when ``err`` is an out-of-memory error (CPU or CUDA)."""
    import re

    text = str(err)
    if isinstance(err, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        asked = re.search(r"allocate (\d+) bytes", text) or re.search(r"allocate ([\d.]+ [KMGT]iB)", text)
        if asked is None:
            return "an allocation failed"
        size = asked.group(1)
        return f"it asked for {int(size) / 2**30:.1f} GiB at once" if size.isdigit() else f"it asked for {size} at once"
    return None


# ------------------------------------------------------------------------------------- threads
def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def sharers() -> int:
    """Processes of this work that share the machine's cores: the ranks on this node (torchrun's or
    lifted's own launcher), or the jobs a joblib sweep runs at once; 1 otherwise."""
    if os.environ.get("LOCAL_WORLD_SIZE"):
        return max(1, int(os.environ["LOCAL_WORLD_SIZE"]))
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
    except (ValueError, AttributeError):
        launcher = None
    if launcher is not None and "joblib" in str(launcher.get("_target_", "")):
        n_jobs = int(launcher.get("n_jobs") or 1)
        return usable_cores() if n_jobs < 0 else max(1, n_jobs)
    return 1


def idle_cores(seconds: float = 0.1) -> float | None:
    """How many cores the whole machine left idle over ``seconds`` (``/proc/stat``; None elsewhere)."""
    def times():
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # total, idle + iowait

    try:
        total0, idle0 = times()
        time.sleep(seconds)
        total1, idle1 = times()
    except (OSError, ValueError, IndexError):
        return None
    return (os.cpu_count() or 1) * (idle1 - idle0) / max(total1 - total0, 1e-9)


def set_threads(spec) -> int:
    """torch's intra-op threads for this run: a number, or ``auto``: ``OMP_NUM_THREADS`` when set, else
    this process's share of its cores (``usable_cores() // sharers()``), and no more than the cores
    other processes leave idle right now. torch's default is every core, and its threads wait for each
    other at every operation, so one busy core elsewhere slows a run 2-3x where one thread fewer costs
    little."""
    if spec != "auto":
        n = int(spec)
    elif os.environ.get("OMP_NUM_THREADS", "").strip().isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        n = int(os.environ["OMP_NUM_THREADS"])
    else:
        n = max(1, usable_cores() // sharers())
        idle = idle_cores()
        if idle is not None:
            n = max(1, min(n, int(idle + 0.5)))
    torch.set_num_threads(n)
    return n
