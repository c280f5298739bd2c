"""The Hydra applications behind the subcommands (one ``@hydra.main`` each, own primary config).

Each app is a thin wrapper: it validates the composed config, calls a plain function and turns the
project's expected errors into one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from .config import ConfigError, register_configs, validate_data, validate_invert, validate_train

register_configs()
log = logging.getLogger("lifted")


FAILURES: list[int] = []  # exit codes of the failed jobs of this process (multirun)
REPORTED: set[frozenset] = set()  # sweep jobs already reported invalid by `lifted` itself (job_key)


def job_key(overrides) -> frozenset:
    """A job's overrides as Hydra re-serialises them (hydra.* dropped, values case-folded)."""
    out = set()
    for o in overrides:
        key, _, value = str(o).partition("=")
        if not key.lstrip("+~").startswith("hydra"):
            out.add((key, value.strip("'\"").lower()))
    return frozenset(out)


def _already_reported() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return _multirun() and job_key(HydraConfig.get().overrides.task) in REPORTED


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def fail(command: str, message: str, code: int = 2):
    """One line on stderr; a single run exits with ``code``, a multirun job returns so that the
    other jobs of the sweep still run (``lifted`` exits non-zero at the end)."""
    print(f"lifted {command}: error: {message}", file=sys.stderr)
    FAILURES.append(code)
    if _multirun():
        return None
    sys.exit(code)


def _remove_unfinished(out: Path) -> None:
    """Remove a run folder holding only what Hydra wrote before the run started (config, log)."""
    if out.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def train_app(cfg: DictConfig) -> float:
    from .data import DataError
    from .training import TrainingError, train

    out = Path(cfg.output_dir)
    try:
        validate_train(cfg)
    except ConfigError as err:
        if not cfg.get("resume"):
            _remove_unfinished(out)
        if _already_reported():  # named before the sweep started
            FAILURES.append(2)
            return None
        return fail("train", str(err))
    try:
        metrics = train(cfg)
    except (DataError, TrainingError) as err:
        if not cfg.resume:
            _remove_unfinished(out)
        return fail("train", str(err), code=1)
    t, n = metrics["test"], metrics["no_learning"]
    print(
        f"lifted train: done in {out}: test PSNR {t['psnr']['mean']:.2f} dB, SSIM {t['ssim']['mean']:.4f} "
        f"(degraded input: {n['psnr']['mean']:.2f} dB, {n['ssim']['mean']:.4f})"
    )
    return t["psnr"]["mean"]


@hydra.main(version_base="1.3", config_path="configs", config_name="invert")
def invert_app(cfg: DictConfig) -> float | None:
    from .data import DataError
    from .invert import InversionError, invert
    from .training import TrainingError

    out = Path(cfg.output_dir)
    try:
        validate_invert(cfg)
        metrics = invert(cfg)
    except ConfigError as err:
        _remove_unfinished(out)
        if _already_reported():
            FAILURES.append(2)
            return None
        return fail("invert", str(err))
    except InversionError as err:
        _remove_unfinished(out)
        return fail("invert", str(err))
    except (DataError, TrainingError) as err:
        _remove_unfinished(out)
        return fail("invert", str(err), code=1)
    rec = metrics.get("recovered")
    quality = f"recovered PSNR {rec['psnr']['mean']:.2f} dB, SSIM {rec['ssim']['mean']:.4f}, " if rec else ""
    print(f"lifted invert: done in {out}: {quality}relative residual {metrics['residual']:.4g}, "
          f"{metrics['seconds']:.1f} s")
    return rec["psnr"]["mean"] if rec else None


@hydra.main(version_base="1.3", config_path="configs", config_name="data")
def data_app(cfg: DictConfig) -> None:
    from .data import DataError, ensure_mnist, raw_folder, verify_mnist

    try:
        validate_data(cfg)
        source = ensure_mnist(cfg.data_root, tuple(cfg.data_sources))
    except (ConfigError, DataError) as err:
        return fail("data", str(err), code=2 if isinstance(err, ConfigError) else 1)
    problems = verify_mnist(cfg.data_root) if cfg.verify else []
    if problems:
        return fail("data", "; ".join(problems), code=1)
    print(f"lifted data: MNIST ready in {raw_folder(cfg.data_root)} (source: {source}"
          f"{', sizes and sha256 verified' if cfg.verify else ''})")
