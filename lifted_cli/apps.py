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

from .config import ConfigError, register_configs, validate_data, validate_train

register_configs()
log = logging.getLogger("lifted")


def fail(command: str, message: str, code: int = 2):
    print(f"lifted {command}: error: {message}", file=sys.stderr)
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
        fail("train", str(err))
    try:
        metrics = train(cfg)
    except (DataError, TrainingError) as err:
        if not cfg.resume:
            _remove_unfinished(out)
        fail("train", str(err), code=1)
    t, n = metrics["test"], metrics["no_learning"]
    print(
        f"lifted train: done in {out}: test PSNR {t['psnr']['mean']:.2f} dB, SSIM {t['ssim']['mean']:.4f} "
        f"(degraded input: {n['psnr']['mean']:.2f} dB, {n['ssim']['mean']:.4f})"
    )
    return t["psnr"]["mean"]


@hydra.main(version_base="1.3", config_path="configs", config_name="data")
def data_app(cfg: DictConfig) -> None:
    from .data import DataError, ensure_mnist, raw_folder, verify_mnist

    try:
        validate_data(cfg)
        source = ensure_mnist(cfg.data_root, tuple(cfg.data_sources))
    except (ConfigError, DataError) as err:
        fail("data", str(err), code=2 if isinstance(err, ConfigError) else 1)
    problems = verify_mnist(cfg.data_root) if cfg.verify else []
    if problems:
        fail("data", "; ".join(problems), code=1)
    print(f"lifted data: MNIST ready in {raw_folder(cfg.data_root)} (source: {source}"
          f"{', sizes and sha256 verified' if cfg.verify else ''})")
