"""cli.py: the ``lifted`` dispatcher: help, one-line errors with exit status 2 and no folder, resume,
multiruns pre-validated (Hydra's own sweep expansion), the launcher plugins."""

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import run_lifted as run

TINY = ["train_size=48", "test_size=12", "epochs=2", "batch_size=16", "num_samples=3", "arch.hidden=[32]"]


def run_folders(root: Path):
    return sorted(p.parent for p in root.rglob(".hydra"))


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_top_level_help(tmp_path):
    out = run(["--help"], tmp_path).stdout
    assert "train" in out and "data" in out


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_train_help_and_cfg(tmp_path):
    out = run(["train", "--help"], tmp_path).stdout
    assert "deblur | denoise* | inpaint" in out and "epochs=5" in out
    cfg = run(["train", "--cfg", "job", "epochs=3"], tmp_path).stdout
    assert "epochs: 3" in cfg
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["task=foo"], "task/foo"),
        (["epochs=abc"], "epochs=abc"),
        (["task.sigma=-1"], "task.sigma=-1"),
        (["task=inpaint", "task.keep_ratio=1.5"], "keep_ratio=1.5"),
        (["batch_size=0"], "batch_size=0"),
        (["+epochss=3"], "epochss"),
        (["resume=does/not/exist"], "resume=does/not/exist"),
        (["scheme=nope"], "scheme/nope"),
        (["device=cuda:7"], "device=cuda:7"),
        (["task.sigma=nan"], "task.sigma=nan"),
        (["scheme=fenchel", "arch=proxnet"], "Fenchel"),
        (["experiment=perceptron_inversion"], "is an experiment of `lifted invert`"),
        (["hydra/launcher=nope"], "hydra/launcher"),
    ],
)
def test_bad_input_one_line_no_folder(tmp_path, fake_mnist, monkeypatch, capsys, args, fragment):
    """In process, through ``cli.main`` (what the console script calls)."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    code = main(["train", f"data_root={fake_mnist}", *args])
    err = capsys.readouterr().err.strip()
    proc = type("Proc", (), {"returncode": code})
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert proc.returncode == 2
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob(".hydra"))


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_scheme_solver_pairs(tmp_path):
    out = run(["train", "--cfg", "job", "scheme=backprop"], tmp_path).stdout
    assert "name: adam" in out
    proc = run(["train", "solver=adam"], tmp_path, check=False)
    assert proc.returncode == 2 and "scheme=bregman is minimised by solver=isgm|bcd" in proc.stderr


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_experiment_sparse_dae_composes_for_both_schemes(tmp_path):
    for scheme in ("bregman", "backprop"):
        out = run(["train", "--cfg", "job", "experiment=sparse_dae", f"scheme={scheme}"], tmp_path).stdout
        assert "sparsity_layer: 3" in out and "train_size: 1000" in out and f"name: {scheme}" in out


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_bad_value_in_multirun_leaves_no_finished_folder(tmp_path, fake_mnist):
    proc = run(["train", "-m", f"data_root={fake_mnist}", "batch_size=0"], tmp_path, check=False)
    assert proc.returncode != 0 and "batch_size=0" in proc.stderr
    assert not any((tmp_path / "results").rglob("metrics.json"))
    assert not any((tmp_path / "results").rglob(".hydra"))


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_wrong_resume_folder(tmp_path, fake_mnist):
    (tmp_path / "empty").mkdir()
    proc = run(["train", "resume=empty"], tmp_path, check=False)
    assert proc.returncode == 2 and "resume=empty" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_multirun_folders(tmp_path, fake_mnist):
    run(["train", "-m", f"data_root={fake_mnist}", *TINY, "epochs=1", "seed=0,1"], tmp_path)
    folders = run_folders(tmp_path / "results" / "train-multirun")
    assert [f.name for f in folders] == ["0", "1"]
    assert all((f / "metrics.json").is_file() for f in folders)


@pytest.mark.slow
def test_resume_cli_equals_uninterrupted(tmp_path, fake_mnist):
    run(["train", f"data_root={fake_mnist}", *TINY, "epochs=3", "hydra.run.dir=full"], tmp_path)
    run(["train", f"data_root={fake_mnist}", *TINY, "epochs=1", "hydra.run.dir=part"], tmp_path)
    run(["train", "resume=part", "epochs=3"], tmp_path)
    full, part = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("full", "part"))
    assert full["test"] == part["test"] and full["train"] == part["train"]
    assert len(list(csv.DictReader((tmp_path / "part" / "history.csv").open()))) == 3
    proc = run(["train", "resume=part", "seed=7"], tmp_path, check=False)
    assert proc.returncode == 2 and "seed=7 cannot change on resume" in proc.stderr


@pytest.mark.slow
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


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_invert_help_lists_options(tmp_path):
    out = run(["invert", "--help"], tmp_path).stdout
    assert "lifted invert" in out and "regularizer=tv" in out and "perceptron_inversion" in out
    assert "sparse_dae" not in out  # the experiments of train are not offered to invert


@pytest.mark.slow
def test_joblib_multirun_of_two_tiny_jobs(tmp_path, fake_mnist):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    run(["train", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "scheme=backprop,bregman",
         f"data_root={fake_mnist}", *TINY, "progress=false", f"hydra.sweep.dir={sweep}"], tmp_path)
    done = sorted(json.loads((sweep / j / "metrics.json").read_text())["hyperparameters"]["scheme"]["name"] for j in ("0", "1"))
    assert done == ["backprop", "bregman"]



@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_unknown_command(tmp_path):
    proc = run(["trian"], tmp_path, check=False)
    assert proc.returncode == 2 and "unknown command 'trian'" in proc.stderr


def test_train_in_process_through_the_same_entry_point(tmp_path, fake_mnist, monkeypatch):
    """``cli.main`` is what the console script calls: a run, then a refused value, in one process."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", f"data_root={fake_mnist}", *TINY, "epochs=1", "progress=false", "hydra.run.dir=a"]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["status"] == "finished"
    assert main(["train", "batch_size=0", "hydra.run.dir=b"]) == 2 and not (tmp_path / "b").exists()


