"""``lifted report <folder>...``: one summary of many runs of ``lifted train`` and ``lifted invert``.

Every folder below the given ones that holds ``.hydra/config.yaml`` is a run. Finished runs (a
``metrics.json`` with ``status: finished``) are grouped by the command-line overrides that differ
between runs (``seed`` excluded, so seeds are what is averaged over); each group gets mean +- std and
the count of its final metrics. Unfinished runs (no metrics: interrupted, failed, or still running)
are listed separately and never mixed into a group. Writes into the report folder:

* ``report.md`` and ``report.csv``: one table per command, with the image sources and tasks of its
  runs (plus the no-learning row of every train source and task);
* ``<command>_psnr_vs_<key>.png``: final PSNR against each swept numeric hyperparameter, one line
  per group of the other swept keys, error bars = std over seeds;
* ``curves.png``: per train group, one panel each for the test PSNR, the training loss and the lifted objective per epoch from
  ``history.csv`` (mean over seeds);
* ``<command>_samples.png``: the ``samples.png`` of one run per group, one above the other, labelled;

and prints the tables. Options add derived tables for benchmarks: ``--baseline KEY=VALUE`` (each group's
PSNR difference and time ratio to the group with KEY=VALUE and the same other settings), ``--pivot
ROW,COL`` (mean PSNR with one swept key down and one across) and ``--best KEY`` (for every setting of
the other swept keys, the value of KEY with the best mean PSNR). ``--by val`` ranks the train groups
by their validation PSNR (runs with ``val_size`` > 0: images held out of the training split), and
``--best`` and ``--pivot`` then choose and show by it: settings are chosen on the validation set,
never on the test set.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from ..errors import ConfigError, LiftedError, WriteError
from ..runs import save_figure, save_image, write_csv, write_text

IGNORED_KEYS = {"seed", "progress", "data_root", "device", "num_samples", "resume", "checkpoint"}


class Run:
    """One run folder: its command, overrides, status and final metrics."""

    def __init__(self, folder: Path):
        self.folder = folder
        hydra_dir = folder / ".hydra"
        self.config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) or {}
        overrides = hydra_dir / "overrides.yaml"
        raw = yaml.safe_load(overrides.read_text()) if overrides.is_file() else []
        self.overrides = {}
        for o in raw or []:
            key, _, value = str(o).partition("=")
            key = key.lstrip("+~")
            if not key.startswith("hydra"):
                self.overrides[key] = re.sub(r"\\(.)", r"\1", value)  # Hydra escapes special characters: soft_threshold\:0.05
        job = yaml.safe_load((hydra_dir / "hydra.yaml").read_text()).get("hydra", {}).get("job", {}).get("name") \
            if (hydra_dir / "hydra.yaml").is_file() else None
        command = self.config.get("command", job)
        self.command = command if command in ("train", "invert") else ("invert" if "method" in self.config else "train")
        m = folder / "metrics.json"
        self.metrics = json.loads(m.read_text()) if m.is_file() else None
        self.finished = bool(self.metrics and self.metrics.get("status") == "finished")
        if self.finished:  # a record of the right shape, or the run is unreadable
            for key, _, _ in METRICS[self.command]:
                float(self.value(key))
            if self.command == "train" and "no_learning" in self.metrics:
                float(self.metrics["no_learning"]["psnr"]["mean"])
                float(self.metrics["no_learning"]["ssim"]["mean"])
            for key in ("dataset", "source", "task"):
                if not isinstance(self.config.get(key) or {}, dict):
                    raise TypeError(f"config.yaml: {key} is not a config node")
            self.status = "finished"
        elif (folder / "checkpoint.pt").is_file():
            self.status = "unfinished (checkpoint, no metrics: interrupted, diverged or running)"
        else:
            self.status = "failed or not started (no metrics, no checkpoint)"

    @property
    def seed(self):
        return self.config.get("seed")

    @property
    def data(self) -> str:
        """``source/task`` of a train run (a run from before the two groups: mnist and its dataset's
        task); the source of an invert run's images (``outputs file`` for given outputs)."""
        if self.command == "invert":
            m = self.metrics or {}
            source = m.get("source")
            if isinstance(source, dict):  # a run from before the sources: "source" described the network
                source = "mnist" if m.get("images_from") != "outputs file" else None
            return str(source or "outputs file")
        old = self.config.get("dataset") or {}
        source = (self.config.get("source") or {}).get("name", "mnist")
        task = (self.config.get("task") or {}).get("name", old.get("task", "?"))
        return f"{source}/{task}"

    @property
    def degradation(self) -> str:
        """``data`` with the task's settings (``sigma 0.3``, ...): what fixes a train run's degraded test images."""
        task = self.config.get("task") or self.config.get("dataset") or {}
        settings = ", ".join(f"{k} {v}" for k, v in task.items() if k not in ("name", "task", "test_seed"))
        return f"{self.data} ({settings})" if settings else self.data

    def value(self, key: str):
        """A final metric: (psnr, ssim) of the test set (train) or of the recovered inputs (invert);
        (val_psnr, val_ssim) of a train run's validation set (nan without one)."""
        m = self.metrics or {}
        block = m.get("test") if self.command == "train" else m.get("recovered")
        if key in ("psnr", "ssim"):
            return (block or {}).get(key, {}).get("mean", math.nan)
        if key in ("val_psnr", "val_ssim"):
            return (m.get("val") or {}).get(key[4:], {}).get("mean", math.nan)
        if key == "s_per_epoch":
            return m.get("seconds_per_epoch", math.nan)
        if key == "rel_error":
            return (block or {}).get("rel_error", {}).get("mean", math.nan)
        return m.get(key, math.nan)


