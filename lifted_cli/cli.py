"""``lifted`` console script: dispatches ``lifted <command> [overrides]`` to one Hydra app each.

Hydra has no subcommands, so the first argument picks the app and the rest is handed to it as its
own command line (``--help``, ``--cfg job``, ``-m`` work per command). For a single run the config
is composed and validated here first, so that bad input fails with one line before any run folder
exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

COMMANDS = {
    "train": "train a network (scheme, architecture, dataset, solver chosen by overrides)",
    "invert": "recover the inputs of a trained network from its (noisy) outputs",
    "report": "summarise run folders of train and invert: tables, plots, samples (lifted report FOLDER...)",
    "data": "fetch MNIST into data_root and verify it",
}

USAGE = (
    "usage: lifted <command> [hydra overrides] [--help] [--cfg job] [-m]\n\ncommands:\n"
    + "\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items())
    + "\n\n`lifted <command> --help` lists that command's options and config groups."
)

_HYDRA_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--multirun", "-m",
                "--shell-completion", "-sc", "--resolve", "--package", "-p", "--version"}


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line composition errors (and their causes) as one line."""
    parts = [str(err)]
    cause = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
    if cause is not None and str(cause) not in parts[0]:
        parts.append(str(cause).split("\n")[0])
    msg = ": ".join(parts).split("Config search path")[0]
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip() and not ln.strip().startswith(("full_key", "object_type", "reference_type"))]
    out = ""
    for ln in lines:
        out += ("" if not out else " " if out.endswith(":") else "; ") + ln
    return out


def _resume_args(args: list[str]) -> list[str]:
    """``resume=<folder>``: replay the run's own overrides and write into the same folder."""
    import yaml

    value = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    folder = Path(value)
    if not (folder / "checkpoint.pt").is_file() or not (folder / ".hydra" / "overrides.yaml").is_file():
        raise ValueError(f"resume={value}: not a run folder with checkpoint.pt and .hydra/overrides.yaml")
    saved = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    saved = [o for o in saved if not o.startswith("resume=")]
    given = {a.split("=", 1)[0] for a in args}
    saved = [o for o in saved if o.split("=", 1)[0] not in given]
    run_dir = str(folder.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return saved + args + [f"hydra.run.dir='{run_dir}'"]


def _prevalidate(command: str, args: list[str]) -> None:
    """Compose the config of a single run and validate it (raises with a one-line message)."""
    from hydra import compose, initialize_config_module

    from .config import EXPERIMENTS, ConfigError, register_configs, validate_data, validate_invert, validate_train

    for a in args:
        if a.startswith("experiment=") and command in EXPERIMENTS:
            name = a.split("=", 1)[1]
            other = [c for c, names in EXPERIMENTS.items() if name in names and c != command]
            if other:
                raise ConfigError(f"experiment={name} is an experiment of `lifted {other[0]}`; experiments of "
                                  f"`lifted {command}`: {', '.join(EXPERIMENTS[command])}")
    register_configs()
    overrides = [a for a in args if not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra", "++hydra"))]
    with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
        cfg = compose(config_name=command, overrides=overrides)
    {"train": validate_train, "invert": validate_invert, "data": validate_data}[command](cfg)
    if command == "invert":  # the network and the layer name, before any results folder exists
        from .invert import InversionError, layer_index, load_network

        try:
            model, _ = load_network(cfg)
            layer_index(cfg.upto, model.depth)
        except InversionError as err:
            raise ConfigError(str(err)) from None


def _expand_sweep(args: list[str]) -> list[list[str]]:
    """The override lists of the jobs of a multirun, as Hydra's basic sweeper forms them
    (cartesian product of the comma lists and ``range``/``choice`` sweeps)."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain = [a for a in args if a not in ("-m", "--multirun")]
    lists = []
    for o in OverridesParser.create().parse_overrides(plain):
        if o.is_sweep_override():
            key = o.get_key_element()
            lists.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            lists.append([o.input_line])
    return [list(c) for c in itertools.product(*lists)]


def _prevalidate_sweep(command: str, args: list[str], reported: set) -> tuple[int, int]:
    """Validate every job of a multirun before any starts; one line per invalid job. Returns
    (number of jobs, number of invalid jobs); (0, 0) when the sweep cannot be expanded here (e.g. a
    sweeper plugin's own syntax), in which case every job still validates itself."""
    try:
        jobs = _expand_sweep(args)
    except Exception:
        return 0, 0
    from .config import ConfigError

    bad = 0
    for i, job in enumerate(jobs):
        shown = " ".join(o for o in job if not o.startswith(("hydra.", "hydra/")))
        try:
            _prevalidate(command, job)
        except ConfigError as err:  # an invalid combination: skipped, the other jobs run
            bad += 1
            from .apps import job_key

            reported.add(job_key(job))
            print(f"lifted {command}: error: job {i} ({shown}) will not run: {_one_line(err)}", file=sys.stderr)
        except Exception as err:  # the overrides do not compose: Hydra would stop mid-sweep, so run none
            raise ValueError(f"job {i} ({shown}): {_one_line(err)}") from None
    return len(jobs), bad


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lifted: error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "report":  # not a Hydra app: it takes folders, not overrides
        from .report import main as report_main

        return report_main(args)
    if command == "train" and any(a.startswith("resume=") for a in args) and not ({"-m", "--multirun"} & set(args)):
        try:
            args = _resume_args(args)
        except ValueError as err:
            print(f"lifted {command}: error: {err}", file=sys.stderr)
            return 2
    for a in args:  # the optional launcher plugins: a clear line instead of Hydra's config-search error
        if a.startswith("hydra/launcher="):
            name = a.split("=", 1)[1]
            plugin = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
                      "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}.get(name)
            if plugin is not None:
                import importlib.util

                if importlib.util.find_spec(plugin[0]) is None:
                    print(f"lifted {command}: error: hydra/launcher={name} needs the optional plugin: "
                          f"pip install 'lifted_cli[{plugin[1]}]'", file=sys.stderr)
                    return 2
    multirun = bool({"-m", "--multirun"} & set(args))
    invalid = 0
    if multirun and not any(a.split("=")[0] in _HYDRA_FLAGS - {"-m", "--multirun"} for a in args):
        try:
            from . import apps

            n_jobs, invalid = _prevalidate_sweep(command, args, apps.REPORTED)
        except ValueError as err:
            print(f"lifted {command}: error: {err}; no job was started", file=sys.stderr)
            return 2
        if n_jobs and invalid == n_jobs:
            print(f"lifted {command}: error: no valid job in this sweep", file=sys.stderr)
            return 2
    elif not any(a.split("=")[0] in _HYDRA_FLAGS for a in args):
        try:
            _prevalidate(command, args)
        except Exception as err:  # Hydra's composition errors and our ConfigError alike
            print(f"lifted {command}: error: {_one_line(err)}", file=sys.stderr)
            return 2

    from . import apps

    sys.argv = [f"lifted-{command}", *args]
    app = {"train": apps.train_app, "invert": apps.invert_app, "data": apps.data_app}[command]
    app()
    if apps.FAILURES:
        return max(apps.FAILURES)
    return 2 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
