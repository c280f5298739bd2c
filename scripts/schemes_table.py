#!/usr/bin/env python3
"""The canonical scheme x architecture table: every scheme at its tuned defaults on every architecture
(full MNIST denoising, sigma 0.3, 5 epochs, test PSNR), seeds 0 and 1, with each scheme's difference to
back-propagation on the same seeds.

The runs behind it were made by ``scripts/benchmark_schemes.sh`` in parts (one report per part, each
part's runs side by side in one invocation); this script gathers the parts' ``report.csv`` into one table
at one path, ``results/benchmarks/schemes_x_archs/`` (``table.md``, ``table.csv``), naming the report
of every cell. ``SOURCES`` says which report holds which (architecture, scheme, seeds): when a part is
rerun, point its entry at the new report and run this script again.

    scripts/schemes_table.py                 # writes results/benchmarks/schemes_x_archs/
    OMP_NUM_THREADS=1 ARCHS=mlp SCHEMES=backprop,bregman OUT=results/benchmarks/<part> \\
        scripts/benchmark_schemes.sh seed=0,1   # a part (then add it to SOURCES)
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "results" / "benchmarks"
SCHEMES = ["backprop", "bregman", "mac", "fenchel", "contrastive"]

#: (arch, scheme) -> the reports (folders of results/benchmarks) that hold its runs, and their seeds there
SOURCES: dict[tuple[str, str], list[tuple[str, str]]] = {
    **{("mlp", s): [("schemes_tuned_mlp_resnet_seeds", "0,1")] for s in SCHEMES},
    **{("resnet", s): [("schemes_tuned_mlp_resnet_seeds", "0,1")] for s in ("backprop", "bregman", "mac", "contrastive")},
    ("resnet", "fenchel"): [("schemes_fenchel_resnet_final", "0,1")],  # retuned after the mlp/resnet run
    ("conv_autoencoder", "backprop"): [("schemes_conv_autoencoder_tuned", "0"), ("schemes_conv_autoencoder_seed1", "1")],
    ("conv_autoencoder", "bregman"): [("schemes_conv_autoencoder_tuned", "0"), ("schemes_bregman_seed1", "1")],
    **{("conv_autoencoder", s): [("schemes_conv_autoencoder_rest", "0"), ("schemes_conv_autoencoder_seed1", "1")]
       for s in ("mac", "fenchel", "contrastive")},
    # back-propagation and contrastive at the rates tuned again at the full budget
    **{("proxnet", s): [("schemes_proxnet_full_budget_lr", "0"), ("schemes_proxnet_seed1", "1")]
       for s in ("backprop", "contrastive")},
    **{("proxnet", s): [("schemes_proxnet_tuned", "0"), ("schemes_proxnet_seed1", "1")] for s in ("bregman", "mac")},
    ("unrolled_pnn", "backprop"): [("schemes_tuned_final", "0"), ("schemes_bregman_seed1", "1")],
    # He initialisation (tuning_findings.md section 13): the 5-epoch runs of time_to_quality/, reported as a part
    ("unrolled_pnn", "bregman"): [("schemes_unrolled_pnn_bregman_init", "0,1")],
    **{("unrolled_pnn", s): [("schemes_unrolled_pnn_rest", "0")] for s in ("mac", "contrastive")},
}
#: combinations the mathematics does not allow (Fenchel penalties cover relu and identity layers only)
INVALID = {("proxnet", "fenchel"): "n/a (soft-threshold)", ("unrolled_pnn", "fenchel"): "n/a (clamp)"}
ARCHS = ["mlp", "resnet", "conv_autoencoder", "proxnet", "unrolled_pnn"]


def psnr(report: str, arch: str, scheme: str, seeds: str) -> float:
    """The mean test PSNR of (arch, scheme) in a report's report.csv, whose runs must be those seeds."""
    with open(BENCH / report / "report.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["command"] != "train" or row.get("scheme", scheme) != scheme or row.get("arch", arch) != arch:
                continue
            if row["seeds"] != seeds:
                raise SystemExit(f"{report}: {arch} {scheme} holds seeds {row['seeds']}, SOURCES says {seeds}")
            return float(row["test PSNR (dB)"].split("±")[0])
    raise SystemExit(f"{report}/report.csv has no {arch} {scheme} row")


def cells() -> dict:
    """(arch, scheme) -> {seeds: PSNR} from the reports."""
    return {key: {seeds: psnr(report, *key, seeds) for report, seeds in src} for key, src in SOURCES.items()}


def seed_count(seeds: str) -> int:
    return len(seeds.split(","))


def on_seeds(cell: dict, seeds: str) -> float | None:
    """A cell's mean PSNR over exactly ``seeds`` (its entries for those seeds, weighted by their counts),
    None when it lacks one of them."""
    want = set(seeds.split(","))
    parts = {k: v for k, v in cell.items() if set(k.split(",")) <= want}
    if set(",".join(parts).split(",")) != want:
        return None
    return sum(v * seed_count(k) for k, v in parts.items()) / sum(seed_count(k) for k in parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=BENCH / "schemes_x_archs")
    a = ap.parse_args(argv)
    values = cells()
    rows = []
    for arch in ARCHS:
        base = values[(arch, "backprop")]
        for scheme in SCHEMES:
            if (arch, scheme) in INVALID:
                rows.append({"arch": arch, "scheme": scheme, "psnr": None, "delta": None, "seeds": "", "reports": ""})
                continue
            got = values[(arch, scheme)]
            n = sum(seed_count(s) for s in got)
            mean = sum(v * seed_count(s) for s, v in got.items()) / n
            deltas = [(v - on_seeds(base, s), seed_count(s)) for s, v in got.items() if on_seeds(base, s) is not None]
            delta = sum(d * c for d, c in deltas) / sum(c for _, c in deltas)
            rows.append({"arch": arch, "scheme": scheme, "psnr": mean, "delta": delta,
                         "seeds": ",".join(sorted(",".join(got).split(","))),
                         "reports": " ".join(r for r, _ in SOURCES[(arch, scheme)])})
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "table.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["arch", "scheme", "psnr", "delta", "seeds", "reports"])
        w.writeheader()
        w.writerows({**r, "psnr": "" if r["psnr"] is None else f"{r['psnr']:.2f}",
                     "delta": "" if r["delta"] is None else f"{r['delta']:+.2f}"} for r in rows)
    lines = ["# Every scheme on every architecture, at the tuned defaults", "",
             "Full MNIST denoising (noise std 0.3, noisy input 13.32 dB), 5 epochs, test PSNR in dB, the mean over the "
             "seeds listed; in brackets the difference to back-propagation on the same seeds. Made by "
             "`scripts/schemes_table.py` from the reports named below (each made by `scripts/benchmark_schemes.sh`, "
             "its runs side by side in one invocation on the 2-core CPU of the project, except "
             "`schemes_unrolled_pnn_bregman_init/`: the 5-epoch lifted runs of `time_to_quality/`; commands and dates "
             "in each report). Settings: `configs/tuned/`, chosen on a validation split.", "",
             "| architecture | " + " | ".join(SCHEMES) + " |", "|---" * (len(SCHEMES) + 1) + "|"]
    for arch in ARCHS:
        cells_ = []
        for scheme in SCHEMES:
            r = next(r for r in rows if r["arch"] == arch and r["scheme"] == scheme)
            if r["psnr"] is None:
                cells_.append(INVALID[(arch, scheme)])
            elif scheme == "backprop":
                cells_.append(f"{r['psnr']:.2f}")
            else:
                cells_.append(f"{r['psnr']:.2f} ({r['delta']:+.2f})")
        lines.append(f"| {arch} | " + " | ".join(cells_) + " |")
    lines += ["", "Seeds and reports of every cell:", "", "| architecture | scheme | seeds | reports |", "|---|---|---|---|"]
    for r in rows:
        if r["psnr"] is not None:
            lines.append(f"| {r['arch']} | {r['scheme']} | {r['seeds']} | "
                         + ", ".join(f"`results/benchmarks/{x}/`" for x in r["reports"].split()) + " |")
    (a.out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"schemes_table.py: {a.out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
