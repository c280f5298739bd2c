#!/usr/bin/env python3
"""Data- and layer-parallel lifted training against data-parallel back-propagation: strong and weak scaling.

Sweeps of ``lifted train -m`` (MNIST denoising, ``mlp`` of width 256, one thread per process, gloo
on the CPU or NCCL with ``--device cuda``), every process count in ``--nproc``:

* ``data_strong``: global batch 128 shared out over P processes: lifted Bregman ISGM (Jacobi, stacked,
  forward and persistent warm starts) and back-propagation (Adam; its gradients averaged over the
  processes in one all-reduce after the backward pass), depth 4;
* ``data_weak``: 128 samples per process (global batch 128 P);
* ``layer``: lifted Bregman ISGM (Jacobi, persistent warm start) with the layers shared out, depths
  8, 16, 32 (weak scaling: depth 8 on one process against depth 16 on two);
* ``data_large``: global batch 2048 (16 steps per epoch), lifted MAC and back-propagation: where
  the work that grows with the samples outweighs the fixed cost of a step;
* ``grid``: the same at depth 16 on a data x layer grid of 2 layer ranges, each shared by P/2
  processes (P >= 4 only; its P = 1 is the layer group's).

``data_strong`` also runs lifted MAC (BCD with its tuned Adam W-steps): gradient W-steps whose
gradients are all-reduced, the data-parallel form without ISGM's sample-coupled majorised step.

Per run, from metrics.json: the median time per mini-batch step, its part in collectives (waiting
for the other ranks included), the
seconds per epoch, the bytes rank 0 hands to collectives per step against the model of
``bytes_model`` (docs/parallel.md), and test PSNR. A gloo calibration (latency and bandwidth of
all-reduce, all-gather and send/recv between two processes) comes first. Outputs in ``--out``:
``parallel.md``, ``parallel.csv``, ``calibration.json``, ``scaling.png``, ``report.md`` (lifted
report of the runs).

    scripts/benchmark_parallel.py                          # CPU, P = 1, 2 (this machine: 2 cores)
    scripts/benchmark_parallel.py --nproc 1,2,4,8          # a machine with more cores
    scripts/benchmark_parallel.py --quick                  # a smoke run (512 images)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from lifted_cli.benchmarks import fmt, lifted, machine, publish, read_runs, stage_report

REPO = Path(__file__).resolve().parent.parent

WIDTH = 256
GROUPS = {
    "data_strong": lambda p: [
        ["scheme=bregman", "solver.layer_order=jacobi", "solver.warm_start=forward,persistent", "arch.depth=4",
         "parallel=data", f"parallel.nproc={p}", "batch_size=128"],
        ["scheme=mac", "solver.layer_order=jacobi", "arch.depth=4", "parallel=data", f"parallel.nproc={p}", "batch_size=128"],
        ["scheme=backprop", "arch.depth=4", "parallel=data", f"parallel.nproc={p}", "batch_size=128"]],
    "data_weak": lambda p: [
        ["scheme=bregman", "solver.layer_order=jacobi", "solver.warm_start=forward,persistent", "arch.depth=4",
         "parallel=data", f"parallel.nproc={p}", f"batch_size={128 * p}"],
        ["scheme=backprop", "arch.depth=4", "parallel=data", f"parallel.nproc={p}", f"batch_size={128 * p}"]],
    "layer": lambda p: [
        ["scheme=bregman", "solver.layer_order=jacobi", "solver.warm_start=persistent", "arch.depth=8,16,32",
         "parallel=layer", f"parallel.nproc={p}", "batch_size=128"]],
    # a large global batch: per-step work that grows with the samples, against the fixed cost of a step
    # (gradient W-steps only: ISGM's sample-space systems would be 2048 x 2048 on every rank)
    "data_large": lambda p: [
        ["scheme=mac", "solver.layer_order=jacobi", "arch.depth=4", "parallel=data", f"parallel.nproc={p}",
         f"batch_size={LARGE_BATCH}"],
        ["scheme=backprop", "arch.depth=4", "parallel=data", f"parallel.nproc={p}", f"batch_size={LARGE_BATCH}"]],
    # the data x layer grid: 2 layer ranges, each held by P/2 processes; against the layer group's P = 1
    "grid": lambda p: [
        ["scheme=bregman", "solver.layer_order=jacobi", "solver.warm_start=persistent", "arch.depth=16",
         "parallel=grid", f"parallel.nproc={p}", f"parallel.layer_ranks={GRID_LAYER_RANKS}", "batch_size=128"]]
        if p >= 2 * GRID_LAYER_RANKS else [],
}
GRID_LAYER_RANKS = 2
LARGE_BATCH = 2048  # data_large: 16 steps per epoch (its own training-set size)


# ------------------------------------------------------------------------------ calibration
def calibrate() -> None:
    """Run under torchrun with 2 processes: times of gloo collectives by message size (rank 0 prints JSON)."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    out = []
    for n in (1, 1024, 16384, 65536, 262144):
        t = torch.randn(n)
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        row = {"bytes": n * 4}
        for name, op in (("all_reduce_ms", lambda: dist.all_reduce(t)), ("all_gather_ms", lambda: dist.all_gather(parts, t)),
                         ("send_recv_ms", lambda: [r.wait() for r in dist.batch_isend_irecv(
                             [dist.P2POp(dist.isend, t, 1 - dist.get_rank()), dist.P2POp(dist.irecv, parts[0], 1 - dist.get_rank())])])):
            for _ in range(5):
                op()
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(40):
                op()
            row[name] = (time.perf_counter() - t0) / 40 * 1e3
        out.append(row)
    if dist.get_rank() == 0:
        print(json.dumps(out))
    dist.destroy_process_group()


