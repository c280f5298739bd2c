"""The commands: ``train``, ``invert`` and ``data`` are Hydra applications (one ``@hydra.main`` each,
with its own primary config); ``report`` reads run folders and takes no overrides.

Each Hydra command module defines ``validate(cfg)`` (the values, before anything is written),
``prevalidate(cfg)`` (``validate`` plus what a sweep must know before its first job starts: that
the components build, that the files load) and its ``app``. Validation runs in the Hydra callback
:class:`Validation` (``hydra.callbacks.validation`` in each primary config):

* a single run is validated in ``on_run_start``, after Hydra composed the config and before it
  writes the run folder;
* a multirun is pre-validated in ``on_multirun_start``: Hydra's basic sweeper expands the sweep, Hydra
  composes every job, and every invalid job gets one line before the first job starts; each job
  then validates itself (it may come from another sweeper), and a failed job's line is printed in
  ``on_job_end``.

Hydra turns an exception raised in a callback into a warning, and prints a line of its own for a
failed single run; a refusal or failure that must end a single run therefore travels to the ``lifted``
script as :class:`Stop`, which is not an ``Exception``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError, LiftedError
from ..runs import RunFolder, RunFolderBusy

COMMANDS = {
    "train": "train a network (source, task, architecture, scheme, solver chosen by overrides)",
    "invert": "recover the inputs of a trained network from its (noisy) outputs",
    "report": "summarise run folders of train and invert: tables, plots, samples (lifted report FOLDER...)",
    "data": "fetch MNIST into the data cache (or data_root) and verify it",
}

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class Stop(BaseException):
    """Carries ``error`` (a LiftedError) past Hydra to the ``lifted`` script."""

    def __init__(self, error: LiftedError):
        super().__init__(str(error))
        self.error = error


def command_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def task_config(cfg: DictConfig) -> DictConfig:
    """The composed config as the task function will see it, less ``hydra`` and ``output_dir`` (which
    is known only once Hydra has made the run folder)."""
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k not in ("hydra", "output_dir")])


def is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def one_line(err: BaseException) -> str:
    """Hydra's multi-line composition errors (and their causes) as one line."""
    parts = [str(err)]
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    if cause is not None and str(cause) not in parts[0]:
        parts.append(str(cause).split("\n")[0])
    msg = ": ".join(parts).split("Config search path")[0]
    lines = [ln.strip() for ln in msg.splitlines()
             if ln.strip() and not ln.strip().startswith(("full_key", "object_type", "reference_type"))]
    out = ""
    for ln in lines:
        out += ("" if not out else " " if out.endswith(":") else "; ") + ln
    return out


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The override lists of a multirun's jobs, expanded by Hydra's basic sweeper; None for another
    sweeper (its jobs validate themselves)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    params += list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    batches = BasicSweeper.split_arguments(parser.parse_overrides(params), None)
    return [job for batch in batches for job in batch]


class Validation(Callback):
    """Validates runs before Hydra writes their folders, and reports failed sweep jobs in one line."""

    def __init__(self) -> None:
        self.reported: set[int] = set()  # sweep jobs already named invalid before the sweep started
        self.folder: RunFolder | None = None  # the single run's folder, locked from here to its end

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        try:
            writes = "output_dir" in config  # `lifted data` writes no run folder
            if writes:
                RunFolder.check_free("hydra.run.dir", config.hydra.run.dir)
            command_module(config_name).validate(task_config(config))
            if writes:
                self.folder = RunFolder(config.hydra.run.dir).claim()
        except LiftedError as err:
            raise Stop(err) from None
        except Exception as err:  # e.g. an interpolation that does not resolve: Hydra would only warn
            raise Stop(ConfigError(one_line(err))) from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.folder is not None:
            self.folder.release()

    def on_multirun_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        from hydra.core.global_hydra import GlobalHydra

        try:
            RunFolder.check_free("hydra.sweep.dir", config.hydra.sweep.dir)
            subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
            if "hydra.job.num" not in str(subdir):
                raise ConfigError(f"hydra.sweep.subdir={subdir}: every job needs a folder of its own; "
                                  "keep ${{hydra.job.num}} in it")
        except LiftedError as err:
            raise Stop(err) from None
        jobs = sweep_jobs(config)
        if jobs is None:
            return
        module = command_module(config_name)
        hydra = GlobalHydra.instance().hydra
        for i, overrides in enumerate(jobs):
            shown = " ".join(o for o in overrides if not o.startswith(("hydra.", "hydra/")))
            try:
                job_cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.MULTIRUN)
            except Exception as err:  # the overrides do not compose: Hydra would stop mid-sweep
                raise Stop(ConfigError(f"job {i} ({shown}): {one_line(err)}; no job was started")) from None
            try:
                module.prevalidate(task_config(job_cfg))
            except Exception as err:  # an invalid job (or one whose values do not resolve): skipped, the others run
                self.reported.add(i)
                reason = err if isinstance(err, LiftedError) else one_line(err)
                print(f"lifted {config_name}: error: job {i} ({shown}) will not run: {reason}", file=sys.stderr)
        if jobs and len(self.reported) == len(jobs):
            raise Stop(ConfigError("no valid job in this sweep"))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        err = getattr(job_return, "_return_value", None)
        if job_return.status != JobStatus.FAILED or not isinstance(err, LiftedError) or not is_multirun():
            return
        num = int(config.hydra.job.num)
        if num not in self.reported:
            print(f"lifted {config.hydra.job.name}: error: job {num}: {err}", file=sys.stderr)
        err.reported = True


def run_task(cfg: DictConfig, validate, work):
    """The body of a Hydra task function. A single run was validated, and its folder claimed, before
    Hydra wrote anything; a multirun job claims its folder and validates itself (it may come from
    another sweeper). A refused or failed run removes what it made (``RunFolder.remove_unfinished``),
    and the lock goes whatever happens (finished, failed, interrupted). A failed sweep job raises its
    error, so that the sweep goes on and ends with the first failure's exit status; a single run stops.
    In a job of several processes (SLURM tasks, torchrun ranks) rank 0 alone holds the folder."""
    from ..parallel import adopt_slurm, env_rank

    adopt_slurm()
    folder = RunFolder.holding(cfg.output_dir) if "output_dir" in cfg and env_rank() == 0 else None
    try:
        if is_multirun():
            if folder is not None:  # made by Hydra for this job, inside a sweep folder that was new or empty
                folder.claim(created=True)
            validate(cfg)
        return work(cfg)
    except LiftedError as err:
        if folder is not None and not isinstance(err, RunFolderBusy):
            folder.remove_unfinished()
        if is_multirun():
            raise
        raise Stop(err) from None
    finally:
        if folder is not None:
            folder.release()
