#!/usr/bin/env python3
"""Time mini-batch steps of several `lifted train` configurations side by side, in one process.

Every variant is built as `lifted train` builds it (same seed) from BASE plus its own overrides;
their steps alternate on the same batches (MNIST-sized random images, batch 128), so the medians are
measured under the same machine load. The first two steps of each variant are not counted.

    scripts/compare_steps.py "arch=mlp arch.depth=16 arch.width=256" "scheme=backprop" \\
        "solver.layer_order=jacobi solver.stacked=false" "solver.layer_order=jacobi solver.stacked=true"

With ``--against REV`` every variant is also built by the lifted of that git revision (exported into
a temporary folder and imported as a second package), and the two versions' steps alternate too:
is the working tree faster or slower than REV, measured under the same load?
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def export(rev: str, dest: Path, package: str) -> None:
    """The package of ``rev`` with its configs inside, importable as ``package`` from ``dest``."""
    archive = subprocess.run(["git", "archive", rev, "lifted_cli", "configs"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    shutil.move(str(dest / "configs"), str(dest / "lifted_cli" / "configs"))
    (dest / "lifted_cli").rename(dest / package)


def build_solvers(package: str, base: str, variants: list[str], device: str, samples: int) -> list:
    """The solvers of every variant, built by ``package`` (its configs composed right after it is
    imported: the two packages register schemas of the same names with Hydra)."""
    import torch
    from hydra import compose, initialize_config_module

    build = importlib.import_module(f"{package}.commands.train").build
    solvers = []
    for v in variants:
        with initialize_config_module(config_module=f"{package}.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*base.split(), *v.split(), f"device={device}"])
        torch.manual_seed(cfg.seed)
        solver = build(cfg, torch.device(device))[2]
        solver.prepare(samples)
        solvers.append(solver)
    return solvers


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="overrides shared by every variant, space-separated")
    ap.add_argument("variants", nargs="+", help="each variant's overrides, space-separated")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--against", default=None, help="a git revision to time beside the working tree")
    ap.add_argument("--markdown", action="store_true", help="with --against: one table row per variant, both versions")
    a = ap.parse_args(argv)
    import torch

    from lifted_cli.runs import StepClock, tune_allocator

    torch.set_num_threads(a.threads)
    tune_allocator()
    device = torch.device(a.device)
    samples = 4 * a.batch
    runs = []  # (label, solver)
    with tempfile.TemporaryDirectory(prefix="compare-steps-") as tmp:
        if a.against:
            export(a.against, Path(tmp), "lifted_cli_against")
            sys.path.insert(0, tmp)
            runs += [(f"[{a.against}] {v}", s)
                     for v, s in zip(a.variants, build_solvers("lifted_cli_against", a.base, a.variants, a.device, samples))]
        runs += [(f"[working tree] {v}" if a.against else v, s)
                 for v, s in zip(a.variants, build_solvers("lifted_cli", a.base, a.variants, a.device, samples))]
        g = torch.Generator().manual_seed(3)
        x = torch.rand(samples, 1, 28, 28, generator=g)
        y = x + 0.1 * torch.randn(x.shape, generator=g)
        x, y = x.to(device), y.to(device)
        clocks = [StepClock(device) for _ in runs]
        for r in range(a.steps):
            idx = torch.arange(a.batch, device=device) + a.batch * (r % 4)
            for (_, solver), clock in zip(runs, clocks):
                clock.start()
                solver.step(y[idx], x[idx], idx)
                clock.stop()
    summary = []  # (label, median, first quartile, third quartile, min) in ms
    for (label, _), clock in zip(runs, clocks):
        counted = [t * 1e3 for t in clock.seconds[2:]]
        q1, _, q3 = statistics.quantiles(counted, n=4) if len(counted) > 1 else [counted[0]] * 3
        summary.append((label, statistics.median(counted), q1, q3, min(counted)))
    if a.markdown and a.against:
        n = len(a.variants)
        for v, old, new in zip(a.variants, summary[:n], summary[n:]):
            print(f"| {a.base} | {v} | {old[1]:.2f} ({old[2]:.2f}-{old[3]:.2f}) | {new[1]:.2f} ({new[2]:.2f}-{new[3]:.2f}) "
                  f"| {new[1] / old[1]:.3f} |")
        return 0
    print(f"base: {a.base} ({a.threads} thread(s), {a.device}, {a.steps - 2} steps counted)")
    width = max(len(label) for label, *_ in summary)
    for label, median, q1, q3, low in summary:
        print(f"{label:{width}s} median {median:8.2f} ms  quartiles {q1:8.2f} {q3:8.2f}  min {low:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
