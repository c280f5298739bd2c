"""registry.py: a component is a schema and a builder registered by name. This file registers a new
activation, a new layer penalty (a lifted scheme) and a new architecture of its own, without touching
lifted_cli/, and trains with them through the entry point of `lifted train`."""

import json
import math
from dataclasses import dataclass

import pytest
import torch
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from lifted_cli.errors import ConfigError
from lifted_cli.lifted import SCHEMES
from lifted_cli.lifted.penalties import LayerPenalty
from lifted_cli.lifted.schemes import BregmanSchemeConfig, LiftedScheme
from lifted_cli.nets import ACTIVATIONS, ARCHITECTURES, ProxActivation, UnifiedNet, make_activation
from lifted_cli.nets.blocks import DenseBlock
from lifted_cli.registry import Registry, Schema, check_positive


# ------------------------------------------------------------------------------- the registry
@dataclass
class ToyConfig(Schema):
    name: str = "toy"
    size: int = 3

    def validate(self):
        check_positive("size", self.size)


def test_register_validate_build():
    reg = Registry("toy")

    @reg.register("toy", ToyConfig, kind="example")
    def build(cfg, scale):
        return cfg.size * scale

    assert reg.names() == ["toy"] and "toy" in reg and reg.get("toy").info == {"kind": "example"}
    node = reg.validate(OmegaConf.create({"name": "toy", "size": 4}))
    assert reg.build(node, 10) == 40
    for bad, fragment in (({"name": "toy", "size": 0}, "toy.size=0: must be > 0"),
                          ({"name": "toy", "sise": 4}, "toy.sise=4: unknown key"),
                          ({"name": "toy", "size": "big"}, "toy.size"),
                          ({"name": "other"}, "toy.name=other: allowed: toy")):
        with pytest.raises(ConfigError) as err:
            reg.validate(OmegaConf.create(bad))
        assert fragment in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------- three components of this file
class ShiftedReLU(ProxActivation):
    """sigma(z) = max(z, s) = prox of the indicator of [s, inf): Phi*(z) = z max(z,s) - max(z,s)^2/2."""

    name = "shifted_relu"

    def __init__(self, shift: float = 0.0):
        self.shift = float(shift)
        self.l1_composable = self.shift <= 0

    def __call__(self, z):
        return torch.clamp(z, min=self.shift)

    def psi(self, u):
        return torch.where(u >= self.shift, torch.zeros_like(u), torch.full_like(u, math.inf))

    def phi_conj(self, z):
        c = self(z)
        return z * c - 0.5 * c * c

    def prox_phi(self, v, mu):
        return torch.clamp(v / (1 + mu), min=self.shift)

    def spec(self):
        return f"shifted_relu:{self.shift:g}"


class HalfBregman(LayerPenalty):
    """1/2 B_Psi: a Bregman penalty with its own weighting, written from the penalty interface alone."""

    name = "half_bregman"
    lip_a = 0.5
    majorizable = True

    def value(self, act, z, a):
        return 0.5 * act.bregman(z, a).sum(dim=-1)

    def energy_a(self, act, z, a):
        return 0.5 * (act.phi_conj(a) - z * a).sum(dim=-1)

    def grad_a(self, act, z, a):
        return 0.5 * (act(a) - z)

    def grad_z(self, act, z, a):
        return -0.5 * a

    def prox_z(self, act, v, mu):
        return act.prox_phi(v, 0.5 * mu)


@dataclass
class HalfBregmanConfig(BregmanSchemeConfig):
    name: str = "half_bregman"


def build_half_bregman(cfg, model, layout=None):
    return LiftedScheme(cfg, model, HalfBregman(), layout)


@dataclass
class TwoLayerConfig(Schema):
    name: str = "two_layer"
    width: int = 24
    activation: str = "shifted_relu:-0.1"

    def validate(self):
        check_positive("width", self.width)


def build_two_layer(cfg, side):
    return UnifiedNet([DenseBlock(side * side, cfg.width, make_activation(cfg.activation)),
                       DenseBlock(cfg.width, side * side, make_activation("identity"))])


@pytest.fixture(scope="module", autouse=True)
def components_of_this_file():
    """Registered for the tests of this file only, then taken out again (registries and ConfigStore)."""
    ACTIVATIONS.register("shifted_relu", params=("shift",))(ShiftedReLU)
    SCHEMES.register("half_bregman", HalfBregmanConfig, form="lifted")(build_half_bregman)
    ARCHITECTURES.register("two_layer", TwoLayerConfig)(build_two_layer)
    cs = ConfigStore.instance()
    cs.store(group="arch", name="two_layer", node=TwoLayerConfig)
    cs.store(group="scheme", name="half_bregman",
             node={"defaults": [{"/solver@_global_.solver": "isgm"}, "_self_"],
                   **OmegaConf.to_container(OmegaConf.structured(HalfBregmanConfig))})
    yield
    for registry, name in ((ACTIVATIONS, "shifted_relu"), (SCHEMES, "half_bregman"), (ARCHITECTURES, "two_layer")):
        registry.unregister(name)
    cs.repo["arch"].pop("two_layer.yaml", None)
    cs.repo["scheme"].pop("half_bregman.yaml", None)


@pytest.mark.slow  # whole runs
def test_components_defined_here_train_through_the_entry_point_of_lifted_train(tmp_path, fake_mnist, monkeypatch):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    common = [f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=2", "batch_size=16", "num_samples=2",
              "progress=false", "arch=two_layer"]
    assert main(["train", "scheme=half_bregman", *common, "hydra.run.dir=new"]) == 0
    m = json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert m["status"] == "finished" and m["hyperparameters"]["scheme"]["name"] == "half_bregman"
    assert m["hyperparameters"]["solver"]["name"] == "isgm" and math.isfinite(m["test"]["psnr"]["mean"])
    assert m["test"]["psnr"]["mean"] > m["no_learning"]["psnr"]["mean"] - 3
    # the same components through the other entry points: a gradient scheme, and a refused value
    assert main(["train", "scheme=backprop", *common, "hydra.run.dir=bp"]) == 0
    assert main(["train", "scheme=half_bregman", *common, "arch.activation=shifted_relu:x", "hydra.run.dir=bad"]) == 2
    assert not (tmp_path / "bad").exists()


def test_the_new_activation_is_a_proximal_map_with_its_bregman_penalty():
    act = make_activation("shifted_relu:-0.2")
    z = torch.linspace(-2, 2, 41, dtype=torch.float64)
    assert torch.allclose(act.bregman(act(z), z), torch.zeros_like(z), atol=1e-12)
    assert "shifted_relu[:shift]" in __import__("lifted_cli.nets.activations", fromlist=["spec_help"]).spec_help()
