#!/usr/bin/env python3
"""Tune every scheme x architecture on a validation split, with the same budget for each.

For every (architecture, scheme) pair, one sweep of ``lifted train -m`` over that scheme's main
hyperparameters (``GRIDS``: nine settings each, back-propagation included), on MNIST denoising with
``--train-size`` training images, ``--val-size`` validation images held out of the training split
(``val_size``, drawn by ``val_seed``: the same for every run) and ``--epochs`` epochs. Settings are
ranked by their validation PSNR; the test set is never looked at to choose. Outputs in ``--out``:

* ``tuning.md`` / ``tuning.csv``: per pair, the best setting, its validation PSNR, the default
  setting's, the worst one's (how much the choice matters), and the test PSNR of the chosen setting
  (reported, not used);
* ``<arch>_<scheme>.md``: ``lifted report --by val`` of the pair's sweep (every setting ranked);

and with ``--write-configs`` the chosen settings become the pair's defaults:
``configs/tuned/<arch>_<scheme>_<solver>.yaml``, which ``lifted train`` loads for that combination
(``- optional tuned: ${arch}_${scheme}_${solver}`` in configs/train.yaml; command-line overrides and
``experiment=`` presets still win).

    scripts/tune.py --archs mlp,resnet --write-configs      # 10,000 / 5,000 images, 3 epochs
    scripts/tune.py --quick                                 # a smoke run (512 / 128 images, 1 epoch)
    scripts/tune.py --stage refine --archs mlp,resnet --write-configs   # the second grids (REFINE)
    scripts/tune.py --stage init --archs mlp,resnet                     # arch.init for every scheme (INIT)

Extra ``key=value`` arguments go to every ``lifted train``.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lifted_cli import benchmarks
from lifted_cli.benchmarks import lifted, machine, publish, read_runs, stage_report

REPO = Path(__file__).resolve().parent.parent


def sweep(*args, **kwargs) -> bool:
    """``benchmarks.sweep`` from the checkout (where results/ and the configs are)."""
    return benchmarks.sweep(*args, cwd=REPO, **kwargs)

#: per scheme: its solver and the grid swept (nine settings each: the same budget for every scheme);
#: each grid holds the scheme's current default setting
GRIDS = {
    "backprop": ("adam", ["solver.lr=3e-4,1e-3,3e-3", "solver.weight_decay=0,1e-5,1e-4"]),
    "bregman": ("isgm", ["solver.tau=0.3,1,3", "solver.momentum=0,0.8,0.9"]),
    "mac": ("bcd", ["scheme.mu=0.3,1,3", "solver.weight_update=gd,nesterov,adam"]),
    "fenchel": ("bcd", ["scheme.penalty_weight=0.3,1,3", "solver.weight_update=gd,nesterov,adam"]),
    "contrastive": ("adam", ["solver.lr=3e-4,1e-3,3e-3", "scheme.beta=0.03,0.1,0.3"]),
}
#: ``--stage refine``: a second grid, swept with the first stage's tuned values in force, for the schemes
#: whose first-stage table left a gap (lifted Bregman: how exactly each implicit step is solved) and for
#: back-propagation, which gets the same nine further settings (a finer learning rate x Adam's beta1)
REFINE = {
    "bregman": ("isgm", ["solver.x_sweeps=1,2,4", "solver.n_inner=1,2,3"]),
    "backprop": ("adam", ["solver.lr=5e-4,1e-3,2e-3", "solver.beta1=0.8,0.9,0.95"]),
}
#: ``--stage init``: the weight initialisation (``arch.init``), swept for every scheme alike with the
#: tuned values in force (the same three settings each)
INIT = {scheme: (solver, ["arch.init=default,kaiming,orthogonal"]) for scheme, (solver, _) in GRIDS.items()}
ARCHS = ("mlp", "resnet", "proxnet", "conv_autoencoder", "unrolled_pnn")
#: the pairs the mathematics does not allow (Fenchel covers relu and identity layers only)
INVALID = {("proxnet", "fenchel"), ("unrolled_pnn", "fenchel")}


def swept_keys(grid: list[str]) -> list[str]:
    return [g.split("=", 1)[0] for g in grid]


def defaults(arch: str, scheme: str, keys: list[str], tuned: bool = False) -> dict:
    """The pair's current values of the swept keys (its tuned file left out unless ``tuned``), from ``--cfg job``."""
    leave_out = [] if tuned else untuned(arch, scheme)
    out = subprocess.run([*lifted(), "train", f"arch={arch}", f"scheme={scheme}", *leave_out, "--cfg", "job"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    cfg = yaml.safe_load(out)
    values = {}
    for key in keys:
        node = cfg
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


def untuned(arch: str, scheme: str) -> list[str]:
    """The override that leaves out the pair's tuned settings (Hydra refuses to delete a missing one)."""
    solver = GRIDS[scheme][0]
    return ["~tuned"] if (REPO / "configs" / "tuned" / f"{arch}_{scheme}_{solver}.yaml").is_file() else []


def same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except (TypeError, ValueError):
        return str(a) == str(b)


def summarise(arch: str, scheme: str, runs: list[dict], keys: list[str], default: dict) -> dict:
    val = lambda r: r["metrics"]["val"]["psnr"]["mean"]  # noqa: E731
    ranked = sorted(runs, key=val, reverse=True)
    best, worst = ranked[0], ranked[-1]
    at_default = [r for r in runs if all(same(r["overrides"].get(k), default[k]) for k in keys)]
    return {
        "arch": arch, "scheme": scheme, "solver": GRIDS[scheme][0], "settings": len(runs),
        "best": " ".join(f"{k}={best['overrides'][k]}" for k in keys),
        "best_val_psnr": val(best),
        "default": " ".join(f"{k}={default[k]}" for k in keys),
        "default_val_psnr": val(at_default[0]) if at_default else math.nan,
        "worst_val_psnr": val(worst),
        "best_test_psnr": best["metrics"]["test"]["psnr"]["mean"],
        "values": {k: yaml.safe_load(best["overrides"][k]) for k in keys},
    }


def write_config(row: dict, header: str, merge: bool = False) -> Path:
    """configs/tuned/<arch>_<scheme>_<solver>.yaml: the chosen values of the swept keys, under one line of
    provenance (``merge``: added to the values the file holds already, its provenance line extended)."""
    path = REPO / "configs" / "tuned" / f"{row['arch']}_{row['scheme']}_{row['solver']}.yaml"
    nested: dict = {}
    if merge and path.is_file():
        old = path.read_text()
        nested = yaml.safe_load(old) or {}
        before = [ln[2:] for ln in old.splitlines() if ln.startswith("# ") and "@package" not in ln]
        header = (before[0] + "; then " + header) if before else header
    if not header.startswith("Chosen on validation PSNR by "):
        header = "Chosen on validation PSNR by " + header
    for key, value in row["values"].items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# @package _global_\n" + "".join(f"# {line}\n" for line in header.splitlines()) + yaml.safe_dump(nested, sort_keys=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def shown(path: Path) -> str:
    """A path as the reports name it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma-separated architectures (default {','.join(ARCHS)})")
    ap.add_argument("--schemes", default=",".join(GRIDS), help=f"comma-separated schemes (default {','.join(GRIDS)})")
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--test-size", type=int, default=2000, help="test images evaluated (reported, never used to choose)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a smoke run: 512 / 128 / 128 images, 1 epoch")
    ap.add_argument("--runs", type=Path, default=None, help="runs folder (default results/benchmark-runs/tune-<time>)")
    ap.add_argument("--out", type=Path, default=None, help="report folder (default results/benchmarks/tuning)")
    ap.add_argument("--write-configs", action="store_true", help="write configs/tuned/<arch>_<scheme>_<solver>.yaml")
    ap.add_argument("--stage", choices=("first", "refine", "init"), default="first",
                    help="first: GRIDS, tuned files left out; refine: REFINE (bregman, backprop) with the first stage's "
                         "tuned values in force, merged into their files with --write-configs; init: arch.init for "
                         "every scheme, the same way")
    ap.add_argument("extra", nargs="*", help="key=value arguments for every lifted train")
    args = ap.parse_args(argv)
    refine = args.stage in ("refine", "init")  # both sweep with the first stage's tuned values in force
    grids = {"first": GRIDS, "refine": REFINE, "init": INIT}[args.stage]
    if args.schemes == ",".join(GRIDS):
        args.schemes = ",".join(grids)
    archs, schemes = args.archs.split(","), args.schemes.split(",")
    bad = [s for s in schemes if s not in grids]
    if bad:
        ap.error(f"--schemes: unknown {', '.join(bad)} for --stage {args.stage}; allowed: {', '.join(grids)}")
    if args.quick:
        args.train_size, args.val_size, args.test_size, args.epochs = 512, 128, 128, 1
    if args.write_configs and args.quick:
        ap.error("--write-configs: settings are chosen on full tuning runs, not on --quick")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = args.runs or REPO / "results" / "benchmark-runs" / f"tune-{stamp}"
    out = args.out or REPO / "results" / "benchmarks" / ({"first": "tuning"}.get(args.stage, f"tuning_{args.stage}")
                                                         + ("_quick" if args.quick else ""))
    runs_dir.mkdir(parents=True, exist_ok=True)
    sizes = [f"train_size={args.train_size}", f"val_size={args.val_size}", f"test_size={args.test_size}",
             f"epochs={args.epochs}", "progress=false", "num_samples=0", *args.extra]
    t0 = time.time()
    rows = []
    with open(runs_dir / "sweeps.log", "a") as log:
        for arch in archs:
            for scheme in schemes:
                if (arch, scheme) in INVALID:
                    continue
                folder = runs_dir / f"{arch}_{scheme}"
                grid = grids[scheme][1]
                leave_out = [] if refine else untuned(arch, scheme)
                if not any(folder.glob("*/metrics.json")):  # a rerun into the same --runs keeps finished sweeps
                    sweep([f"arch={arch}", f"scheme={scheme}", *leave_out, *grid, *sizes], folder, log)
                runs = read_runs(folder)
                keys = swept_keys(grid)
                rows.append(summarise(arch, scheme, runs, keys, defaults(arch, scheme, keys, tuned=refine)))
                print(f"{arch} {scheme}: best {rows[-1]['best']} (val {rows[-1]['best_val_psnr']:.2f} dB)", flush=True)
    wall = time.time() - t0
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for row in rows:
        staged = stage_report(tmp / "x", runs_dir / f"{row['arch']}_{row['scheme']}", "--by", "val")
        if (staged / "report.md").is_file():  # the table alone: its pictures are not kept
            text = (staged / "report.md").read_text().splitlines()
            (tmp / f"{row['arch']}_{row['scheme']}.md").write_text(
                "\n".join(ln for ln in text if not ln.startswith("Pictures:")).rstrip() + "\n")
        shutil.rmtree(staged, ignore_errors=True)
    cols = ["arch", "scheme", "solver", "settings", "best", "best_val_psnr", "default", "default_val_psnr",
            "worst_val_psnr", "best_test_psnr"]
    with open(tmp / "tuning.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    command = "scripts/tune.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Tuning every scheme x architecture on a validation split"
        + (f" (stage {args.stage}: {args.stage.upper()}, with the first stage's tuned values in force)" if refine else ""), "",
        f"Command: `{command}`", "",
        f"MNIST denoising; {args.train_size} training images, {args.val_size} validation images held out of the "
        f"training split (`val_size`, `val_seed=2024`), {args.epochs} epoch(s), seed 0; {machine('cpu')}; "
        f"{time.strftime('%Y-%m-%d')}; {wall / 60:.1f} min for the sweeps this invocation ran (sweeps already finished in "
        "the runs folder are read, not run again). Every pair gets the same budget: "
        f"the settings of its grid (`{args.stage.upper() if refine else 'GRIDS'}` in scripts/tune.py). Settings are ranked by "
        "validation PSNR; the "
        "test PSNR of the chosen setting (on the first "
        f"{args.test_size} test images) is shown, never used to choose. One seed per setting: differences of a "
        "few hundredths of a dB are within run-to-run noise.", "",
        "| arch | scheme | solver | best setting (validation) | val PSNR | default setting | its val PSNR | worst val PSNR | test PSNR of the best |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['scheme']} | {r['solver']} | {r['best']} | {fmt(r['best_val_psnr'])} | "
                     f"{r['default']} | {fmt(r['default_val_psnr'])} | {fmt(r['worst_val_psnr'])} | {fmt(r['best_test_psnr'])} |")
    lines += ["", "Grids: " + "; ".join(f"{s} ({grids[s][0]}): {' x '.join(grids[s][1])}" for s in schemes), "",
              "Every setting of a pair, ranked: " + ", ".join(f"[{r['arch']}_{r['scheme']}]({r['arch']}_{r['scheme']}.md)"
                                                        for r in rows), ""]
    if args.write_configs:
        written = []
        for r in rows:
            header = (f"`{command}` ({time.strftime('%Y-%m-%d')}; {r['best_val_psnr']:.2f} dB against "
                      f"{fmt(r['default_val_psnr'])} for the defaults); report {shown(out)}/")
            written.append(write_config(r, header, merge=refine).relative_to(REPO))
        lines += ["Written: " + ", ".join(f"`{p}`" for p in written), ""]
    (tmp / "tuning.md").write_text("\n".join(lines))
    publish(tmp, out)
    print(f"tune.py: report in {out / 'tuning.md'}; runs in {runs_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
