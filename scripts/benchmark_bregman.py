#!/usr/bin/env python
"""Benchmark: lifted Bregman (ISGM) against back-propagation (Adam), same MLP, seeds and epochs.

Runs `lifted train` once per (task, scheme), one after the other on the same device, reads each
run's metrics.json and writes a Markdown and CSV report with test PSNR/SSIM (mean +- std over the
test images), seconds per epoch and the ratio of seconds per epoch to back-propagation measured in
the same run of this script. Also the sparse denoising autoencoder (experiment=sparse_dae and
sparse_dae_10k) for both schemes.

    python scripts/benchmark_bregman.py                       # full MNIST, 5 epochs, CPU
    python scripts/benchmark_bregman.py --quick               # small subsets, a few minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["mnist_denoise", "mnist_deblur", "mnist_inpaint"]
SCHEMES = {
    "backprop (Adam)": ["scheme=backprop"],
    "bregman (ISGM, momentum 0.8: default)": ["scheme=bregman", "solver=isgm"],
    "bregman (plain ISGM, momentum 0)": ["scheme=bregman", "solver=isgm", "solver.momentum=0"],
}


def run(name: str, overrides: list[str], out_root: Path) -> dict:
    folder = out_root / name
    cmd = [sys.executable, "-m", "lifted_cli.cli", "train", *overrides, f"hydra.run.dir={folder}", "progress=false"]
    print("$ lifted train " + " ".join(overrides), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    m = json.loads((folder / "metrics.json").read_text())
    m["wall_seconds"] = time.perf_counter() - t0
    print(f"  test PSNR {m['test']['psnr']['mean']:.2f} dB, {m['seconds_per_epoch']:.2f} s/epoch", flush=True)
    return m


def fmt(summary: dict, digits: int) -> str:
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def row(experiment: str, method: str, m: dict, bp: dict) -> dict:
    """One table row; time ratio and PSNR difference against the back-propagation run ``bp``."""
    return {
        "experiment": experiment, "method": method,
        "psnr": fmt(m["test"]["psnr"], 2), "ssim": fmt(m["test"]["ssim"], 4),
        "s_per_epoch": f"{m['seconds_per_epoch']:.2f}",
        "time_ratio": f"{m['seconds_per_epoch'] / bp['seconds_per_epoch']:.2f}",
        "delta_psnr": f"{m['test']['psnr']['mean'] - bp['test']['psnr']['mean']:+.2f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=None, help="training images (default: all 60,000)")
    ap.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="2,000 training / 500 test images, 2 epochs")
    ap.add_argument("--no-dae", action="store_true", help="skip the sparse autoencoder runs")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"), help="report folder")
    args = ap.parse_args()
    if args.quick:
        args.train_size, args.test_size, args.epochs = args.train_size or 2000, args.test_size or 500, 2

    out = Path(args.out)
    runs_root = ROOT / "results" / "benchmark-runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    common = [f"epochs={args.epochs}", "batch_size=128", f"seed={args.seed}", f"device={args.device}"]
    if args.train_size:
        common.append(f"train_size={args.train_size}")
    if args.test_size:
        common.append(f"test_size={args.test_size}")

    rows = []
    for task in TASKS:
        results = {s: run(f"{task}-{i}", [f"dataset={task}", *common, *ov], runs_root) for i, (s, ov) in enumerate(SCHEMES.items())}
        bp = results["backprop (Adam)"]
        nl = bp["no_learning"]
        rows.append({"experiment": task, "method": "no learning (degraded input)", "psnr": fmt(nl["psnr"], 2),
                     "ssim": fmt(nl["ssim"], 4), "s_per_epoch": "", "time_ratio": "", "delta_psnr": ""})
        rows += [row(task, s, m, bp) for s, m in results.items()]
    if not args.no_dae:
        dae_common = [c for c in common if not c.startswith(("epochs=", "train_size="))]
        for exp in ("sparse_dae", "sparse_dae_10k"):
            results = {s: run(f"{exp}-{i}", [f"experiment={exp}", *dae_common, *ov], runs_root) for i, (s, ov) in enumerate(SCHEMES.items())}
            bp = results["backprop (Adam)"]
            label = f"{exp} ({bp['train_images']} images, {bp['epochs']} epochs)"
            rows += [row(label, s, m, bp) for s, m in results.items()]

    import torch

    out.mkdir(parents=True, exist_ok=True)
    stem = "bregman_vs_backprop" + ("_quick" if args.quick else "")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    header = "| experiment | method | test PSNR (dB) | test SSIM | s/epoch | time ratio to backprop | ΔPSNR to backprop |"
    lines = [
        "# Lifted Bregman (ISGM) vs back-propagation (Adam)",
        "",
        f"Command: `python scripts/benchmark_bregman.py {' '.join(sys.argv[1:])}`".rstrip(),
        f"Settings: {', '.join(common)}; MLP 784-512-512-784 ReLU (identity output); "
        f"torch {torch.__version__}; {time.strftime('%Y-%m-%d')}. PSNR/SSIM: mean ± std over test images "
        "(scikit-image, data_range 1). Seconds per epoch exclude evaluation; the ratio is measured in this one run.",
        "",
        header,
        "|" + "---|" * 7,
    ]
    lines += [f"| {r['experiment']} | {r['method']} | {r['psnr']} | {r['ssim']} | {r['s_per_epoch']} | {r['time_ratio']} | {r['delta_psnr']} |" for r in rows]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
