"""What the benchmark scripts (``scripts/``) share: run ``lifted`` sweeps, read the finished run folders,
describe the machine, and put a report folder in place at once.

A benchmark is sweeps plus ``lifted report`` (``scripts/reproduce.sh`` is the model); these helpers are
its Python side, imported by the scripts as a library (run them with the Python that has lifted
installed, e.g. ``.venv/bin/python scripts/benchmark_depth.py``)."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def lifted() -> list[str]:
    """The command that runs lifted with this Python (the one the scripts run with)."""
    return [sys.executable, "-m", "lifted_cli"]


def sweep(args: list[str], folder: Path, log, seconds: float | None = None, command: str = "train",
          cwd: Path | None = None) -> bool:
    """One ``lifted <command> -m`` into ``folder`` (a job per subfolder), its output to ``log``;
    stopped after ``seconds`` (its finished jobs are kept): False when stopped. Exit status 2 (some
    combinations were refused and skipped) is not a failure; a sweep that leaves no finished run is."""
    cmd = [*lifted(), command, "-m", *args, f"hydra.sweep.dir={folder}", "hydra.sweep.subdir=${hydra.job.num}"]
    for out in (log, sys.stdout):
        print("$ " + " ".join(["lifted", *cmd[3:]]), file=out, flush=True)
    try:
        status = subprocess.run(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=seconds).returncode
    except subprocess.TimeoutExpired:
        print(f"stopped at the time budget: {folder}", file=log, flush=True)
        return False
    if status > 2 or not any(folder.glob("*/metrics.json")):
        raise SystemExit(f"lifted {command} -m failed (status {status}, no finished run in {folder}); see {log.name}")
    return True


def read_runs(root: Path) -> list[dict]:
    """Every finished run below ``root``: its overrides, metrics, history and the name of the folder
    that holds its sweep (``method``)."""
    runs = []
    for cfg in sorted(root.rglob(".hydra/overrides.yaml")):
        folder = cfg.parent.parent
        metrics = folder / "metrics.json"
        if not metrics.is_file():
            continue
        m = json.loads(metrics.read_text())
        if m.get("status") != "finished":
            continue
        # Hydra records a value's special characters escaped (soft_threshold\:0.05)
        overrides = {k: re.sub(r"\\(.)", r"\1", v) for k, v in
                     (str(o).split("=", 1) for o in (yaml.safe_load(cfg.read_text()) or []) if "=" in str(o))}
        with open(folder / "history.csv") as f:
            history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
        runs.append({"folder": folder, "overrides": overrides, "metrics": m, "history": history,
                     "method": folder.parent.name})
    return runs


def psnr_curve(history: list[dict]) -> list[tuple[float, float]]:
    """(training seconds so far, test PSNR) at every evaluated epoch of history.csv rows."""
    t, pts = 0.0, []
    for row in history:
        t += row["seconds"]
        if not math.isnan(row["test_psnr"]):
            pts.append((t, row["test_psnr"]))
    return pts


def best_psnr(history: list[dict]) -> float:
    """The best test PSNR over the evaluated epochs (NaN: none evaluated)."""
    return max((psnr for _, psnr in psnr_curve(history)), default=math.nan)


def time_to(history: list[dict], target: float) -> float | None:
    """Training seconds (history.csv rows: ``seconds`` per epoch, ``test_psnr``, NaN where not
    evaluated) at which the test PSNR first reaches ``target``, linearly interpolated between the
    evaluations around the crossing; the first evaluation's time when it already reaches it (the
    untrained PSNR is not in history.csv); None: never."""
    t, prev = 0.0, None
    for row in history:
        t += row["seconds"]
        psnr = row["test_psnr"]
        if math.isnan(psnr):
            continue
        if psnr >= target:
            if prev is None:
                return t
            t0, p0 = prev
            return t0 + (target - p0) / (psnr - p0) * (t - t0)  # p0 < target <= psnr
        prev = (t, psnr)
    return None


def fmt(v, digits=2) -> str:
    """A table cell: a float with ``digits`` decimals, empty for None and NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def machine(device: str) -> str:
    """The CPU (model and cores), the GPU (where ``device`` is not the CPU), torch and Python."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device != "cpu" else "none"
    return (f"CPU {cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}), GPU {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def stage_report(out: Path, runs_dir: Path, *report_args: str) -> Path:
    """A fresh staging folder beside ``out`` holding ``lifted report``'s table of ``runs_dir`` (its
    pictures stay with the runs); ``publish`` then puts it in place of ``out`` at once."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.call([*lifted(), "report", str(runs_dir), *report_args, "--out", str(tmp / "report")],
                    stdout=subprocess.DEVNULL)
    if (tmp / "report" / "report.md").is_file():
        shutil.move(tmp / "report" / "report.md", tmp / "report.md")
    shutil.rmtree(tmp / "report", ignore_errors=True)
    return tmp


def publish(tmp: Path, out: Path) -> None:
    """The staged report folder in place of ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
