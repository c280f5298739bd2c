#!/usr/bin/env python3
"""Time to quality: the training wall time a lifted scheme needs to reach back-propagation's best test PSNR.

For every architecture at its tuned defaults (full MNIST denoising) and every seed, back-propagation
trains for twice the epochs of the lifted schemes; each run is alone on the machine (one sweep after
another, one job at a time), so their wall times compare. Per (arch, scheme, seed):

* ``target``: the best test PSNR back-propagation reaches over its epochs in that seed;
* ``t_lifted``: the training seconds (history.csv; evaluation excluded) at which the lifted run's
  test PSNR first reaches the target, linearly interpolated between the epochs around the crossing
  (empty: not reached; then its best PSNR says by how much);
* ``t_backprop``: back-propagation's seconds to its own best, interpolated alike;
* ``ratio`` = t_lifted / t_backprop (< 1: the lifted scheme gets there first).

Report (``--out``, default ``results/benchmarks/time_to_quality``): ``time_to_quality.md`` / ``.csv``
(every seed, and per (arch, scheme) the mean ratio with its spread), ``curves.png`` (test PSNR
against training wall time, one panel per architecture) and ``lifted report`` of all runs.

    scripts/time_to_quality.py                                # mlp, resnet, conv_autoencoder, unrolled_pnn; bregman; seeds 0, 1
    scripts/time_to_quality.py --archs mlp --schemes bregman,mac --seeds 0,1,2
    scripts/time_to_quality.py --archs mlp --schemes mac --runs <folder of an earlier invocation>  # adds mac only
    scripts/time_to_quality.py --quick                        # a smoke run: 1,000 / 200 images, 1 + 2 epochs

Extra ``key=value`` arguments go to every ``lifted train``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from pathlib import Path

from lifted_cli.benchmarks import best_psnr, fmt, machine, psnr_curve, publish, read_runs, stage_report, sweep, time_to

REPO = Path(__file__).resolve().parent.parent


def finished(folder: Path, seeds: str) -> bool:
    """Whether ``folder`` already holds a finished run of every seed (a later invocation adds schemes or
    architectures to the same ``--runs`` without training the others again)."""
    have = {r["overrides"].get("seed", "0") for r in read_runs(folder)} if folder.is_dir() else set()
    return set(seeds.split(",")) <= have


def rows_of(runs: list[dict]) -> list[dict]:
    bp = {(r["overrides"]["arch"], r["overrides"].get("seed", "0")): r for r in runs if r["method"] == "backprop"}
    rows = []
    for r in runs:
        if r["method"] == "backprop":
            continue
        arch, seed = r["overrides"]["arch"], r["overrides"].get("seed", "0")
        ref = bp.get((arch, seed))
        if ref is None:
            continue
        target = best_psnr(ref["history"])
        t_bp, t_l = time_to(ref["history"], target), time_to(r["history"], target)
        rows.append({"arch": arch, "scheme": r["method"], "seed": int(seed), "target": target,
                     "backprop_epochs": len(ref["history"]), "lifted_epochs": len(r["history"]),
                     "t_backprop": t_bp, "t_lifted": t_l, "ratio": (t_l / t_bp) if t_l is not None and t_bp else None,
                     "best_lifted": best_psnr(r["history"]), "ms_lifted": r["metrics"].get("step_ms"),
                     # the other way round: each method's seconds to the lifted run's best
                     "t_lifted_to_own_best": time_to(r["history"], best_psnr(r["history"])),
                     "t_backprop_to_lifted_best": time_to(ref["history"], best_psnr(r["history"])),
                     "ms_backprop": ref["metrics"].get("step_ms")})
    rows.sort(key=lambda x: (x["arch"], x["scheme"], x["seed"]))
    return rows


def summary(rows: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["arch"], r["scheme"]) for r in rows}):
        group = [r for r in rows if (r["arch"], r["scheme"]) == key]
        ratios = [r["ratio"] for r in group if r["ratio"] is not None]
        out.append({"arch": key[0], "scheme": key[1], "seeds": len(group), "reached": len(ratios),
                    "mean_ratio": statistics.fmean(ratios) if ratios else None,
                    "min_ratio": min(ratios) if ratios else None, "max_ratio": max(ratios) if ratios else None,
                    "mean_gap_db": statistics.fmean(r["best_lifted"] - r["target"] for r in group)})
    return out


def write(rows: list[dict], summ: list[dict], out: Path, header: list[str]) -> None:
    cols = ["arch", "scheme", "seed", "target", "t_backprop", "t_lifted", "ratio", "best_lifted", "t_lifted_to_own_best",
            "t_backprop_to_lifted_best", "backprop_epochs", "lifted_epochs", "ms_backprop", "ms_lifted"]
    with open(out / "time_to_quality.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    lines = [*header, "", "| arch | scheme | seeds | reached | ratio (mean) | ratio (min-max) | best lifted - target (dB, mean) |",
             "|---|---|---|---|---|---|---|"]
    for s in summ:
        spread = "" if s["min_ratio"] is None else f"{s['min_ratio']:.2f}-{s['max_ratio']:.2f}"
        lines.append(f"| {s['arch']} | {s['scheme']} | {s['seeds']} | {s['reached']} | {fmt(s['mean_ratio'])} | {spread} "
                     f"| {s['mean_gap_db']:+.2f} |")
    lines += ["", "Every seed:", "", "| arch | scheme | seed | back-propagation best (dB) | its s to it | lifted s to it "
              "| ratio | lifted best (dB) | lifted s to it | back-propagation s to it | ms/step back-propagation "
              "| ms/step lifted |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['scheme']} | {r['seed']} | {r['target']:.2f} | {fmt(r['t_backprop'], 1)} "
                     f"| {fmt(r['t_lifted'], 1)} | {fmt(r['ratio'])} | {r['best_lifted']:.2f} "
                     f"| {fmt(r['t_lifted_to_own_best'], 1)} | {fmt(r['t_backprop_to_lifted_best'], 1)} "
                     f"| {fmt(r['ms_backprop'])} | {fmt(r['ms_lifted'])} |")
    lines += ["", "ratio: the lifted run's training seconds to back-propagation's best test PSNR over back-propagation's "
              "own seconds to it (both linearly interpolated between evaluated epochs; evaluation time excluded); empty "
              "where the lifted run never reached it."]
    (out / "time_to_quality.md").write_text("\n".join(lines) + "\n")


def curves(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = sorted({r["overrides"]["arch"] for r in runs})
    methods = sorted({r["method"] for r in runs}, key=lambda m: (m != "backprop", m))
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cols = min(2, len(archs))  # two panels a row: the picture stays readable at the README's width
    rows = -(-len(archs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(archs):]:
        ax.set_visible(False)
    for ax, arch in zip(axes.flat, archs):
        for r in runs:
            if r["overrides"]["arch"] != arch:
                continue
            pts = [(0.0, r["metrics"]["no_learning"]["psnr"]["mean"]), *psnr_curve(r["history"])]  # from the noisy input
            seed = r["overrides"].get("seed", "0")
            ax.plot(*zip(*pts), marker=".", color=cycle[methods.index(r["method"]) % len(cycle)],
                    ls="-" if seed == "0" else "--", label=f"{r['method']} (seed {seed})")
        ax.set_xlabel("training wall time (s)")
        ax.set_ylabel("test PSNR (dB)")
        ax.set_title(arch)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="mlp,resnet,conv_autoencoder,unrolled_pnn")
    ap.add_argument("--schemes", default="bregman", help="lifted schemes (each at its tuned defaults)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--epochs", type=int, default=None, help="lifted epochs (back-propagation: twice as many; default 5)")
    ap.add_argument("--quick", action="store_true", help="a smoke run (1,000 / 200 images, 1 + 2 epochs)")
    ap.add_argument("--out", default=None, help="report folder (default results/benchmarks/time_to_quality[_quick])")
    ap.add_argument("--runs", default=None, help="run folders (default results/benchmark-runs/time-to-quality-<stamp>)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from --runs")
    ap.add_argument("extra", nargs="*", help="key=value overrides for every run")
    a = ap.parse_args(argv)
    epochs = a.epochs or (1 if a.quick else 5)
    sizes = ["train_size=1000", "test_size=200"] if a.quick else []
    out = Path(a.out or f"results/benchmarks/time_to_quality{'_quick' if a.quick else ''}")
    runs_dir = Path(a.runs or f"results/benchmark-runs/time-to-quality-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    out, runs_dir = (p if p.is_absolute() else REPO / p for p in (out, runs_dir))
    runs_dir.mkdir(parents=True, exist_ok=True)
    common = [f"seed={a.seeds}", "eval_every=1", "num_samples=0", "progress=false", *sizes, *a.extra]
    t0 = time.perf_counter()
    if not a.report_only:
        with open(runs_dir / "sweeps.log", "a") as log:
            for arch in a.archs.split(","):
                if not finished(runs_dir / arch / "backprop", a.seeds):
                    sweep([f"arch={arch}", "scheme=backprop", f"epochs={2 * epochs}", *common], runs_dir / arch / "backprop",
                          log, cwd=REPO)
                for scheme in a.schemes.split(","):
                    if finished(runs_dir / arch / scheme, a.seeds):
                        continue
                    sweep([f"arch={arch}", f"scheme={scheme}", f"epochs={epochs}", *common], runs_dir / arch / scheme, log,
                          cwd=REPO)
    wall = time.perf_counter() - t0
    tmp = stage_report(out, runs_dir, "--baseline", "scheme=backprop")
    runs = read_runs(runs_dir)
    rows = rows_of(runs)
    cmd = "scripts/time_to_quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    where = runs_dir.relative_to(REPO) if runs_dir.is_relative_to(REPO) else runs_dir
    header = ["# Time to back-propagation's best test PSNR", "",
              f"Command: `{cmd}`; {len(runs)} finished runs in `{where}` (every sweep's command line in its `sweeps.log`); "
              + ("this invocation ran no sweep." if a.report_only else f"its sweeps took {wall:.0f} s, " + (
                  "the runs of a sweep side by side (joblib)." if any("launcher=joblib" in e for e in a.extra)
                  else "one run at a time.")),
              f"Machine: {machine('cpu')}.",
              f"Settings: MNIST denoising{' (quick: 1,000 / 200 images)' if a.quick else ', 60,000 training / 10,000 test images'}, "
              f"every architecture and scheme at its tuned defaults; back-propagation {2 * epochs} epochs, lifted "
              f"{epochs}; seeds {a.seeds}."]
    write(rows, summary(rows), tmp, header)
    curves(runs, tmp)
    publish(tmp, out)
    print(f"time-to-quality report: {out / 'time_to_quality.md'} ({len(runs)} runs, {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
