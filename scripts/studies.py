#!/usr/bin/env python3
"""The studies the chapter invites, lifted Bregman against back-propagation (sweeps + ``lifted report``).

* ``--study activations``: the hidden layers of the MLP with tanh, soft-thresholding, ReLU and a
  clamp, on the three tasks (denoising, deblurring, inpainting): does a proximal activation favour
  the lifted approach? Table of test (and validation) PSNR per task x activation x method, the
  difference Bregman - back-propagation, and ``activations.png``.
* ``--study robustness``: test PSNR over a grid spanning three orders of magnitude in each of two
  hyperparameters: the penalty weight lambda x ISGM's tau (lifted Bregman) and Adam's learning rate x
  weight decay (back-propagation): which degrades more gracefully? Heatmaps ``robustness.png``, and
  per method the share of the grid within 1 dB of its best setting and the spread.

Each run: ``--train-size`` training images (default 10,000), ``--val-size`` held out (5,000),
``--epochs`` (3), the default MLP (784-512-512-784) and each scheme's default solver. Outputs in
``--out`` (default ``results/benchmarks/study_<study>``): ``<study>.md``, ``<study>.csv``, the
picture, and ``report.md`` (``lifted report`` of all runs).

    scripts/studies.py --study activations
    scripts/studies.py --study robustness
    scripts/studies.py --study activations --quick      # a smoke run (512 / 128 images, 1 epoch)

Extra ``key=value`` arguments go to every ``lifted train``.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_depth import REPO, machine, publish, read_runs, stage_report, sweep  # noqa: E402

TASKS = ("mnist_denoise", "mnist_deblur", "mnist_inpaint")
#: hidden activations of the study: a smooth one and three proximal maps of convex functions
ACTIVATIONS = ("tanh", "soft_threshold:0.05", "relu", "clamp:-1:1")
METHODS = {"bregman": "lifted Bregman (ISGM)", "backprop": "back-propagation (Adam)"}
#: the robustness grids: three orders of magnitude in each hyperparameter
ROBUSTNESS = {
    "bregman": ("scheme.penalty_weight", ["0.1", "1", "10", "100"], "solver.tau", ["0.03", "0.3", "3", "30"]),
    "backprop": ("solver.lr", ["1e-05", "0.0001", "0.001", "0.01"], "solver.weight_decay", ["1e-06", "1e-05", "0.0001", "0.001"]),
}


def psnr(run: dict, split: str = "test") -> float:
    block = run["metrics"].get(split)
    return block["psnr"]["mean"] if block else math.nan


def fmt(v: float, signed: bool = False) -> str:
    if v is None or math.isnan(v):
        return "diverged" if v is not None else ""
    return f"{v:+.2f}" if signed else f"{v:.2f}"


def norm(value: str) -> str:
    """A swept value as Hydra records it (1e-05 and 0.00001 are one setting)."""
    try:
        return repr(float(value))
    except ValueError:
        return value


def activations_study(runs_dir: Path, sizes: list[str], log) -> tuple[list[str], list[dict], callable]:
    for method in METHODS:
        folder = runs_dir / method
        if not any(folder.glob("*/metrics.json")):
            sweep([f"scheme={method}", f"dataset={','.join(TASKS)}", f"arch.activation={','.join(ACTIVATIONS)}", *sizes],
                  folder, log)
    cells = {}
    for method in METHODS:
        for r in read_runs(runs_dir / method):
            cells[(r["overrides"]["dataset"], r["overrides"]["arch.activation"], method)] = r
    rows = []
    for task in TASKS:
        for act in ACTIVATIONS:
            b, p = cells.get((task, act, "bregman")), cells.get((task, act, "backprop"))
            rows.append({"task": task, "activation": act,
                         "bregman_test": psnr(b) if b else None, "backprop_test": psnr(p) if p else None,
                         "bregman_val": psnr(b, "val") if b else None, "backprop_val": psnr(p, "val") if p else None,
                         "no_learning": b["metrics"]["no_learning"]["psnr"]["mean"] if b else None})
    lines = ["| task | hidden activation | lifted Bregman test PSNR | back-propagation test PSNR | Bregman - backprop | "
             "val PSNR (Bregman / backprop) | degraded input |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        diff = (r["bregman_test"] - r["backprop_test"]) if None not in (r["bregman_test"], r["backprop_test"]) else None
        r["difference"] = diff
        lines.append(f"| {r['task']} | {r['activation']} | {fmt(r['bregman_test'])} | {fmt(r['backprop_test'])} | "
                     f"{fmt(diff, True)} | {fmt(r['bregman_val'])} / {fmt(r['backprop_val'])} | {fmt(r['no_learning'])} |")

    def picture(out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.6), sharey=False)
        for ax, task in zip(axes, TASKS):
            sub = [r for r in rows if r["task"] == task]
            x = range(len(sub))
            for k, (method, label) in enumerate(METHODS.items()):
                ys = [r[f"{method}_test"] if r[f"{method}_test"] is not None else math.nan for r in sub]
                ax.bar([i + (k - 0.5) * 0.38 for i in x], ys, width=0.38, label=label)
            ax.axhline(sub[0]["no_learning"] or math.nan, color="grey", lw=0.8, ls="--", label="degraded input")
            ax.set_xticks(list(x))
            ax.set_xticklabels([r["activation"] for r in sub], fontsize=8)
            ax.set_title(task)
            ax.set_ylabel("test PSNR (dB)")
            lo = min(v for r in sub for v in (r["bregman_test"], r["backprop_test"], r["no_learning"]) if v is not None and not math.isnan(v))
            ax.set_ylim(lo - 1, None)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "activations.png", dpi=120)
        plt.close(fig)
        return "activations.png"

    return lines, rows, picture


def robustness_study(runs_dir: Path, sizes: list[str], log) -> tuple[list[str], list[dict], callable]:
    for method, (k1, v1, k2, v2) in ROBUSTNESS.items():
        folder = runs_dir / method
        if not any(folder.glob("*/metrics.json")):
            sweep([f"scheme={method}", f"{k1}={','.join(v1)}", f"{k2}={','.join(v2)}", *sizes], folder, log)
    grids, rows, lines = {}, [], []
    for method, (k1, v1, k2, v2) in ROBUSTNESS.items():
        found = {(norm(r["overrides"][k1]), norm(r["overrides"][k2])): psnr(r) for r in read_runs(runs_dir / method)}
        grid = [[found.get((norm(a), norm(b)), math.nan) for b in v2] for a in v1]
        grids[method] = grid
        values = [v for row in grid for v in row]
        finite = [v for v in values if not math.isnan(v)]
        best = max(finite) if finite else math.nan
        within = sum(1 for v in finite if v >= best - 1.0)
        rows.append({"method": method, "best": best, "worst": min(finite) if finite else math.nan, "settings": len(values),
                     "within_1dB": within, "finished": len(finite)})
        lines += [f"**{METHODS[method]}**: test PSNR (dB), {k1} down, {k2} across", "",
                  f"| {k1} \\ {k2} | " + " | ".join(v2) + " |", "|---|" + "---|" * len(v2)]
        lines += [f"| {a} | " + " | ".join(fmt(v) for v in row) + " |" for a, row in zip(v1, grid)]
        lines += ["", f"Best {fmt(best)} dB, worst {fmt(rows[-1]['worst'])} dB; {within} of {len(values)} settings within "
                      f"1 dB of the best ({len(values) - len(finite)} did not finish).", ""]

    def picture(out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        finite = [v for g in grids.values() for row in g for v in row if not math.isnan(v)]
        vmin, vmax = (min(finite), max(finite)) if finite else (0, 1)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"wspace": 0.4})
        for ax, (method, (k1, v1, k2, v2)) in zip(axes, ROBUSTNESS.items()):
            im = ax.imshow(grids[method], vmin=vmin, vmax=vmax, cmap="viridis")
            for i, row in enumerate(grids[method]):
                for j, v in enumerate(row):
                    ax.text(j, i, "x" if math.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if math.isnan(v) or v < (vmin + vmax) / 2 else "black")
            ax.set_xticks(range(len(v2)))
            ax.set_xticklabels(v2, fontsize=8)
            ax.set_yticks(range(len(v1)))
            ax.set_yticklabels(v1, fontsize=8)
            ax.set_xlabel(k2)
            ax.set_ylabel(k1)
            ax.set_title(METHODS[method], fontsize=10)
        fig.colorbar(im, ax=list(axes), label="test PSNR (dB)")
        fig.savefig(out / "robustness.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        return "robustness.png"

    return lines, rows, picture


STUDIES = {"activations": activations_study, "robustness": robustness_study}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", required=True, choices=sorted(STUDIES))
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--test-size", type=int, default=None, help="test images (default: all 10,000)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 512 / 128 / 128 images, 1 epoch")
    ap.add_argument("--runs", type=Path, default=None, help="runs folder (default results/benchmark-runs/study-<study>-<time>)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="key=value arguments for every lifted train")
    args = ap.parse_args(argv)
    if args.quick:
        args.train_size, args.val_size, args.test_size, args.epochs = 512, 128, 128, 1
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = args.runs or REPO / "results" / "benchmark-runs" / f"study-{args.study}-{stamp}"
    out = args.out or REPO / "results" / "benchmarks" / (f"study_{args.study}" + ("_quick" if args.quick else ""))
    runs_dir.mkdir(parents=True, exist_ok=True)
    sizes = [f"train_size={args.train_size}", f"val_size={args.val_size}", f"epochs={args.epochs}", "progress=false",
             "num_samples=4", *([f"test_size={args.test_size}"] if args.test_size else []), *args.extra]
    t0 = time.time()
    with open(runs_dir / "sweeps.log", "a") as log:
        table, rows, picture = STUDIES[args.study](runs_dir, sizes, log)
    wall = time.time() - t0
    tmp = stage_report(out, runs_dir)
    name = picture(tmp)
    with open(tmp / f"{args.study}.csv", "w", newline="") as f:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    command = "scripts/studies.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = [f"# Study: {args.study}", "", f"Command: `{command}`", "",
            f"MNIST, the default MLP (784-512-512-784) and each scheme's default solver (its tuned defaults where "
            f"configs/tuned has them); {args.train_size} training images, {args.val_size} validation images held out, "
            f"{args.test_size or 10000} test images, {args.epochs} epoch(s), seed 0; {machine('cpu')}; "
            f"{time.strftime('%Y-%m-%d')}; {wall / 60:.1f} min for the sweeps this invocation ran (finished sweeps in the runs "
            "folder are read, not run again). PSNR: mean over the test images "
            "(scikit-image, data range 1). One seed per cell.", "", *table, "", f"![{name}]({name})", "",
            "All runs: [report.md](report.md) (`lifted report`).", ""]
    (tmp / f"{args.study}.md").write_text("\n".join(text))
    publish(tmp, out)
    print(f"studies.py: {out / (args.study + '.md')}; runs in {runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
