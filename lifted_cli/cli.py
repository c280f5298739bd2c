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

from .commands import COMMANDS, Stop, command_module, one_line

USAGE = (
    "usage: lifted <command> [hydra overrides] [--help] [--cfg job] [-m]\n\ncommands:\n"
    + "\n".join(f"  {k:<8}{v}" for k, v in COMMANDS.items())
    + "\n\n`lifted <command> --help` lists that command's config groups and options, one line each."
)

#: the optional launcher plugins: a clear line instead of Hydra's config-search error
LAUNCHER_PLUGINS = {"joblib": ("hydra_plugins.hydra_joblib_launcher", "parallel"),
                    "slurm": ("hydra_plugins.hydra_submitit_launcher", "slurm")}


class UsageError(Exception):
    pass


def _check_launcher(args: list[str]) -> None:
    import importlib.util

    for a in args:
        if a.startswith("hydra/launcher="):
            name = a.split("=", 1)[1]
            plugin = LAUNCHER_PLUGINS.get(name)
            if plugin is not None and importlib.util.find_spec(plugin[0]) is None:
                raise UsageError(f"hydra/launcher={name} needs the optional plugin: pip install 'lifted_cli[{plugin[1]}]'")


def _check_renamed(args: list[str]) -> None:
    """``dataset`` was one group for the images and their degradation; they are two now."""
    for a in args:
        key, eq, value = a.lstrip("+~").partition("=")
        if key == "dataset" or key.startswith("dataset."):
            if key == "dataset":
                task = value.removeprefix("mnist_") if value.startswith("mnist_") else "denoise|deblur|inpaint"
                new = f"source=mnist task={task}"
            else:
                new = f"task.{key.split('.', 1)[1]}{eq}{value}"
            raise UsageError(f"{a}: the dataset group is now two groups, source (the images: mnist, fashion_mnist, "
                             f"kmnist, natural_patches) and task (denoise, deblur, inpaint); write {new}")


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


def _resume(folder: str, changes: list[str]) -> int:
    """A resumption runs without Hydra: it is rebuilt from the checkpoint's data (commands.train.resume)."""
    from .commands.train import report_done, resume
    from .errors import LiftedError

    try:
        metrics = resume(folder, changes)
    except LiftedError as err:
        print(f"lifted train: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:  # Ctrl-C 130; SIGTERM 143, SIGUSR1 138 (runs.Interrupted)
        return getattr(err, "exit_code", 130)
    if metrics:  # a rank other than 0 of a torchrun job returns none: rank 0 reports
        report_done(metrics["run_dir"], metrics)
    return 0


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .errors import LiftedError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    from .runs import catch_stop_signals

    catch_stop_signals()
    if command not in COMMANDS:
        print(f"lifted: error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if command == "report":  # not a Hydra app: it takes folders, not overrides
        return command_module("report").main(args)
    resuming = [a for a in args if a.startswith("resume=")]
    try:
        if resuming and command == "train" and not set(args) & {"-m", "--multirun", "--help", "-h", "--cfg", "-c"}:
            return _resume(resuming[-1].split("=", 1)[1], [a for a in args if not a.startswith("resume=")])
        if resuming:
            raise UsageError(f"{resuming[-1]}: `lifted train resume=<run folder> [changes]` continues one run; "
                             "it does not combine with -m or Hydra's flags")
        _check_launcher(args)
        _check_renamed(args)
    except UsageError as err:
        print(f"lifted {command}: error: {err}", file=sys.stderr)
        return 2
    os.environ["HYDRA_FULL_ERROR"] = "1"
    if set(args) & {"--help", "-h"}:  # one line per option, for this command line's choices (reference.py)
        from .reference import help_text

        try:
            print(help_text(command, [a for a in args if a not in ("--help", "-h", "-m", "--multirun")]))
        except BrokenPipeError:  # `lifted train --help | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        except (HydraException, OmegaConfBaseException) as err:
            print(f"lifted {command}: error: {_explain(command, args, one_line(err))}", file=sys.stderr)
            return 2
        return 0
    scratch = None
    if command == "train" and _other_rank():
        # torchrun starts every rank with the same command line; rank 0's run folder is the run's (its
        # path reaches the others over the process group), so the others' Hydra writes a scratch folder
        import tempfile

        scratch = tempfile.mkdtemp(prefix="lifted-rank-")
        args = [*args, f"hydra.run.dir={scratch}/run", f"hydra.sweep.dir={scratch}/sweep", "hydra.output_subdir=null",
                "hydra/job_logging=disabled"]
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
    except OSError as err:  # Hydra writing its record (.hydra/, the log) on a full disk or into a read-only folder
        _remove_partial_record(err.filename, command)
        where = f"{err.filename}: " if err.filename else ""
        print(f"lifted {command}: error: could not write {where}{err.strerror or err}; free some space or give a "
              "folder you can write (hydra.run.dir=...)", file=sys.stderr)
        return 1
    except ValueError as err:
        if not _raised_by_hydra(err):  # a bug of ours: its traceback
            raise
        print(f"lifted {command}: error: {one_line(err)} (overrides: {' '.join(args)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C 130; SIGTERM 143, SIGUSR1 138 (runs.Interrupted)
        return getattr(err, "exit_code", 130)
    finally:
        sys.argv = saved_argv
        if scratch is not None:
            import shutil

            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _remove_partial_record(filename, command: str) -> None:
    """What Hydra had written of a run's record when a write failed: its ``.hydra`` folder (always new:
    a folder holding files is refused before) and an empty log, so nothing is left that looks like a run."""
    import shutil
    from pathlib import Path

    if not filename or Path(filename).parent.name != ".hydra":
        return
    record = Path(filename).parent
    shutil.rmtree(record, ignore_errors=True)
    log = record.parent / f"{command}.log"
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()


def _raised_by_hydra(err: BaseException) -> bool:
    """Hydra's composition raises some plain ValueErrors (``arch=null``: "Config group override must
    be a string or a list"): the innermost frame is Hydra's own."""
    import traceback

    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and f"{os.sep}hydra{os.sep}" in frames[-1].filename


def _other_rank() -> bool:
    """This process is a rank other than 0 of a torchrun job."""
    from .parallel import env_rank, launched

    return launched() and env_rank() > 0


if __name__ == "__main__":
    sys.exit(main())
