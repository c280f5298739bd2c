"""``lifted data``: fetch an image source's files into ``data_root`` (sources tried in order) and verify them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from ..data import DATA_SOURCES, SOURCES, build_source
from ..errors import DataError
from ..registry import Schema, typed
from ..runs import check_data_sources
from . import run_task


@dataclass
class DataConfig(Schema):
    source: Any = MISSING
    data_root: Optional[str] = None
    data_sources: List[str] = field(default_factory=lambda: list(DATA_SOURCES))
    verify: bool = True

    def validate(self):
        check_data_sources(self.data_sources)


ConfigStore.instance().store(name="data_schema", node=DataConfig)


def validate(cfg: DictConfig) -> None:
    DataConfig.validate(typed(cfg, DataConfig))
    SOURCES.validate(cfg.source)


prevalidate = validate


def fetch(cfg: DictConfig) -> str:
    """Fetch and verify; returns the provider of the files."""
    source = build_source(cfg.source)
    provider = source.ensure(cfg.data_root, tuple(cfg.data_sources))
    problems = source.verify(cfg.data_root) if cfg.verify else []
    if problems:
        raise DataError("; ".join(problems))
    return provider


@hydra.main(version_base="1.3", config_path="pkg://lifted_cli.configs", config_name="data")
def app(cfg: DictConfig) -> None:
    provider = run_task(cfg, validate, fetch)
    source = build_source(cfg.source)
    print(f"lifted data: {source.title} ready in {source.where(cfg.data_root)} (source: {provider}"
          f"{', ' + source.checks(cfg.data_root) if cfg.verify else ''})")
