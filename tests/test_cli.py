"""End to end through the console script: results folder, bad input, resume, help."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LIFTED = [sys.executable, "-m", "lifted_cli.cli"]
TINY = ["train_size=48", "test_size=12", "epochs=2", "batch_size=16", "num_samples=3", "arch.hidden=[32]"]


def run(args, cwd, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*LIFTED, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_folders(root: Path):
    return sorted(p.parent for p in root.rglob(".hydra"))


def test_top_level_help(tmp_path):
    out = run(["--help"], tmp_path).stdout
    assert "train" in out and "data" in out


def test_train_help_and_cfg(tmp_path):
    out = run(["train", "--help"], tmp_path).stdout
    assert "dataset: mnist_deblur, mnist_denoise, mnist_inpaint" in out
    cfg = run(["train", "--cfg", "job", "epochs=3"], tmp_path).stdout
    assert "epochs: 3" in cfg
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("scheme", ["bregman", "backprop"])
def test_train_end_to_end_writes_every_file(tmp_path, fake_mnist, scheme):
    proc = run(["train", f"scheme={scheme}", f"data_root={fake_mnist}", "device=cpu", *TINY], tmp_path)
    (folder,) = run_folders(tmp_path / "results" / "train")
    assert f"done in {folder}" in proc.stdout and "test PSNR" in proc.stdout
    assert folder.parent.parent.name == "train" and len(folder.name.split("-")[-1]) == 6  # %f
    for name in ("metrics.json", "history.csv", "checkpoint.pt", "samples.png", "train.log", ".hydra/config.yaml"):
        assert (folder / name).is_file(), name
    assert not list(folder.glob(".*.tmp"))
    m = json.loads((folder / "metrics.json").read_text())
    assert m["status"] == "finished" and m["device"] == "cpu" and m["seed"] == 0
    for row in ("test", "no_learning"):
        assert m[row]["psnr"]["count"] == 12 and set(m[row]["ssim"]) == {"mean", "std", "count"}
    assert m["torch_version"] == torch.__version__ and "skimage" in m["metric_implementation"]
    assert m["seconds_per_epoch"] > 0
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and {"loss", "test_psnr", "test_ssim", "seconds"} <= set(rows[0])
    if scheme == "bregman":
        assert {"objective", "gap"} <= set(rows[0]) and {"objective", "gap"} <= set(m["train"])
        assert m["hyperparameters"]["solver"]["name"] == "isgm" and "tau" in m["hyperparameters"]["solver"]
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["arch"]["hidden"] == [32]
    from lifted_cli.training import network_from_checkpoint

    model, _ = network_from_checkpoint(folder)
    assert [b.in_dim for b in model.blocks] + [model.blocks[-1].out_dim] == [784, 32, 784]
    from PIL import Image

    img = Image.open(folder / "samples.png")
    assert img.size[1] > img.size[0] / 3 * 0.9 / 1  # three rows of three images


def test_same_seed_same_metrics(tmp_path, fake_mnist):
    a = run(["train", f"data_root={fake_mnist}", *TINY, "hydra.run.dir=a"], tmp_path)
    b = run(["train", f"data_root={fake_mnist}", *TINY, "hydra.run.dir=b"], tmp_path)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a.returncode == b.returncode == 0
    assert ma["test"] == mb["test"] and ma["train"] == mb["train"] and ma["no_learning"] == mb["no_learning"]


def test_test_set_identical_across_schemes_and_seeds(compose_train, fake_mnist):
    from lifted_cli.degradations import build_degradation
    from lifted_cli.training import make_test_set

    ys = []
    for ov in (["seed=0"], ["seed=5", "solver=sgd"]):
        cfg = compose_train([f"data_root={fake_mnist}", "dataset=mnist_inpaint", *ov], output_dir="/tmp/x")
        ys.append(make_test_set(cfg, build_degradation(cfg.dataset), torch.device("cpu"))[1])
    assert torch.equal(ys[0], ys[1])


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["dataset=foo"], "dataset/foo"),
        (["epochs=abc"], "epochs=abc"),
        (["dataset.sigma=-1"], "dataset.sigma=-1"),
        (["dataset=mnist_inpaint", "dataset.keep_ratio=1.5"], "keep_ratio=1.5"),
        (["batch_size=0"], "batch_size=0"),
        (["+epochss=3"], "epochss"),
        (["resume=does/not/exist"], "resume=does/not/exist"),
        (["scheme=nope"], "scheme/nope"),
    ],
)
def test_bad_input_one_line_no_folder(tmp_path, fake_mnist, args, fragment):
    proc = run(["train", f"data_root={fake_mnist}", *args], tmp_path, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("metrics.json"))


def test_scheme_solver_pairs(tmp_path):
    out = run(["train", "--cfg", "job", "scheme=backprop"], tmp_path).stdout
    assert "name: adam" in out
    proc = run(["train", "solver=adam"], tmp_path, check=False)
    assert proc.returncode == 2 and "scheme=bregman is minimised by solver=isgm|bcd" in proc.stderr


def test_experiment_sparse_dae_composes_for_both_schemes(tmp_path):
    for scheme in ("bregman", "backprop"):
        out = run(["train", "--cfg", "job", "experiment=sparse_dae", f"scheme={scheme}"], tmp_path).stdout
        assert "sparsity_layer: 3" in out and "train_size: 1000" in out and f"name: {scheme}" in out


def test_bad_value_in_multirun_leaves_no_finished_folder(tmp_path, fake_mnist):
    proc = run(["train", "-m", f"data_root={fake_mnist}", "batch_size=0"], tmp_path, check=False)
    assert proc.returncode != 0 and "batch_size=0" in proc.stderr
    assert not any((tmp_path / "results").rglob("metrics.json"))
    assert not any((tmp_path / "results").rglob(".hydra"))


def test_wrong_resume_folder(tmp_path, fake_mnist):
    (tmp_path / "empty").mkdir()
    proc = run(["train", "resume=empty"], tmp_path, check=False)
    assert proc.returncode == 2 and "resume=empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_multirun_folders(tmp_path, fake_mnist):
    run(["train", "-m", f"data_root={fake_mnist}", *TINY, "epochs=1", "seed=0,1"], tmp_path)
    folders = run_folders(tmp_path / "results" / "train-multirun")
    assert [f.name for f in folders] == ["0", "1"]
    assert all((f / "metrics.json").is_file() for f in folders)


def test_resume_cli_equals_uninterrupted(tmp_path, fake_mnist):
    run(["train", f"data_root={fake_mnist}", *TINY, "epochs=3", "hydra.run.dir=full"], tmp_path)
    run(["train", f"data_root={fake_mnist}", *TINY, "epochs=1", "hydra.run.dir=part"], tmp_path)
    run(["train", "resume=part", "epochs=3"], tmp_path)
    full, part = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "part"))
    assert full["test"] == part["test"] and full["train"] == part["train"]
    assert len(list(csv.DictReader((tmp_path / "part" / "history.csv").open()))) == 3
    proc = run(["train", "resume=part", "seed=7"], tmp_path, check=False)
    assert proc.returncode == 1 and "seed differs" in proc.stderr


def test_multirun_runs_valid_combinations_and_names_invalid_ones(tmp_path, fake_mnist):
    sweep = tmp_path / "sweep"
    proc = run(["train", "-m", "scheme=fenchel,bregman", "arch=proxnet", "arch.depth=1", "arch.hidden=784",
                f"data_root={fake_mnist}", "train_size=16", "test_size=4", "epochs=1", "batch_size=8", "num_samples=0",
                "progress=false", f"hydra.sweep.dir={sweep}"], tmp_path, check=False)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "job 0" in errors[0] and "Fenchel" in errors[0] and "soft_threshold" in errors[0]
    assert not (sweep / "0").exists()
    assert json.loads((sweep / "1" / "metrics.json").read_text())["status"] == "finished"


def test_invert_help_lists_options(tmp_path):
    out = run(["invert", "--help"], tmp_path).stdout
    assert "lifted invert" in out and "regularizer" in out and "experiment" in out


def test_joblib_multirun_of_two_tiny_jobs(tmp_path, fake_mnist):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    run(["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "scheme=backprop,bregman",
         f"data_root={fake_mnist}", *TINY, "progress=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    done = sorted(json.loads((sweep / j / "metrics.json").read_text())["hyperparameters"]["scheme"]["name"] for j in ("0", "1"))
    assert done == ["backprop", "bregman"]