def _bad(command, *args, fragment=None):
    return pytest.param([command, *args], fragment or args[-1].split("=")[0], id=f"{command}:{' '.join(args)}"[:60])


#: refused inputs: each ends with exit status 2, one line on stderr naming the value, and no file written
BAD_INPUTS = [
    _bad("train", "epochs=0"), _bad("train", "epochs=abc"), _bad("train", "batch_size=-1"), _bad("train", "eval_every=0"),
    _bad("train", "train_size=0"), _bad("train", "test_size=-5"), _bad("train", "seed=x"), _bad("train", "device=tpu"),
    _bad("train", "device=cuda:9"), _bad("train", "task=foo", fragment="task/foo"),
    _bad("train", "task.sigma=-1"), _bad("train", "task.sigma=nan"), _bad("train", "task.sigma=inf"),
    _bad("train", "task=deblur", "task.blur_width=nan"), _bad("train", "task=deblur", "task.kernel_size=4"),
    _bad("train", "task=inpaint", "task.keep_ratio=0"), _bad("train", "arch=foo", fragment="arch/foo"),
    _bad("train", "arch.hidden=[]"), _bad("train", "arch.activation=swish"),
    _bad("train", "arch.activation=soft_threshold:inf", fragment="soft_threshold:inf"),
    _bad("train", "arch.output_activation=clamp:1:0", fragment="clamp:1:0"), _bad("train", "scheme=nope", fragment="scheme/nope"),
    _bad("train", "solver=adam", fragment="minimised by solver=isgm|bcd"), _bad("train", "solver.tau=0"),
    _bad("train", "solver.tau_decay=2"), _bad("train", "scheme=backprop", "solver.lr_decay=0"),
    _bad("train", "scheme=mac", "solver.weight_update=gd", "solver.lr_decay=0.5", fragment="must be 1 with weight_update=gd"), _bad("train", "solver.momentum=1"), _bad("train", "solver.step_safety=nan"),
    _bad("train", "scheme=mac", "scheme.mu_growth=0.5"), _bad("train", "scheme.penalty_weight=-1"), _bad("train", "scheme.output_weight=0"),
    _bad("train", "scheme.output=tied"), _bad("train", "+epochss=3", fragment="epochss"),
    _bad("train", "+task.sigmaa=1", fragment="task.sigmaa"), _bad("train", "data_sources=[ftp]", fragment="data_sources"),
    _bad("train", "num_samples=-1"), _bad("train", "experiment=perceptron_inversion", fragment="experiment of `lifted invert`"),
    _bad("train", "resume=does/not/exist", fragment="resume=does/not/exist"), _bad("train", "hydra/launcher=nope", fragment="hydra/launcher"),
    _bad("train", "scheme=fenchel", "arch=proxnet", fragment="Fenchel"), _bad("train", "solver.stacked=maybe"),
    _bad("train", "arch.depth=3", "solver.stacked=true", fragment="solver.stacked"),
    _bad("train", "arch=sequential", "arch.widths=[784,10]", "arch.activations=[identity]", fragment="maps 28x28 images"),
    _bad("train", "task=null", fragment="task=null"), _bad("train", "val_size=-1"),
    _bad("train", "val_size=64", fragment="val_size=64: the mnist training split has 64 images"),
    _bad("train", "dataset=mnist_deblur", fragment="write source=mnist task=deblur"),
    _bad("train", "dataset.sigma=0.1", fragment="write task.sigma=0.1"),
    _bad("train", "source=natural_patches", "source.side=400", fragment="source.side=400: larger than the photograph"),
    _bad("train", "source=natural_patches", "source.test_images=[]", fragment="source.test_images=[]"),
    _bad("train", "source=natural_patches", "source.test_images=[camera,astronaut]", fragment="also a training image"),
    _bad("train", "source=natural_patches", "source.train_images=[lena]", fragment="source.train_images=lena"),
    _bad("train", "source=natural_patches", "source.stride=0", fragment="source.stride=0"),
    _bad("train", "source=natural_patches", "source.side=30", "arch=conv_autoencoder", fragment="divisible by 4, got 30"),
    _bad("train", "source=fashion_mnist", "data_sources=[local]", fragment="Fashion-MNIST not available"),
    _bad("train", "source=kmnist", "data_sources=[local]", fragment="KMNIST not available"),
    _bad("train", "source=cifar", fragment="source/cifar"),
    _bad("train", "test_size=17", fragment="test_size=17: the mnist test split has 16 images"),
    _bad("train", "seed=99999999999999999999", fragment="a seed must be an integer in"),
    _bad("train", "val_seed=-99999999999999999999", fragment="val_seed=-99999999999999999999"),
    _bad("train", "task.test_seed=99999999999999999999", fragment="task.test_seed=99999999999999999999"),
    _bad("train", "arch.hidden=[100000000]", fragment="does not fit in cpu memory"),
    _bad("invert", "network=random_perceptron", "perceptron.image_size=100000", fragment="does not fit in memory"),
    _bad("invert", "network=random_perceptron", "perceptron.seed=99999999999999999999", fragment="perceptron.seed"),
    _bad("invert", "network=random_perceptron", "num_images=17", fragment="num_images=17: the mnist test split has 16 images"),
    _bad("train", "parallel=grid", "solver.layer_order=jacobi", fragment="parallel.layer_ranks=2: must divide the 1 processes"),
    _bad("report", ".", "--by", "val", fragment="--by val"),
    _bad("invert", "network=foo"), _bad("invert", "progress=false", fragment="checkpoint=None"),
    _bad("invert", "checkpoint=x", "method=newton"), _bad("invert", "checkpoint=x", "regularizer=tv2"),
    _bad("invert", "checkpoint=x", "alpha=-1"), _bad("invert", "checkpoint=x", "alpha=nan"), _bad("invert", "checkpoint=x", "delta=-0.1"),
    _bad("invert", "checkpoint=x", "noise=loud"), _bad("invert", "checkpoint=x", "output=tied"),
    _bad("invert", "checkpoint=x", "iterations=0"), _bad("invert", "checkpoint=x", "step_safety=2"),
    _bad("invert", "checkpoint=x", "momentum=1"), _bad("invert", "checkpoint=x", "primal_step=0"),
    _bad("invert", "network=random_perceptron", "perceptron.out_dim=0"),
    _bad("invert", "network=random_perceptron", "perceptron.bias=nan"),
    _bad("invert", "checkpoint=nope.pt", fragment="does not exist"),
    _bad("invert", "experiment=sparse_dae", fragment="experiment of `lifted train`"),
    _bad("invert", "network=random_perceptron", "upto=layer3"),
    _bad("invert", "checkpoint=x", "source=natural_patches", "images=val", fragment="images=val"),
    _bad("data", "data_sources=[ftp]", fragment="data_sources"), _bad("data", "source=nope", fragment="source/nope"), _bad("data", "verify=maybe", fragment="verify"),
    _bad("report", "nope", fragment="not a folder"), _bad("report", ".", "--best", "alpha", fragment="--best alpha"),
]


