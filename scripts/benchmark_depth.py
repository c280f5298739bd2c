#!/usr/bin/env python3
"""Lifted training against back-propagation as networks get deep (MNIST denoising, width 256).

For ``mlp`` and ``resnet`` and every depth L, one sweep per method (``lifted train -m``), each over
``arch.init=default,kaiming`` (the run kept per method and depth is the one with the better
validation PSNR, never chosen on the test set):

* ``backprop``: back-propagation with Adam;
* ``lifted_forward``: lifted Bregman ISGM, equal blocks stacked and updated at once (Jacobi), each
  mini-batch's auxiliaries from a forward pass;
* ``lifted_persistent``: the same from the stored auxiliaries (``solver.warm_start=persistent``, no
  forward pass: ``solver.refresh_sweeps`` Jacobi sweeps of the forward equations, plain ISGM anchor);
* ``lifted_pipelined``: the same from a staggered pass (``solver.warm_start=pipelined``: each step takes
  every batch in flight one layer further, no sequential pass per step), with the anchor extrapolation
  lowered to 0.5 (staleness acts as momentum: at the tuned 0.8-0.9 deep and residual runs diverge);
* ``loop`` (on request): lifted Bregman with the per-layer Gauss-Seidel loop, forward warm start.

Then ``lifted report`` of all runs, and the depth tables and plots from the run folders:

* ``depth.md`` / ``depth.csv``: per (arch, L, method): the init chosen, validation and test PSNR, the
  best test PSNR over the epochs, the training wall time (history.csv) to reach back-propagation's
  best test PSNR at that depth, median ms per mini-batch step and its ratio to back-propagation's,
  peak memory (CUDA max allocated, or sampled RSS on the CPU), the sequential depth of a step
  (metrics.json: the longest chain of dependent layer operations);
* ``psnr_vs_wall.png`` (test PSNR against training wall time, one panel per arch and depth),
  ``time_per_step.png``, ``psnr_vs_depth.png``.

    scripts/benchmark_depth.py                  # CPU: 20,000 training / 5,000 validation images, 8 epochs, L = 4..32
    scripts/benchmark_depth.py --quick          # a smoke run: 512 / 128 images, 1 epoch, L = 2, 4
    scripts/benchmark_depth.py --device cuda --budget-s 420 --out results/benchmarks/depth_cuda
                                                # at most 8 report files; sweeps stop at the budget

Extra ``key=value`` arguments go to every ``lifted train`` (e.g. ``hydra/launcher=joblib
hydra.launcher.n_jobs=2``).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from lifted_cli.benchmarks import best_psnr, fmt, machine, psnr_curve, publish, read_runs, stage_report, sweep, time_to

REPO = Path(__file__).resolve().parent.parent
INITS = "arch.init=default,kaiming"
STACKED = ["scheme=bregman", "solver.layer_order=jacobi", "solver.stacked=auto"]
METHODS = {
    "backprop": ["scheme=backprop", INITS],
    "lifted_forward": [*STACKED, "solver.warm_start=forward", INITS],
    "lifted_persistent": [*STACKED, "solver.warm_start=persistent", "solver.momentum=0", "solver.refresh_sweeps=1", INITS],
    "lifted_pipelined": [*STACKED, "solver.warm_start=pipelined", "solver.momentum=0.5", INITS],
    "loop": ["scheme=bregman", "solver.layer_order=gauss_seidel", "solver.stacked=false", INITS],
}
DEFAULT_METHODS = "backprop,lifted_forward,lifted_persistent,lifted_pipelined"


def val_psnr(run: dict) -> float:
    m = run["metrics"]
    return m["val"]["psnr"]["mean"] if "val" in m else m["test"]["psnr"]["mean"]  # without a validation split: test


def chosen(runs: list[dict]) -> list[dict]:
    """Per (arch, L, method) the run with the best validation PSNR (over the inits and any other swept key)."""
    best = {}
    for r in runs:
        key = (r["overrides"]["arch"], int(r["overrides"]["arch.depth"]), r["method"])
        if key not in best or val_psnr(r) > val_psnr(best[key]):
            best[key] = r
    return list(best.values())


def rows_of(runs: list[dict]) -> list[dict]:
    rows = []
    picked = chosen(runs)
    bp = {(r["overrides"]["arch"], int(r["overrides"]["arch.depth"])): r for r in picked if r["method"] == "backprop"}
    for r in picked:
        arch, depth = r["overrides"]["arch"], int(r["overrides"]["arch.depth"])
        m, ref = r["metrics"], bp.get((arch, depth))
        row = {"arch": arch, "L": depth, "method": r["method"], "init": r["overrides"].get("arch.init", "default"),
               "stacks": " ".join(f"{a}-{b}" for a, b in m.get("stacks", [])) or "-",
               "ms_per_step": m.get("step_ms", math.nan), "val_psnr": val_psnr(r), "test_psnr": m["test"]["psnr"]["mean"],
               "best_psnr": best_psnr(r["history"]), "train_seconds": sum(h["seconds"] for h in r["history"]),
               "peak_mb": m.get("peak_memory_mb", math.nan), "sequential_depth": m.get("sequential_depth", math.nan)}
        if ref is not None:
            target = best_psnr(ref["history"])
            t = time_to(r["history"], target)
            row["backprop_psnr"] = target
            row["wall_to_backprop_psnr_s"] = t if t is not None else math.nan
            row["step_ratio_to_backprop"] = row["ms_per_step"] / ref["metrics"].get("step_ms", math.nan)
        rows.append(row)
    rows.sort(key=lambda x: (x["arch"], x["L"], x["method"] != "backprop", x["method"]))
    return rows


COLUMNS = [("arch", "arch", None), ("L", "L", None), ("method", "method", None), ("init", "init", None),
           ("val_psnr", "val PSNR", 2), ("test_psnr", "test PSNR", 2), ("best_psnr", "best test PSNR", 2),
           ("backprop_psnr", "backprop best", 2), ("wall_to_backprop_psnr_s", "s to backprop best", 1),
           ("train_seconds", "train s", 1), ("ms_per_step", "ms/step", 2), ("step_ratio_to_backprop", "step / backprop", 2),
           ("sequential_depth", "sequential depth", None), ("peak_mb", "peak MB", 0), ("stacks", "stacked layers", None)]


def write_tables(rows: list[dict], out: Path, header: list[str]) -> None:
    with open(out / "depth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c[0] for c in COLUMNS], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [*header, "", "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) if d is None else fmt(r.get(k), d) for k, _, d in COLUMNS) + " |")
    lines += ["", "init: the one of default / kaiming with the better validation PSNR (per method and depth); "
              "backprop best: the best test PSNR over the epochs of that depth's back-propagation run; s to backprop "
              "best: training seconds (history.csv) until the test PSNR reaches it, interpolated between epochs (empty: not "
              "reached); "
              "sequential depth: the longest chain of dependent layer operations in one step (a forward pass is L)."]
    (out / "depth.md").write_text("\n".join(lines) + "\n")


def plots(rows: list[dict], runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["arch"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "backprop", m))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}  # one colour per method in every panel
    for key, ylabel, name, logy in [("ms_per_step", "ms per mini-batch step", "time_per_step.png", True),
                                    ("best_psnr", "best test PSNR (dB)", "psnr_vs_depth.png", False)]:
        fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.2), squeeze=False)
        for ax, arch in zip(axes[0], archs):
            for method in methods:
                pts = sorted((r["L"], r[key]) for r in rows if (r["arch"], r["method"]) == (arch, method))
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=color[method], label=method)
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("depth L")
            ax.set_ylabel(ylabel)
            ax.set_title(arch)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    picked = chosen(runs)
    depths = sorted({r["L"] for r in rows})
    fig, axes = plt.subplots(len(archs), len(depths), figsize=(4.2 * len(depths), 3.6 * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        for j, depth in enumerate(depths):
            ax = axes[i][j]
            for r in sorted(picked, key=lambda r: methods.index(r["method"])):
                if (r["overrides"]["arch"], int(r["overrides"]["arch.depth"])) != (arch, depth):
                    continue
                pts = psnr_curve(r["history"])
                ax.plot(*zip(*pts), marker=".", color=color[r["method"]],
                        label=f"{r['method']} ({r['overrides'].get('arch.init', 'default')})")
            noisy = next((r["metrics"]["no_learning"]["psnr"]["mean"] for r in picked), None)
            if noisy is not None:
                ax.axhline(noisy, color="grey", lw=0.8, ls=":")
            ax.set_xlabel("training wall time (s)")
            ax.set_ylabel("test PSNR (dB)")
            ax.set_title(f"{arch}, L = {depth}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "psnr_vs_wall.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (tiny data, L = 2, 4)")
    ap.add_argument("--device", default="cpu", help="device of every run (cpu, cuda, auto)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop the sweeps after this many seconds (finished runs are reported)")
    ap.add_argument("--depths", default=None, help="comma-separated depths (default 4,8,16,32)")
    ap.add_argument("--archs", default="mlp,resnet")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"of {', '.join(METHODS)}")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--val-size", type=int, default=None)
    ap.add_argument("--out", default=None, help="report folder (default results/benchmarks/depth_cpu[_quick])")
    ap.add_argument("--runs", default=None, help="run folders (default results/benchmark-runs/depth-<stamp>)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from --runs")
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run")
    a = ap.parse_args(argv)
    depths = a.depths or ("2,4" if a.quick else "4,8,16,32")
    epochs = a.epochs or (1 if a.quick else 8)
    train_size = a.train_size or (512 if a.quick else 20000)
    test_size = a.test_size or (128 if a.quick else 2000)
    val_size = a.val_size if a.val_size is not None else (128 if a.quick else 5000)
    out = Path(a.out or f"results/benchmarks/depth_{'cuda' if 'cuda' in a.device else 'cpu'}{'_quick' if a.quick else ''}")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = Path(a.runs or f"results/benchmark-runs/depth-{'quick' if a.quick else 'full'}-{stamp}")
    if not out.is_absolute():
        out = REPO / out
    if not runs_dir.is_absolute():
        runs_dir = REPO / runs_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    common = ["task=denoise", "arch.width=256", f"arch.depth={depths}", f"epochs={epochs}",
              f"train_size={train_size}", f"val_size={val_size}", f"test_size={test_size}", "eval_every=1", "num_samples=0", "progress=false",
              f"device={a.device}", *a.extra]
    t0 = time.perf_counter()
    skipped = []
    if not a.report_only:
        with open(runs_dir / "sweeps.log", "a") as log:
            for method in a.methods.split(","):  # methods first: under a budget every arch gets the first ones
                for arch in a.archs.split(","):
                    left = None if a.budget_s is None else a.budget_s - (time.perf_counter() - t0)
                    if left is not None and left <= 0:
                        skipped.append(f"{arch}/{method}")
                        continue
                    if not sweep([f"arch={arch}", *METHODS[method], *common], runs_dir / arch / method, log, left,
                                 cwd=REPO):
                        skipped.append(f"{arch}/{method} (stopped part-way)")
    wall = time.perf_counter() - t0
    schemes = {m.parent.parent.name == "backprop" for m in runs_dir.glob("*/*/*/metrics.json")}  # arch/method/job
    baseline = ["--baseline", "scheme=backprop"] if schemes == {True, False} else []  # only with both kinds of run
    tmp = stage_report(out, runs_dir, *baseline)
    runs = read_runs(runs_dir)
    rows = rows_of(runs)
    cmd = "scripts/benchmark_depth.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [f"# Depth benchmark ({'quick' if a.quick else 'full'}, device {a.device})", "",
              f"Command: `{cmd}`; {len(runs)} finished runs in `{runs_dir.relative_to(REPO) if runs_dir.is_relative_to(REPO) else runs_dir}`"
              f" (every sweep's command line is in its `sweeps.log`); "
              + ("this invocation ran no sweep: it rebuilt the report from those runs." if a.report_only
                 else f"this invocation's sweeps took {wall:.0f} s."),
              f"Machine: {machine(a.device)}.",
              f"Settings: MNIST denoising, width 256, L in {{{depths}}}, {epochs} epochs of {train_size} training images "
              f"({val_size} more held out for validation), batch 128, test PSNR on {test_size} test images after every "
              "epoch; one seed (0); each method's init chosen per depth on the validation PSNR."]
    unfinished = sorted(str(f.parent.parent.relative_to(runs_dir)) for f in runs_dir.glob("*/*/*/.hydra/overrides.yaml")
                        if not (f.parent.parent / "metrics.json").is_file())
    if unfinished:  # a diverged run stops with its last good checkpoint and no metrics.json
        header.append(f"Runs that did not finish (diverged; their messages are in `sweeps.log`): {', '.join(unfinished)}.")
    if skipped:
        header.append(f"Not run or not finished (the --budget-s {a.budget_s:g} s was spent): {', '.join(skipped)}.")
    write_tables(rows, tmp, header)
    plots(rows, runs, tmp)
    publish(tmp, out)
    print(f"depth report: {out / 'depth.md'} ({len(runs)} runs, {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
