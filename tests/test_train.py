"""commands/train.py: ``lifted train`` end to end (every result file), exact resume after Ctrl-C,
divergence, the test set, and the validation of every option."""

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch

import lifted_cli.configs
from lifted_cli.commands import train as train_module
from lifted_cli.commands.train import make_test_set, train, validate
from lifted_cli.data import build_degradation
from lifted_cli.errors import ConfigError, DivergenceError
from lifted_cli.runs import network_from_checkpoint
from tests.conftest import TRAIN_ARCHS, run_lifted

TINY = ["train_size=48", "test_size=12", "epochs=2", "batch_size=16", "num_samples=3", "arch.hidden=[32]"]
CONFIGS = Path(lifted_cli.configs.__file__).parent


def run_folders(root: Path):
    return sorted(p.parent for p in root.rglob(".hydra"))


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["bregman", "backprop"])
def test_train_end_to_end_writes_every_file(tmp_path, fake_mnist, scheme):
    proc = run_lifted(["train", f"scheme={scheme}", f"data_root={fake_mnist}", "device=cpu", *TINY], tmp_path)
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
    steps = 2 * -(-m["train_images"] // 16)  # TINY: batch_size=16, two epochs
    assert m["steps_timed"] == steps and m["step_ms"] > 0 and m["peak_memory_mb"] > 0
    assert m["peak_memory_kind"] == "rss_sampled" and m["stacks"] == []
    # L = 2: back-propagation's forward and backward pass; a forward pass, two Gauss-Seidel sweeps of z_1, a W-step
    assert m["sequential_depth"] == (4 if scheme == "backprop" else 2 + 2 * (1 + 1) + 1)
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and {"loss", "test_psnr", "test_ssim", "seconds", "step_ms"} <= set(rows[0])
    if scheme == "bregman":
        assert {"objective", "gap"} <= set(rows[0]) and {"objective", "gap"} <= set(m["train"])
        assert m["hyperparameters"]["solver"]["name"] == "isgm" and "tau" in m["hyperparameters"]["solver"]
    ckpt = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["arch"]["hidden"] == [32]
    model, _ = network_from_checkpoint(folder)
    assert [b.in_dim for b in model.blocks] + [model.blocks[-1].out_dim] == [784, 32, 784]
    from PIL import Image

    img = Image.open(folder / "samples.png")
    assert img.size[1] > img.size[0] / 3 * 0.9 / 1  # three rows of three images


def test_tuned_settings_of_a_combination_apply_and_overrides_win(compose_train):
    """configs/tuned/<arch>_<scheme>_<solver> is loaded for that combination alone, and the command
    line wins over it (here the group option lives in Hydra's ConfigStore, for this test only)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(group="tuned", name="sequential_bregman_isgm", node={"solver": {"tau": 0.123}}, package="_global_")
    try:
        assert compose_train(["arch=sequential"]).solver.tau == 0.123
        assert compose_train(["arch=sequential", "solver.tau=2"]).solver.tau == 2
        assert "tau" not in compose_train(["arch=sequential", "solver=bcd"]).solver  # another solver: not its settings
        assert compose_train(["arch=sequential", "~tuned"]).solver.tau == 1.0
        assert compose_train(["arch=proxnet"]).solver.get("tau") != 0.123
    finally:
        cs.repo["tuned"].pop("sequential_bregman_isgm.yaml", None)


def test_validation_set_is_the_same_for_every_seed_and_scheme(compose_train, fake_mnist):
    from lifted_cli.commands.train import make_train_val

    out = []
    for ov in (["seed=0"], ["seed=5", "scheme=backprop"]):
        cfg = compose_train([f"data_root={fake_mnist}", "val_size=8", *ov], output_dir="/tmp/x")
        out.append(make_train_val(cfg, build_degradation(cfg.task), torch.device("cpu")))
    (train_a, (xa, ya)), (train_b, (xb, yb)) = out
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(train_a, train_b)
    assert xa.shape[0] == 8 and train_a.shape[0] == 64 - 8 and not torch.equal(xa, ya)


def test_a_validation_run_reports_it_per_epoch_and_at_the_end(tmp_path, fake_mnist):
    from lifted_cli.cli import main

    folder = tmp_path / "run"
    assert main(["train", f"data_root={fake_mnist}", "train_size=32", "val_size=10", "test_size=8", "epochs=2",
                 "batch_size=16", "eval_every=2", "arch.hidden=[8]", "progress=false", "num_samples=0",
                 f"hydra.run.dir={folder}"]) == 0
    m = json.loads((folder / "metrics.json").read_text())
    assert m["val_images"] == 10 and m["train_images"] == 32 and m["val"]["psnr"]["count"] == 10
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert rows[0]["val_psnr"] == "nan" and float(rows[1]["val_psnr"]) == pytest.approx(m["val"]["psnr"]["mean"])
    assert float(rows[1]["val_ssim"]) == pytest.approx(m["val"]["ssim"]["mean"]) and "val_psnr" not in m["train"]


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, fake_mnist):
    a = run_lifted(["train", f"data_root={fake_mnist}", *TINY, "hydra.run.dir=a"], tmp_path)
    b = run_lifted(["train", f"data_root={fake_mnist}", *TINY, "hydra.run.dir=b"], tmp_path)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a.returncode == b.returncode == 0
    assert ma["test"] == mb["test"] and ma["train"] == mb["train"] and ma["no_learning"] == mb["no_learning"]


def test_test_set_identical_across_schemes_and_seeds(compose_train, fake_mnist):
    ys = []
    for ov in (["seed=0"], ["seed=5", "solver=sgd"]):
        cfg = compose_train([f"data_root={fake_mnist}", "task=inpaint", *ov], output_dir="/tmp/x")
        ys.append(make_test_set(cfg, build_degradation(cfg.task), torch.device("cpu"))[1])
    assert torch.equal(ys[0], ys[1])


@pytest.mark.slow
@pytest.mark.parametrize("scheme,arch,extra", [("backprop", "mlp", []), ("bregman", "mlp", []), ("mac", "resnet", []),
                                               ("contrastive", "proxnet", []), ("bregman", "unrolled_pnn", []),
                                               ("bregman", "mlp", ["solver.warm_start=persistent"]),
                                               ("bregman", "mlp", ["arch.depth=3", "arch.width=8", "solver.warm_start=pipelined"]),
                                               ("bregman", "mlp", ["arch.depth=3", "arch.width=8", "solver.layer_order=red_black",
                                                                   "solver.stacked=true", "solver.warm_start=persistent"]),
                                               ("bregman", "resnet", ["arch.depth=3", "solver.layer_order=jacobi",
                                                                      "solver.stacked=true", "solver.w_metric=scalar"])])
def test_interrupt_mid_epoch_then_resume_is_exact(tmp_path, fake_mnist, compose_train, monkeypatch, scheme, arch, extra):
    ov = [f"scheme={scheme}", f"data_root={fake_mnist}", "train_size=64", "test_size=8", "epochs=2", "batch_size=8",
          *TRAIN_ARCHS[arch], "progress=false", "num_samples=2", *extra]
    full = train(compose_train(ov, output_dir=tmp_path / "full"))

    calls = {"n": 0}
    real_build = train_module.build

    def build(cfg, device, comm=None):  # the solver's step, counted: Ctrl-C during epoch 2, batch 3, honoured before batch 4
        model, scheme, solver = real_build(cfg, device, comm)
        real_step = solver.step

        def flaky(y, x, idx=None):
            calls["n"] += 1
            if calls["n"] == 11:
                os.kill(os.getpid(), signal.SIGINT)
            return real_step(y, x, idx)

        solver.step = flaky
        return model, scheme, solver

    monkeypatch.setattr(train_module, "build", build)
    with pytest.raises(KeyboardInterrupt):
        train(compose_train(ov, output_dir=tmp_path / "cut"))
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "metrics.json").exists()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["batch"] == 3
    monkeypatch.setattr(train_module, "build", real_build)
    resumed = train(compose_train([*ov, f"resume={tmp_path / 'cut'}"], output_dir=tmp_path / "cut"))
    assert resumed["test"] == full["test"]
    assert resumed["train"] == pytest.approx(full["train"], rel=1e-12)


def test_divergence_stops_and_keeps_last_checkpoint(tmp_path, fake_mnist, compose_train):
    ov = [f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=3", "batch_size=8",
          "arch.hidden=[16]", "progress=false", "scheme=backprop", "solver=sgd", "solver.lr=1e6", "solver.momentum=0.5"]
    with pytest.raises(DivergenceError, match="diverged") as err:
        train(compose_train(ov, output_dir=tmp_path / "d"))
    assert "\n" not in str(err.value)
    # the message names a checkpoint only when one exists
    assert ("checkpoint" in str(err.value)) == (tmp_path / "d" / "checkpoint.pt").is_file()
    assert not (tmp_path / "d" / "metrics.json").exists()


def test_training_reads_subnormal_floats_as_zero(tmp_path, fake_mnist, compose_train):
    """Weight decay makes dead units' weights subnormal, which made CPU steps 12 times slower: a run
    flushes them to zero."""
    torch.set_flush_denormal(False)
    assert float(torch.tensor([1e-40]) * 1.0) != 0.0
    ov = [f"data_root={fake_mnist}", "train_size=16", "test_size=8", "epochs=1", "batch_size=8", "arch.hidden=[8]",
          "progress=false", "scheme=backprop"]
    train(compose_train(ov, output_dir=tmp_path / "r"))
    assert float(torch.tensor([1e-40]) * 1.0) == 0.0


def test_a_failed_factorisation_is_a_divergence(tmp_path, fake_mnist, compose_train, monkeypatch):
    """A W-step whose matrix stopped being positive definite (diverged weights) stops the run with the
    one-line divergence message, like a non-finite statistic."""
    from lifted_cli.lifted.solvers import ISGM

    def broken(*args, **kwargs):
        torch.linalg.cholesky(-torch.eye(2))

    monkeypatch.setattr(ISGM, "w_step", broken)
    ov = [f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=1", "batch_size=8", "arch.hidden=[16]",
          "progress=false"]
    with pytest.raises(DivergenceError, match=r"training diverged at epoch 1, batch 1 \(linalg.cholesky") as err:
        train(compose_train(ov, output_dir=tmp_path / "d"))
    assert "\n" not in str(err.value) and not (tmp_path / "d" / "metrics.json").exists()


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("source", "task", "arch", "scheme", "solver") for o in options(g)],
)
def test_every_group_option_composes_and_validates(compose_train, group, option):
    overrides = [f"{group}={option}"]
    cfg = compose_train(overrides, output_dir="/tmp/x")
    assert cfg[group].name == option or cfg[group].get("task") in option
    try:
        validate(cfg)
    except ConfigError as err:  # only scheme/solver pairing may be refused, with a one-line reason
        assert "minimised by" in str(err) and "\n" not in str(err)


@pytest.mark.slow  # builds every experiment
def test_every_experiment_of_train_validates(compose_train):
    from lifted_cli.cli import experiments

    names = [n for n, c in experiments().items() if c == "train"]
    assert set(names) | {n for n, c in experiments().items() if c == "invert"} == set(options("experiment"))
    for name in names:
        validate(compose_train([f"experiment={name}"], output_dir="/tmp/x"))


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["task.sigma=-1"], "task.sigma=-1"),
        (["task=inpaint", "task.keep_ratio=1.5"], "keep_ratio=1.5"),
        (["batch_size=0"], "batch_size=0"),
        (["epochs=-2"], "epochs=-2"),
        (["task=deblur", "task.kernel_size=4"], "kernel_size=4"),
        (["device=tpu"], "device=tpu"),
        (["arch.activation=swish"], "swish"),
        (["arch.hidden=[]"], "arch.hidden"),
        (["+epochss=3"], "epochss"),
        (["+task.sigmaa=3"], "task.sigmaa"),
        (["data_sources=[local,ftp]"], "data_sources"),
        (["arch=conv_autoencoder", "arch.kernel=3"], "arch.kernel=3"),
        (["arch=conv_autoencoder", "arch.channels=[4,4,4]"], "arch.channels"),
        (["arch=conv_autoencoder", "arch.code=0"], "arch.code=0"),
        (["task.sigma=nan"], "task.sigma=nan"),
        (["solver=adam"], "scheme=bregman is minimised by solver=isgm|bcd"),
        (["solver.tau=-1"], "solver.tau=-1"),
        (["scheme=mac", "scheme.mu_growth=0.5"], "scheme.mu_growth=0.5"),
        (["command=invert"], "command=invert"),
        (["val_size=-1"], "val_size=-1: must be >= 0"),
        (["solver.refresh_sweeps=-1"], "solver.refresh_sweeps=-1: must be >= 0"),
        (["arch.init=he"], "arch.init=he: allowed: default, kaiming, orthogonal, xavier"),
    ],
)
def test_bad_values_rejected_with_one_line(compose_train, overrides, fragment):
    cfg = compose_train(overrides, output_dir="/tmp/x")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value)



# ------------------------------------------------------------------------------- run folders
def _tiny_run(folder, fake_mnist, *more):
    from lifted_cli.cli import main

    assert main(["train", f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=1", "batch_size=16",
                 "arch.hidden=[8]", "progress=false", "num_samples=0", f"hydra.run.dir={folder}", *more]) == 0


def _digest(folder: Path) -> dict:
    import hashlib

    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resume_replays_no_override_of_the_folder_and_runs_no_code(tmp_path, fake_mnist, monkeypatch, capsys):
    """A received folder whose .hydra/overrides.yaml asks Hydra to open a file: resume rebuilds the run
    from the checkpoint's data, so no file is created; a checkpoint config naming code is refused."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist)
    victim = tmp_path / "victim.txt"
    evil = ["+hydra.callbacks.x._target_=builtins.open", f"+hydra.callbacks.x._args_=[{victim},w]"]
    overrides = tmp_path / "runA" / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + "".join(f"- {o}\n" for o in evil))
    assert main(["train", "resume=runA", "epochs=2"]) == 0
    assert not victim.exists()
    ckpt = torch.load(tmp_path / "runA" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["arch"]["_target_"] = "os.system"
    torch.save(ckpt, tmp_path / "runA" / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "resume=runA", "epochs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "arch._target_" in err and "unknown key" in err


@pytest.mark.slow
@pytest.mark.parametrize("change", ["scheme=backprop", "seed=3", "+hydra.job.name=x", "epochs=abc"])
def test_a_refused_resume_leaves_the_folder_byte_identical(tmp_path, fake_mnist, monkeypatch, capsys, change):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist)
    before = _digest(tmp_path / "runA")
    assert main(["train", "resume=runA", change]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _digest(tmp_path / "runA") == before
    assert main(["train", "resume=runA", "epochs=2"]) == 0  # the plain resume still works


@pytest.mark.slow
def test_an_interrupted_extension_is_not_reported_finished(tmp_path, fake_mnist, monkeypatch):
    """A finished run extended with more epochs and interrupted: its metrics.json (of the old end) is
    gone, so `lifted report` counts it unfinished; stale temporaries of a killed write are swept."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist)
    (tmp_path / "runA" / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    real_build = train_module.build

    def build(cfg, device, comm=None):
        model, scheme, solver = real_build(cfg, device, comm)
        real_step = solver.step

        def interrupted(y, x, idx=None):
            os.kill(os.getpid(), signal.SIGINT)
            return real_step(y, x, idx)

        solver.step = interrupted
        return model, scheme, solver

    monkeypatch.setattr(train_module, "build", build)
    assert main(["train", "resume=runA", "epochs=4"]) == 130
    folder = tmp_path / "runA"
    assert not (folder / "metrics.json").exists() and not list(folder.glob(".*.tmp")) and not (folder / ".lock").exists()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] == 1
    from lifted_cli.commands.report import find_runs

    (run,) = find_runs([tmp_path])
    assert not run.finished and run.status.startswith("unfinished")


@pytest.mark.slow
def test_an_occupied_folder_is_refused_and_a_busy_one_untouched(tmp_path, fake_mnist, monkeypatch, capsys):
    from lifted_cli.cli import main
    from lifted_cli.runs import RunFolder

    monkeypatch.chdir(tmp_path)
    _tiny_run("done", fake_mnist)
    before = _digest(tmp_path / "done")
    assert main(["train", "hydra.run.dir=done"]) == 2 and "holds files already" in capsys.readouterr().err
    assert _digest(tmp_path / "done") == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "ideas.log").write_text("mine")
    assert main(["train", "hydra.run.dir=notes"]) == 2 and (notes / "ideas.log").read_text() == "mine"
    busy = RunFolder(tmp_path / "busy").claim()  # another run holds the lock of this folder
    try:
        with pytest.raises(Exception, match="in use by another run"):
            RunFolder(tmp_path / "busy").claim()
    finally:
        busy.release()
    assert not (tmp_path / "busy" / ".lock").exists()


@pytest.mark.slow
def test_a_failing_run_removes_only_what_it_made(tmp_path, fake_mnist, monkeypatch):
    """A combination refused when the components are built (after Hydra made the folder): a folder the
    run created goes; a user's empty folder stays, emptied of the run's files."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    bad = ["scheme=fenchel", "arch=proxnet", f"data_root={fake_mnist}"]
    assert main(["train", *bad, "hydra.run.dir=new"]) == 2 and not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    assert main(["train", *bad, "hydra.run.dir=mine"]) == 2
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


@pytest.mark.slow
def test_folder_rules_hold_without_hydra_records_too(tmp_path, fake_mnist, monkeypatch, capsys):
    """hydra.output_subdir=null does not switch the rules off: a finished folder is still refused, and a
    user's folder survives a run refused for missing data."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist)
    before = _digest(tmp_path / "runA")
    assert main(["train", "hydra.run.dir=runA", "hydra.output_subdir=null", "seed=5"]) == 2
    assert _digest(tmp_path / "runA") == before
    (tmp_path / "lab").mkdir()
    assert main(["train", f"data_root={tmp_path / 'none'}", "data_sources=[local]", "hydra.run.dir=lab/run",
                 "hydra.output_subdir=null"]) == 2
    assert (tmp_path / "lab").is_dir() and not (tmp_path / "lab" / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("changes,fragment", [(["data_root=/proc/nope"], "MNIST not available"),
                                              (["epochs=0"], "epochs=0"), (["data_root=${nope}"], "interpolation"),
                                              (["epochs=${oc.env:NOPE}"], "interpolation")])
def test_a_resume_refused_late_still_leaves_the_folder_byte_identical(tmp_path, fake_mnist, monkeypatch, capsys,
                                                                       changes, fragment):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist, "epochs=2")
    before = _digest(tmp_path / "runA")
    capsys.readouterr()
    assert main(["train", "resume=runA", *changes]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0], err
    assert _digest(tmp_path / "runA") == before
    assert main(["train", "resume=runA", "epochs=1"]) == 2  # fewer epochs than trained: refused


@pytest.mark.slow
def test_a_diverged_run_keeps_its_record_checkpoint_and_log(tmp_path, fake_mnist, monkeypatch):
    from lifted_cli.cli import main
    from lifted_cli.commands.report import find_runs

    monkeypatch.chdir(tmp_path)
    real_build = train_module.build

    def build(cfg, device, comm=None):  # the second epoch blows up after the first was checkpointed
        model, scheme, solver = real_build(cfg, device, comm)
        real_step, calls = solver.step, {"n": 0}

        def step(y, x, idx=None):
            calls["n"] += 1
            stats = real_step(y, x, idx)
            return {**stats, "loss": float("nan")} if calls["n"] > 2 else stats

        solver.step = step
        return model, scheme, solver

    monkeypatch.setattr(train_module, "build", build)
    assert main(["train", f"data_root={fake_mnist}", "train_size=32", "batch_size=16", "epochs=3", "test_size=8",
                 "arch.hidden=[8]", "progress=false", "num_samples=0", "hydra.run.dir=run"]) == 1
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == [".hydra", "checkpoint.pt", "history.csv", "train.log"], names
    (run,) = find_runs([tmp_path])
    assert run.status.startswith("unfinished")
    monkeypatch.setattr(train_module, "build", real_build)
    assert main(["train", "resume=run"]) == 0  # the lock was released: the same process resumes


def test_resume_is_not_an_override_of_a_new_run(tmp_path, monkeypatch, capsys):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "++resume=somewhere"]) == 2
    assert "resume=somewhere: continue a run with `lifted train resume=" in capsys.readouterr().err
    assert main(["train", "-m", "resume=somewhere"]) == 2


@pytest.mark.slow
def test_a_resume_keeps_an_extension_that_stopped_before_its_first_checkpoint(tmp_path, fake_mnist, monkeypatch, capsys):
    """`resume=run epochs=3` killed before its first checkpoint (the folder's record says 3, the checkpoint
    1): a plain `resume=run` says so and continues to 3 epochs."""
    import yaml

    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist)
    record = tmp_path / "runA" / ".hydra" / "config.yaml"
    config = yaml.safe_load(record.read_text())
    record.write_text(yaml.safe_dump({**config, "epochs": 3}))  # what the killed extension had written
    capsys.readouterr()
    assert main(["train", "resume=runA"]) == 0
    assert "continuing to epochs=3" in capsys.readouterr().err
    assert json.loads((tmp_path / "runA" / "metrics.json").read_text())["epochs"] == 3
    assert main(["train", "resume=runA", "epochs=3"]) == 0  # nothing more to do: no message
    assert "continuing" not in capsys.readouterr().err


@pytest.mark.slow
def test_threads_are_recorded_and_a_resume_keeps_them(tmp_path, fake_mnist, monkeypatch):
    """metrics.json records the threads a run used; a resumption takes the count its checkpoint ran with
    (threads=auto may find the machine busier or quieter), unless given."""
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    _tiny_run("runA", fake_mnist, "threads=1")
    assert json.loads((tmp_path / "runA" / "metrics.json").read_text())["threads"] == 1
    assert main(["train", "resume=runA", "epochs=2"]) == 0
    assert json.loads((tmp_path / "runA" / "metrics.json").read_text())["threads"] == 1
    assert main(["train", "resume=runA", "epochs=3", "threads=2"]) == 0
    assert json.loads((tmp_path / "runA" / "metrics.json").read_text())["threads"] == 2


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last_good_one(tmp_path, fake_mnist, monkeypatch, capsys):
    """The second epoch's checkpoint meets a full disk: one line naming the file and the cause, exit 1,
    no temporary left, the first epoch's checkpoint intact; the run resumes from it."""
    import errno

    from lifted_cli import runs
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    real_save, calls = torch.save, []

    def save(obj, f, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(runs.torch, "save", save)
    args = ["train", f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=2", "batch_size=16",
            "arch.hidden=[8]", "progress=false", "num_samples=0", "hydra.run.dir=run"]
    assert main(args) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "could not write" in err[0] and "checkpoint.pt (No space left on device)" in err[0], err
    assert not list((tmp_path / "run").glob(".*.tmp"))
    monkeypatch.setattr(runs.torch, "save", real_save)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main(["train", "resume=run"]) == 0


def test_a_report_into_a_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    from lifted_cli.cli import main

    (tmp_path / "afile").write_text("x")
    (tmp_path / "runs" / "r" / ".hydra").mkdir(parents=True)
    (tmp_path / "runs" / "r" / ".hydra" / "config.yaml").write_text("command: train\nseed: 0\n")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "report")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot make the folder" in err[0], err
