"""The reference of every command: its config groups, their options, and every key with its value and
one line saying what it does. ``lifted <command> --help`` prints it for the config a command line
composes, and the documentation's reference page (``docs/hooks.py``) is generated from it, so neither
can drift from the code.

Where the words come from: a group's key is described by its schema (``registry.option``'s help); a
command's own keys, and a group's keys whose schema has no description, by the comment beside the key
in its YAML (continued on the comment lines below it); a group by the comment beside it in the
command's defaults list; an option of a group by the first comment of its YAML file.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from importlib.resources import files
from typing import Any, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

#: the commands that are Hydra apps (``report`` takes folders and has argparse's help)
HYDRA_COMMANDS = ("train", "invert", "data")

#: keys that are not options of a run (the command's name, the folder Hydra makes)
HIDDEN = {"command", "output_dir", "hydra"}

#: groups that are not in a command's defaults list but chosen by another group's option: the scheme's
#: YAML names its default solver (``/solver@_global_.solver``)
IMPLIED = {"scheme": ("solver", "the scheme's (isgm for bregman)",
                      "solver of the lifted objective, or back-propagation's optimiser; each scheme names its default")}

_KEY = re.compile(r"^(\s*)([A-Za-z_][\w]*):(.*)$")
_GROUP = re.compile(r"^\s*-\s+(optional\s+)?([\w/@.]+):\s*([^#]*?)\s*(#\s?(.*))?$")


def _configs():
    return files("lifted_cli.configs")


def _comment(rest: str) -> str | None:
    """The comment after a YAML value (a ``#`` outside quotes)."""
    quote = None
    for i, ch in enumerate(rest):
        if ch in "\"'" and quote in (None, ch):
            quote = None if quote else ch
        elif ch == "#" and quote is None and (i == 0 or rest[i - 1].isspace()):
            return rest[i + 1:].strip()
    return None


def yaml_comments(text: str) -> dict[str, str]:
    """``dotted.key -> comment`` of a YAML file: the comment beside each key, joined with the comment lines
    that follow it (indented beyond the key) before the next key."""
    out: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last: str | None = None
    last_indent = -1
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            indent = len(line) - len(line.lstrip())
            if last is not None and indent > last_indent and last in out:
                out[last] += " " + stripped.lstrip("#").strip()
            else:
                last = None
            continue
        m = _KEY.match(line)
        if not m:
            continue
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [key])
        stack.append((indent, key))
        note = _comment(rest)
        if note:
            out[path] = note
        last, last_indent = path, indent
    return out


def header_comment(text: str) -> str:
    """The first comment line of a YAML file (``@package`` lines skipped)."""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") and "@package" not in s:
            return s.lstrip("#").strip()
        if s and not s.startswith("#"):
            break
    return ""


@functools.lru_cache(maxsize=None)
def _groups(command: str) -> tuple:
    return tuple(groups_of(command))


def groups(command: str) -> list[dict]:
    """The config groups of a command, in its defaults list (read once per command)."""
    return list(_groups(command))


def groups_of(command: str) -> list[dict]:
    """The config groups of a command, in its defaults list: name, default option, description, options."""
    text = _configs().joinpath(f"{command}.yaml").read_text()
    out = []
    in_defaults = False
    for line in text.splitlines():
        if line.startswith("defaults:"):
            in_defaults = True
            continue
        if in_defaults and line and not line.startswith((" ", "-", "#")):
            break
        m = _GROUP.match(line) if in_defaults else None
        if not m or m.group(2).startswith(("override", "hydra")) or "/" in m.group(2):
            continue
        name = m.group(2)
        folder = _configs().joinpath(name)
        if not folder.is_dir():
            continue
        out.append({"group": name, "default": m.group(3), "description": (m.group(5) or "").strip(),
                    "options": options(name, command)})
        if name in IMPLIED:  # a group its option chooses through its own defaults list
            group, default, about = IMPLIED[name]
            out.append({"group": group, "default": default, "description": about, "options": options(group, command)})
    return out


def options(group: str, command: str | None = None) -> list[tuple[str, str]]:
    """``(option, first comment line)`` of a group's YAML files; experiments only of ``command``."""
    import yaml

    out = []
    for f in sorted(_configs().joinpath(group).iterdir(), key=lambda p: p.name):
        if not f.name.endswith(".yaml"):
            continue
        text = f.read_text()
        if group == "experiment" and command is not None:
            if (yaml.safe_load(text) or {}).get("command") != command:
                continue
        out.append((f.name[:-5], header_comment(text)))
    return out