@pytest.mark.parametrize("args,fragment", BAD_INPUTS)
def test_bad_inputs_are_refused_in_one_line_with_status_2_and_no_file(tmp_path, fake_mnist, monkeypatch, capsys, args,
                                                                      fragment):
    from lifted_cli.cli import main

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    if args[0] == "report" and args[1] == ".":  # a folder with one finished-looking run and nothing swept
        (work / "run" / ".hydra").mkdir(parents=True)
        (work / "run" / ".hydra" / "config.yaml").write_text("command: train\nseed: 0\n")
    before = sorted(p for p in work.rglob("*"))
    extra = [f"data_root={fake_mnist}"] if args[0] in ("train", "invert") else []
    code = main([*args, *extra])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"lifted {args[0]}: error:") and fragment in err[0], err
    assert [p for p in work.rglob("*") if p.is_file() and p not in before] == []


def test_a_run_folder_that_is_a_file_is_refused(tmp_path, monkeypatch, capsys):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("notes")
    assert main(["train", "hydra.run.dir=taken"]) == 2
    assert "hydra.run.dir=taken: is a file" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "notes"


def _stop_with(signum, tmp_path, fake_mnist, *extra):
    """A long `lifted train` in a subprocess, sent ``signum`` once training has begun: (returncode, stdout +
    stderr)."""
    import os
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "lifted_cli", "train", f"data_root={fake_mnist}", "train_size=64",
                             "test_size=8", "epochs=100000", "batch_size=8", "arch.hidden=[16]", "progress=false",
                             "num_samples=0", "hydra.run.dir=run", *extra], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    deadline, seen = time.time() + 120, []
    for line in proc.stdout:  # wait until training has begun
        seen.append(line)
        if "epoch 1/" in line or time.time() > deadline:
            break
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out


