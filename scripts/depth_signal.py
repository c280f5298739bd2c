#!/usr/bin/env python3
"""How much of the target reaches each layer: lifted X-sweeps against back-propagation's gradient.

For a relu mlp of width 256 at the depths given, at initialisation (``arch.init=kaiming`` by default)
and on one batch of 128 MNIST denoising images: the relative distance ``||z_l - z_l^fwd|| / ||z_l^fwd||``
of every hidden auxiliary variable after one mini-batch's X-sweeps (lifted Bregman ISGM, its tuned
defaults, from the forward pass ``z^fwd``; the output is clamped to the target, so this is what the
target moved in layer l), and back-propagation's relative weight gradient ``||dW_l|| / ||W_l||``. The
W-step of a block learns from the first only; back-propagation from the second.

    scripts/depth_signal.py                       # L = 2, 8, 16; gauss_seidel and jacobi
    scripts/depth_signal.py --depths 32 --out /tmp/signal.md solver.x_sweeps=6

Writes a markdown table (``--out``, default results/benchmarks/depth_signal.md). Extra ``key=value``
arguments go to every ``training()``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lifted_cli.api import training
from lifted_cli.benchmarks import machine
from lifted_cli.data import load_images

REPO = Path(__file__).resolve().parent.parent


@torch.no_grad()
def x_displacement(depth: int, extra: list[str], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    tr = training([f"arch.depth={depth}", "arch.width=256", *extra])
    s, p = tr.solver, tr.solver.problem
    s.begin_batch()
    st = p.init_state(y.flatten(1), x.flatten(1))
    start = [None] + [st.z[l].clone() for l in range(1, p.L + 1)]
    s.xs.invalidate()
    for j in range(s.cfg.x_sweeps):  # the X-steps of one batch, as ``LiftedSolver.step`` takes them
        if j:
            p.refresh(st, first=2)
        s.xs.sweep(st)
    return [float((st.z[l] - start[l]).norm() / start[l].norm().clamp_min(1e-30)) for l in range(1, p.L)]


def gradient(depth: int, extra: list[str], x: torch.Tensor, y: torch.Tensor) -> list[float]:
    tr = training([f"arch.depth={depth}", "arch.width=256", "scheme=backprop",
                   *[e for e in extra if not e.startswith("solver.")]])
    tr.scheme.loss(y, x).backward()
    return [float(b.linear.weight.grad.norm() / b.linear.weight.detach().norm()) for b in tr.model.blocks[:-1]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="2,8,16")
    ap.add_argument("--orders", default="gauss_seidel,jacobi", help="solver.layer_order values of the lifted rows")
    ap.add_argument("--out", default="results/benchmarks/depth_signal.md")
    ap.add_argument("extra", nargs="*", help="key=value overrides (default arch.init=kaiming)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    extra = a.extra or ["arch.init=kaiming"]
    x = load_images({"name": "mnist"}, None, True, 128)
    y = training(extra).degradation.measure(x, torch.Generator().manual_seed(0))  # the task's (denoise)
    cmd = "scripts/depth_signal.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = ["# How much of the target reaches each hidden layer", "",
             f"Command: `{cmd}`. Machine: {machine('cpu')}.",
             f"relu mlp of width 256, `{' '.join(extra)}`, at initialisation, one batch of 128 MNIST denoising images "
             "(`task=denoise`). Lifted rows: `||z_l - z_l^fwd|| / ||z_l^fwd||` after one mini-batch's X-sweeps of lifted "
             "Bregman ISGM (its tuned defaults) from the forward pass, the output clamped to the target. "
             "Back-propagation rows: `||dL/dW_l|| / ||W_l||`. Hidden layers from the input (1) to the last (L).", ""]
    for depth in map(int, a.depths.split(",")):
        cols = list(range(1, depth + 1))
        lines += [f"**L = {depth}**", "", "| | " + " | ".join(map(str, cols)) + " |", "|---|" + "---|" * len(cols)]
        for order in a.orders.split(","):
            values = x_displacement(depth, [*extra, f"solver.layer_order={order}"], x, y)
            lines.append(f"| lifted, {order} | " + " | ".join(f"{v:.1e}" for v in values) + " |")
        lines.append("| back-propagation | " + " | ".join(f"{v:.1e}" for v in gradient(depth, extra, x, y)) + " |")
        lines.append("")
    out = Path(a.out)
    out = out if out.is_absolute() else REPO / out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)
    print(f"depth signal: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
