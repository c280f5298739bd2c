"""Shared fixtures: tiny synthetic MNIST in torchvision's layout (no network), config composition."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module

from lifted_cli.config import register_configs

os.environ.setdefault("HYDRA_FULL_ERROR", "0")


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 file: magic 0x00000803, count, rows, cols (big-endian), then uint8 pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def make_fake_mnist(root: Path, n_train: int = 64, n_test: int = 16, seed: int = 0) -> Path:
    """Digit-like images (a few bright strokes on black) in ``root/MNIST/raw``."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.zeros((n, 28, 28), dtype=np.uint8)
        for i in range(n):
            r, c = rng.integers(6, 20, size=2)
            imgs[i, r - 4 : r + 4, c - 1 : c + 2] = 255
            imgs[i, r - 1 : r + 1, c - 4 : c + 4] = rng.integers(100, 255)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", imgs)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, size=n))
    return root


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory) -> Path:
    return make_fake_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def compose_train():
    """compose_train(overrides, output_dir) -> a composed `train` config outside Hydra's runtime."""
    register_configs()

    def _compose(overrides=(), output_dir=None):
        with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides))
        if output_dir is not None:
            cfg.output_dir = str(output_dir)
        return cfg

    return _compose
