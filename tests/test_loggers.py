"""loggers.py: the ``logger`` group with the real packages. TensorBoard event files read back with
``event_accumulator`` hold the history's scalars, the final metrics, the hparams and the samples; an
MLflow store queried with ``mlflow.search_runs`` holds one run per job of a two-job multirun with its
parameters, metrics and tags; a missing package and an unreachable store are refused at start."""

import csv
import json
import math
from pathlib import Path

import pytest

from lifted_cli import loggers
from lifted_cli.commands.invert import invert
from lifted_cli.commands.invert import validate as validate_invert
from lifted_cli.commands.train import train, validate
from lifted_cli.errors import ConfigError
from tests.conftest import run_lifted

TINY = ["train_size=32", "test_size=8", "epochs=2", "batch_size=16", "num_samples=2", "arch.hidden=[8]",
        "progress=false", "device=cpu"]


def events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def history(folder: Path) -> list[dict]:
    return list(csv.DictReader((folder / "history.csv").open()))


def store(uri: str):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow


def test_tensorboard_events_hold_the_history_final_metrics_hparams_and_samples(tmp_path, fake_mnist, compose_train):
    cfg = compose_train([f"data_root={fake_mnist}", *TINY, "logger=tensorboard"], output_dir=tmp_path / "run")
    validate(cfg)
    metrics = train(cfg)
    acc = events(tmp_path / "run")
    rows = history(tmp_path / "run")
    for key in ("loss", "objective", "gap", "test_psnr", "test_ssim", "seconds", "step_ms"):
        logged = acc.Scalars(key)
        assert [e.step for e in logged] == [1, 2], key
        assert [e.value for e in logged] == pytest.approx([float(r[key]) for r in rows], rel=1e-6), key
    (final,) = acc.Scalars("final/test.psnr.mean")
    assert final.step == 2 and final.value == pytest.approx(metrics["test"]["psnr"]["mean"], rel=1e-6)
    assert "final/seed" not in acc.Tags()["scalars"]  # settings are hyperparameters, not metrics
    assert acc.Images("samples")[0].step == 2

    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["scheme.name"].string_value == "bregman" and start.hparams["epochs"].number_value == 2
    assert start.hparams["arch.hidden"].string_value == "[8]" and "output_dir" not in start.hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "final/test.psnr.mean" in {m.name.tag for m in experiment.metric_infos}


@pytest.mark.slow
def test_mlflow_holds_one_run_per_job_of_a_multirun(tmp_path, fake_mnist):
    db = tmp_path / "store" / "mlflow.db"
    run_lifted(["train", "-m", "seed=0,1", "logger=mlflow", f"logger.mlflow.tracking_uri=sqlite:///{db}",
                f"data_root={fake_mnist}", *TINY, "hydra.sweep.dir=sweep"], tmp_path)
    assert db.read_bytes()[:16] == b"SQLite format 3\x00"  # a real database
    mlflow = store(f"sqlite:///{db}")
    (experiment,) = [e for e in mlflow.search_experiments() if e.name != "Default"]
    assert experiment.name == "sweep"  # the multirun is the experiment
    runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], order_by=["params.seed"])
    assert len(runs) == 2 and list(runs["params.seed"]) == ["0", "1"]
    client = mlflow.MlflowClient()
    for job, run in runs.iterrows():
        folder = tmp_path / "sweep" / str(job)
        metrics = json.loads((folder / "metrics.json").read_text())
        assert run["status"] == "FINISHED" and run["tags.mlflow.runName"] == f"job {job}"
        assert (run["tags.scheme"], run["tags.arch"], run["tags.source"], run["tags.task"]) == ("bregman", "mlp", "mnist", "denoise")
        assert run["tags.run_dir"] == str(folder.resolve())
        assert run["params.scheme.name"] == "bregman" and run["params.solver.name"] == "isgm"
        assert run["params.epochs"] == "2" and "params.output_dir" not in runs
        assert run["metrics.final/test.psnr.mean"] == pytest.approx(metrics["test"]["psnr"]["mean"])
        steps = client.get_metric_history(run["run_id"], "test_psnr")
        assert sorted(m.step for m in steps) == [1, 2]
        assert sorted(m.value for m in steps)[-1] >= min(float(r["test_psnr"]) for r in history(folder))
        artifacts = {a.path for a in client.list_artifacts(run["run_id"])}
        assert {"metrics.json", "history.csv", "checkpoint.pt", "samples.png", ".hydra"} <= artifacts
        assert ".lock" not in artifacts
    assert (db.parent / "mlartifacts").is_dir()  # artifacts beside the database


