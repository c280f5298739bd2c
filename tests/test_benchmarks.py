"""lifted_cli/benchmarks.py, the library of the benchmark scripts: a sweep runs, its finished runs are
read back with their overrides and histories, a report is staged and published in one move."""

import math

import pytest

from lifted_cli import benchmarks


@pytest.mark.slow
def test_a_sweep_is_read_back_and_its_report_published(tmp_path, fake_mnist):
    folder = tmp_path / "runs" / "backprop"
    log = open(tmp_path / "sweep.log", "w")
    assert benchmarks.sweep(["scheme=backprop", "arch.hidden=[8]", "seed=0,1", f"data_root={fake_mnist}", "train_size=32",
                             "test_size=8", "epochs=1", "num_samples=0", "progress=false"], folder, log, cwd=tmp_path)
    log.close()
    runs = benchmarks.read_runs(tmp_path / "runs")
    assert sorted(r["overrides"]["seed"] for r in runs) == ["0", "1"] and {r["method"] for r in runs} == {"backprop"}
    assert all(len(r["history"]) == 1 and r["metrics"]["status"] == "finished" for r in runs)
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.md").write_text("an earlier report")
    staged = benchmarks.stage_report(out, tmp_path / "runs")
    (staged / "table.md").write_text("new")
    benchmarks.publish(staged, out)
    assert (out / "report.md").is_file() and (out / "table.md").is_file() and not (out / "stale.md").exists()


@pytest.mark.slow  # a sweep in a subprocess
def test_a_failed_sweep_stops_the_benchmark(tmp_path):
    with open(tmp_path / "sweep.log", "w") as log, pytest.raises(SystemExit, match="failed"):
        benchmarks.sweep(["epochs=abc"], tmp_path / "none", log, cwd=tmp_path)


def test_cells_are_empty_for_missing_values():
    assert benchmarks.fmt(float("nan")) == "" and benchmarks.fmt(None) == ""
    assert benchmarks.fmt(1.23456, 3) == "1.235" and benchmarks.fmt(7) == "7"


def test_time_to_a_psnr_is_interpolated_between_evaluated_epochs():
    nan = float("nan")
    history = [{"seconds": 10.0, "test_psnr": 15.0}, {"seconds": 10.0, "test_psnr": nan},
               {"seconds": 10.0, "test_psnr": 19.0}, {"seconds": 10.0, "test_psnr": 20.0}]
    assert benchmarks.time_to(history, 14.0) == 10.0  # already there at the first evaluation
    assert benchmarks.time_to(history, 17.0) == pytest.approx(20.0)  # half way from (10 s, 15) to (30 s, 19)
    assert benchmarks.time_to(history, 20.0) == 40.0
    assert benchmarks.time_to(history, 20.5) is None


def test_a_psnr_curve_accumulates_training_seconds_over_evaluated_epochs():
    nan = float("nan")
    history = [{"seconds": 2.0, "test_psnr": 15.0}, {"seconds": 3.0, "test_psnr": nan}, {"seconds": 4.0, "test_psnr": 18.0}]
    assert benchmarks.psnr_curve(history) == [(2.0, 15.0), (9.0, 18.0)]


def test_the_best_psnr_skips_epochs_not_evaluated():
    nan = float("nan")
    assert benchmarks.best_psnr([{"seconds": 1.0, "test_psnr": 15.0}, {"seconds": 1.0, "test_psnr": nan}]) == 15.0
    assert math.isnan(benchmarks.best_psnr([{"seconds": 1.0, "test_psnr": nan}]))
