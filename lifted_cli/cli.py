"""``lifted`` console script: dispatches ``lifted <command> [overrides]`` to one Hydra app each.

Hydra has no subcommands, so the first argument picks the app and the rest is handed to it as its
own command line (``--help``, ``--cfg job``, ``-m`` work per command). Hydra composes the config
once; the apps' validation callback (``commands.Validation``) checks it before any run folder is
written. Every expected error ends here as one line on stderr with its exit status (``errors.py``):
Hydra runs with ``HYDRA_FULL_ERROR=1`` so that its composition errors reach this function instead of
being printed as several lines.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .commands import COMMANDS, Stop, command_module, one_line

USAGE = (
    "usage: lifted <command> [hydra overrides] [--help] [--cfg job] [-m]\n\ncommands:\n"
    + "\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items())
    + "\n\n`lifted <command> --help` lists that command's options and config groups."
)

#: the optional launcher plugins: a clear line instead of Hydra's config-search error
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


class UsageError(Exception):
    pass


def _resume_args(args: list[str]) -> list[str]:
    """``resume=<folder>``: replay the run's own overrides and write into the same folder."""
    import yaml

    value = next(a.split("=", 1)[1] for a in args if a.startswith("resume="))
    folder = Path(value)
    if not (folder / "checkpoint.pt").is_file() or not (folder / ".hydra" / "overrides.yaml").is_file():
        raise UsageError(f"resume={value}: not a run folder with checkpoint.pt and .hydra/overrides.yaml")
    saved = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text()) or []
    saved = [o for o in saved if not o.startswith("resume=")]
    given = {a.split("=", 1)[0] for a in args}
    saved = [o for o in saved if o.split("=", 1)[0] not in given]
    run_dir = str(folder.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return saved + args + [f"hydra.run.dir='{run_dir}'"]


def _check_launcher(args: list[str]) -> None:
    import importlib.util

    for a in args:
        if a.startswith("hydra/launcher="):
            name = a.split("=", 1)[1]
            plugin = LAUNCHER_PLUGINS.get(name)
            if plugin is not None and importlib.util.find_spec(plugin[0]) is None:
                raise UsageError(f"hydra/launcher={name} needs the optional plugin: pip install 'lifted_cli[{plugin[1]}]'")


def experiments() -> dict[str, str]:
    """The presets of ``configs/experiment``, each with the command it belongs to (its ``command`` key)."""
    from importlib.resources import files

    import yaml

    out = {}
    for f in sorted(files("lifted_cli.configs").joinpath("experiment").iterdir(), key=lambda p: p.name):
        if f.name.endswith(".yaml"):
            out[f.name[:-5]] = (yaml.safe_load(f.read_text()) or {}).get("command")
    return out


def _explain(command: str, args: list[str], message: str) -> str:
    """A composition error caused by an experiment of another command says so."""
    names = [a.split("=", 1)[1] for a in args if a.startswith("experiment=")]
    known = experiments()
    for name in names:
        owner = known.get(name)
        if owner is not None and owner != command:
            mine = ", ".join(n for n, c in known.items() if c == command)
            return f"experiment={name} is an experiment of `lifted {owner}`; experiments of `lifted {command}`: {mine}"
    return message


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import LiftedError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"lifted: error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "report":  # not a Hydra app: it takes folders, not overrides
        return command_module("report").main(args)
    try:
        if command == "train" and any(a.startswith("resume=") for a in args) and not ({"-m", "--multirun"} & set(args)):
            args = _resume_args(args)
        _check_launcher(args)
    except UsageError as err:
        print(f"lifted {command}: error: {err}", file=sys.stderr)
        return 2
    os.environ["HYDRA_FULL_ERROR"] = "1"
    saved_argv, sys.argv = sys.argv, [f"lifted-{command}", *args]
    try:
        command_module(command).app()
    except Stop as stop:
        print(f"lifted {command}: error: {stop.error}", file=sys.stderr)
        return stop.error.exit_code
    except LiftedError as err:  # the first failed job of a sweep (each job printed its own line)
        if not getattr(err, "reported", False):
            print(f"lifted {command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except (HydraException, OmegaConfBaseException) as err:  # the overrides do not compose
        print(f"lifted {command}: error: {_explain(command, args, one_line(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        sys.argv = saved_argv
    return 0


if __name__ == "__main__":
    sys.exit(main())