@pytest.mark.slow
@pytest.mark.parametrize("name,code", [("SIGTERM", 143), ("SIGUSR1", 138)])
def test_sigterm_and_sigusr1_stop_like_ctrl_c(tmp_path, fake_mnist, name, code):
    """What a scheduler sends before it kills a job: a checkpoint at the next batch, the resume line, the
    lock released, exit 128 + the signal; the run then resumes to its end."""
    import signal

    from lifted_cli.cli import main

    returncode, text = _stop_with(getattr(signal, name), tmp_path, fake_mnist)
    assert returncode == code, text
    assert "Traceback" not in text and f"interrupted ({name})" in text and "resume=" in text
    run = tmp_path / "run"
    assert (run / "checkpoint.pt").is_file() and not (run / "metrics.json").exists() and not (run / ".lock").exists()
    assert main(["train", f"resume={run}", "epochs=2"]) == 0
    assert (run / "metrics.json").is_file()


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_prints_the_resume_line_and_exits_130(tmp_path, fake_mnist):
    import os
    import signal
    import subprocess
    import sys
    import time

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen([sys.executable, "-m", "lifted_cli", "train", f"data_root={fake_mnist}", "train_size=64", "test_size=8",
                             "epochs=100000", "batch_size=8", "arch.hidden=[16]", "progress=false", "num_samples=0",
                             "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until training has begun
        if "epoch 1/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "resume=" in out + err
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_files_that_are_not_what_they_claim_are_one_line_without_library_noise(tmp_path, fake_mnist, monkeypatch, capsys):
    """A checkpoint that is a plain pickle (torch would warn before refusing it) and a run folder whose
    metrics.json is a folder: one line each, exit 2, nothing changed."""
    import pickle

    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    with open(tmp_path / "pickled.pt", "wb") as f:
        pickle.dump({"a": 1}, f, protocol=4)
    assert main(["invert", "checkpoint=pickled.pt", "hydra.run.dir=inv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read" in err[0] and not (tmp_path / "inv").exists(), err
    assert main(["train", f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=1", "batch_size=16",
                 "arch.hidden=[8]", "progress=false", "num_samples=0", "hydra.run.dir=run"]) == 0
    (tmp_path / "run" / "metrics.json").unlink()
    (tmp_path / "run" / "metrics.json").mkdir()
    capsys.readouterr()
    assert main(["train", "resume=run", "epochs=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.json is not a file" in err[0], err


def test_a_record_hydra_cannot_write_is_one_line(tmp_path, fake_mnist, monkeypatch, capsys):
    """Hydra writes the run's record (.hydra/) itself; a full disk there is one line, exit 1."""
    import errno

    import hydra.core.utils

    from lifted_cli.cli import main

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / ".hydra" / "config.yaml"))

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hydra.core.utils, "_save_config", full)
    assert main(["train", f"data_root={fake_mnist}", "hydra.run.dir=run"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "No space left on device" in err[0] and "config.yaml" in err[0], err
    assert not (tmp_path / "run" / ".hydra").exists()  # nothing left that looks like a run
