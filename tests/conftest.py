"""Shared fixtures and tables: tiny synthetic MNIST (no network), config composition, float64, tiny
instances of every registered architecture (as networks and as ``lifted train`` overrides)."""

from __future__ import annotations

import os

# threads=auto measures the machine's idle cores; the tests fix the threads instead (as OMP_NUM_THREADS does
# for every run), so that two runs of one test never differ in their thread count
os.environ.setdefault("OMP_NUM_THREADS", "2")

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import lifted_cli.commands.invert  # noqa: F401  (stores the invert schema in Hydra's ConfigStore)
import lifted_cli.commands.train  # noqa: F401  (stores the train schema)
from lifted_cli.nets import ARCHITECTURES

os.environ.setdefault("HYDRA_FULL_ERROR", "0")
REPO = Path(__file__).resolve().parent.parent
LIFTED = [sys.executable, "-m", "lifted_cli"]

#: tiny networks on 784-pixel images, one per architecture variant (built through the registry)
SMALL_ARCHS = {
    "mlp": {"name": "mlp", "hidden": [12, 10], "layer_activations": ["relu", "soft_threshold:0.1"]},
    "resnet": {"name": "resnet", "width": 10, "depth": 2},
    "resnet_tied": {"name": "resnet", "width": 10, "depth": 2, "tied": True},
    "proxnet": {"name": "proxnet", "hidden": 800, "depth": 2},
    "unrolled_pnn": {"name": "unrolled_pnn", "depth": 3, "operator": "conv", "channels": 2, "kernel": 3},
    "unrolled_dense": {"name": "unrolled_pnn", "depth": 2, "operator": "dense", "dual_dim": 20},
    "conv_ae": {"name": "conv_autoencoder", "channels": [2, 3], "kernel": 4, "code": 10},
    "sequential": {"name": "sequential", "widths": [784, 9, 784], "activations": ["relu", "identity"]},
}

#: ``lifted train`` overrides for a tiny instance of every architecture
TRAIN_ARCHS = {
    "mlp": ["arch=mlp", "arch.hidden=[16]"],
    "resnet": ["arch=resnet", "arch.width=16", "arch.depth=1"],
    "proxnet": ["arch=proxnet", "arch.hidden=800", "arch.depth=1"],
    "unrolled_pnn": ["arch=unrolled_pnn", "arch.depth=2", "arch.channels=2"],
    "conv_autoencoder": ["arch=conv_autoencoder", "arch.channels=[4,8]", "arch.code=16"],
}

#: the pairs whose activations a scheme does not cover (Fenchel: relu and identity only)
INVALID = {("fenchel", "proxnet"), ("fenchel", "unrolled_pnn"), ("fenchel", "unrolled_dense")}


def net(widths=(6, 5, 4, 3), acts=("relu", "soft_threshold:0.1", "identity"), seed=0):
    """A tiny MLP of the given widths and activations (weights from ``seed``)."""
    from lifted_cli.nets.architectures import MLP

    torch.manual_seed(seed)
    return MLP(list(widths), list(acts))


def batch(s=10, n_in=6, n_out=3, seed=1):
    """Inputs (normal) and targets (uniform in [0, 1]) of ``s`` samples, as rows."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(s, n_in, generator=g), torch.rand(s, n_out, generator=g)


def small_net(variant: str, seed: int = 0, act: str | None = None):
    """A tiny network of ``SMALL_ARCHS``; ``act`` replaces its hidden activations."""
    cfg = dict(SMALL_ARCHS[variant])
    if act is not None:
        if "layer_activations" in cfg:
            cfg["layer_activations"] = [act] * len(cfg["hidden"])
        elif "activations" in cfg:
            cfg["activations"] = [act, "identity"]
        elif cfg["name"] != "unrolled_pnn":
            cfg["activation"] = act
    torch.manual_seed(seed)
    node = ARCHITECTURES.validate(OmegaConf.create(cfg))
    return ARCHITECTURES.build(node, 28)


def images(s: int = 6, seed: int = 1):
    """(degraded, clean) flattened 784-pixel batches."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(s, 784, generator=g)
    return (x + 0.3 * torch.randn(s, 784, generator=g)), x


def select(problem, l: int):
    """(stack, ks): the stack of a lifted problem that holds layer ``l``, and the selection of ``l`` alone."""
    stack = next(s for s in problem.stacks if s.first <= l <= s.last)
    return stack, slice(l - stack.first, l - stack.first + 1)


def assert_same_run(a: Path, b: Path) -> None:
    """The runs in folders ``a`` and ``b`` ended alike, up to the order of floating-point sums: weights
    to 1e-4 relative / 1e-5 absolute, the last epoch's statistics to 1e-4, test PSNR to 1e-4 dB."""
    import json

    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (a, b))
    wa, wb = (torch.load(f / "checkpoint.pt", weights_only=True)["model"] for f in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=f"weights {k} differ")
    for k, v in ma["train"].items():
        assert mb["train"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert mb["test"]["psnr"]["mean"] == pytest.approx(ma["test"]["psnr"]["mean"], abs=1e-4)


def run_lifted(args, cwd, check=True, timeout=300):
    """``lifted <args>`` in a subprocess (the console script as a user runs it)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run([*LIFTED, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 file: magic 0x00000803, count, rows, cols (big-endian), then uint8 pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 0x803, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    path.write_bytes(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


def make_fake_mnist(root: Path, n_train: int = 64, n_test: int = 16, seed: int = 0, folder: str = "MNIST") -> Path:
    """Digit-like images (a few bright strokes on black) in ``root/<folder>/raw`` (torchvision's layout:
    MNIST, FashionMNIST, KMNIST), in the real IDX format."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
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
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _composer(config_name: str):
    def _compose(overrides=(), output_dir=None):
        with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=list(overrides))
        if output_dir is not None:
            cfg.output_dir = str(output_dir)
        return cfg

    return _compose


@pytest.fixture
def compose_train():
    """compose_train(overrides, output_dir) -> a composed `train` config outside Hydra's runtime."""
    return _composer("train")


@pytest.fixture
def compose_invert():
    return _composer("invert")
