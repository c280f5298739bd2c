"""commands/invert.py: ``lifted invert`` end to end: a trained encoder, a plain state_dict with an
outputs file, bad inputs (one line, exit 2, no folder), the layer and network checks."""

import json
import math

import pytest
import torch

from lifted_cli.commands.invert import layer_index, sub_network, validate
from lifted_cli.errors import ConfigError
from lifted_cli.nets.architectures import MLP
from tests.conftest import run_lifted


def lifted(*args, cwd):
    return run_lifted(list(args), cwd, check=False)


@pytest.fixture(scope="module")
def trained_autoencoder(tmp_path_factory, fake_mnist):
    work = tmp_path_factory.mktemp("ae")
    run = work / "run"
    r = lifted("train", f"data_root={fake_mnist}", "train_size=64", "test_size=8", "epochs=1", "batch_size=16",
               "arch.hidden=[32,16,32]", "progress=false", "num_samples=0", f"hydra.run.dir={run}", cwd=work)
    assert r.returncode == 0, r.stderr
    return run


@pytest.mark.slow
@pytest.mark.parametrize("method,reg", [("lifted_bregman", "tv"), ("backprop", "tv"), ("lifted_bregman", "l1"),
                                        ("lifted_bregman", "box")])
def test_invert_encoder_of_a_trained_autoencoder(tmp_path, fake_mnist, trained_autoencoder, method, reg):
    out = tmp_path / "inv"
    r = lifted("invert", f"checkpoint={trained_autoencoder}", "upto=layer2", f"method={method}", f"regularizer={reg}",
               "alpha=0.01", "delta=0.05", "num_images=4", "iterations=30", f"data_root={fake_mnist}", "progress=false",
               f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "finished" and m["layers_inverted"] == 2 and m["output_dim"] == 16
    assert m["recovered"]["psnr"]["count"] == 4 and math.isfinite(m["residual"])
    for name in ("history.csv", "samples.png", "recovered.pt", ".hydra/config.yaml"):
        assert (out / name).is_file()
    assert m["alpha"] == 0.01 and m["delta"] == 0.05 and m["iterations"] == 30


@pytest.mark.slow
def test_images_val_inverts_the_validation_images_the_run_held_out(tmp_path, fake_mnist):
    from types import SimpleNamespace

    from lifted_cli.commands.invert import checkpoint_network, make_data, usable_network
    from lifted_cli.data import load_train_val

    run = tmp_path / "run"
    r = lifted("train", f"data_root={fake_mnist}", "val_size=8", "val_seed=5", "test_size=8", "epochs=1", "batch_size=16",
               "arch.hidden=[32,16,32]", "progress=false", "num_samples=0", f"hydra.run.dir={run}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = SimpleNamespace(checkpoint=str(run), arch=None, source=None, upto="layer2", outputs=None, images="val", num_images=4,
                          data_root=str(fake_mnist), data_sources=["local"], seed=0, noise="relative", delta=0.0)
    model, source = checkpoint_network(cfg)
    net, _, side = usable_network(model, cfg)
    truth, _, _ = make_data(cfg, net, side, torch.device("cpu"), source)
    held = load_train_val({"name": "mnist"}, fake_mnist, None, 8, torch.Generator().manual_seed(5))[1][:4]
    assert torch.equal(truth, held.reshape(4, -1))  # the run's own held-out images, in their order
    test = make_data(SimpleNamespace(**{**vars(cfg), "images": "test"}), net, side, torch.device("cpu"), source)[0]
    assert not torch.equal(truth, test)
    out = tmp_path / "inv"
    r = lifted("invert", f"checkpoint={run}", "upto=layer2", "images=val", "num_images=4", "iterations=5",
               f"data_root={fake_mnist}", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "metrics.json").read_text())["images_from"] == "val"
    r = lifted("invert", f"checkpoint={run}", "upto=layer2", "images=val", "num_images=9", f"data_root={fake_mnist}",
               "progress=false", "hydra.run.dir=refused", cwd=tmp_path)
    assert r.returncode == 2 and "num_images=9" in r.stderr and not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_invert_plain_state_dict_and_outputs_file(tmp_path):
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6), torch.nn.ReLU())
    torch.save(seq.state_dict(), tmp_path / "net.pt")
    truth = torch.rand(3, 16)
    with torch.no_grad():
        torch.save(seq(truth), tmp_path / "f.pt")
    torch.save(truth, tmp_path / "u.pt")
    out = tmp_path / "inv"
    r = lifted("invert", f"checkpoint={tmp_path / 'net.pt'}", "arch=sequential", "arch.widths=[16,8,6]",
               "arch.activations=[relu,relu]", f"outputs={tmp_path / 'f.pt'}", f"truth={tmp_path / 'u.pt'}",
               "regularizer=box", "iterations=200", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["network"]["network"] == "state_dict" and m["source"] is None and m["images"] == 3 and m["residual"] < 0.5
    u = torch.load(out / "recovered.pt", weights_only=True)
    rel = ((u - truth).norm(dim=1) / truth.norm(dim=1)).mean()
    assert m["recovered"]["rel_error"]["count"] == 3
    assert m["recovered"]["rel_error"]["mean"] == pytest.approx(float(rel), rel=1e-5)


@pytest.mark.slow
def test_invert_bad_inputs_fail_with_one_line_and_no_folder(tmp_path, trained_autoencoder):
    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU())
    torch.save(seq.state_dict(), tmp_path / "net.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    data = (trained_autoencoder / "checkpoint.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    cases = {
        "missing": ([f"checkpoint={tmp_path / 'nope'}"], "does not exist"),
        "corrupt": ([f"checkpoint={tmp_path / 'corrupt.pt'}"], "cannot be read"),
        "truncated": ([f"checkpoint={tmp_path / 'truncated.pt'}"], "cannot be read"),
        "mismatch": ([f"checkpoint={tmp_path / 'net.pt'}", "arch=sequential", "arch.widths=[16,9]",
                      "arch.activations=[relu]"], "does not match"),
        "activation": ([f"checkpoint={tmp_path / 'net.pt'}", "arch=sequential", "arch.widths=[16,8]",
                        "arch.activations=[gelu]"], "gelu"),
        "layer": ([f"checkpoint={trained_autoencoder}", "upto=layer9"], "upto=layer9"),
        "undescribed": ([f"checkpoint={tmp_path / 'net.pt'}"], "arch=sequential"),
        "momentum": ([f"checkpoint={trained_autoencoder}", "momentum=1"], "momentum=1"),
        "alpha": ([f"checkpoint={trained_autoencoder}", "alpha=nan"], "alpha=nan"),
        "method": ([f"checkpoint={trained_autoencoder}", "method=newton"], "method=newton"),
        "regularizer": ([f"checkpoint={trained_autoencoder}", "regularizer=tv2"], "regularizer=tv2"),
        "tv_without_weight": ([f"checkpoint={trained_autoencoder}", "alpha=0"], "alpha=0"),
        "images": ([f"checkpoint={trained_autoencoder}", "images=train"], "images=train"),
        "val_without_split": ([f"checkpoint={trained_autoencoder}", "images=val"], "trained without a validation split"),
        "val_perceptron": (["network=random_perceptron", "images=val"], "images=val"),
    }
    for name, (args, needle) in cases.items():
        r = lifted("invert", *args, "progress=false", "hydra.run.dir=out", cwd=tmp_path)
        assert r.returncode == 2, (name, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("lifted invert: error:") and needle in lines[0], (name, lines)
        assert not (tmp_path / "out").exists(), name


def test_layer_index_and_sub_network():
    model = MLP([4, 3, 2, 1], ["relu", "relu", "identity"])
    assert layer_index(None, 3) == 3 and layer_index("layer2", 3) == 2 and layer_index("1", 3) == 1
    assert sub_network(model, 2).depth == 2 and sub_network(model, 3) is model
    for bad in ("layer0", "layer4", "two"):
        with pytest.raises(ConfigError, match=f"upto={bad}"):
            layer_index(bad, 3)


def test_every_experiment_of_invert_validates(compose_invert):
    from lifted_cli.cli import experiments

    names = [n for n, c in experiments().items() if c == "invert"]
    assert names
    for name in names:
        validate(compose_invert([f"experiment={name}", "checkpoint=x"], output_dir="/tmp/x"))



@pytest.mark.slow
@pytest.mark.parametrize("tensor,fragment", [(torch.tensor(3.0), "shape ()"), (torch.zeros(0, 784), "shape (0, 784)"),
                                             (torch.full((2, 16), float("nan")), "non-finite")])
def test_outputs_files_that_cannot_be_inverted_are_refused(tmp_path, tensor, fragment):
    torch.save(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()).state_dict(), tmp_path / "net.pt")
    torch.save(tensor, tmp_path / "f.pt")
    r = lifted("invert", f"checkpoint={tmp_path / 'net.pt'}", "arch=sequential", "arch.widths=[16,16]", "arch.activations=[relu]",
               f"outputs={tmp_path / 'f.pt'}", "hydra.run.dir=out", cwd=tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_no_progress_bar_text_when_the_output_is_not_a_terminal(tmp_path, fake_mnist):
    r = lifted("invert", "network=random_perceptron", "perceptron.out_dim=32", "perceptron.image_size=8", "num_images=2",
               "iterations=20", f"data_root={fake_mnist}", "hydra.run.dir=out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "it/s" not in r.stderr and "invert:" not in r.stderr.replace("lifted invert:", "")


@pytest.mark.slow
def test_missing_data_refuses_the_run_with_status_2(tmp_path):
    r = lifted("invert", "network=random_perceptron", f"data_root={tmp_path / 'empty'}", "data_sources=[local]",
               "hydra.run.dir=out", cwd=tmp_path)
    assert r.returncode == 2 and "MNIST not available" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