@pytest.mark.slow  # a whole run with a tracker
def test_invert_logs_its_history_and_final_metrics(tmp_path, fake_mnist, compose_train, compose_invert):
    train(compose_train([f"data_root={fake_mnist}", *TINY, "epochs=1"], output_dir=tmp_path / "net"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = compose_invert([f"checkpoint={tmp_path / 'net'}", f"data_root={fake_mnist}", "num_images=3", "iterations=6",
                          "log_every=2", "device=cpu", "progress=false", "logger=[tensorboard,mlflow]",
                          f"logger.mlflow.tracking_uri={uri}"], output_dir=tmp_path / "inv")
    validate_invert(cfg)
    metrics = invert(cfg)
    acc = events(tmp_path / "inv")
    assert [e.step for e in acc.Scalars("residual")] == [2, 4, 6] and "psnr" in acc.Tags()["scalars"]
    mlflow = store(uri)
    (run,) = [r for _, r in mlflow.search_runs(experiment_names=["lifted-invert"]).iterrows()]
    assert run["tags.command"] == "invert" and run["tags.method"] == "lifted_bregman" and run["params.iterations"] == "6"
    assert run["tags.mlflow.runName"] == "inv"
    assert run["metrics.final/recovered.psnr.mean"] == pytest.approx(metrics["recovered"]["psnr"]["mean"])
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run["run_id"], "residual")] == [2, 4, 6]


