#!/usr/bin/env python3
"""Lifted training against back-propagation as networks get deep (MNIST denoising, width 256).

For ``mlp`` and ``resnet`` and every depth L, one sweep per method (``lifted train -m``):

* ``backprop``: back-propagation with Adam;
* ``loop``: lifted Bregman ISGM with the per-layer loop (Gauss-Seidel, ``solver.stacked=false``);
* ``stacked_jacobi`` / ``stacked_red_black``: lifted Bregman ISGM, equal blocks stacked
  (``solver.stacked=auto``: an mlp of depth 2 has a single equal block and runs the loop);

each lifted method with ``solver.warm_start=forward`` and ``persistent``. Then ``lifted report`` of
all runs, and the depth tables and plots from the run folders:

* ``depth.md`` / ``depth.csv``: per (arch, L, method, warm start): median time per mini-batch step
  (CUDA-synchronised, from metrics.json), its growth from the smallest depth >= 4, test PSNR after
  the epoch budget, the wall time (training seconds, from history.csv) to reach the PSNR that
  back-propagation reaches at that depth (or the best PSNR when it is not reached), peak memory
  (CUDA max allocated, or sampled RSS on the CPU);
* ``time_per_step.png``, ``psnr_vs_depth.png``, ``psnr_vs_wall.png``.

    scripts/benchmark_depth.py                  # CPU: 5,000 / 1,000 images, 3 epochs, L = 2..64
    scripts/benchmark_depth.py --quick          # a smoke run: 512 / 128 images, 1 epoch, L = 2, 4
    scripts/benchmark_depth.py --device cuda --budget-s 420 --out results/benchmarks/depth_cuda
                                                # at most 8 report files; sweeps stop at the budget

Extra ``key=value`` arguments go to every ``lifted train``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from lifted_cli.benchmarks import fmt, machine, publish, read_runs, stage_report, sweep

REPO = Path(__file__).resolve().parent.parent
METHODS = {
    "backprop": ["scheme=backprop"],
    "loop": ["scheme=bregman", "solver.layer_order=gauss_seidel", "solver.stacked=false", "solver.warm_start=forward,persistent"],
    "stacked_jacobi": ["scheme=bregman", "solver.layer_order=jacobi", "solver.stacked=auto",
                       "solver.warm_start=forward,persistent"],
    "stacked_red_black": ["scheme=bregman", "solver.layer_order=red_black", "solver.stacked=auto",
                          "solver.warm_start=forward,persistent"],
}


def wall_to(history: list[dict], target: float) -> float | None:
    """Training seconds until the first evaluated epoch with test PSNR >= target (None: never)."""
    total = 0.0
    for row in history:
        total += row["seconds"]
        if not math.isnan(row["test_psnr"]) and row["test_psnr"] >= target:
            return total
    return None


def rows_of(runs: list[dict]) -> list[dict]:
    rows = []
    bp = {(r["overrides"]["arch"], int(r["overrides"]["arch.depth"])): r for r in runs if r["method"] == "backprop"}
    for r in runs:
        arch, depth = r["overrides"]["arch"], int(r["overrides"]["arch.depth"])
        m, ref = r["metrics"], bp.get((arch, depth))
        psnr = m["test"]["psnr"]["mean"]
        best = max((h["test_psnr"] for h in r["history"] if not math.isnan(h["test_psnr"])), default=math.nan)
        row = {"arch": arch, "L": depth, "method": r["method"], "warm_start": r["overrides"].get("solver.warm_start", "-"),
               "stacks": " ".join(f"{a}-{b}" for a, b in m.get("stacks", [])) or "-",
               "ms_per_step": m.get("step_ms", math.nan), "test_psnr": psnr, "best_psnr": best,
               "train_seconds": sum(h["seconds"] for h in r["history"]), "peak_mb": m.get("peak_memory_mb", math.nan)}
        if ref is not None:
            target = ref["metrics"]["test"]["psnr"]["mean"]
            t = wall_to(r["history"], target)
            row["backprop_psnr"] = target
            row["wall_to_backprop_psnr_s"] = t if t is not None else math.nan
            row["step_ratio_to_backprop"] = row["ms_per_step"] / ref["metrics"].get("step_ms", math.nan)
        rows.append(row)
    rows.sort(key=lambda x: (x["arch"], x["method"] != "backprop", x["method"], x["warm_start"], x["L"]))
    for row in rows:  # growth of the step time from the smallest depth >= 4 of the same series
        series = [x for x in rows if (x["arch"], x["method"], x["warm_start"]) == (row["arch"], row["method"], row["warm_start"])]
        base = [x for x in series if x["L"] >= 4]
        row["step_growth"] = row["ms_per_step"] / base[0]["ms_per_step"] if base and row["L"] >= base[0]["L"] else math.nan
        row["growth_base_L"] = base[0]["L"] if base else math.nan
    return rows


COLUMNS = [("arch", "arch", None), ("L", "L", None), ("method", "method", None), ("warm_start", "warm start", None),
           ("stacks", "stacked layers", None), ("ms_per_step", "ms/step", 2), ("step_ratio_to_backprop", "step / backprop", 2),
           ("step_growth", "step growth", 2), ("test_psnr", "test PSNR", 2), ("backprop_psnr", "backprop PSNR", 2),
           ("wall_to_backprop_psnr_s", "s to backprop PSNR", 1), ("best_psnr", "best PSNR", 2),
           ("train_seconds", "train s", 1), ("peak_mb", "peak MB", 0)]


def write_tables(rows: list[dict], out: Path, header: list[str]) -> None:
    with open(out / "depth.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c[0] for c in COLUMNS] + ["growth_base_L"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [*header, "", "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) if d is None else fmt(r.get(k), d) for k, _, d in COLUMNS) + " |")
    lines += ["", "step growth: ms/step over ms/step at the smallest depth >= 4 of the same series; "
              "s to backprop PSNR: training seconds (history.csv) until an epoch's test PSNR reaches the PSNR "
              "back-propagation ends with at that depth (empty: not reached; see best PSNR)."]
    (out / "depth.md").write_text("\n".join(lines) + "\n")


def plots(rows: list[dict], runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["arch"] for r in rows})
    series = sorted({(r["method"], r["warm_start"]) for r in rows})
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color = {key: cycle[i % len(cycle)] for i, key in enumerate(series)}  # one colour per series in every panel
    for key, ylabel, name, logy in [("ms_per_step", "ms per mini-batch step", "time_per_step.png", True),
                                    ("test_psnr", "test PSNR (dB)", "psnr_vs_depth.png", False)]:
        fig, axes = plt.subplots(1, len(archs), figsize=(6 * len(archs), 4.2), squeeze=False)
        for ax, arch in zip(axes[0], archs):
            for method, ws in series:
                pts = sorted((r["L"], r[key]) for r in rows if (r["arch"], r["method"], r["warm_start"]) == (arch, method, ws))
                if pts:
                    ax.plot(*zip(*pts), marker="o", color=color[(method, ws)],
                            label=method if ws == "-" else f"{method} ({ws})")
            ax.set_xscale("log", base=2)
            if logy:
                ax.set_yscale("log")
            ax.set_xlabel("depth L")
            ax.set_ylabel(ylabel)
            ax.set_title(arch)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    depths = sorted({r["L"] for r in rows})
    shown = [d for d in (16, 64) if d in depths] or depths[-1:]
    fig, axes = plt.subplots(len(archs), len(shown), figsize=(6 * len(shown), 4 * len(archs)), squeeze=False)
    for i, arch in enumerate(archs):
        for j, depth in enumerate(shown):
            ax = axes[i][j]
            for r in runs:
                if (r["overrides"]["arch"], int(r["overrides"]["arch.depth"])) != (arch, depth):
                    continue
                t, pts = 0.0, []
                for h in r["history"]:
                    t += h["seconds"]
                    if not math.isnan(h["test_psnr"]):
                        pts.append((t, h["test_psnr"]))
                ws = r["overrides"].get("solver.warm_start", "-")
                ax.plot(*zip(*pts), marker=".", color=color[(r["method"], ws)],
                        label=r["method"] if ws == "-" else f"{r['method']} ({ws})")
            ax.set_xlabel("training wall time (s)")
            ax.set_ylabel("test PSNR (dB)")
            ax.set_title(f"{arch}, L = {depth}")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    order = sorted(range(len(labels)), key=labels.__getitem__)
    axes[0][-1].legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "psnr_vs_wall.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run (tiny data, L = 2, 4)")
    ap.add_argument("--device", default="cpu", help="device of every run (cpu, cuda, auto)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop the sweeps after this many seconds (finished runs are reported)")
    ap.add_argument("--depths", default=None, help="comma-separated depths (default 2,4,8,16,32,64)")
    ap.add_argument("--archs", default="mlp,resnet")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--test-size", type=int, default=None)
    ap.add_argument("--out", default=None, help="report folder (default results/benchmarks/depth_cpu[_quick])")
    ap.add_argument("--runs", default=None, help="run folders (default results/benchmark-runs/depth-<stamp>)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from --runs")
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run")
    a = ap.parse_args(argv)
    depths = a.depths or ("2,4" if a.quick else "2,4,8,16,32,64")
    epochs = a.epochs or (1 if a.quick else 3)
    train_size = a.train_size or (512 if a.quick else 5000)
    test_size = a.test_size or (128 if a.quick else 1000)
    out = Path(a.out or f"results/benchmarks/depth_{'cuda' if 'cuda' in a.device else 'cpu'}{'_quick' if a.quick else ''}")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = Path(a.runs or f"results/benchmark-runs/depth-{'quick' if a.quick else 'full'}-{stamp}")
    if not out.is_absolute():
        out = REPO / out
    if not runs_dir.is_absolute():
        runs_dir = REPO / runs_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    common = ["dataset=mnist_denoise", "arch.width=256", f"arch.depth={depths}", f"epochs={epochs}",
              f"train_size={train_size}", f"test_size={test_size}", "eval_every=1", "num_samples=0", "progress=false",
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
              f"Settings: MNIST denoising, width 256, L in {{{depths}}}, {epochs} epochs of {train_size} training images, "
              f"batch 128, test PSNR on {test_size} test images after every epoch; one seed (0)."]
    if skipped:
        header.append(f"Not run or not finished (the --budget-s {a.budget_s:g} s was spent): {', '.join(skipped)}.")
    write_tables(rows, tmp, header)
    plots(rows, runs, tmp)
    publish(tmp, out)
    print(f"depth report: {out / 'depth.md'} ({len(runs)} runs, {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
