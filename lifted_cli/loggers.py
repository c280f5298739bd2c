"""Experiment trackers: the ``logger`` config group (``logger=tensorboard``, ``logger=[tensorboard,mlflow]``).

The run folder stays the record of a run; a logger copies what the run writes there into the tool a
researcher already watches:

* ``tensorboard``: every numeric, finite value of each ``history.csv`` row as a scalar (step: the
  epoch, or the iteration of ``lifted invert``), the final metrics (``final/...``), the flattened
  config in the hparams plugin (so the runs of a sweep compare in its table) and ``samples.png``, as
  event files in ``<run folder>/tensorboard`` (``tensorboard --logdir results/`` finds every run);
* ``mlflow``: the flattened resolved config as parameters, the same per-step and final metrics, the
  run folder's files as artifacts, tags naming the command and its components; one MLflow run per run
  folder (a resumption continues its run), the runs of a multirun in one experiment named after the
  sweep folder, in the tracking store ``logger.mlflow.tracking_uri`` (default: the SQLite database
  ``results/mlflow.db``, artifacts in ``results/mlartifacts`` beside it).

The packages are imported only when a logger is chosen; one that is not installed is refused at
validation with its ``pip install`` line, and an MLflow store that cannot be reached is refused by
``prepare`` before any work starts (``ConfigError``). Once a run trains, a logger that fails is
dropped with a warning: the run folder, not the tracker, is the record. Only the process that writes
the run folder (rank 0 of a parallel run) logs. Nothing is written into the run folder but
TensorBoard's event files.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .registry import Registry, Schema, check, fail

log = logging.getLogger("lifted.loggers")

#: the loggers by name (``logger=<name>``), each with the package it needs
LOGGERS = Registry("logger")

#: the folder of a run that TensorBoard's event files go to (a record of the run, not a result)
EVENTS = "tensorboard"

#: config keys that are not parameters of a run (where it writes, how it shows progress, the loggers)
NOT_PARAMS = ("output_dir", "logger", "progress", "resume")

#: metrics.json blocks that are settings, not results (they are logged as parameters already)
NOT_METRICS = ("hyperparameters", "settings", "network", "source", "task", "image_side", "threads", "seed", "epochs", "iterations")


# ------------------------------------------------------------------------------------- schemas
@dataclass
class TensorBoardConfig(Schema):
    samples: bool = True  # log samples.png as an image
    hparams: bool = True  # the flattened config and the final metrics in the hparams plugin


@dataclass
class MLflowConfig(Schema):
    tracking_uri: str = "sqlite:///results/mlflow.db"
    artifact_location: Optional[str] = None
    experiment_name: Optional[str] = None
    run_name: Optional[str] = None
    artifacts: bool = True

    def validate(self):
        check(bool(self.tracking_uri.strip()), "tracking_uri", self.tracking_uri,
              "give a tracking store: sqlite:///PATH.db, http://HOST:PORT, databricks, ...")
        for key in ("experiment_name", "run_name", "artifact_location"):
            value = getattr(self, key)
            check(value is None or bool(value.strip()), key, value, "give a non-empty name, or null for the default")


def validate(node) -> None:
    """The ``logger`` node: null, or one node per chosen logger, each checked against its schema;
    ConfigError with the ``pip install`` line for a logger whose package is missing."""
    if node is None or (isinstance(node, DictConfig) and node._is_none()):
        return
    if not isinstance(node, (dict, DictConfig)):
        fail("logger", node, f"choose loggers with logger=NAME or logger=[NAME,...]; allowed: {', '.join(LOGGERS.names())}")
    for name in node:
        LOGGERS.validate(node[name], prefix=f"logger.{name}.", name=name)
        require(name)


def require(name: str) -> None:
    package = LOGGERS.get(name, key="logger").info["package"]
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"logger={name} needs the {package} package: pip install 'lifted_cli[loggers]'")


def chosen(cfg) -> dict:
    """The chosen loggers' nodes by name (empty without any)."""
    node = cfg.get("logger")
    return {} if node is None else {name: node[name] for name in node}


# --------------------------------------------------------------------------- values to log
def flatten(node, prefix: str = "") -> dict[str, Any]:
    """A nested dict (or config) as ``{"a.b.c": leaf}``; lists become their JSON text."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def params(cfg) -> dict[str, Any]:
    """The run's parameters: its resolved config, flattened, less ``NOT_PARAMS``."""
    return flatten({k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NOT_PARAMS})