@pytest.mark.slow
def test_a_resumed_run_logs_into_the_same_mlflow_run_and_event_folder(tmp_path, fake_mnist, monkeypatch):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", f"data_root={fake_mnist}", *TINY, "epochs=1", "logger=[tensorboard,mlflow]",
                 "hydra.run.dir=runA"]) == 0
    assert main(["train", "resume=runA", "epochs=2"]) == 0
    mlflow = store(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")  # the default store, from where lifted ran
    (run,) = [r for _, r in mlflow.search_runs(experiment_names=["lifted-train"]).iterrows()]
    assert run["status"] == "FINISHED" and run["params.epochs"] == "1"  # parameters are never rewritten
    assert [m.step for m in mlflow.MlflowClient().get_metric_history(run["run_id"], "loss")] == [1, 2]
    assert [e.step for e in events(tmp_path / "runA").Scalars("loss")] == [1, 2]


# ------------------------------------------------------------------------------------- refusals
def test_a_logger_that_is_not_installed_is_refused_with_the_pip_line(compose_train, monkeypatch, tmp_path, capsys):
    from lifted_cli.cli import main

    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logger=mlflow needs the mlflow package: pip install 'lifted_cli\[loggers\]'"):
        validate(compose_train(["logger=[tensorboard,mlflow]"], output_dir="/tmp/x"))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "logger=mlflow", "hydra.run.dir=run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'lifted_cli[loggers]'" in err[0] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("uri", [pytest.param("http://127.0.0.1:9", marks=pytest.mark.slow),  # MLflow's retries
                                 "sqlite:////proc/no/such/folder/mlflow.db"])
def test_an_unreachable_store_is_refused_before_any_work(tmp_path, fake_mnist, monkeypatch, capsys, uri):
    from lifted_cli.cli import main
    from lifted_cli.commands import train as train_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train_module, "setup", lambda *a, **k: pytest.fail("the run started"))
    assert main(["train", f"data_root={fake_mnist}", "logger=mlflow", f"logger.mlflow.tracking_uri={uri}",
                 "hydra.run.dir=run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the tracking store cannot be reached" in err[0], err
    assert not (tmp_path / "run").exists()
    assert main(["train", "-m", "seed=0,1", f"data_root={fake_mnist}", "logger=mlflow",
                 f"logger.mlflow.tracking_uri={uri}", "hydra.sweep.dir=sweep"]) == 2  # no job starts
    assert not (tmp_path / "sweep").exists() or not any((tmp_path / "sweep").iterdir())


@pytest.mark.parametrize("overrides,fragment", [
    (["logger=mlflow", "logger.mlflow.tracking_uri=' '"], "logger.mlflow.tracking_uri"),
    (["logger=mlflow", "logger.mlflow.experiment_name=''"], "logger.mlflow.experiment_name"),
    (["logger=tensorboard", "+logger.tensorboard.dir=x"], "logger.tensorboard.dir"),
    (["logger=tensorboard", "logger.tensorboard.samples=maybe"], "logger.tensorboard.samples"),
    (["+logger.wandb.project=x"], "logger=wandb"),
])
def test_bad_logger_values_rejected_with_one_line(compose_train, overrides, fragment):
    with pytest.raises(ConfigError) as err:
        validate(compose_train(overrides, output_dir="/tmp/x"))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_logger_option_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", "logger=wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logger" in err[0] and "tensorboard" in err[0], err


# ----------------------------------------------------------------------------------- the pieces
def test_only_finite_numbers_are_logged_and_a_failing_logger_is_dropped(caplog):
    class Backend:
        name = "fake"

        def __init__(self, fail=False):
            self.rows, self.fail, self.closed = [], fail, None

        def log_row(self, step, values):
            if self.fail:
                raise OSError("disk full")
            self.rows.append((step, values))

        def close(self, status):
            self.closed = status

    good, bad = Backend(), Backend(fail=True)
    with loggers.Loggers([good, bad]) as trackers:
        trackers.log_row({"epoch": 3, "loss": 1.5, "test_psnr": math.nan, "val_psnr": 20, "ok": True, "name": "x"}, "epoch")
        trackers.log_row({"epoch": 4, "loss": 1.0}, "epoch")
    assert good.rows == [(3, {"loss": 1.5, "val_psnr": 20.0}), (4, {"loss": 1.0})] and good.closed == "FINISHED"
    assert bad.closed is None and "logger=fake failed (OSError: disk full)" in caplog.text
    with pytest.raises(KeyboardInterrupt):
        with loggers.Loggers([good]):
            raise KeyboardInterrupt
    assert good.closed == "KILLED"
    assert loggers.start({"logger": {"tensorboard": {}}}, Path("/tmp/x"), enabled=False).backends == []


def test_params_are_the_flat_resolved_config_without_where_it_writes(compose_train):
    p = loggers.params(compose_train(["logger=tensorboard"], output_dir="/tmp/x"))
    assert p["scheme.name"] == "bregman" and p["data_sources"] == '["local", "torchvision", "pypi"]'
    assert not any(k.split(".")[0] in ("output_dir", "logger", "progress", "resume") for k in p)
    assert loggers.final_metrics({"test": {"psnr": {"mean": 20.0, "count": 4}}, "seed": 0, "status": "finished",
                                  "hyperparameters": {"tau": 1.0}}) == {"final/test.psnr.mean": 20.0,
                                                                        "final/test.psnr.count": 4.0}


@pytest.mark.slow
def test_rank_0_alone_logs_a_parallel_run(tmp_path, fake_mnist):
    db = tmp_path / "mlflow.db"
    run_lifted(["train", f"data_root={fake_mnist}", *TINY, "train_size=40", "parallel=data", "parallel.nproc=2",
                "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{db}", "hydra.run.dir=run"], tmp_path)
    assert len(list((tmp_path / "run" / "tensorboard").iterdir())) == 1  # one event file: rank 0's
    assert [e.step for e in events(tmp_path / "run").Scalars("comm_ms")] == [1, 2]
    mlflow = store(f"sqlite:///{db}")
    (run,) = [r for _, r in mlflow.search_runs(experiment_names=["lifted-train"]).iterrows()]
    assert run["status"] == "FINISHED" and run["params.parallel.name"] == "data" and run["tags.mlflow.runName"] == "run"


@pytest.mark.slow  # a whole run with a tracker
def test_a_tracker_that_cannot_start_refuses_the_run_before_training(tmp_path, fake_mnist, monkeypatch, capsys):
    from lifted_cli.cli import main

    def gone(self, node, cfg, out):
        raise OSError("the server went away")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loggers.MLflowLogger, "__init__", gone)
    assert main(["train", f"data_root={fake_mnist}", *TINY, "logger=[tensorboard,mlflow]", "hydra.run.dir=run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lifted train: error: logger=mlflow cannot start (OSError: the server went away)"]
    assert not (tmp_path / "run").exists()
