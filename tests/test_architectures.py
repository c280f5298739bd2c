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
    ({"name": "proxnet", "hidden": 0}, "arch.hidden=0"),
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
    model = ARCHITECTURES.build(node, 28)
    assert [b.out_dim for b in model.blocks] == [7, 7, 7, 7, 7, 784] and model.blocks[0].in_dim == 784
    assert [b.act.name for b in model.blocks] == ["relu"] * 5 + ["identity"]


def _build(cfg: dict, seed: int = 0):
    from lifted_cli.nets import build_network

    torch.manual_seed(seed)
    return build_network(ARCHITECTURES.validate(OmegaConf.create(cfg)))


@pytest.mark.parametrize("init", ["default", "kaiming", "orthogonal", "xavier"])
@pytest.mark.parametrize("variant", list(SMALL_ARCHS))
def test_every_architecture_takes_every_init(variant, init):
    """``arch.init`` redraws every architecture's weights (biases 0) and keeps its constraints:
    proxnet's orthonormal columns, the unrolled operators' unit norm; ``default`` is the build's own draw."""
    model = _build({**SMALL_ARCHS[variant], "init": init})
    plain = _build(SMALL_ARCHS[variant])
    same = all(torch.equal(p, q) for p, q in zip(model.parameters(), plain.parameters()))
    assert same == (init == "default")
    with torch.no_grad():
        assert torch.isfinite(model(torch.rand(3, 1, 28, 28))).all()
    for block in model.blocks:
        if init != "default":
            assert all(float(q.abs().max()) == 0 for q in block.parameters() if q.dim() == 1)
        if hasattr(block, "op"):
            v = torch.randn(1, 784)
            for _ in range(100):
                v = block.op.adjoint(block.op(v))
                v = v / v.norm()
            assert float(block.op(v).norm()) == pytest.approx(1.0, rel=1e-2)  # to what 50 power iterations give
        if type(block).__name__ == "ProxBlock":
            w = block.weight.detach()
            assert torch.allclose(w.T @ w, torch.eye(w.shape[1]), atol=1e-4)


def test_kaiming_keeps_the_second_moment_of_a_deep_relu_mlp():
    """He initialisation with the activation's gain: the output of a 16-layer relu MLP keeps the
    size of its input, where the default draw shrinks it by orders of magnitude."""
    y = torch.rand(256, 1, 28, 28)
    size = {}
    for init in ("default", "kaiming"):
        model = _build({"name": "mlp", "depth": 16, "width": 256, "init": init})
        with torch.no_grad():
            size[init] = float(model(y).pow(2).mean() / y.pow(2).mean())
        w = model.blocks[1].linear.weight
        if init == "kaiming":
            assert float(w.std()) == pytest.approx((2 / 256) ** 0.5, rel=0.03)
    assert 0.2 < size["kaiming"] < 5 and size["default"] < 1e-2


def test_a_bad_init_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="arch.init=he: allowed: default, kaiming, orthogonal, xavier"):
        ARCHITECTURES.validate(OmegaConf.create({"name": "resnet", "init": "he"}))


def test_the_image_side_comes_from_the_data():
    """Every architecture builds for the side it is given (natural patches: any side); a proxnet's
    orthonormal columns need at least the image's pixels."""
    from lifted_cli.nets import build_network

    for name, extra in (("mlp", {}), ("resnet", {}), ("proxnet", {"hidden": 1024}), ("unrolled_pnn", {"depth": 2}),
                        ("unrolled_pnn", {"depth": 2, "operator": "dense", "dual_dim": 300}), ("conv_autoencoder", {})):
        for side in (16, 32):
            net = build_network(ARCHITECTURES.validate(OmegaConf.create({"name": name, **extra})), side)
            with torch.no_grad():
                assert net(torch.rand(2, 1, side, side)).shape == (2, 1, side, side), (name, side)
    with pytest.raises(ValueError, match=r"arch.hidden=500: W\^T W = I needs hidden >= 784"):
        build_network(ARCHITECTURES.validate(OmegaConf.create({"name": "proxnet", "hidden": 500})), 28)