def _registries() -> dict[str, Any]:
    from .data.degradations import DEGRADATIONS
    from .data.sources import SOURCES
    from .lifted.schemes import SCHEMES
    from .lifted.solvers import SOLVERS
    from .loggers import LOGGERS
    from .nets.architectures import ARCHITECTURES
    from .parallel import PARALLEL

    return {"arch": ARCHITECTURES, "scheme": SCHEMES, "solver": SOLVERS, "parallel": PARALLEL,
            "source": SOURCES, "task": DEGRADATIONS, "logger": LOGGERS}


def _schema_help(schema, path: list[str]) -> str | None:
    """The ``option`` help of ``path`` inside a dataclass schema (nested dataclasses followed)."""
    for i, key in enumerate(path):
        fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}
        f = fields.get(key)
        if f is None:
            return None
        if i == len(path) - 1:
            return f.metadata.get("help")
        schema = f.type if dataclasses.is_dataclass(f.type) else (
            f.default_factory if dataclasses.is_dataclass(getattr(f, "default_factory", None)) else None)
        if schema is None:
            return None
    return None


def compose(command: str, overrides: list[str] = ()) -> DictConfig:
    """The config of ``lifted <command> overrides`` as Hydra composes it (nothing validated, nothing run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from .commands import command_module

    command_module(command)  # registers the command's schema and the groups' schemas
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="lifted_cli.configs", version_base=None):
        return hydra_compose(config_name=command, overrides=list(overrides))


def _flat(node, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key in node.keys():
        value = node._get_node(key)
        path = f"{prefix}{key}"
        if isinstance(value, DictConfig) and not value._is_none() and len(value) > 0:
            yield from _flat(value, path + ".")
        else:
            yield path, value._value() if not isinstance(value, (DictConfig, ListConfig)) else \
                OmegaConf.to_container(value, resolve=False)


def _text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return str(value)


def keys(command: str, cfg: DictConfig) -> list[tuple[str, str, str]]:
    """``(key, value, description)`` for every option of a composed config, the command's own keys first."""
    own = yaml_comments(_configs().joinpath(f"{command}.yaml").read_text())
    regs = _registries()
    about = {g["group"]: g["description"] for g in groups(command)}
    group_names = set(about) | set(regs)
    top, nested = [], []
    for path, value in _flat(cfg):
        head = path.split(".")[0]
        if head in HIDDEN:
            continue
        text = own.get(path)
        if head == path:
            text = text or about.get(head)
        elif head in regs and head in group_names and text is None:
            text = _group_help(regs[head], head, cfg[head], path.split(".")[1:])
        (nested if head in group_names else top).append((path, _text(value), text or ""))
    return top + nested


def _group_help(registry, group: str, node, path: list[str]) -> str | None:
    """A group key's description: its schema's, else the comment beside it in the option's YAML."""
    if group == "logger":  # keyed by the logger's name: logger.<name>.<key>
        name, path = path[0], path[1:]
    else:
        name = node.get(registry.key) if isinstance(node, DictConfig) else None
    if name in registry:
        entry = registry.get(name)
        found = _schema_help(entry.schema, path) if entry.schema is not None and path else None
        if found:
            return found
    option = name if group == "logger" else (node.get("name") if isinstance(node, DictConfig) else None)
    f = _configs().joinpath(group).joinpath(f"{option}.yaml") if option else None
    if f is not None and f.is_file():
        comments = yaml_comments(f.read_text())
        return comments.get(".".join(([name] if group == "logger" else []) + path))
    return None


def header(command: str) -> str:
    """The command's one-line purpose (its ``hydra.help.header``'s first line)."""
    from .commands import COMMANDS

    return f"lifted {command}: {COMMANDS[command]}"


def help_text(command: str, overrides: list[str] = (), width: int = 30) -> str:
    """What ``lifted <command> [overrides] --help`` prints: the groups with their options (the current
    choice marked), then every key of the composed config with its value and description."""
    cfg = compose(command, overrides)
    choices = _choices(cfg)
    if "~tuned" in overrides:
        choices.pop("tuned", None)
    gs = groups(command)
    lines = [header(command), ""]
    if gs:
        lines += [f"usage: lifted {command} [group=option ...] [key=value ...] [-m] [--cfg job] [--hydra-help]",
                  "  (the keys shown are those of this command line's choices: put group=option before --help to see "
                  "another's)", "", "config groups (group=option; * the current choice):"]
    else:
        lines += [f"usage: lifted {command} [key=value ...] [--cfg job] [--hydra-help]"]
    for g in gs:
        current = choices.get(g["group"])
        if g["group"] == "tuned":
            lines.append(f"  {'tuned':<11}{g['description']}: one of {len(g['options'])} files; this command line "
                         f"loads {current or 'none'} (~tuned: none)")
            continue
        names = [f"{n}*" if n == current else n for n, _ in g["options"]]
        lines.append(f"  {g['group']:<11}{g['description']}")
        lines.append(f"  {'':<11}{' | '.join(names)}")
    lines += ["", "options (key=current value: what it does):"]
    for key, value, text in keys(command, cfg):
        item = f"{key}={value}"
        lines.append(f"  {item:<{width}} {text}" if len(item) < width else f"  {item}\n  {'':<{width}} {text}")
    lines += ["", "Every option of every group, with its default: the documentation's reference page (`make docs-serve`)."]
    return "\n".join(lines)


