"""The Python API: the ``lifted`` commands as functions that return their results.

``lifted train scheme=backprop epochs=2`` is ``lifted_cli.train(["scheme=backprop", "epochs=2"])``: the
same composition (Hydra's, with the same overrides and config groups), the same validation (one-line
``LiftedError``s, raised instead of printed), the same run folder (locked while the run writes, its
config recorded in ``.hydra/`` for ``lifted report``, removed when the run is refused or fails before
any result) and the same metrics, returned. The console script is a thin layer over the same
functions (``commands/train.py``, ``commands/invert.py``, ``commands/report.py``)::

    import lifted_cli

    bp = lifted_cli.train(["scheme=backprop", "epochs=2"], output_dir="runs/bp")
    lb = lifted_cli.train(["scheme=bregman", "epochs=2"], output_dir="runs/bregman")
    net = lifted_cli.load_network("runs/bregman")                    # the trained network
    inv = lifted_cli.invert(["checkpoint=runs/bregman", "upto=layer1"])  # its first layer inverted
    folder, text = lifted_cli.report(["runs"])                       # tables and pictures of both

``training(overrides)`` builds the components of a run (network, scheme, solver, degradation) without
data or run folder, so that one lifted step runs on a batch of your own: ``training().step(x)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .errors import ConfigError, LiftedError

#: the commands that compose a Hydra config and write a run folder
RUN_COMMANDS = ("train", "invert")


def _strings(items) -> list[str]:
    """Overrides or folders as a list of strings; one string (or path) is one item, not its characters."""
    return [str(items)] if isinstance(items, (str, Path)) else [str(i) for i in items]


def compose(command: str = "train", overrides: Sequence[str] = (), output_dir=None) -> DictConfig:
    """The config of ``lifted <command> <overrides>``, composed by Hydra and validated, with
    ``output_dir`` (default: a new folder named as the command line names it, e.g.
    ``results/train/<date>/<time>``). ConfigError (one line) for overrides that do not compose or
    values that are refused."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from .cli import _explain
    from .commands import command_module, one_line, task_config

    if command not in RUN_COMMANDS:
        raise ConfigError(f"command={command}: allowed: {', '.join(RUN_COMMANDS)}")
    module = command_module(command)  # stores the command's schema in Hydra's ConfigStore
    overrides = _strings(overrides)
    try:
        with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
            full = hydra_compose(config_name=command, overrides=overrides, return_hydra_config=True)
        folder = str(full.hydra.run.dir) if output_dir is None else str(output_dir)
    except Exception as err:  # Hydra's and OmegaConf's composition errors
        raise ConfigError(_explain(command, overrides, one_line(err))) from None
    cfg = task_config(full)
    with open_dict(cfg):
        cfg.output_dir = folder
    module.validate(cfg)
    return cfg


