"""commands/report.py: `lifted report` on folders of tiny real runs (a multirun over scheme x seed, and a
failed run)."""

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LIFTED = [sys.executable, "-m", "lifted_cli"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, fake_mnist):
    work = tmp_path_factory.mktemp("report")
    sweep = work / "sweep"
    proc = subprocess.run([*LIFTED, "train", "-m", "scheme=backprop,bregman", "seed=0,1", f"data_root={fake_mnist}",
                           "train_size=32", "test_size=6", "epochs=2", "batch_size=16", "num_samples=2",
                           "arch.hidden=[16]", "progress=false", f"hydra.sweep.dir={sweep}"],
                          cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # a run that never finished: its metrics.json is gone (as after a crash mid-run)
    broken = sweep / "4"
    shutil.copytree(sweep / "0", broken)
    (broken / "metrics.json").unlink()
    return work, sweep


@pytest.mark.slow
def test_report_groups_by_swept_overrides_with_mean_std(sweep):
    work, folder = sweep
    out = work / "rep"
    proc = subprocess.run([*LIFTED, "report", str(folder), "--out", str(out)], cwd=work, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| train | backprop |" in proc.stdout  # the table is printed
    rows = list(csv.DictReader(open(out / "report.csv")))
    by_scheme = {r["scheme"]: r for r in rows}
    assert set(by_scheme) == {"backprop", "bregman"}  # seed is not a grouping key
    assert all(r["runs"] == "2" and r["seeds"] == "0,1" for r in rows)
    # mean +- std are those of the two seeds' metrics.json
    import json

    for scheme, jobs in (("backprop", ("0", "1")), ("bregman", ("2", "3"))):
        psnrs = [json.loads((folder / j / "metrics.json").read_text())["test"]["psnr"]["mean"] for j in jobs]
        mean = sum(psnrs) / 2
        std = abs(psnrs[0] - psnrs[1]) / 2**0.5
        assert by_scheme[scheme]["test PSNR (dB)"] == f"{mean:.2f} ± {std:.2f}"
    md = (out / "report.md").read_text()
    assert "No learning" in md and "Not included (1)" in md and str(folder / "4") in md
    for name in ("curves.png", "train_samples.png", "report.md"):
        assert (out / name).is_file()


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_report_bad_input(tmp_path):
    proc = subprocess.run([*LIFTED, "report", str(tmp_path / "nope")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "not a folder" in proc.stderr
    proc = subprocess.run([*LIFTED, "report", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "no run folder" in proc.stderr


@pytest.mark.slow
def test_report_baseline_pivot_and_best(sweep):
    work, folder = sweep
    out = work / "rep2"
    proc = subprocess.run([*LIFTED, "report", str(folder), "--out", str(out), "--baseline", "scheme=backprop",
                           "--pivot", "seed,scheme", "--best", "scheme"], cwd=work, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--pivot seed,scheme" in proc.stderr  # seed is averaged over, not swept
    proc = subprocess.run([*LIFTED, "report", str(folder), "--out", str(out), "--baseline", "scheme=backprop",
                           "--best", "scheme"], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["scheme"]: r for r in csv.DictReader(open(out / "report.csv"))}
    assert rows["backprop"]["ΔPSNR to scheme=backprop"] == "+0.00" and rows["backprop"]["time ratio to scheme=backprop"] == "1.00"
    import json

    psnr = {s: sum(json.loads((folder / j / "metrics.json").read_text())["test"]["psnr"]["mean"] for j in jobs) / 2
            for s, jobs in (("backprop", ("0", "1")), ("bregman", ("2", "3")))}
    assert rows["bregman"]["ΔPSNR to scheme=backprop"] == f"{psnr['bregman'] - psnr['backprop']:+.2f}"
    md = (out / "report.md").read_text()
    winner = max(psnr, key=psnr.get)
    assert "Best scheme" in md and f"| {winner} |" in md.split("Best scheme")[1]


class _FakeRun:
    def __init__(self, psnr):
        self.psnr = psnr

    def value(self, name):
        return self.psnr


def test_pivot_puts_one_swept_key_down_and_one_across():
    from lifted_cli.commands.report import pivot_lines

    groups = {("train", "mlp", "backprop"): [_FakeRun(20.0), _FakeRun(22.0)], ("train", "mlp", "bregman"): [_FakeRun(20.5)],
              ("train", "resnet", "backprop"): [_FakeRun(21.25)]}
    lines = pivot_lines(["arch", "scheme"], groups, "arch", "scheme")
    assert "| arch | backprop | bregman |" in lines
    assert "| mlp | 21.00 | 20.50 |" in lines and "| resnet | 21.25 |  |" in lines


def test_baseline_is_the_group_agreeing_on_the_most_settings():
    from lifted_cli.commands.report import baseline_for

    swept = ["delta", "method", "output"]
    groups = {("invert", "0", "lifted", ""): [], ("invert", "0", "lifted", "clamped"): [], ("invert", "0.1", "lifted", "clamped"): [],
              ("invert", "0.1", "lifted", ""): [], ("train", "0", "lifted", ""): []}
    assert baseline_for(swept, groups, ("invert", "0.1", "lifted", "clamped"), ("delta", "0")) == ("invert", "0", "lifted", "clamped")
    assert baseline_for(swept, groups, ("invert", "0.1", "lifted", ""), ("delta", "0")) == ("invert", "0", "lifted", "")
    swept = ["scheme", "solver.momentum"]
    groups = {("train", "backprop", ""): [], ("train", "bregman", "0"): []}
    assert baseline_for(swept, groups, ("train", "bregman", "0"), ("scheme", "backprop")) == ("train", "backprop", "")


@pytest.mark.slow
def test_a_corrupt_run_is_listed_as_unreadable_and_the_report_completes(sweep, tmp_path):
    work, folder = sweep
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "0" / "metrics.json").write_text("{not json")
    (copy / "1" / ".hydra" / "config.yaml").write_text("a: [unclosed")
    (copy / "2" / "history.csv").write_bytes(b"\x00\x01garbage,\n1,2,3\n")
    (copy / "3" / "samples.png").write_bytes(b"not a png")
    out = tmp_path / "rep"
    proc = subprocess.run([*LIFTED, "report", str(copy), "--out", str(out)], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text()
    assert f"{copy / '1'}: unreadable" in md and str(copy / "0") in md
    assert "lifted train: 2 finished runs" in md  # runs 2 and 3 (bregman, seeds 0 and 1) are still grouped
    assert not [p for p in out.iterdir() if p.suffix == ".tmp" or p.name.startswith(".")]


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_report_out_must_not_be_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    proc = subprocess.run([*LIFTED, "report", str(tmp_path), "--out", str(tmp_path / "f")], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "is a file" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("metrics", ['{"status": "finished", "test": {"psnr": 5}}', '{"status": "finished", "test": "x"}',
                                     '{"status": "finished", "test": {"psnr": {"mean": "abc"}, "ssim": {"mean": 1}}}',
                                     '["finished"]'])
def test_records_of_the_wrong_shape_are_listed_unreadable(tmp_path, metrics):
    from lifted_cli.commands.report import find_runs

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("command: train\nseed: 0\n")
    (tmp_path / "run" / "metrics.json").write_text(metrics)
    (run,) = find_runs([tmp_path])
    assert not run.finished and run.status.startswith("unreadable")


def test_bad_report_arguments_are_one_line(tmp_path):
    from lifted_cli.commands.report import main

    assert main(["--bogus", str(tmp_path)]) == 2


def _run_folder(root, name: str, lr: str, test: float, val: float | None) -> None:
    """A finished train run's record (what the report reads), with or without a validation set."""
    import json

    folder = root / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("command: train\nseed: 0\ndataset: {name: mnist_denoise}\n")
    (folder / ".hydra" / "overrides.yaml").write_text(f"- solver.lr={lr}\n")
    block = lambda v: {"psnr": {"mean": v, "std": 0.0, "count": 4}, "ssim": {"mean": 0.5, "std": 0.0, "count": 4}}
    metrics = {"status": "finished", "test": block(test), "seconds_per_epoch": 1.0}
    if val is not None:
        metrics["val"] = block(val)
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_report_ranks_and_chooses_by_validation_psnr(tmp_path):
    """--by val orders the groups by validation PSNR and --best picks by it, even where the test set
    would pick another setting."""
    from lifted_cli.commands.report import main

    for name, lr, test, val in (("a", "0.1", 20.0, 18.0), ("b", "0.01", 19.0, 19.5), ("c", "0.001", 17.0, 17.5)):
        _run_folder(tmp_path / "runs", name, lr, test, val)
    out = tmp_path / "rep"
    assert main([str(tmp_path / "runs"), "--by", "val", "--best", "solver.lr", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "report.csv")))
    assert [(r["rank"], r["solver.lr"]) for r in rows] == [("1", "0.01"), ("2", "0.1"), ("3", "0.001")]
    assert rows[0]["val PSNR (dB)"] == "19.50 ± 0.00"
    md = (out / "report.md").read_text()
    best = md.split("(highest mean validation PSNR):")[1]
    assert "| 0.01 |" in best and "| 0.1 |" not in best
    assert main([str(tmp_path / "runs"), "--best", "solver.lr", "--out", str(tmp_path / "rep2")]) == 0  # the test set's pick
    assert "| 0.1 |" in (tmp_path / "rep2" / "report.md").read_text().split("(highest mean test PSNR):")[1]


def test_ranking_by_validation_needs_runs_with_a_validation_set(tmp_path, capsys):
    from lifted_cli.commands.report import main

    _run_folder(tmp_path, "a", "0.1", 20.0, None)
    assert main([str(tmp_path), "--by", "val", "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--by val: no finished train run holds a validation set" in err
    assert not (tmp_path / "rep").exists()
    assert main([str(tmp_path), "--out", str(tmp_path / "rep")]) == 0
    assert "val PSNR" not in (tmp_path / "rep" / "report.md").read_text()  # no empty column without one


def test_where_a_run_was_logged_to_is_not_a_swept_key(tmp_path):
    from lifted_cli.commands.report import find_runs, group_runs

    metrics = '{"status": "finished", "test": {"psnr": {"mean": 20}, "ssim": {"mean": 0.5}}}'
    for name, overrides in (("a", "[scheme=mac, logger=mlflow]"), ("b", "['logger=[tensorboard,mlflow]', "
                                                                       "logger.mlflow.run_name=x, scheme=bregman]")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("command: train\nseed: 0\n")
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(overrides)
        (tmp_path / name / "metrics.json").write_text(metrics)
    swept, groups = group_runs(find_runs([tmp_path]))
    assert swept == ["scheme"] and len(groups) == 2