class UnreadableRun:
    """A run folder whose record cannot be read (corrupt config or metrics): listed, never grouped."""

    finished = False
    command = None

    def __init__(self, folder: Path, err: Exception):
        self.folder = folder
        self.status = f"unreadable ({type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''})"


def find_runs(folders: list[Path]) -> list:
    runs = []
    for root in folders:
        for cfg in sorted(root.rglob(".hydra/config.yaml")):
            try:
                runs.append(Run(cfg.parent.parent))
            except (OSError, ValueError, yaml.YAMLError, AttributeError, TypeError, KeyError) as err:
                runs.append(UnreadableRun(cfg.parent.parent, err))
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _fmt(values: list[float], digits: int) -> str:
    mean, std = _mean_std(values)
    return "" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def group_runs(runs: list[Run]) -> tuple[list[str], dict[tuple, list[Run]]]:
    """The swept keys (overrides whose values differ between finished runs, seed excluded) and the
    finished runs grouped by (command, values of those keys)."""
    finished = [r for r in runs if r.finished]
    keys = sorted({k for r in finished for k in r.overrides})
    swept = [k for k in keys if k not in IGNORED_KEYS and k.split(".")[0] != "logger"  # where a run was logged to
             and len({r.overrides.get(k) for r in finished}) > 1]
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for r in finished:
        groups[(r.command, *[r.overrides.get(k, "") for k in swept])].append(r)
    return swept, dict(sorted(groups.items()))


METRICS = {"train": [("psnr", "test PSNR (dB)", 2), ("ssim", "test SSIM", 4), ("val_psnr", "val PSNR (dB)", 2),
                     ("s_per_epoch", "s/epoch", 2),
                     ("step_ms", "ms/step", 2), ("peak_memory_mb", "peak MB", 0)],
           "invert": [("psnr", "recovered PSNR (dB)", 2), ("ssim", "recovered SSIM", 4), ("rel_error", "rel. error", 4),
                      ("residual", "residual", 4), ("seconds", "seconds", 1)]}
#: the time of a run, for the ratios of --baseline
TIME = {"train": "s_per_epoch", "invert": "seconds"}
#: the PSNR that ranks groups and that --best and --pivot use, by --by
SCORES = {"test": "psnr", "val": "val_psnr"}


def has_val(runs: list) -> bool:
    return any(r.finished and r.command == "train" and not math.isnan(r.value("val_psnr")) for r in runs)


def table_rows(swept: list[str], groups: dict[tuple, list[Run]], rank_by: str | None = None) -> list[dict]:
    """One row per group; with ``rank_by`` (a metric key) the rows go best first, numbered in ``rank``."""
    rows = []
    val = has_val([r for members in groups.values() for r in members])
    for key, members in groups.items():
        command = key[0]
        row = {"command": command, **dict(zip(swept, key[1:])), "runs": len(members),
               "seeds": ",".join(str(r.seed) for r in members)}
        for name, label, digits in METRICS["train"] + METRICS["invert"]:
            if (name, label, digits) in METRICS[command] and (val or name != "val_psnr"):
                row[label] = _fmt([r.value(name) for r in members], digits)
        rows.append((row, _mean(members, rank_by) if rank_by else 0.0))
    if rank_by:
        rows.sort(key=lambda pair: -pair[1] if math.isfinite(pair[1]) else math.inf)
        rows = [({"rank": i, **row}, v) for i, (row, v) in enumerate(rows, 1)]
    return [row for row, _ in rows]