def run_calibration() -> list:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__, "--calibrate"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    return json.loads(lines[-1]) if lines else []


# ------------------------------------------------------------------------------ bytes model
def widths(depth: int) -> list[int]:
    return [784] + [WIDTH] * depth + [784]


def bytes_model(mode: str, scheme: str, depth: int, batch: int, world: int, x_sweeps: int = 2,
                persistent: bool = True) -> float:
    """Bytes rank 0 hands to collectives in one step (float32), per docs/parallel.md:

    * lifted data-parallel (ISGM, majorised steps): its rows of X_l = U_{l-1} and R_l for every layer,
      all-gathered to the P - 1 others: (B/P) sum_l (n_{l-1} + n_l) 4 (P - 1), plus the statistics;
    * back-propagation and lifted data-parallel BCD (gradient W-steps): every gradient all-reduced
      once per step, 4 sum_l (n_{l-1} n_l + n_l), plus the statistics;
    * layer-parallel, rank 0 (it has no rank below): its top state up, at the warm start and after
      every sweep: (x_sweeps + 1) B n 4, plus the statistics (an epoch whose samples are seen for
      the first time adds the forward pipeline's B n 4);
    * grid, rank 0: the Gram rows of its layer range all-gathered in its column of P/C processes and
      its share B C/P of the boundary exchanges.

    Measured above the model: a persistent data-parallel share is padded to the largest one of the
    batch (a sample's rank is fixed, so the shares differ)."""
    n = widths(depth)
    stats = 8 * 4
    gradients = 4.0 * sum(n[i] * n[i + 1] + n[i + 1] for i in range(len(n) - 1))
    if world == 1:
        return 0.0
    if mode == "data" and scheme != "bregman":  # back-propagation, BCD: every gradient all-reduced
        return gradients + (2 * 8 if scheme == "backprop" else stats)  # back-propagation's statistic: its loss
    if mode == "data":
        share = math.ceil(batch / world)
        return share * sum(n[i] + n[i + 1] for i in range(len(n) - 1)) * 4 * (world - 1) + stats
    if mode == "grid":  # rank 0: the rows of its layer range within its column, and its boundary with the next range
        from lifted_cli.parallel import partition

        column = world // GRID_LAYER_RANKS
        share = math.ceil(batch / column)
        first, last = partition([n[i] * n[i + 1] + n[i + 1] for i in range(len(n) - 1)], GRID_LAYER_RANKS)[0]
        rows = share * sum(n[i - 1] + n[i] for i in range(first, last + 1)) * 4 * (column - 1)
        return rows + (x_sweeps + 1) * share * WIDTH * 4 + stats
    return (x_sweeps + 1) * batch * WIDTH * 4 + stats


# ------------------------------------------------------------------------------------ rows
def rank_spread(ranks: list | None) -> dict:
    """The slowest rank's own work per step (median over the last epoch) and its ratio to the fastest's:
    above 1, the others wait for it in their collectives."""
    work = [r["compute_ms"] for r in ranks or [] if not math.isnan(r["compute_ms"])]
    if len(work) < 2:
        return {}
    return {"slowest_compute_ms": max(work), "imbalance": max(work) / min(work) if min(work) > 0 else math.nan}


