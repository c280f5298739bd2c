#!/usr/bin/env python3
"""Do two versions of lifted give the same numbers? Tiny runs of both, side by side.

A refactoring promises that the same commands give the same test PSNR, SSIM and training statistics.
This script checks it: it exports a git revision (``--rev``) and the working tree into two folders,
runs the same tiny commands with each (``python -m lifted_cli`` with that folder first on the path, one
thread, the CPU), and writes a table of the numbers side by side:

* every scheme x architecture with its default solver, with the tuned settings (``configs/tuned``) and
  without them (``~tuned``);
* the solver paths: per-layer and stacked (``solver.stacked=false|true``) in Jacobi and red-black order,
  both warm starts, BCD (gd, adam), ISGM with a scalar metric and two inner iterations, the conjugate-
  gradient steps of unrolled and convolution blocks;
* inversion (the random perceptron, a trained mlp and resnet);
* data-parallel (2 gloo processes) against one process, layer-parallel against one-process Jacobi.

A number is ``same`` when its text is bit-identical, else its relative difference is shown.

    scripts/same_numbers.py --rev main --out results/benchmarks/one_core_same_numbers.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHS = "mlp,resnet,proxnet,unrolled_pnn,conv_autoencoder"
SCHEMES = "backprop,bregman,fenchel,mac,contrastive"
TINY = ["train_size=512", "test_size=100", "epochs=2", "batch_size=128", "num_samples=0", "progress=false",
        "device=cpu", "seed=0"]
SMALL = {"mlp": ["arch=mlp", "arch.depth=4", "arch.width=64"], "resnet": ["arch=resnet", "arch.depth=4", "arch.width=64"],
         "proxnet": ["arch=proxnet", "arch.depth=3", "arch.hidden=800"],
         "unrolled_pnn": ["arch=unrolled_pnn", "arch.depth=3", "arch.channels=2"]}
#: (label, sweep overrides): ``lifted train -m`` sweeps; every job's folder is labelled by its overrides
SWEEPS = [
    ("defaults", ["~tuned", f"scheme={SCHEMES}", f"arch={ARCHS}"]),
    ("tuned", [f"scheme={SCHEMES}", f"arch={ARCHS}"]),
    *[(f"paths_{arch}", ["~tuned", "scheme=bregman", *over, "solver.layer_order=jacobi,red_black",
                         "solver.stacked=false,true", "solver.warm_start=forward,persistent"]) for arch, over in SMALL.items()],
    *[(f"bcd_{arch}", ["~tuned", "scheme=bregman", "solver=bcd", *over, "solver.layer_order=jacobi",
                       "solver.stacked=false,true", "solver.weight_update=gd,adam"]) for arch, over in SMALL.items()],
    ("isgm_scalar", ["~tuned", "scheme=bregman", *SMALL["resnet"], "solver.layer_order=jacobi", "solver.w_metric=scalar",
                     "solver.n_inner=2", "solver.stacked=false,true"]),
    ("cg_unrolled", ["~tuned", "scheme=bregman", *SMALL["unrolled_pnn"], "solver.cg_iters=2",
                     "solver.layer_order=gauss_seidel"]),
    ("cg_unrolled_jacobi", ["~tuned", "scheme=bregman", *SMALL["unrolled_pnn"], "solver.cg_iters=2",
                            "solver.layer_order=jacobi", "solver.stacked=false,true"]),
    ("cg_conv", ["~tuned", "scheme=bregman", "arch=conv_autoencoder", "solver.cg_iters=2"]),
]
#: (label, overrides of the one-process run, overrides of the parallel run)
PARALLEL = [
    ("data_isgm_persistent", ["~tuned", "arch.depth=3", "arch.width=24", "solver.warm_start=persistent"], ["parallel=data"]),
    ("data_bcd_resnet", ["~tuned", *SMALL["resnet"], "solver=bcd", "solver.layer_order=jacobi"], ["parallel=data"]),
    ("data_backprop_sgd", ["~tuned", "scheme=backprop", "solver=sgd", "arch.hidden=[16]"], ["parallel=data"]),
    ("data_contrastive", ["~tuned", "scheme=contrastive", "arch.hidden=[32]"], ["parallel=data"]),
    ("layer_mlp", ["~tuned", *SMALL["mlp"], "solver.layer_order=jacobi"], ["parallel=layer"]),
    ("layer_resnet_persistent", ["~tuned", *SMALL["resnet"], "solver.layer_order=jacobi", "solver.warm_start=persistent"],
     ["parallel=layer"]),
]
#: (label, invert overrides; {mlp}/{resnet}: the checkpoint of that tuned bregman run of the "tuned" sweep)
INVERSIONS = [
    ("perceptron", ["experiment=perceptron_inversion", "iterations=100", "num_images=4"]),
    ("mlp_checkpoint", ["checkpoint={mlp}", "iterations=100", "num_images=4"]),
    ("resnet_checkpoint", ["checkpoint={resnet}", "iterations=100", "num_images=4"]),
]


def export(rev: str | None, dest: Path) -> str:
    """The package of ``rev`` (None: the working tree) in ``dest/lifted_cli`` with its configs inside,
    as installed; returns a description of the version."""
    dest.mkdir(parents=True)
    if rev is None:
        shutil.copytree(REPO / "lifted_cli", dest / "lifted_cli", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(REPO / "configs", dest / "lifted_cli" / "configs", ignore=shutil.ignore_patterns("__pycache__"))
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "lifted_cli", "configs"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip()
        return f"working tree ({head}{' with uncommitted changes' if dirty else ''})"
    archive = subprocess.run(["git", "archive", rev, "lifted_cli", "configs"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    shutil.move(str(dest / "configs"), str(dest / "lifted_cli" / "configs"))
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True)
    return f"{rev} ({commit.stdout.strip()})"


def run(root: Path, args: list[str], cwd: Path, log) -> int:
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "lifted_cli", *args]
    print("$ lifted " + " ".join(args), file=log, flush=True)
    return subprocess.run(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def numbers(metrics: dict) -> dict:
    """The numbers a run must reproduce: test (or recovered) PSNR and SSIM, the training statistics."""
    out = {}
    for part in ("test", "recovered"):
        if part in metrics:
            out.update({f"{part}_psnr": metrics[part]["psnr"]["mean"], f"{part}_ssim": metrics[part]["ssim"]["mean"]})
    out.update({f"train_{k}": v for k, v in metrics.get("train", {}).items()})
    for key in ("residual", "objective"):
        if key in metrics:
            out[key] = metrics[key]
    return out


def label_of(folder: Path) -> str:
    overrides = (folder / ".hydra" / "overrides.yaml").read_text().splitlines()
    keep = [o[2:] for o in overrides if o.startswith("- ") and o[2:].split("=")[0] not in
            {t.split("=")[0] for t in TINY} and not o[2:].startswith(("data_root", "hydra."))]
    return " ".join(keep)


def run_version(root: Path, work: Path, data_root: Path, log) -> dict:
    """Every case with the version in ``root``; returns {case: numbers}."""
    results = {}
    work.mkdir(parents=True)
    common = [*TINY, f"data_root={data_root}"]
    for label, over in SWEEPS:
        folder = work / label
        status = run(root, ["train", "-m", *over, *common, f"hydra.sweep.dir={folder}", "hydra.sweep.subdir=${hydra.job.num}"],
                     work, log)
        if status > 2:
            raise SystemExit(f"sweep {label} failed with status {status}; see {log.name}")
        for m in sorted(folder.glob("*/metrics.json"), key=lambda p: int(p.parent.name)):
            results[f"{label}: {label_of(m.parent)}"] = numbers(json.loads(m.read_text()))
    for label, over, par in PARALLEL:
        for kind, extra in (("one process", []), ("2 processes", [*par, "parallel.nproc=2"])):
            folder = work / "parallel" / f"{label}_{len(extra)}"
            if run(root, ["train", *over, *extra, *common, f"hydra.run.dir={folder}"], work, log):
                raise SystemExit(f"{label} ({kind}) failed; see {log.name}")
            results[f"parallel {label}: {kind}"] = numbers(json.loads((folder / "metrics.json").read_text()))
    ckpt = {arch: next(m.parent for m in (work / "tuned").glob("*/metrics.json")
                       if label_of(m.parent) == f"scheme=bregman arch={arch}") for arch in ("mlp", "resnet")}
    for label, over in INVERSIONS:
        folder = work / "invert" / label
        args = [o.format(**ckpt) for o in over]
        if run(root, ["invert", *args, "device=cpu", "progress=false", f"data_root={data_root}", f"hydra.run.dir={folder}"],
               work, log):
            raise SystemExit(f"invert {label} failed; see {log.name}")
        results[f"invert: {label}"] = numbers(json.loads((folder / "metrics.json").read_text()))
    return results


def compare(a, b) -> str:
    if a is None or b is None:
        return "missing"
    if repr(a) == repr(b) or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
        return "same"
    return f"{abs(a - b) / max(abs(a), abs(b), 1e-300):.1e}"


def table(before: dict, after: dict, names: tuple[str, str]) -> list[str]:
    lines = [f"| case | test PSNR {names[0]} | {names[1]} | statistics | largest relative difference |", "|---|---|---|---|---|"]
    for case in sorted(set(before) | set(after), key=lambda c: (c.split(":")[0], c)):
        b, a = before.get(case, {}), after.get(case, {})
        keys = sorted(set(b) | set(a))
        diffs = {k: compare(b.get(k), a.get(k)) for k in keys}
        rel = [float(d) for d in diffs.values() if d not in ("same", "missing")]
        worst = "missing" if "missing" in diffs.values() else ("bit-identical" if not rel else f"{max(rel):.1e}")
        psnr_key = "test_psnr" if "test_psnr" in keys else "recovered_psnr"
        fmt = lambda d: f"{d[psnr_key]:.6f}" if psnr_key in d else ""  # noqa: E731
        lines.append(f"| {case} | {fmt(b)} | {fmt(a)} | {len(keys)} | {worst} |")
    return lines


def pairs_table(before: dict, after: dict) -> list[str]:
    """Within each version: the same run with its blocks alone and grouped into stacks."""
    lines = ["| case (solver.stacked=false against true) | before | after |", "|---|---|---|"]
    for case in sorted(before):
        if "solver.stacked=True" not in case:
            continue
        alone = case.replace("solver.stacked=True", "solver.stacked=False")
        cells = []
        for results in (before, after):
            a, b = results.get(alone, {}), results.get(case, {})
            rel = [float(d) for d in (compare(a.get(k), b.get(k)) for k in a) if d not in ("same", "missing")]
            cells.append("bit-identical" if not rel else f"{max(rel):.1e}")
        lines.append(f"| {case.replace(' solver.stacked=True', '')} | {cells[0]} | {cells[1]} |")
    return lines


def parallel_table(results: dict, name: str) -> list[str]:
    """Data-parallel against one process, layer-parallel against one-process Jacobi, within one version."""
    lines = [f"| {name}: case | test PSNR one process | 2 processes | largest relative difference |", "|---|---|---|---|"]
    for label, _, _ in PARALLEL:
        one, two = results.get(f"parallel {label}: one process", {}), results.get(f"parallel {label}: 2 processes", {})
        rel = [abs(one[k] - two[k]) / max(abs(one[k]), abs(two[k]), 1e-300) for k in one if k in two]
        lines.append(f"| {label} | {one.get('test_psnr', math.nan):.6f} | {two.get('test_psnr', math.nan):.6f} | "
                     f"{max(rel, default=math.nan):.1e} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", required=True, help="the git revision to compare the working tree with")
    ap.add_argument("--out", default="results/benchmarks/one_core_same_numbers.md")
    ap.add_argument("--data-root", default=None, help="where MNIST is (default: lifted's data cache)")
    ap.add_argument("--work", default=None, help="run folders (default: a temporary folder, removed)")
    ap.add_argument("--report-only", action="store_true", help="only rebuild the report from --work's numbers")
    a = ap.parse_args(argv)
    from lifted_cli.data import data_root as default_data_root

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="same-numbers-") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        results, names = [], []
        for i, rev in enumerate((a.rev, None)):
            if a.report_only:
                saved = json.loads((work / f"version{i}.json").read_text())
                names.append(saved["version"])
                results.append(saved["numbers"])
                continue
            root = work / f"version{i}"
            names.append(export(rev, root / "src"))
            with open(work / f"version{i}.log", "w") as log:
                results.append(run_version(root / "src", root / "runs", (Path(a.data_root).resolve() if a.data_root else default_data_root(None)), log))
            (work / f"version{i}.json").write_text(json.dumps({"version": names[-1], "numbers": results[-1]}, indent=1))
    out = Path(a.out)
    lines = [f"# Same numbers: {names[0]} against {names[1]}", "",
             f"Command: `scripts/same_numbers.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"({time.strftime('%Y-%m-%d')}, {time.perf_counter() - t0:.0f} s). Machine: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, one thread per process (OMP_NUM_THREADS=1), the CPU; Python {platform.python_version()}.",
             f"Training runs: MNIST denoising, {' '.join(TINY)}; every scheme with its default solver. "
             "\"statistics\": the numbers compared per case (test PSNR and SSIM, the last epoch's training statistics; "
             "for inversion the recovered PSNR and SSIM, the residual and the objective). \"bit-identical\": every one of "
             "them has the same decimal text in both versions.", "",
             *table(results[0], results[1], ("before", "after")), "",
             "Within each version, the same run with every block alone and with equal blocks grouped into stacks "
             "(the mathematics is the same; the order of some sums is not):", "",
             *pairs_table(results[0], results[1]), "",
             "Data-parallel against one process and layer-parallel against one-process Jacobi, in each version:", "",
             *parallel_table(results[0], "before"), "", *parallel_table(results[1], "after"), ""]
    out.write_text("\n".join(lines))
    print(f"{out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