def _mean(members: list[Run], name: str) -> float:
    return _mean_std([r.value(name) for r in members])[0]


def baseline_for(swept: list[str], groups: dict[tuple, list[Run]], key: tuple, base: tuple[str, str]) -> tuple | None:
    """The group with ``base`` (KEY, VALUE) whose other settings agree with ``key``: the one that agrees
    on the most of them, where a setting the baseline group never set matches any value (a
    back-propagation run has no ``solver.momentum``)."""
    i = swept.index(base[0])
    best, best_score = None, -1
    for other in groups:
        if other[0] != key[0] or other[1 + i] != base[1]:
            continue
        pairs = [(b, v) for j, (b, v) in enumerate(zip(other[1:], key[1:])) if j != i]
        if any(b not in ("", v) for b, v in pairs):
            continue
        score = sum(b == v for b, v in pairs)
        if score > best_score:
            best, best_score = other, score
    return best


def add_baseline(rows: list[dict], swept: list[str], groups: dict[tuple, list[Run]], base: tuple[str, str]) -> None:
    """ΔPSNR and time ratio (and, for invert, Δ relative error) of each group to its baseline group."""
    name = f"{base[0]}={base[1]}"
    for row, (key, members) in zip(rows, groups.items()):
        ref = baseline_for(swept, groups, key, base)
        if ref is None:
            continue
        command = key[0]
        row[f"ΔPSNR to {name}"] = f"{_mean(members, 'psnr') - _mean(groups[ref], 'psnr'):+.2f}"
        row[f"time ratio to {name}"] = f"{_mean(members, TIME[command]) / _mean(groups[ref], TIME[command]):.2f}"
        if command == "invert":
            row[f"Δ rel. error to {name}"] = f"{_mean(members, 'rel_error') - _mean(groups[ref], 'rel_error'):+.4f}"


