"""``lifted data``: fetch MNIST into ``data_root`` (sources tried in order) and verify every file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from ..data import DATA_SOURCES, ensure_mnist, raw_folder, verify_mnist
from ..errors import DataError
from ..registry import Schema, typed
from ..runs import check_data_sources
from . import run_task


@dataclass
class DataConfig(Schema):
    data_root: Optional[str] = None
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    verify: bool = True

    def validate(self):
        check_data_sources(self.data_sources)


ConfigStore.instance().store(name="data_schema", node=DataConfig)


def validate(cfg: DictConfig) -> None:
    DataConfig.validate(typed(cfg, DataConfig))


prevalidate = validate


def fetch(cfg: DictConfig) -> str:
    """Fetch and verify; returns the source that provided the files."""
    source = ensure_mnist(cfg.data_root, tuple(cfg.data_sources))
    problems = verify_mnist(cfg.data_root) if cfg.verify else []
    if problems:
        raise DataError("; ".join(problems))
    return source


@hydra.main(version_base="1.3", config_path="pkg://lifted_cli.configs", config_name="data")
def app(cfg: DictConfig) -> None:
    source = run_task(cfg, validate, fetch)
    print(f"lifted data: MNIST ready in {raw_folder(cfg.data_root)} (source: {source}"
          f"{', sizes and sha256 verified' if cfg.verify else ''})")
