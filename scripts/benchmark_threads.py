#!/usr/bin/env python3
"""Threads under load: torch's default (every core) against ``threads=auto``, side by side on one machine.

1. A default epoch (lifted Bregman and back-propagation, mlp, ``train_size`` images) on a quiet
   machine, then with one other process keeping one core busy (a Python busy loop): the mean seconds
   per epoch of epochs 2.., for ``threads=<cores>`` (what torch does by default) and ``threads=auto``.
2. A sweep of four runs (both schemes x seeds 0, 1): ``hydra/launcher=joblib`` with as many jobs as
   cores against the same four runs one after another, each with both settings; the wall time of
   the whole command.

Goals (issue "Faults, signals and load"): with a busy core, an epoch at most 1.3x its quiet time;
the joblib sweep at most 0.8x the serial one. Report: ``--out`` (default results/benchmarks/threads),
``threads.md`` and ``threads.csv``.

    OMP_NUM_THREADS= .venv/bin/python scripts/benchmark_threads.py        # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lifted_cli.benchmarks import lifted, machine

REPO = Path(__file__).resolve().parent.parent
SCHEMES = ("bregman", "backprop")


def env() -> dict:
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.pop("OMP_NUM_THREADS", None)  # threads=auto decides, as on a user's shell
    return e


def train(args: list[str], folder: Path) -> dict:
    subprocess.run([*lifted(), "train", *args, f"hydra.run.dir={folder}"], cwd=REPO, env=env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    m = json.loads((folder / "metrics.json").read_text())
    per_epoch = m["seconds_per_epoch_all"][1:] or m["seconds_per_epoch_all"]
    return {"s_per_epoch": sum(per_epoch) / len(per_epoch), "threads": m["threads"]}


def busy_core() -> subprocess.Popen:
    """Another user's job: one core kept busy."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "threads")
    a = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    settings = {f"threads={cores} (torch's default)": f"threads={cores}", "threads=auto": "threads=auto"}
    common = [f"train_size={a.train_size}", "test_size=500", f"epochs={a.epochs}", "num_samples=0", "progress=false"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="lifted-threads-") as tmp:
        tmp = Path(tmp)
        for load in ("quiet", "one busy core"):
            other = busy_core() if load != "quiet" else None
            try:
                time.sleep(1.0 if other else 0.0)
                for label, setting in settings.items():
                    for scheme in SCHEMES:
                        r = train([f"scheme={scheme}", setting, *common], tmp / f"{load}-{setting}-{scheme}".replace(" ", "_").replace("=", "_"))
                        rows.append({"part": "epoch", "load": load, "setting": label, "what": scheme, **r})
                        print(rows[-1], flush=True)
            finally:
                if other:
                    other.kill()
        sweep = ["scheme=" + ",".join(SCHEMES), "seed=0,1", *common]
        for label, setting in settings.items():
            for mode, extra in (("serial", []), (f"joblib, {cores} jobs", ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={cores}"])):
                folder = tmp / f"sweep-{setting}-{mode.split(',')[0]}".replace("=", "_")
                seconds = timed([*lifted(), "train", "-m", *sweep, setting, *extra, f"hydra.sweep.dir={folder}"])
                rows.append({"part": "sweep", "load": "quiet", "setting": label, "what": mode, "s_per_epoch": "",
                             "threads": "", "wall_s": seconds})
                print(rows[-1], flush=True)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "threads.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["part", "load", "setting", "what", "s_per_epoch", "threads", "wall_s"])
        w.writeheader()
        w.writerows(rows)

    def epoch(load, label, scheme):
        return next(r for r in rows if r["part"] == "epoch" and r["load"] == load and r["setting"] == label and r["what"] == scheme)

    def wall(label, serial):
        return next(r["wall_s"] for r in rows if r["part"] == "sweep" and r["setting"] == label
                    and (r["what"] == "serial") == serial)

    cmd = "scripts/benchmark_threads.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# Threads under load: torch's default against threads=auto", "",
             f"Command: `{cmd}`; {time.strftime('%Y-%m-%d')}; machine: {machine('cpu')}.",
             f"Default run (mlp 784-512-512-784, denoising) on {a.train_size:,} MNIST images, {a.epochs} epochs, "
             "seconds per epoch averaged over epochs 2 and later; `one busy core`: a Python busy loop beside the run.", "",
             "## One run, quiet and beside a busy core", "",
             "| scheme | setting | threads used (quiet / busy) | s/epoch quiet | s/epoch, one busy core | busy / quiet |",
             "|---|---|---|---|---|---|"]
    for scheme in SCHEMES:
        for label in settings:
            q, b = epoch("quiet", label, scheme), epoch("one busy core", label, scheme)
            lines.append(f"| {scheme} | {label} | {q['threads']} / {b['threads']} | {q['s_per_epoch']:.2f} | "
                         f"{b['s_per_epoch']:.2f} | {b['s_per_epoch'] / q['s_per_epoch']:.2f} |")
    lines += ["", "busy / quiet: the same setting's seconds per epoch beside a busy core over its quiet ones.", "",
              f"## A sweep of four runs ({', '.join(SCHEMES)} x seeds 0, 1), quiet", "",
              f"| setting | serial (s) | joblib, {cores} jobs (s) | joblib / serial |", "|---|---|---|---|"]
    for label in settings:
        s_, j_ = wall(label, True), wall(label, False)
        lines.append(f"| {label} | {s_:.1f} | {j_:.1f} | {j_ / s_:.2f} |")
    (a.out / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
