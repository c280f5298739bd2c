"""nets/architectures.py: every registered architecture builds from its config, maps images to
images, and refuses bad values with one line."""

import pytest
import torch
from omegaconf import OmegaConf

from lifted_cli.errors import ConfigError
from lifted_cli.nets import ARCHITECTURES, UnifiedNet
from tests.conftest import SMALL_ARCHS, small_net


def test_every_registered_architecture_has_a_tiny_instance_in_the_tests():
    assert {cfg["name"] for cfg in SMALL_ARCHS.values()} == set(ARCHITECTURES.names())


@pytest.mark.parametrize("variant", list(SMALL_ARCHS))
def test_tiny_networks_map_images_to_images(variant):
    model = small_net(variant)
    assert isinstance(model, UnifiedNet)
    with torch.no_grad():
        out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 1, 28, 28) and torch.isfinite(out).all()


def test_the_same_seed_builds_the_same_weights():
    a, b = small_net("resnet", seed=3), small_net("resnet", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("cfg,fragment", [
    ({"name": "mlp", "hidden": []}, "arch.hidden"),
    ({"name": "mlp", "activation": "swish"}, "swish"),
    ({"name": "mlp", "hidden": [4, 4], "layer_activations": ["relu"]}, "arch.layer_activations"),
    ({"name": "resnet", "depth": 0}, "arch.depth=0"),
    ({"name": "proxnet", "hidden": 100}, "arch.hidden=100"),
    ({"name": "unrolled_pnn", "operator": "fft"}, "arch.operator=fft"),
    ({"name": "unrolled_pnn", "kernel": 4}, "arch.kernel=4"),
    ({"name": "conv_autoencoder", "kernel": 3}, "arch.kernel=3"),
    ({"name": "conv_autoencoder", "channels": [4, 4, 4]}, "arch.channels"),
    ({"name": "conv_autoencoder", "code": 0}, "arch.code=0"),
    ({"name": "sequential", "widths": [784, 9, 784], "activations": ["relu"]}, "arch.activations"),
    ({"name": "mlp", "depth": 0}, "arch.depth=0"),
    ({"name": "mlp", "width": 3, "depth": 2, "layer_activations": ["relu"]}, "arch.layer_activations"),
    ({"name": "transformer"}, "arch.name=transformer"),
])
def test_bad_values_are_refused_with_one_line(cfg, fragment):
    with pytest.raises(ConfigError) as err:
        ARCHITECTURES.validate(OmegaConf.create(cfg))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_mlp_depth_and_width_give_equal_hidden_layers():
    node = ARCHITECTURES.validate(OmegaConf.create({"name": "mlp", "depth": 5, "width": 7, "hidden": [3]}))
    model = ARCHITECTURES.build(node)
    assert [b.out_dim for b in model.blocks] == [7, 7, 7, 7, 7, 784] and model.blocks[0].in_dim == 784
    assert [b.act.name for b in model.blocks] == ["relu"] * 5 + ["identity"]
