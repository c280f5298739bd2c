#!/usr/bin/env python3
"""Where the time of a lifted Bregman epoch goes, against a back-propagation epoch, side by side.

The MLP 784-256-256-784 (``arch.depth=2 arch.width=256``) on MNIST denoising, 5,000 training images,
batch 128, one thread. Both trainers are built as ``lifted train`` builds them (same seed, same
batches and noise); their epochs alternate in one process, so the ratio of the two epoch times is
measured under the same machine load. Then one epoch of each runs under ``torch.profiler`` and the
time is split into matrix products, factorisations, other kernels (elementwise, reductions, copies)
and what is left of the wall time outside any kernel (Python, dispatch, allocation); the scalar reads
that would wait for a GPU (``aten::item`` / ``_local_scalar_dense``) are counted per step.

    scripts/profile_epoch.py                      # writes results/benchmarks/profile_cpu.md
    scripts/profile_epoch.py --repeats 3 --out /tmp/profile.md solver.layer_order=jacobi

Extra ``key=value`` arguments go to the lifted run's config.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

MATMUL = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_"}
LINALG = {"aten::linalg_cholesky_ex", "aten::cholesky_inverse", "aten::cholesky_solve", "aten::_cholesky_solve_helper",
          "aten::linalg_solve_triangular"}
SYNC = {"aten::item", "aten::_local_scalar_dense"}
#: ops that only dispatch to others (their self time is bookkeeping, counted with "other kernels")
WRAPPERS = {"aten::matmul", "aten::linear"}


def build(overrides: list[str]):
    import torch
    from hydra import compose, initialize_config_module

    from lifted_cli.commands.train import build as build_run

    with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    torch.manual_seed(cfg.seed)
    return cfg, build_run(cfg, torch.device("cpu"))[2]


def epoch(solver, degradation, x_train, batch: int, seed: int) -> float:
    """One epoch of ``lifted train``'s batch loop (degradation included); its wall time."""
    import torch

    perm = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed))
    noise = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    for b in range(0, x_train.shape[0], batch):
        idx = perm[b:b + batch]
        x = x_train[idx]
        solver.step(degradation.measure(x, noise), x, idx)
    return time.perf_counter() - t0


def profile_epoch(solver, degradation, x_train, batch: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = epoch(solver, degradation, x_train, batch, seed=99)
    parts = {"matrix products": 0.0, "factorisations": 0.0, "other kernels": 0.0}
    syncs = 0
    top = []
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        t = e.self_cpu_time_total / 1e6
        if e.key in SYNC:
            syncs += e.count
        kind = "matrix products" if e.key in MATMUL else "factorisations" if e.key in LINALG else "other kernels"
        parts[kind] += t
        top.append((t, e.key, e.count))
    kernels = sum(parts.values())
    steps = -(-x_train.shape[0] // batch)
    return {"wall": wall, **parts, "outside kernels": max(wall - kernels, 0.0), "syncs_per_step": syncs / steps,
            "top": sorted(top, reverse=True)[:8], "steps": steps}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="alternating epoch pairs to time")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/benchmarks/profile_cpu.md")
    ap.add_argument("extra", nargs="*", help="key=value overrides of the lifted run")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from lifted_cli import runs
    from lifted_cli.data import build_degradation, load_images

    tuned = runs.tune_allocator() if hasattr(runs, "tune_allocator") else False  # as `lifted train` does

    base = ["arch=mlp", "arch.depth=2", "arch.width=256", f"train_size={a.train_size}"]
    cfg, backprop = build([*base, "scheme=backprop"])
    _, lifted = build([*base, "scheme=bregman", *a.extra])
    degradation = build_degradation(cfg.task)
    x_train = load_images(cfg.source, cfg.data_root, train=True, size=a.train_size)
    batch = cfg.batch_size
    times = {"backprop": [], "lifted": []}
    for r in range(a.repeats + 1):  # the first pair warms up allocator and caches: not counted
        for name, solver in (("backprop", backprop), ("lifted", lifted)):
            t = epoch(solver, degradation, x_train, batch, seed=r)
            if r:
                times[name].append(t)
    ratios = [b / a_ for a_, b in zip(times["backprop"], times["lifted"])]
    prof = {name: profile_epoch(s, degradation, x_train, batch) for name, s in (("backprop", backprop), ("lifted", lifted))}

    cmd = "scripts/profile_epoch.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# A lifted Bregman epoch against a back-propagation epoch, CPU", "",
        f"Command: `{cmd}` ({time.strftime('%Y-%m-%d %H:%M')}). Machine: {cpu}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {a.threads} thread(s), load average {load:.2f} at the end, "
        f"malloc tuned as in `lifted train`: {'yes' if tuned else 'no'}.",
        f"Setting: MLP 784-256-256-784, MNIST denoising, {a.train_size} training images, batch {batch}; "
        f"lifted = `scheme=bregman` (ISGM, its defaults{', ' + ' '.join(a.extra) if a.extra else ''}); "
        "back-propagation = Adam. Epochs alternate in one process (same batches).", "",
        "## Epoch time", "",
        "| | median s | min s | max s |", "|---|---|---|---|",
    ]
    for name in ("backprop", "lifted"):
        v = times[name]
        lines.append(f"| {name} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} |")
    lines += ["", f"Ratio lifted / back-propagation over {len(ratios)} alternating pairs: median "
              f"**{statistics.median(ratios):.2f}x** (min {min(ratios):.2f}, max {max(ratios):.2f}).", "",
              "## Where an epoch's time goes (one profiled epoch each)", "",
              "| | wall s | matrix products | factorisations | other kernels | outside kernels | scalar reads / step |",
              "|---|---|---|---|---|---|---|"]
    for name, p in prof.items():
        cells = [f"{p[k]:.3f} ({100 * p[k] / p['wall']:.0f} %)" for k in
                 ("matrix products", "factorisations", "other kernels", "outside kernels")]
        lines.append(f"| {name} | {p['wall']:.3f} | " + " | ".join(cells) + f" | {p['syncs_per_step']:.1f} |")
    lines += ["", "Largest kernels (self time in the profiled epoch, calls):", ""]
    for name, p in prof.items():
        lines.append(f"* {name}: " + ", ".join(f"`{k}` {t:.3f} s ({n})" for t, k, n in p["top"]))
    lines += ["", "The profiler's own overhead inflates the profiled wall times; the epoch-time table above is "
              "measured without it. 'Outside kernels' is the wall time not spent in any aten operator: "
              "Python, dispatch and allocation. Scalar reads are where a CUDA run waits for the device."]
    out = Path(a.out)
    if not out.is_absolute():
        out = REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