def rows_of(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        o, m = r["overrides"], r["metrics"]
        par = m.get("parallel", {})
        scheme = o.get("scheme", "bregman")
        mode = o.get("parallel", "none")
        ws = o.get("solver.warm_start", "-") if scheme != "backprop" else "-"
        depth, batch, world = int(o["arch.depth"]), int(o["batch_size"]), int(par.get("world_size", 1))
        last = r["history"][-1]  # the last epoch: persistent auxiliaries are all stored by then
        step, comm = last["step_ms"], last.get("comm_ms", math.nan)
        rows.append({"group": r["folder"].parent.parent.name, "mode": mode, "method": scheme, "warm_start": ws,
                     "L": depth + 1, "batch": batch, "P": world, "ms_per_step": step, "comm_ms": comm,
                     "compute_ms": step - comm if not math.isnan(comm) else math.nan,
                     "s_per_epoch": last["seconds"], "test_psnr": m["test"]["psnr"]["mean"],
                     **rank_spread(par.get("ranks")),
                     "bytes_measured": last.get("comm_bytes", math.nan),
                     "bytes_model": bytes_model(mode, scheme, depth, batch, world, persistent=ws == "persistent")})
    key = lambda x: (x["group"], x["mode"], x["method"], x["warm_start"], x["L"], x["P"])
    rows.sort(key=key)
    for row in rows:  # efficiency against P = 1 of the same series
        if row["group"] in ("layer", "grid"):
            base = [x for x in rows if x["group"] == "layer" and x["P"] == 1 and x["L"] == row["L"]]
            weak = [x for x in rows if x["group"] == "layer" and x["P"] == 1 and x["L"] - 1 == (row["L"] - 1) // row["P"]]
        else:
            same = lambda x: (x["method"], x["warm_start"]) == (row["method"], row["warm_start"]) and x["P"] == 1
            base = [x for x in rows if x["group"] == ("data_large" if row["group"] == "data_large" else "data_strong") and same(x)]
            weak = base
        if base and row["group"] != "data_weak":
            b = base[0]
            row["speedup_step"] = b["ms_per_step"] / row["ms_per_step"]
            row["strong_eff_step"] = row["speedup_step"] / row["P"]
            row["strong_eff_epoch"] = b["s_per_epoch"] / (row["P"] * row["s_per_epoch"])
        if weak and row["P"] > 1 and row["group"] in ("data_weak", "layer"):
            w = weak[0]
            row["weak_eff_step"] = w["ms_per_step"] / row["ms_per_step"]
            # data_weak: an epoch has 1/P of the steps, so perfect weak scaling is an epoch P times shorter
            row["weak_eff_epoch"] = (w["s_per_epoch"] / row["s_per_epoch"]) / (row["P"] if row["group"] == "data_weak" else 1)
    return rows


COLUMNS = [("group", "group", None), ("method", "method", None), ("warm_start", "warm start", None), ("L", "L", None),
           ("batch", "global batch", None), ("P", "P", None), ("ms_per_step", "ms/step", 1), ("comm_ms", "comm ms", 1),
           ("compute_ms", "compute ms", 1), ("slowest_compute_ms", "slowest rank's compute ms", 1),
           ("imbalance", "compute slowest / fastest rank", 2), ("speedup_step", "step speed-up", 2), ("strong_eff_step", "strong eff. (step)", 2),
           ("strong_eff_epoch", "strong eff. (epoch)", 2), ("weak_eff_step", "weak eff. (step)", 2),
           ("weak_eff_epoch", "weak eff. (epoch)", 2), ("s_per_epoch", "s/epoch", 2),
           ("bytes_measured", "bytes/step measured", 0), ("bytes_model", "bytes/step model", 0), ("test_psnr", "test PSNR", 2)]


def write_tables(rows, out: Path, header: list[str]) -> None:
    with open(out / "parallel.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c[0] for c in COLUMNS], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [*header, "", "| " + " | ".join(c[1] for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) if d is None else fmt(r.get(k), d) for k, _, d in COLUMNS) + " |")
    lines += ["", "strong efficiency: T(P = 1) / (P T(P)) at the same global batch (layer: same depth); weak: "
              "T(P = 1) / T(P) with P times the work (data_weak: P times the batch, "
              "so per epoch it counts per sample; layer: P times the depth). comm ms: median time per step in collectives (waits for other ranks "
              "included); compute ms: rank 0's step minus its comm ms; slowest rank's compute: the largest over the ranks "
              "(metrics.json `parallel.ranks`), and its ratio to the smallest. bytes/step: what rank 0 hands to collectives; "
              "model: `bytes_model` in the script."]
    (out / "parallel.md").write_text("\n".join(lines) + "\n")


def plot(rows, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    series = sorted({(r["group"], r["method"], r["warm_start"], r["L"]) for r in rows if r["group"] != "data_weak"})
    for g, method, ws, L in series:
        pts = sorted((r["P"], r["ms_per_step"], r["comm_ms"]) for r in rows
                     if (r["group"], r["method"], r["warm_start"], r["L"]) == (g, method, ws, L))
        ax = axes[0 if g in ("data_strong", "data_large") else 1]
        if g == "grid":  # from the layer group's P = 1 of the same depth
            pts = sorted(pts + [(r["P"], r["ms_per_step"], r["comm_ms"]) for r in rows
                                if (r["group"], r["P"], r["L"]) == ("layer", 1, L)])
        ax.plot([p for p, _, _ in pts], [t for _, t, _ in pts], marker="o",
                label=f"{'grid ' if g == 'grid' else 'batch 2048 ' if g == 'data_large' else ''}{method}{'' if ws == '-' else f' ({ws})'}, L={L}")
        if not any(math.isnan(c) for _, _, c in pts):
            ax.plot([p for p, _, _ in pts], [c for _, _, c in pts], marker="x", linestyle=":", color=ax.lines[-1].get_color())
    for ax, title in zip(axes, ["data-parallel, global batch 128 unless said (dotted: in collectives)",
                                "layer-parallel and grid (dotted: in collectives)"]):
        ax.set_xlabel("processes P")
        ax.set_ylabel("ms per step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.lines:  # a group left out of this invocation leaves its panel empty
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--nproc", default="1,2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--groups", default=",".join(GROUPS))
    ap.add_argument("--train-size", type=int, default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--runs", default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*")
    a = ap.parse_args(argv)
    if a.calibrate:
        calibrate()
        return 0
    train_size = a.train_size or (512 if a.quick else 5000)
    out = Path(a.out or f"results/benchmarks/parallel_{'cuda' if 'cuda' in a.device else 'cpu'}{'_quick' if a.quick else ''}")
    out = out if out.is_absolute() else REPO / out
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    runs_dir = Path(a.runs or f"results/benchmark-runs/parallel-{'quick' if a.quick else 'full'}-{stamp}")
    runs_dir = runs_dir if runs_dir.is_absolute() else REPO / runs_dir
    runs_dir.mkdir(parents=True, exist_ok=True)
    common = ["task=denoise", f"arch.width={WIDTH}", "epochs=2", "eval_every=2", f"train_size={train_size}", "test_size=500",
              "num_samples=0", "progress=false", f"device={a.device}", *a.extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # one thread per process, the single process included
    t0 = time.perf_counter()
    calibration = []
    if not a.report_only:
        calibration = run_calibration() if a.device == "cpu" else []
        (runs_dir / "calibration.json").write_text(json.dumps(calibration, indent=1))
        with open(runs_dir / "sweeps.log", "a") as log:
            for group in a.groups.split(","):
                for p in [int(v) for v in a.nproc.split(",")]:
                    if group == "data_weak" and p == 1:
                        continue  # its P = 1 is data_strong's
                    for k, args in enumerate(GROUPS[group](p)):
                        folder = runs_dir / group / f"P{p}-{k}"
                        size = [f"train_size={16 * LARGE_BATCH}" if a.startswith("train_size=") else a for a in common] \
                            if group == "data_large" and not a.quick else common
                        cmd = [*lifted(), "train", "-m", *args, *size, f"hydra.sweep.dir={folder}",
                               "hydra.sweep.subdir=${hydra.job.num}"]
                        print("$ OMP_NUM_THREADS=1 " + " ".join(["lifted", *cmd[1:]]), file=log, flush=True)
                        print("$ " + " ".join(["lifted", *cmd[1:]]), flush=True)
                        status = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
                        if status != 0:
                            raise SystemExit(f"lifted train -m failed (status {status}); see {runs_dir / 'sweeps.log'}")
    elif (runs_dir / "calibration.json").is_file():
        calibration = json.loads((runs_dir / "calibration.json").read_text())
    wall = time.perf_counter() - t0
    tmp = stage_report(out, runs_dir)
    (tmp / "calibration.json").write_text(json.dumps(calibration, indent=1))
    rows = rows_of(read_runs(runs_dir))
    cmd = "scripts/benchmark_parallel.py " + " ".join(argv if argv is not None else sys.argv[1:])
    cal = "; ".join(f"{c['bytes']} B: all-reduce {c['all_reduce_ms']:.2f} ms, all-gather {c['all_gather_ms']:.2f} ms, "
                    f"send+recv {c['send_recv_ms']:.2f} ms" for c in calibration)
    header = [f"# Parallel benchmark ({'quick' if a.quick else 'full'}, device {a.device})", "",
              f"Command: `{cmd}`; {len(rows)} runs in `{runs_dir.relative_to(REPO) if runs_dir.is_relative_to(REPO) else runs_dir}`"
              + ("" if a.report_only else f"; sweeps took {wall:.0f} s") + ".",
              f"Machine: {machine(a.device)}; every process one thread (OMP_NUM_THREADS=1).",
              f"Settings: MNIST denoising, mlp of width {WIDTH}, 2 epochs of {train_size} training images ({16 * LARGE_BATCH} "
              "for data_large; the figures are "
              "the second epoch's: medians over its steps), test PSNR on 500 after it.",
              f"gloo between two processes here (calibration.json): {cal or 'not measured'}."]
    write_tables(rows, tmp, header)
    plot(rows, tmp)
    publish(tmp, out)
    print(f"parallel report: {out / 'parallel.md'} ({len(rows)} runs, {wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
