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
* ``--study inversion``: the MLP and the convolutional autoencoder, each trained by lifted Bregman
  and by back-propagation, their encoders inverted by both inversion methods: alpha chosen on the
  network's held-out validation images (``lifted invert images=val``) at one noise level, then the
  test images at four: does a lifted-trained network invert better or more stably? ``inversion.png``.

Each run: ``--train-size`` training images (default 10,000), ``--val-size`` held out (5,000),
``--epochs`` (3), the default MLP (784-512-512-784; the inversion study: the two autoencoders) and
each scheme's default solver. Outputs in ``--out`` (default ``results/benchmarks/study_<study>``):
``<study>.md``, ``<study>.csv``, the picture, and ``report.md`` (``lifted report`` of all runs).

    scripts/studies.py --study activations
    scripts/studies.py --study robustness
    scripts/studies.py --study inversion
    scripts/studies.py --study activations --quick      # a smoke run (512 / 128 images, 1 epoch)

Extra ``key=value`` arguments go to every ``lifted train``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

from lifted_cli import benchmarks
from lifted_cli.benchmarks import machine, publish, read_runs, stage_report

REPO = Path(__file__).resolve().parent.parent


def sweep(*args, **kwargs) -> bool:
    """``benchmarks.sweep`` from the checkout (where results/ and the configs are)."""
    return benchmarks.sweep(*args, cwd=REPO, **kwargs)

TASKS = ("denoise", "deblur", "inpaint")
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
            sweep([f"scheme={method}", f"task={','.join(TASKS)}", f"arch.activation={','.join(ACTIVATIONS)}", *sizes],
                  folder, log)
    cells = {}
    for method in METHODS:
        for r in read_runs(runs_dir / method):
            cells[(r["overrides"]["task"], r["overrides"]["arch.activation"], method)] = r
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


#: the inversion study's networks: the ``lifted train`` experiment, the encoder inverted (``upto``) and the
#: alpha grids searched on the validation images, per inversion method (lifted at half of back-propagation's
#: alpha: eliminating the free output leaves it half of back-propagation's data weight, docs/inversion.md)
INVERSION_NETS = {
    "autoencoder": ("layer2", {"backprop": ["5e-05", "0.00015", "0.0006", "0.003"],
                               "lifted_bregman": ["2.5e-05", "7.5e-05", "0.0003", "0.0015"]}),
    "conv_autoencoder": ("layer3", {"backprop": ["0.0003", "0.001", "0.003", "0.01"],
                                    "lifted_bregman": ["0.00015", "0.0005", "0.0015", "0.005"]}),
}
INVERSION_METHODS = {"lifted_bregman": "lifted Bregman inversion", "backprop": "back-propagation inversion"}
#: the noise level at which alpha is chosen (on the validation images), and the levels reported (test images)
CHOOSE_DELTA, DELTAS = "0.05", ["0", "0.01", "0.05", "0.1"]