def finite_numbers(values: dict, skip=()) -> dict[str, float]:
    """The numeric, finite values of a flat dict (numpy's too; booleans are not numbers here)."""
    return {k: float(v) for k, v in values.items()
            if k not in skip and isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v)}


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numeric results, flattened, as ``final/<key>`` (e.g. ``final/test.psnr.mean``)."""
    results = flatten({k: v for k, v in metrics.items() if k not in NOT_METRICS})
    return {f"final/{k}": v for k, v in finite_numbers(results).items()}


def tags(cfg) -> dict[str, str]:
    """What a run is, for the trackers' search boxes: the command and its components."""
    out = {"command": str(cfg.command)}
    for key in ("source", "task", "scheme", "arch", "solver"):
        node = cfg.get(key)
        if isinstance(node, DictConfig):
            out[key] = str(node.get("name", ""))
    for key in ("method", "regularizer", "network"):
        if cfg.get(key) is not None and not isinstance(cfg.get(key), DictConfig):
            out[key] = str(cfg.get(key))
    if cfg.get("experiment"):
        out["experiment"] = str(cfg.experiment)
    return out


def _multirun():
    """(sweep folder, job number) of a multirun job; None outside one."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    return str(hc.sweep.dir), hc.job.get("num")


# ------------------------------------------------------------------------------ before the run
def prepare(cfg) -> None:
    """Fill in the loggers' defaults that depend on where and how the run started (an absolute
    tracking store, the experiment of a multirun: known in this process only, not in the ranks of a
    parallel run) and reach every store, before any work: ConfigError when one cannot be reached."""
    for name, node in chosen(cfg).items():
        require(name)
        if name == "mlflow":
            node.tracking_uri = absolute_uri(node.tracking_uri)
            if node.artifact_location is None:
                node.artifact_location = default_artifacts(node.tracking_uri)
            sweep = _multirun()
            if node.experiment_name is None:
                node.experiment_name = sweep[0] if sweep else f"lifted-{cfg.command}"
            if node.run_name is None:
                node.run_name = f"job {sweep[1]}" if sweep else Path(str(cfg.output_dir)).name
            _reach(node.tracking_uri, lambda client: _experiment(client, node))


def reach(cfg) -> None:
    """Every chosen logger's package and store, checked without changing ``cfg`` (a sweep's jobs,
    before the first starts: their experiment is named once they run)."""
    for name, node in chosen(cfg).items():
        require(name)
        if name == "mlflow":
            _reach(absolute_uri(node.tracking_uri), lambda client: client.search_experiments(max_results=1))


def _reach(uri: str, ask) -> None:
    """``ask(client)`` of the MLflow store ``uri``; ConfigError (one line) when it cannot be reached."""
    with _quick_http():
        try:
            ask(_client(uri))
        except Exception as err:  # a server that does not answer, a database that cannot be opened or made
            raise ConfigError(f"logger.mlflow.tracking_uri={uri}: the tracking store cannot be reached "
                              f"({brief(err)})") from None


def brief(err: BaseException) -> str:
    """An exception as ``Type: its first line`` (at most 200 characters of it)."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def absolute_uri(uri: str) -> str:
    """``sqlite:///relative.db`` as an absolute path (from where lifted runs); the database's folder is
    made. Other stores are left as given."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == f"{prefix}:memory:":
        return uri
    path = Path(uri[len(prefix):])
    path = path if path.is_absolute() else Path.cwd() / path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"logger.mlflow.tracking_uri={uri}: the tracking store cannot be reached "
                          f"(its folder cannot be made: {err.strerror})") from None
    return prefix + str(path)


def default_artifacts(uri: str) -> str | None:
    """``mlartifacts`` beside a SQLite database; for other stores, the store's own default."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and uri != f"{prefix}:memory:":
        return (Path(uri[len(prefix):]).parent / "mlartifacts").as_uri()
    return None


@contextlib.contextmanager
def _quick_http():
    """An MLflow server that does not answer fails at once (no retries, a short timeout) while the
    store is first reached; MLflow reads these settings at every request."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _client(uri: str):
    for name in ("alembic", "mlflow.store.db.utils"):  # the SQLite store's schema migrations, told once per database
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client, node) -> str:
    """The id of the experiment ``node.experiment_name``, made when new (two jobs may race to make it)."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(node.experiment_name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(node.experiment_name, artifact_location=node.artifact_location)
    except MlflowException:
        exp = client.get_experiment_by_name(node.experiment_name)
        if exp is None:
            raise
        return exp.experiment_id


