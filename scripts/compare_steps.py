#!/usr/bin/env python3
"""Time mini-batch steps of several `lifted train` configurations side by side, in one process.

Every variant is built as `lifted train` builds it (same seed) from BASE plus its own overrides;
their steps alternate on the same batches (MNIST-sized random images, batch 128), so the medians are
measured under the same machine load. The first two steps of each variant are not counted.

    scripts/compare_steps.py "arch=mlp arch.depth=16 arch.width=256" "scheme=backprop" \\
        "solver.layer_order=jacobi solver.stacked=false" "solver.layer_order=jacobi solver.stacked=true"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="overrides shared by every variant, space-separated")
    ap.add_argument("variants", nargs="+", help="each variant's overrides, space-separated")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args(argv)
    import torch
    from hydra import compose, initialize_config_module

    from lifted_cli.commands.train import build
    from lifted_cli.runs import StepClock, tune_allocator

    torch.set_num_threads(a.threads)
    tune_allocator()
    device = torch.device(a.device)
    solvers = []
    for v in a.variants:
        with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*a.base.split(), *v.split(), f"device={a.device}"])
        torch.manual_seed(cfg.seed)
        solver = build(cfg, device)[2]
        solver.prepare(4 * a.batch)
        solvers.append(solver)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4 * a.batch, 1, 28, 28, generator=g)
    y = x + 0.1 * torch.randn(x.shape, generator=g)
    x, y = x.to(device), y.to(device)
    clocks = [StepClock(device) for _ in solvers]
    for r in range(a.steps):
        idx = torch.arange(a.batch, device=device) + a.batch * (r % 4)
        for solver, clock in zip(solvers, clocks):
            clock.start()
            solver.step(y[idx], x[idx], idx)
            clock.stop()
    print(f"base: {a.base} ({a.threads} thread(s), {a.device}, {a.steps - 2} steps counted)")
    for v, clock in zip(a.variants, clocks):
        print(f"{v:60s} median {clock.median_ms(2):8.2f} ms  min {min(clock.seconds[2:]) * 1e3:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