def _run(command: str, overrides: Sequence[str], output_dir, work) -> dict:
    """``work(cfg)`` in a new run folder, with the lifecycle of the command line's runs: a folder that
    holds files is refused, the folder is locked while the run writes, its config and overrides are
    recorded in ``.hydra/`` and the log goes to ``<command>.log``; a refused or failed run removes what
    it made (``RunFolder.remove_unfinished``)."""
    from .runs import RunFolder, configure_logging, end_logging, write_text

    cfg = compose(command, overrides, output_dir)
    out = Path(cfg.output_dir)
    RunFolder.check_free("output_dir", out)
    folder = RunFolder(out).claim()
    handlers = configure_logging(out / f"{command}.log")
    try:
        write_text(out / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        write_text(out / ".hydra" / "overrides.yaml", OmegaConf.to_yaml(_strings(overrides)))
        return work(cfg)
    except LiftedError:
        folder.remove_unfinished()
        raise
    finally:
        end_logging(handlers)
        folder.release()


def train(overrides: Sequence[str] = (), output_dir=None) -> dict:
    """``lifted train <overrides>``: trains, writes the run folder and returns its metrics (those of
    ``metrics.json``; ``metrics["run_dir"]`` is the folder)."""
    from .commands import train as command

    return _run("train", overrides, output_dir, command.train)


def resume(folder, changes: Sequence[str] = ()) -> dict:
    """``lifted train resume=<folder> <changes>``: continues a run from its checkpoint."""
    from .commands.train import resume as resume_run

    return resume_run(str(folder), _strings(changes))


def invert(overrides: Sequence[str] = (), output_dir=None) -> dict:
    """``lifted invert <overrides>`` (e.g. ``["checkpoint=<run folder>", "upto=layer1"]``): inverts,
    writes the run folder and returns its metrics."""
    from .commands import invert as command

    return _run("invert", overrides, output_dir, command.invert)


def report(folders: Sequence, out=None, baseline: Optional[str] = None, pivot: Optional[str] = None,
           best: Optional[str] = None, by: Optional[str] = None) -> tuple[Path, str]:
    """``lifted report <folders> [--out OUT] [--baseline KEY=VALUE] [--pivot ROW,COL] [--best KEY]
    [--by test|val]``: writes the report folder; returns it and the report's Markdown text (its tables).
    ``by="val"`` ranks by validation PSNR and makes ``best`` and ``pivot`` use it (choose settings on it)."""
    from .commands.report import make_report

    return make_report(_strings(folders), out, baseline, pivot, best, by)


def load_network(run_folder, device: str | torch.device = "cpu"):
    """The trained network of a ``lifted train`` run folder (or checkpoint file), rebuilt from its
    ``checkpoint.pt`` alone (loaded with ``weights_only=True``: tensors and plain data, never code),
    in evaluation mode. InputError (one line) for a file that is not such a checkpoint."""
    from .commands.invert import checkpoint_network

    model, _ = checkpoint_network(OmegaConf.create({"checkpoint": str(run_folder), "arch": None, "source": None}))
    return model.to(device).eval()


@dataclass
class Training:
    """The components of a training run, as ``lifted train`` builds them (``training(overrides)``):
    ``model`` (a UnifiedNet), ``scheme`` (the penalty terms), ``solver`` (how they are minimised) and
    ``degradation`` (the operator A and the noise of the task)."""

    cfg: DictConfig
    model: Any
    scheme: Any
    solver: Any
    degradation: Any
    generator: torch.Generator

    def step(self, x: torch.Tensor, y: Optional[torch.Tensor] = None, idx: Optional[torch.Tensor] = None) -> dict:
        """One step of the solver on the batch of clean images ``x`` (B, 1, side, side), from their
        degraded versions ``y`` (default: drawn by the task's degradation, like a training batch); ``idx``: the
        samples' indices in the training set (persistent warm starts). Returns the step's statistics
        (``loss``, and for the lifted schemes ``objective`` and ``gap``)."""
        if y is None:
            y = self.degradation.measure(x, self.generator)
        if idx is None:
            idx = torch.arange(x.shape[0], device=x.device)
        return self.solver.step(y, x, idx)


def training(overrides: Sequence[str] = (), device: str = "cpu", n_samples: int = 0) -> Training:
    """The network, scheme, solver and degradation of ``lifted train <overrides>`` (validated and
    built as the run builds them, weights seeded by ``seed``), ready for ``step``; ``n_samples``: the
    size of the training set whose auxiliary variables a persistent warm start keeps."""
    from .commands.train import build
    from .data import build_degradation

    cfg = compose("train", overrides, output_dir="(none)")
    if cfg.parallel.name != "none":
        raise ConfigError(f"parallel={cfg.parallel.name}: training() builds one process's components; use parallel=none")
    torch.manual_seed(cfg.seed)
    model, scheme, solver = build(cfg, torch.device(device))
    if cfg.solver.get("warm_start") == "persistent" and n_samples <= 0:
        raise ConfigError("solver.warm_start=persistent keeps every training sample's auxiliaries: give n_samples")
    solver.prepare(n_samples)
    scheme.begin_epoch(0)
    solver.begin_epoch(0)
    return Training(cfg, model, scheme, solver, build_degradation(cfg.task),
                    torch.Generator(device=device).manual_seed(cfg.seed + 1))


def lifted_step(x: torch.Tensor, overrides: Sequence[str] = (), y: Optional[torch.Tensor] = None) -> dict:
    """One step of ``lifted train <overrides>`` (default: lifted Bregman, ISGM) on the batch ``x``
    from freshly built components; returns the statistics. For several steps keep ``training()``."""
    return training(overrides).step(x, y)


__all__ = ["RUN_COMMANDS", "Training", "compose", "invert", "lifted_step", "load_network", "report", "resume", "train",
           "training"]