# ------------------------------------------------------------------------------- during the run
class Loggers:
    """The chosen loggers of one run: ``log_row`` per epoch (or logged iteration), ``log_final`` once,
    then the context's exit closes them (finished, failed or killed). Without loggers every call is
    free. A logger that raises is dropped with one warning; the run goes on."""

    def __init__(self, backends: list | None = None):
        self.backends = list(backends or [])

    def _each(self, what: str, *args) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, what)(*args)
            except Exception as err:  # the tracker, not the run, failed
                log.warning("logger=%s failed (%s); it logs nothing more of this run", backend.name, brief(err))
                self.backends.remove(backend)

    def log_row(self, row: dict, step_key: str) -> None:
        """Every numeric, finite value of a history row, at step ``row[step_key]``."""
        if self.backends:
            self._each("log_row", int(row[step_key]), finite_numbers(row, skip=(step_key,)))

    def log_final(self, metrics: dict, step: int) -> None:
        if self.backends:
            self._each("log_final", final_metrics(metrics), int(step))

    def __enter__(self) -> "Loggers":
        return self

    def close(self, status: str) -> None:
        """End the run in every tracker: FINISHED, FAILED or KILLED."""
        self._each("close", status)
        self.backends = []

    def __exit__(self, kind, err, tb) -> None:
        self.close("FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")


def start(cfg, out: Path, enabled: bool = True) -> Loggers:
    """The loggers of a run writing ``out`` (``prepare``d config); none where ``enabled`` is False (a
    rank other than 0). Use as a context: ``with start(cfg, out) as loggers: ...``."""
    if not enabled:
        return Loggers()
    backends = []
    for name, node in chosen(cfg).items():
        entry = LOGGERS.get(name, key="logger")
        try:
            backends.append(entry.builder(OmegaConf.merge(OmegaConf.structured(entry.schema), node), cfg, Path(out)))
        except Exception as err:  # e.g. a store that went away since ``prepare``: the run has not trained yet
            Loggers(backends).close("FAILED")
            raise ConfigError(f"logger={name} cannot start ({brief(err)})") from None
    return Loggers(backends)


class TensorBoardLogger:
    """Event files in ``<run folder>/tensorboard``, opened at the first value (a resumption that is
    refused leaves its folder untouched)."""

    name = "tensorboard"

    def __init__(self, node, cfg, out: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (``require``)

        self._make = lambda: SummaryWriter(log_dir=str(out / EVENTS))
        self.node, self.out, self.params = node, out, params(cfg)
        self.writer = None

    @property
    def _writer(self):
        if self.writer is None:
            self.writer = self._make()
        return self.writer

    def log_row(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def log_final(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)
        if self.node.hparams:
            from torch.utils.tensorboard.summary import hparams

            hp = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self.params.items()}
            for summary in hparams(hp, values):
                self._writer._get_file_writer().add_summary(summary)
        picture = self.out / "samples.png"
        if self.node.samples and picture.is_file():
            from PIL import Image

            with Image.open(picture) as img:
                self._writer.add_image("samples", np.asarray(img.convert("L")), step, dataformats="HW")
        self._writer.flush()

    def close(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflowLogger:
    """One MLflow run per run folder (found again by its ``run_dir`` tag when the run is resumed)."""

    name = "mlflow"

    def __init__(self, node, cfg, out: Path):
        from mlflow.entities import Param

        self.node, self.out = node, out
        self.client = _client(node.tracking_uri)
        exp_id = _experiment(self.client, node)
        run_dir = str(out.resolve())
        previous = self.client.search_runs([exp_id], filter_string=f"tags.run_dir = '{run_dir}'",
                                           max_results=1) if cfg.get("resume") and "'" not in run_dir else []
        if previous:
            self.run_id = previous[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            logged = previous[0].data.params
        else:
            run = self.client.create_run(exp_id, run_name=node.run_name, tags={**tags(cfg), "run_dir": run_dir})
            self.run_id, logged = run.info.run_id, {}
        new = [Param(k, str(v)[:6000]) for k, v in params(cfg).items() if k not in logged]  # parameters never change
        for i in range(0, len(new), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=new[i : i + 100])

    def _metrics(self, values: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def log_row(self, step: int, values: dict) -> None:
        self._metrics(values, step)

    def log_final(self, values: dict, step: int) -> None:
        self._metrics(values, step)

    def close(self, status: str) -> None:
        if status == "FINISHED" and self.node.artifacts:
            for path in sorted(p for p in self.out.rglob("*") if p.is_file()):
                rel = path.relative_to(self.out)
                if path.name == ".lock" or (path.name.startswith(".") and path.name.endswith(".tmp")):
                    continue
                parent = rel.parent.as_posix()
                self.client.log_artifact(self.run_id, str(path), artifact_path=None if parent == "." else parent)
        self.client.set_terminated(self.run_id, status=status)


LOGGERS.register("tensorboard", TensorBoardConfig, package="tensorboard")(
    lambda node, cfg, out: TensorBoardLogger(node, cfg, out))
LOGGERS.register("mlflow", MLflowConfig, package="mlflow")(lambda node, cfg, out: MLflowLogger(node, cfg, out))