def _choices(cfg: DictConfig) -> dict[str, str]:
    """The option each group was given (Hydra's runtime choices are not kept by compose: read the nodes)."""
    out = {}
    for group, key in (("source", "name"), ("task", "name"), ("arch", "name"), ("scheme", "name"), ("solver", "name"),
                       ("parallel", "name")):
        node = cfg.get(group)
        if isinstance(node, DictConfig) and key in node:
            out[group] = node[key]
    if all(isinstance(cfg.get(g), DictConfig) for g in ("arch", "scheme", "solver")):
        name = f"{cfg.arch.name}_{cfg.scheme.name}_{cfg.solver.name}"
        if _configs().joinpath("tuned").joinpath(f"{name}.yaml").is_file():
            out["tuned"] = name
    if cfg.get("experiment"):
        out["experiment"] = cfg.experiment
    logger = cfg.get("logger")
    if isinstance(logger, DictConfig) and len(logger) == 1:
        out["logger"] = next(iter(logger))
    return out


# ------------------------------------------------------------------------------------- markdown
def _md(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, and angle brackets (``<data_root>``), which the
    renderer would take for HTML tags."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def markdown() -> str:
    """The documentation's reference page: per command its groups and keys, then every option of every
    group with its keys, defaults and descriptions, then the tuned settings."""
    out = ["# CLI and configuration reference", "",
           "Generated from the schemas and configs at build time (`lifted_cli/reference.py`); "
           "`lifted <command> --help` prints the same for the config a command line composes.", ""]
    for command in HYDRA_COMMANDS:
        cfg = compose(command, ["~tuned"] if command == "train" else [])
        out += [f"## `lifted {command}`", "", header(command).split(": ", 1)[1] + ".", ""]
        gs = groups(command)
        if gs:
            out += ["| group | options | default | what it chooses |", "|---|---|---|---|"]
            for g in gs:
                names = ", ".join(f"`{n}`" for n, _ in g["options"])
                out.append(f"| `{g['group']}` | {names} | `{g['default']}` | {_md(g['description'])} |")
            out.append("")
        out += ["| key | default | description |", "|---|---|---|"]
        group_names = {g["group"] for g in gs}
        for key, value, text in keys(command, cfg):
            if key.split(".")[0] not in group_names:
                out.append(f"| `{key}` | `{_md(value)}` | {_md(text)} |")
        out.append("")
    out += ["## Options of each group", "",
            "Each option's keys with the defaults of its schema and YAML (the tuned settings below not applied).", ""]
    for g in groups("train") + [g for g in groups("invert") if g["group"] not in ("arch", "logger", "experiment")]:
        if g["group"] == "tuned":
            continue
        out += [f"### `{g['group']}`", "", _md(g["description"]) + ".", ""]
        for name, about in g["options"]:
            if g["group"] == "experiment":
                continue
            over = ["~tuned", f"{g['group']}={name}"]
            if g["group"] == "logger":
                over = ["~tuned", f"logger={name}"]
            cfg = compose("train", over)
            out += [f"#### `{g['group']}={name}`", "", _md(about), "", "| key | default | description |", "|---|---|---|"]
            for key, value, text in keys("train", cfg):
                if key.split(".")[0] == g["group"]:
                    out.append(f"| `{key}` | `{_md(value)}` | {_md(text)} |")
            out.append("")
    out += ["### `experiment`", "", "Presets: each sets groups and keys of one command (`experiment=NAME`).", "",
            "| experiment | command | what it is |", "|---|---|---|"]
    for command in HYDRA_COMMANDS:
        for name, about in options("experiment", command):
            out.append(f"| `{name}` | `lifted {command}` | {_md(about)} |")
    out += ["", "### `tuned`", "",
            "Chosen by itself: `<arch>_<scheme>_<solver>` when `configs/tuned/` has that file, loaded after the "
            "groups (command-line overrides and `experiment=` still win; `~tuned` leaves it out). What each sets:", "",
            "| file | settings |", "|---|---|"]
    import yaml

    for name, _ in options("tuned"):
        data = yaml.safe_load(_configs().joinpath("tuned").joinpath(f"{name}.yaml").read_text()) or {}
        flat = [f"{g}.{k}={_text(v)}" for g, node in data.items() if isinstance(node, dict) for k, v in node.items()]
        out.append(f"| `{name}` | {_md(', '.join(f'`{x}`' for x in flat))} |")
    return "\n".join(out) + "\n"