def pivot_lines(swept: list[str], groups: dict[tuple, list[Run]], row_key: str, col_key: str,
                score: str = "psnr") -> list[str]:
    """Mean PSNR (``score``: test or validation) with ``row_key`` down and ``col_key`` across, one
    table per setting of the other keys."""
    i, j = swept.index(row_key), swept.index(col_key)
    rest = [k for n, k in enumerate(swept) if n not in (i, j)]
    tables: dict[tuple, dict] = defaultdict(dict)
    for key, members in groups.items():
        vals = key[1:]
        tables[tuple(v for n, v in enumerate(vals) if n not in (i, j))][vals[i], vals[j]] = _mean(members, score)
    lines = []
    for other, cells in tables.items():
        rows = list(dict.fromkeys(r for r, _ in cells))
        cols = list(dict.fromkeys(c for _, c in cells))
        title = " ".join(f"{k}={v}" for k, v in zip(rest, other))
        lines += ["", f"Mean {'validation' if score == 'val_psnr' else 'test'} PSNR (dB), {row_key} x {col_key}"
                  f"{': ' + title if title else ''}", "",
                  f"| {row_key} | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        lines += [f"| {r} | " + " | ".join(f"{cells[r, c]:.2f}" if (r, c) in cells else "" for c in cols) + " |" for r in rows]
    return lines


def best_lines(swept: list[str], groups: dict[tuple, list[Run]], key: str, command: str, score: str = "psnr") -> list[str]:
    """For each setting of the other swept keys, the value of ``key`` whose group has the best mean
    PSNR (``score``: the test PSNR, or the validation PSNR to choose settings honestly)."""
    i = swept.index(key)
    rest = [k for n, k in enumerate(swept) if n != i]
    best: dict[tuple, tuple] = {}
    for gk, members in groups.items():
        other = tuple(v for n, v in enumerate(gk[1:]) if n != i)
        if other not in best or _mean(members, score) > _mean(groups[best[other]], score):
            best[other] = gk
    val = has_val([r for members in groups.values() for r in members])
    shown = [(n, label, d) for n, label, d in METRICS[command] if val or n != "val_psnr"]
    cols = [label for _, label, _ in shown]
    by = "validation" if score == "val_psnr" else "test"
    lines = ["", f"Best {key} per setting of {', '.join(rest) or 'the runs'} (highest mean {by} PSNR):", "",
             "| " + " | ".join([*rest, key, *cols]) + " |", "|" + "---|" * (len(rest) + 1 + len(cols))]
    for other, gk in best.items():
        vals = [_fmt([r.value(n) for r in groups[gk]], d) for n, _, d in shown]
        lines.append("| " + " | ".join([*other, gk[1 + i], *vals]) + " |")
    return lines


def no_learning_rows(runs: list[Run]) -> list[dict]:
    """The degraded input's PSNR/SSIM per train source and task (identical for every run of them)."""
    seen = {}
    for r in runs:
        if r.finished and r.command == "train" and "no_learning" in r.metrics:
            seen.setdefault(r.degradation, r.metrics["no_learning"])
    return [{"data": k, "psnr": v["psnr"]["mean"], "ssim": v["ssim"]["mean"]} for k, v in seen.items()]


def _label(swept, key) -> str:
    parts = [f"{k}={v}" for k, v in zip(swept, key[1:])]
    return " ".join(parts) or key[0]


def _as_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def plot_sweeps(out: Path, swept: list[str], groups: dict[tuple, list[Run]], prefix: str = "") -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for i, key in enumerate(swept):
        values = {k[1 + i] for k in groups}
        if not all(_as_float(v) is not None for v in values) or len(values) < 2:
            continue
        lines = defaultdict(list)
        for gk, members in groups.items():
            rest = tuple(v for j, v in enumerate(gk[1:]) if j != i)
            mean, std = _mean_std([r.value("psnr") for r in members])
            lines[(gk[0], rest)].append((_as_float(gk[1 + i]), mean, std))
        fig, ax = plt.subplots(figsize=(6, 4))
        others = [k for j, k in enumerate(swept) if j != i]
        for (command, rest), pts in sorted(lines.items()):
            pts.sort()
            x, y, e = zip(*pts)
            ax.errorbar(x, y, yerr=e, marker="o", capsize=3,
                        label=" ".join(f"{k}={v}" for k, v in zip(others, rest)) or command)
        ax.set_xlabel(key)
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        name = f"psnr_vs_{key.replace('/', '_')}.png"
        save_figure(out / f"{prefix}{name}", fig, dpi=120)
        plt.close(fig)
        written.append(name)
    return written


def _history(run: Run) -> list[dict]:
    """The rows of a run's history.csv as numbers; none when the file is missing or unreadable."""
    path = run.folder / "history.csv"
    try:
        with open(path, newline="") as f:
            return [{k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError, TypeError, csv.Error):
        return []


#: the panels of curves.png: (history.csv column, title, y label, log scale)
CURVES = (("test_psnr", "test PSNR", "PSNR (dB)", False),
          ("loss", "training loss", "1/2 squared error per image (forward network)", True),
          ("objective", "lifted objective", "objective per image (lifted schemes)", True))


def plot_curves(out: Path, swept: list[str], groups: dict[tuple, list[Run]]) -> str | None:
    """curves.png: one panel per quantity of history.csv (test PSNR, the training loss, the lifted
    objective where a scheme has one), per train group the mean over its seeds against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train_groups = {k: v for k, v in groups.items() if k[0] == "train"}
    if not train_groups:
        return None
    curves: dict[str, list] = {col: [] for col, *_ in CURVES}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for g, (key, members) in enumerate(train_groups.items()):
        hists = [h for h in (_history(r) for r in members) if h]
        if not hists:
            continue
        n = min(len(h) for h in hists)
        epochs = np.array([int(h["epoch"]) for h in hists[0][:n]] if "epoch" in hists[0][0] else range(1, n + 1))
        for col in curves:
            ys = np.array([[h[i].get(col, math.nan) for i in range(n)] for h in hists])
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys, axis=0) if np.isfinite(ys).any() else ys[0]
            mask = np.isfinite(mean) & ((mean > 0) if col != "test_psnr" else True)
            if mask.any():
                curves[col].append((epochs[mask], mean[mask], _label(swept, key), cycle[g % len(cycle)]))
    panels = [c for c in CURVES if curves[c[0]]]
    if not panels:  # runs without a history.csv draw nothing
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (col, title, ylabel, log) in zip(axes[0], panels):
        for x, y, label, color in curves[col]:  # a group keeps its colour in every panel
            ax.plot(x, y, marker=".", label=label, color=color)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if log:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(out / "curves.png", fig, dpi=120)
    plt.close(fig)
    return "curves.png"


def samples_grid(out: Path, swept: list[str], groups: dict[tuple, list[Run]], name: str = "samples.png") -> str | None:
    from PIL import Image, ImageDraw

    tiles = []
    for key, members in groups.items():
        for r in members:
            if (r.folder / "samples.png").is_file():
                try:
                    tiles.append((_label(swept, key), Image.open(r.folder / "samples.png").convert("L")))
                except OSError:  # an unreadable picture: the group has none
                    continue
                break
    if not tiles:
        return None
    width = max(t.width for _, t in tiles)
    height = sum(t.height + 16 for _, t in tiles)
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, tile in tiles:
        draw.text((2, y + 2), label, fill=0)
        canvas.paste(tile, (0, y + 16))
        y += tile.height + 16
    save_image(out / name, canvas)
    return name


def write_report(runs: list[Run], out: Path, sources: list[Path], baseline: tuple[str, str] | None = None,
                 pivot: tuple[str, str] | None = None, best: str | None = None, by: str | None = None) -> str:
    """Write the report folder (one table per command present, and the derived tables asked for) and
    return the Markdown text. ``by`` (test or val): the train groups ranked by that PSNR, which
    ``best`` and ``pivot`` then use."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(f"--out {out}: cannot make the folder ({err.strerror}); give a folder you can write") from None
    lines = [f"# Report of {len(runs)} run folders", "",
             f"Sources: {', '.join(str(s) for s in sources)}; written {time.strftime('%Y-%m-%d %H:%M')}. "
             "Groups: the overrides that differ between the finished runs of a command (seed excluded); "
             "mean ± std over the runs of a group (its seeds), with the count.", ""]
    pictures, csv_rows = [], []
    for command in ("train", "invert"):
        members = [r for r in runs if r.command == command]
        if not any(r.finished for r in members):
            continue
        swept, groups = group_runs(members)
        score = SCORES[by] if by and command == "train" else "psnr"
        rows = table_rows(swept, groups, score if by else None)
        if baseline is not None and baseline[0] in swept:
            add_baseline(rows, swept, groups, baseline)
        csv_rows += rows
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines += [f"## lifted {command}: {sum(r['runs'] for r in rows)} finished runs, swept: {', '.join(swept) or '(none)'}",
                  "", "Data (source/task): " + ", ".join(sorted({r.data for r in members if r.finished})), "",
                  "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
        if pivot is not None and set(pivot) <= set(swept):
            lines += pivot_lines(swept, groups, *pivot, score=score)
        if best is not None and best in swept:
            lines += best_lines(swept, groups, best, command, score=score)
        if command == "train":
            nl = no_learning_rows(members)
            if nl:
                lines += ["", "No learning (the degraded input itself): " + "; ".join(
                    f"{r['data']}: PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f}" for r in nl)]
        pictures += [f"{command}_{p}" for p in plot_sweeps(out, swept, groups, prefix=f"{command}_")]
        if command == "train":
            pictures += [p for p in (plot_curves(out, swept, groups),) if p]
        grid = samples_grid(out, swept, groups, name=f"{command}_samples.png")
        if grid:
            pictures.append(grid)
        lines.append("")
    if csv_rows:
        cols = list(dict.fromkeys(k for r in csv_rows for k in r))
        write_csv(out / "report.csv", [{c: r.get(c, "") for c in cols} for r in csv_rows])
    else:
        lines.append("No finished run.")
    bad = [r for r in runs if not r.finished]
    if bad:
        lines += ["", f"Not included ({len(bad)}):", ""]
        lines += [f"* {r.folder}: {r.status}" for r in bad]
    if pictures:
        lines += ["", "Pictures: " + ", ".join(f"[{p}]({p})" for p in pictures)]
    text = "\n".join(lines) + "\n"
    write_text(out / "report.md", text)
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with one line on stderr and exit status 2 for bad arguments (no usage block)."""

    def error(self, message):
        raise _BadArguments(message)


class _BadArguments(Exception):
    pass


def main(argv: list[str]) -> int:
    try:
        return _main(argv)
    except _BadArguments as err:
        print(f"lifted report: error: {err}; see lifted report --help", file=sys.stderr)
        return 2
    except LiftedError as err:  # e.g. --out on a full disk or in a read-only folder
        print(f"lifted report: error: {err}", file=sys.stderr)
        return err.exit_code


def _main(argv: list[str]) -> int:
    ap = _Parser(prog="lifted report", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Files written: report.md, report.csv, <command>_psnr_vs_<key>.png, curves.png, "
                                        "<command>_samples.png (see docs/runs.md).")
    ap.add_argument("folders", nargs="+", type=Path, help="run folders, or folders holding run folders")
    ap.add_argument("--out", type=Path, default=None,
                    help="report folder (default: results/report/<date>/<time>)")
    ap.add_argument("--baseline", metavar="KEY=VALUE", default=None,
                    help="add each group's PSNR difference and time ratio to the group with KEY=VALUE "
                         "(e.g. scheme=backprop, delta=0)")
    ap.add_argument("--pivot", metavar="ROW,COL", default=None, help="add a table of mean PSNR, ROW down, COL across "
                                                                     "(two swept keys, e.g. arch,scheme)")
    ap.add_argument("--best", metavar="KEY", default=None,
                    help="add, for every setting of the other swept keys, the value of KEY with the best mean PSNR")
    ap.add_argument("--by", choices=sorted(SCORES), default=None,
                    help="rank the train groups by their test or validation PSNR (best first, column rank); --best and "
                         "--pivot then use it. Choose settings by val (runs trained with val_size > 0)")
    args = ap.parse_args(argv)
    try:
        out, text = make_report(args.folders, args.out, args.baseline, args.pivot, args.best, args.by)
    except ConfigError as err:
        print(f"lifted report: error: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    print(f"lifted report: written to {out}")
    return 0


def make_report(folders: list, out=None, baseline: str | None = None, pivot: str | None = None,
                best: str | None = None, by: str | None = None) -> tuple[Path, str]:
    """The report of the run folders below ``folders`` written into ``out`` (default
    ``results/report/<date>/<time>``); returns the folder and the Markdown text. ``baseline``
    (``KEY=VALUE``), ``pivot`` (``ROW,COL``), ``best`` (``KEY``), ``by`` (``test`` or ``val``): the
    derived tables and the ranking of ``--baseline``, ``--pivot``, ``--best``, ``--by``. ConfigError
    (one line) for folders or options that cannot make a report."""
    folders = [Path(f) for f in folders]
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder for the report")
    missing = [str(f) for f in folders if not f.is_dir()]
    if missing:
        raise ConfigError(f"not a folder: {', '.join(missing)}")
    runs = find_runs(folders)
    if not runs:
        raise ConfigError(f"no run folder (with .hydra/config.yaml) below {', '.join(map(str, folders))}")
    swept = {k for command in ("train", "invert") for k in group_runs([r for r in runs if r.command == command])[0]}
    base = tuple(baseline.split("=", 1)) if baseline else None
    table = tuple(pivot.split(",")) if pivot else None
    problems = []
    if base is not None and (len(base) != 2 or base[0] not in swept):
        problems.append(f"--baseline {baseline}: need KEY=VALUE with KEY a swept key")
    if table is not None and (len(table) != 2 or not set(table) <= swept or table[0] == table[1]):
        problems.append(f"--pivot {pivot}: need ROW,COL, two different swept keys")
    if best is not None and best not in swept:
        problems.append(f"--best {best}: not a swept key")
    if by is not None and by not in SCORES:
        problems.append(f"--by {by}: allowed: {', '.join(SCORES)}")
    if by == "val" and not has_val(runs):
        problems.append("--by val: no finished train run holds a validation set (train with val_size=N)")
    if problems:
        raise ConfigError(f"{'; '.join(problems)}; swept keys: {', '.join(sorted(swept)) or '(none)'}")
    out = Path(out) if out is not None else Path("results/report") / time.strftime("%Y-%m-%d") / time.strftime("%H-%M-%S")
    return out, write_report(runs, out, folders, base, table, best, by)
