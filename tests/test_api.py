"""api.py: the commands as Python functions. They compose, validate and write run folders as the
console script does, return the metrics, raise one-line LiftedErrors instead of exiting, rebuild a
network from a run folder and run one lifted step on a batch."""

import json

import pytest
import torch

import lifted_cli
from lifted_cli.errors import ConfigError, InputError
from lifted_cli.nets import UnifiedNet
from tests.conftest import run_lifted

TINY = ["train_size=32", "test_size=8", "epochs=1", "batch_size=16", "num_samples=2", "arch.hidden=[8]",
        "progress=false", "device=cpu"]


@pytest.mark.slow  # whole runs / a subprocess
def test_train_invert_report_return_what_the_command_line_writes(tmp_path, fake_mnist):
    metrics = lifted_cli.train([f"data_root={fake_mnist}", *TINY, "scheme=backprop"], output_dir=tmp_path / "runs" / "bp")
    folder = tmp_path / "runs" / "bp"
    assert metrics == json.loads((folder / "metrics.json").read_text()) and metrics["run_dir"] == str(folder)
    assert {p.name for p in folder.iterdir()} == {".hydra", "checkpoint.pt", "history.csv", "metrics.json", "samples.png",
                                                   "train.log"}  # the lock is gone
    assert "scheme=backprop" in (folder / ".hydra" / "overrides.yaml").read_text()
    lifted_cli.train([f"data_root={fake_mnist}", *TINY, "scheme=bregman"], output_dir=tmp_path / "runs" / "bregman")

    net = lifted_cli.load_network(folder)
    assert isinstance(net, UnifiedNet) and not net.training
    assert [b.in_dim for b in net.blocks] == [784, 8]

    inv = lifted_cli.invert([f"checkpoint={folder}", f"data_root={fake_mnist}", "num_images=2", "iterations=4",
                             "progress=false", "device=cpu"], output_dir=tmp_path / "inv")
    assert inv["recovered"]["psnr"]["count"] == 2 and (tmp_path / "inv" / "recovered.pt").is_file()

    out, text = lifted_cli.report(tmp_path / "runs", out=tmp_path / "report")  # one folder, or a list
    assert out == tmp_path / "report" and (out / "report.md").read_text() == text
    assert "swept: scheme" in text and "backprop" in text and "bregman" in text
    _, ranked = lifted_cli.report([tmp_path / "runs"], out=tmp_path / "ranked", by="test")  # --by, as on the command line
    assert "rank" in ranked
    with pytest.raises(ConfigError, match="--by val: no finished train run holds a validation set"):
        lifted_cli.report([tmp_path / "runs"], out=tmp_path / "by-val", by="val")


@pytest.mark.slow  # whole runs / a subprocess
def test_the_same_config_as_the_command_line(tmp_path, fake_mnist):
    args = [f"data_root={fake_mnist}", "scheme=mac", "arch=resnet", "arch.width=8", "seed=3"]
    cfg = lifted_cli.compose("train", args, output_dir=tmp_path / "x")
    printed = run_lifted(["train", *args, "--cfg", "job"], tmp_path).stdout
    from omegaconf import OmegaConf

    assert OmegaConf.to_container(cfg) == {**OmegaConf.to_container(OmegaConf.create(printed)),
                                           "output_dir": str(tmp_path / "x")}
    default = lifted_cli.compose("invert", ["checkpoint=somewhere"])
    assert default.output_dir.startswith("results/invert/")


@pytest.mark.parametrize("call,error,fragment", [
    (lambda: lifted_cli.train(["epochs=-1"]), ConfigError, "epochs=-1: must be > 0"),
    (lambda: lifted_cli.train(["scheme=nope"]), ConfigError, "Could not find 'scheme/nope'"),
    (lambda: lifted_cli.train(["experiment=perceptron_inversion"]), ConfigError, "is an experiment of `lifted invert`"),
    (lambda: lifted_cli.compose("data"), ConfigError, "command=data"),
    (lambda: lifted_cli.load_network("/no/such/run"), InputError, "does not exist"),
])
def test_bad_input_raises_one_line(call, error, fragment):
    with pytest.raises(error) as err:
        call()
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_refused_run_leaves_no_folder_and_an_occupied_one_is_refused(tmp_path, fake_mnist):
    with pytest.raises(ConfigError, match="fenchel"):  # refused when the components are built, after the folder
        lifted_cli.train([f"data_root={fake_mnist}", "scheme=fenchel", "arch=proxnet", "arch.hidden=800", "arch.depth=1",
                          "progress=false"], output_dir=tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files already"):
        lifted_cli.train([f"data_root={fake_mnist}", *TINY], output_dir=tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_resume_continues_a_run(tmp_path, fake_mnist):
    lifted_cli.train([f"data_root={fake_mnist}", *TINY], output_dir=tmp_path / "run")
    metrics = lifted_cli.resume(tmp_path / "run", "epochs=2")  # one change, or a list
    assert metrics["epochs"] == 2 and len(metrics["seconds_per_epoch_all"]) == 2


@pytest.mark.parametrize("scheme", ["bregman", "mac", "backprop"])
def test_one_step_on_a_batch_is_the_runs_step(scheme):
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    overrides = [f"scheme={scheme}", "arch.hidden=[8]"]
    run = lifted_cli.training(overrides)
    before = [p.detach().clone() for p in run.model.parameters()]
    stats = run.step(x)
    assert stats["loss"] > 0 and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    if scheme != "backprop":
        assert {"objective", "gap"} <= set(stats)
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))  # the weights moved
    assert lifted_cli.lifted_step(x, overrides) == stats  # fresh components from the same seed: the same step


def test_training_refuses_what_one_process_cannot_build():
    with pytest.raises(ConfigError, match="give n_samples"):
        lifted_cli.training(["solver.warm_start=persistent"])
    with pytest.raises(ConfigError, match="parallel=data"):
        lifted_cli.training(["parallel=data"])
