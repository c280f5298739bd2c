#!/usr/bin/env python
"""Benchmark: every scheme on every architecture (issue 4), mnist_denoise (sigma 0.3).

For each architecture (mlp, resnet, proxnet, unrolled_pnn) and scheme (backprop, bregman, mac,
fenchel, contrastive), with each scheme's default solver and every other setting at its default,
runs `lifted train` one after the other on the same device and writes a Markdown and CSV report:
test PSNR/SSIM (mean +- std over the test images), seconds per epoch, and the differences to
back-propagation on the same architecture, plus the no-learning row. Combinations that the
mathematics does not allow are validated exactly as `lifted train` does and listed with the reason.

    python scripts/benchmark_schemes.py              # full MNIST, 5 epochs, CPU
    python scripts/benchmark_schemes.py --quick      # 2,000 / 500 images, 1 epoch
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from benchmark_bregman import ROOT, fmt, run

ARCHS = ["mlp", "resnet", "proxnet", "unrolled_pnn"]
SCHEMES = ["backprop", "bregman", "mac", "fenchel", "contrastive"]


def invalid_reason(overrides: list[str]) -> str | None:
    """None when `lifted train <overrides>` is a valid run, else the one-line reason."""
    from hydra import compose, initialize_config_module

    from lifted_cli.config import ConfigError, register_configs, validate_train

    register_configs()
    with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    try:
        validate_train(cfg)
    except ConfigError as err:
        return str(err)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=None, help="training images (default: all 60,000)")
    ap.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--quick", action="store_true", help="2,000 training / 500 test images, 1 epoch")
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks"), help="report folder")
    ap.add_argument("--from-runs", default=None,
                    help="write the report from the run folders of an earlier (possibly cut-short) invocation "
                         "instead of running; combinations without a finished run are listed as not finished")
    args = ap.parse_args()
    if args.quick:
        args.train_size, args.test_size, args.epochs = args.train_size or 2000, args.test_size or 500, 1

    runs_root = Path(args.from_runs) if args.from_runs else ROOT / "results" / "benchmark-runs" / time.strftime("%Y-%m-%d_%H-%M-%S")
    common = ["dataset=mnist_denoise", f"epochs={args.epochs}", "batch_size=128", f"seed={args.seed}", f"device={args.device}"]
    if args.train_size:
        common.append(f"train_size={args.train_size}")
    if args.test_size:
        common.append(f"test_size={args.test_size}")

    t_start = time.perf_counter()
    rows, no_learning = [], None
    for arch in args.archs.split(","):
        bp = None
        for scheme in args.schemes.split(","):
            ov = [*common, f"arch={arch}", f"scheme={scheme}"]
            reason = invalid_reason(ov)
            r = {"arch": arch, "scheme": scheme, "solver": "", "psnr": "", "ssim": "", "s_per_epoch": "",
                 "delta_psnr": "", "time_ratio": "", "note": ""}
            if reason is not None:
                r["note"] = "not run: " + reason.split(": ", 1)[-1]
                print(f"$ lifted train {' '.join(ov)}\n  invalid: {reason}", flush=True)
                rows.append(r)
                continue
            if args.from_runs:
                path = runs_root / f"{arch}-{scheme}" / "metrics.json"
                if not path.is_file():
                    r["note"] = "not finished in the time of this invocation"
                    rows.append(r)
                    continue
                m = json.loads(path.read_text())
            else:
                m = run(f"{arch}-{scheme}", ov, runs_root)
            if scheme == "backprop":
                bp = m
            no_learning = no_learning or m["no_learning"]
            r.update(solver=m["hyperparameters"]["solver"]["name"], psnr=fmt(m["test"]["psnr"], 2),
                     ssim=fmt(m["test"]["ssim"], 4), s_per_epoch=f"{m['seconds_per_epoch']:.2f}")
            if bp is not None and scheme != "backprop":
                r["delta_psnr"] = f"{m['test']['psnr']['mean'] - bp['test']['psnr']['mean']:+.2f}"
                r["time_ratio"] = f"{m['seconds_per_epoch'] / bp['seconds_per_epoch']:.2f}"
            rows.append(r)
    wall = time.perf_counter() - t_start
    if args.from_runs:  # the wall time of the runs themselves: first start to last metrics.json
        stamps = [p.stat().st_mtime for p in runs_root.glob("*/metrics.json")]
        starts = [p.stat().st_mtime for p in runs_root.glob("*/.hydra/config.yaml")]
        wall = max(stamps) - min(starts) if stamps else 0.0

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "schemes_x_archs" + ("_quick" if args.quick else "")
    with open(out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "# Every lifted scheme on every architecture: MNIST denoising (sigma 0.3)",
        "",
        f"Command: `python scripts/benchmark_schemes.py {' '.join(sys.argv[1:])}`".rstrip()
        + (" (report written from the run folders of an earlier invocation of the same command)" if args.from_runs else ""),
        f"Settings: {', '.join(common)}; every scheme with its default solver, every architecture with its "
        f"default config (`lifted train arch=<a> --cfg job` shows them); torch {torch.__version__}; "
        f"{time.strftime('%Y-%m-%d')}; whole benchmark {wall / 60:.1f} min wall time, runs one after another. "
        "PSNR/SSIM: mean ± std over the test images (scikit-image, data_range 1). Seconds per epoch exclude "
        "evaluation. ΔPSNR and time ratio are against back-propagation on the same architecture.",
        "",
        f"No learning (the noisy input): PSNR {fmt(no_learning['psnr'], 2)} dB, SSIM {fmt(no_learning['ssim'], 4)}.",
        "",
        "| architecture | scheme | solver | test PSNR (dB) | test SSIM | s/epoch | ΔPSNR | time ratio | note |",
        "|" + "---|" * 9,
    ]
    lines += [f"| {r['arch']} | {r['scheme']} | {r['solver']} | {r['psnr']} | {r['ssim']} | {r['s_per_epoch']} | "
              f"{r['delta_psnr']} | {r['time_ratio']} | {r['note']} |" for r in rows]
    schemes = args.schemes.split(",")
    lines += ["", "Test PSNR (dB), architecture x scheme:", "",
              "| architecture | " + " | ".join(schemes) + " |", "|" + "---|" * (len(schemes) + 1)]
    for arch in args.archs.split(","):
        cells = [(r["psnr"].split(" ")[0] or "n/a") for s in schemes for r in rows if r["arch"] == arch and r["scheme"] == s]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
