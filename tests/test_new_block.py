"""A new block is written once: a gated dense block, a_l = g * (W u_{l-1} + b) with a learnable gate g,
is defined here with only its maps (``pre``, ``pre_linear``, ``pre_adjoint``) and an architecture of
such blocks is registered here; nothing else in lifted knows about it. It trains as blocks alone and
stacked (the stack evaluates its maps by vmap), data-parallel over 2 gloo processes and layer-parallel
over 2, with the iterates that must be equal equal: stacked = alone (Jacobi), data-parallel = one
process, layer-parallel = one-process Jacobi."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from lifted_cli.nets import ARCHITECTURES
from lifted_cli.nets.activations import make_activation
from lifted_cli.nets.blocks import Block, UnifiedNet
from lifted_cli.registry import Schema, check_positive, option
from tests.conftest import assert_same_run


class GatedBlock(Block):
    """u_l = sigma(g * (W u_{l-1} + b)): its maps, and nothing else."""

    def __init__(self, n_in: int, n_out: int, act):
        super().__init__(act)
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.gate = nn.Parameter(torch.ones(n_out))
        self.in_dim, self.out_dim, self.z_dim = n_in, n_out, n_out

    def pre(self, u, y):
        return self.gate * (u @ self.weight.t() + self.bias)

    def pre_linear(self, v):
        return self.gate * (v @ self.weight.t())

    def pre_adjoint(self, r):
        return (self.gate * r) @ self.weight


@dataclass
class GatedConfig(Schema):
    name: str = option("gated", "the architecture")
    depth: int = option(3, "hidden gated layers of equal width")
    width: int = option(16, "their width")

    def validate(self):
        check_positive("depth", self.depth)
        check_positive("width", self.width)


def build_gated(cfg, side: int) -> UnifiedNet:
    widths = [side * side] + [cfg.width] * cfg.depth + [side * side]
    acts = ["relu"] * cfg.depth + ["identity"]
    return UnifiedNet([GatedBlock(a, b, make_activation(s)) for a, b, s in zip(widths[:-1], widths[1:], acts)])


def register() -> None:
    """The architecture ``gated`` (its schema in Hydra's ConfigStore as arch/base_gated)."""
    if "gated" not in ARCHITECTURES:
        ARCHITECTURES.register("gated", GatedConfig)(build_gated)


def train_gated(cfg):
    """``lifted train``'s ``train``, as each rank of a parallel run runs it: with the architecture
    registered in that process too."""
    from lifted_cli.commands.train import train

    register()
    return train(cfg)


@pytest.fixture(scope="module")
def gated_runs(tmp_path_factory, fake_mnist):
    """runs(*overrides) -> the folder of a tiny run of the gated network, made once per module."""
    from hydra import compose, initialize_config_module

    from lifted_cli.commands.train import validate
    from lifted_cli import parallel

    register()
    root = tmp_path_factory.mktemp("gated")
    cache = {}

    def run(*overrides):
        if overrides not in cache:
            folder = root / f"run{len(cache)}"
            with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
                cfg = compose(config_name="train", overrides=[
                    "arch=base_gated", "~tuned", f"data_root={fake_mnist}", "train_size=40", "test_size=8", "batch_size=16",
                    "epochs=2", "num_samples=0", "progress=false", "device=cpu", "solver.layer_order=jacobi", *overrides])
            folder.mkdir()  # as Hydra makes it
            cfg.output_dir = str(folder)
            validate(cfg)
            if cfg.parallel.name == "none":
                train_gated(cfg)
            else:
                torch.set_num_threads(1)
                parallel.launch(cfg, train_gated)
            cache[overrides] = folder
        return cache[overrides]

    yield run
    ARCHITECTURES.unregister("gated")


def metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_a_block_with_only_its_maps_is_a_lifted_block(gated_runs):
    folder = gated_runs("solver.stacked=false")
    metrics_, weights = metrics(folder), torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
    assert metrics_["stacks"] == [] and {k.rsplit(".", 1)[1] for k in weights} == {"weight", "bias", "gate"}
    assert math.isfinite(metrics_["train"]["objective"]) and metrics_["test"]["psnr"]["mean"] > 0


@pytest.mark.slow
def test_stacked_equals_alone(gated_runs):
    alone, stacked = gated_runs("solver.stacked=false"), gated_runs("solver.stacked=true")
    assert metrics(stacked)["stacks"] == [[2, 3]]  # the hidden-to-hidden gated blocks; the output layer stays alone
    assert_same_run(alone, stacked)


@pytest.mark.slow
def test_data_parallel_equals_one_process(gated_runs):
    one, two = gated_runs("solver.warm_start=persistent"), gated_runs("solver.warm_start=persistent", "parallel=data",
                                                                     "parallel.nproc=2")
    assert metrics(two)["parallel"]["world_size"] == 2
    assert_same_run(one, two)


@pytest.mark.slow
def test_layer_parallel_equals_one_process_jacobi(gated_runs):
    one, two = gated_runs("solver.stacked=true"), gated_runs("parallel=layer", "parallel.nproc=2")
    assert metrics(two)["parallel"]["grid"] == [1, 2]  # each rank's layers grouped where its range allows (here: none)
    assert_same_run(one, two)


def test_the_gated_schema_composes_like_any_option(gated_runs, compose_train):
    cfg = compose_train(["arch=base_gated", "arch.width=8"])
    assert OmegaConf.to_container(cfg.arch) == {"name": "gated", "depth": 3, "width": 8}