def inversion_study(runs_dir: Path, sizes: list[str], log, invert_args: list[str], images: int = 16
                    ) -> tuple[list[str], list[dict], callable]:
    """Each autoencoder trained by lifted Bregman and by back-propagation (held-out validation images
    included), then its encoder inverted by both methods: alpha chosen per (network, trainer, method)
    on the network's validation images at delta = CHOOSE_DELTA, then the test images at every delta."""
    rows = []
    for net, (upto, alphas) in INVERSION_NETS.items():
        trained_dir = runs_dir / net / "trained"
        if not any(trained_dir.glob("*/metrics.json")):
            sweep([f"experiment={net}", f"scheme={','.join(METHODS)}", *sizes], trained_dir, log)
        trained = {r["overrides"]["scheme"]: r for r in read_runs(trained_dir)}
        for trainer in METHODS:
            if trainer not in trained:
                continue
            checkpoint = trained[trainer]["folder"]
            for method, grid in alphas.items():
                base = ["experiment=autoencoder_inversion", f"checkpoint={checkpoint}", f"upto={upto}", f"method={method}",
                        "progress=false", "num_samples=4", *invert_args]
                folder = runs_dir / net / f"{trainer}-trained" / method
                if not any((folder / "val").glob("*/metrics.json")):
                    sweep([*base, "images=val", f"alpha={','.join(grid)}", f"delta={CHOOSE_DELTA}"], folder / "val", log,
                          command="invert")
                val = {norm(r["overrides"]["alpha"]): r["metrics"]["recovered"]["psnr"]["mean"] for r in read_runs(folder / "val")}
                alpha = max(grid, key=lambda a: val.get(norm(a), -math.inf))
                if not any((folder / "test").glob("*/metrics.json")):
                    sweep([*base, "images=test", f"alpha={alpha}", f"delta={','.join(DELTAS)}"], folder / "test", log,
                          command="invert")
                test = {norm(r["overrides"]["delta"]): r["metrics"]["recovered"] for r in read_runs(folder / "test")}
                row = {"network": net, "trained_by": trainer, "network_test_psnr": psnr(trained[trainer]),
                       "method": method, "alpha": float(alpha), "val_psnr": val.get(norm(alpha))}
                for d in DELTAS:
                    rec = test.get(norm(d))
                    row[f"psnr_{d}"] = rec["psnr"]["mean"] if rec else None
                    row[f"rel_error_{d}"] = rec["rel_error"]["mean"] if rec else None
                e0, e1 = row[f"rel_error_{DELTAS[0]}"], row[f"rel_error_{DELTAS[-1]}"]
                row["error_growth"] = (e1 - e0) if None not in (e0, e1) else None
                rows.append(row)
    lines = [f"alpha chosen per network, trainer and method on {images} of the network's validation images at delta = "
             f"{CHOOSE_DELTA} (grids in `INVERSION_NETS`), then held fixed: recovered test PSNR (dB) and relative "
             f"error `||u - u_true|| / ||u_true||` (mean over {images} test images) at each noise level delta; growth: the "
             f"error's increase from delta {DELTAS[0]} to {DELTAS[-1]} (the stability).", "",
             "| network | trained by (its denoising test PSNR) | inverted by | alpha | val PSNR | "
             + " | ".join(f"PSNR delta {d}" for d in DELTAS) + " | " + " | ".join(f"error delta {d}" for d in DELTAS)
             + " | growth |", "|---|---|---|---|---|" + "---|" * (2 * len(DELTAS) + 1)]
    for r in rows:
        lines.append(f"| {r['network']} | {r['trained_by']} ({fmt(r['network_test_psnr'])}) | {r['method']} | {r['alpha']:g} | "
                     f"{fmt(r['val_psnr'])} | " + " | ".join(fmt(r[f'psnr_{d}']) for d in DELTAS) + " | "
                     + " | ".join("" if r[f"rel_error_{d}"] is None else f"{r[f'rel_error_{d}']:.3f}" for d in DELTAS)
                     + f" | {'' if r['error_growth'] is None else format(r['error_growth'], '+.3f')} |")
    lines += ["", "Lifted-trained minus back-propagation-trained network, same inversion method (recovered test PSNR, dB):",
              "", "| network | inverted by | " + " | ".join(f"delta {d}" for d in DELTAS) + " |",
              "|---|---|" + "---|" * len(DELTAS)]
    for net in INVERSION_NETS:
        for method in INVERSION_METHODS:
            pair = {r["trained_by"]: r for r in rows if r["network"] == net and r["method"] == method}
            if len(pair) < 2:
                continue
            diffs = [None if None in (pair["bregman"][f"psnr_{d}"], pair["backprop"][f"psnr_{d}"])
                     else pair["bregman"][f"psnr_{d}"] - pair["backprop"][f"psnr_{d}"] for d in DELTAS]
            lines.append(f"| {net} | {method} | " + " | ".join(fmt(v, True) if v is not None else "" for v in diffs) + " |")

    def picture(out: Path) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(INVERSION_NETS), figsize=(5.2 * len(INVERSION_NETS), 3.8))
        styles = {"bregman": "-", "backprop": "--"}
        colours = {"lifted_bregman": "C0", "backprop": "C1"}
        for ax, net in zip(axes, INVERSION_NETS):
            for r in (r for r in rows if r["network"] == net):
                ys = [r[f"psnr_{d}"] if r[f"psnr_{d}"] is not None else math.nan for d in DELTAS]
                ax.plot([float(d) for d in DELTAS], ys, styles[r["trained_by"]], color=colours[r["method"]], marker="o",
                        label=f"trained {r['trained_by']}, inverted {r['method']} (alpha {r['alpha']:g})")
            ax.set_xlabel("noise level delta")
            ax.set_ylabel("recovered test PSNR (dB)")
            ax.set_title(f"{net} encoder")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "inversion.png", dpi=120)
        plt.close(fig)
        return "inversion.png"

    return lines, rows, picture


STUDIES = {"activations": activations_study, "robustness": robustness_study, "inversion": inversion_study}
#: what each study trains, for its report
NETWORKS = {"activations": "the default MLP (784-512-512-784)", "robustness": "the default MLP (784-512-512-784)",
            "inversion": "`experiment=autoencoder` (MLP 784-512-300-512-784) and `experiment=conv_autoencoder`, "
                         "their encoders inverted by `lifted invert experiment=autoencoder_inversion`"}


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
        if args.study == "inversion":
            invert_args = ["iterations=50", "num_images=4"] if args.quick else []
            table, rows, picture = inversion_study(runs_dir, sizes, log, invert_args, 4 if args.quick else 16)
        else:
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
            f"MNIST, {NETWORKS[args.study]}, each scheme's default solver (its tuned defaults where "
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
