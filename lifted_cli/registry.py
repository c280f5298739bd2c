"""Registries: one per kind of component, mapping a name to its config schema and its builder.

A component registers itself where it is defined::

    ARCHITECTURES = Registry("arch", configs=True)

    @dataclass
    class MLPConfig(Schema):
        name: str = option("mlp", "the architecture")
        hidden: List[int] = option([512, 512], "hidden widths (input and output are 784)")
        def validate(self):
            check(len(self.hidden) > 0, "hidden", self.hidden, "need at least one hidden width")

    @ARCHITECTURES.register("mlp", MLPConfig)
    def build_mlp(cfg): ...

The schema is the one source of every default and of the description of every key (``option``).
A registry whose options are YAML files of a config group (``configs=True``) stores each schema in
Hydra's ConfigStore as ``<group>/base_<name>``; the YAML names it first in its defaults list and
holds only what it changes (Hydra's structured config schemas), so the two cannot drift.

``Registry.validate(node)`` checks a composed config node against the schema of the option it names:
unknown keys (a misspelt ``+key``), types (through OmegaConf's structured configs) and the schema's own
``validate`` (ranges, consistency). ``Registry.build(node, ...)`` calls the builder. Nothing outside
a registry selects a component by its name.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError


def fail(key: str, value: Any, allowed: str):
    """Raise the one-line ConfigError ``key=value: allowed``."""
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        value = list(value)
    raise ConfigError(f"{key}={value}: {allowed}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        fail(key, value, allowed)


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def check_positive(key: str, value, allow_none: bool = False) -> None:
    """value > 0 and finite (``not value > 0`` also refuses NaN)."""
    if value is None and allow_none:
        return
    check(value is not None and value > 0 and _finite(value), key, value, "must be > 0")


#: the seeds torch's generators take (a run also seeds with seed + 1)
SEED_RANGE = (-(2**63), 2**64 - 2)


def check_seed(key: str, value) -> None:
    check(SEED_RANGE[0] <= value <= SEED_RANGE[1], key, value, "a seed must be an integer in [-2^63, 2^64 - 2]")


def check_nonnegative(key: str, value) -> None:
    check(value is not None and value >= 0 and _finite(value), key, value, "must be >= 0")


def check_interval(key: str, value, low: float, high: float, closed_low: bool, closed_high: bool) -> None:
    """value in the interval from low to high, each end closed or open."""
    ok = value is not None and (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)
    check(ok, key, value, f"must be in {'[' if closed_low else '('}{low:g}, {high:g}{']' if closed_high else ')'}")


def check_choice(key: str, value, allowed) -> None:
    check(value in allowed, key, value, f"allowed: {', '.join(allowed)}")


def option(default, help: str):
    """A schema field with its default and its one-line description (``help``): the reference of
    every key is read from the schemas."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


class Schema:
    """Base of the dataclass schemas: ``validate`` checks the values (types are OmegaConf's job)."""

    def validate(self) -> None:
        pass


def check_finite_floats(node, prefix: str = "") -> None:
    """Every float of a config node (nested nodes and lists included) is finite: NaN and inf are
    refused wherever a number is expected, whatever the option's own range check says."""
    if node._is_none() or node._is_missing():
        return
    items = node.items_ex(resolve=False) if OmegaConf.is_dict(node) else enumerate(node)
    for key, value in items:
        name = f"{prefix}{key}" if OmegaConf.is_dict(node) else f"{prefix}[{key}]"
        if OmegaConf.is_config(value):
            check_finite_floats(value, f"{name}." if OmegaConf.is_dict(value) else name)
        elif isinstance(value, float) and not math.isfinite(value):
            fail(name, value, "must be a finite number")


def typed(node, schema, prefix: str = ""):
    """``node`` merged into ``schema``: a ConfigError for keys the schema does not define, for values
    of the wrong type and for non-finite floats, else the merged DictConfig."""
    known = OmegaConf.structured(schema)
    allowed = set(known.keys())  # `key in known` is False for MISSING values
    for key in node.keys():
        if key not in allowed:
            fail(f"{prefix}{key}", node[key], f"unknown key; allowed keys here: {', '.join(sorted(known))}")
    try:
        merged = OmegaConf.merge(known, node)
    except Exception as err:  # omegaconf.ValidationError and friends
        key = getattr(err, "full_key", "") or ""
        raise ConfigError(f"{prefix}{key}: {str(err).splitlines()[0]}") from None
    check_finite_floats(merged, prefix)
    return merged


@dataclass
class Entry:
    name: str
    builder: Callable
    schema: type | None = None
    info: dict = field(default_factory=dict)


class Registry:
    """Components of one kind, by name. ``key``: the config key that names the option."""

    def __init__(self, group: str, key: str = "name", configs: bool = False):
        self.group = group
        self.key = key
        self.configs = configs  # options are YAML files of the config group ``group`` extending ``base_<name>``
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, schema: type | None = None, **info):
        """Decorator: register ``builder`` (a class or function) under ``name`` with its config
        ``schema`` and declarations ``info`` (e.g. the solver interface a scheme provides)."""

        def decorate(builder):
            self._entries[name] = Entry(name, builder, schema, info)
            if self.configs and schema is not None:
                from hydra.core.config_store import ConfigStore

                ConfigStore.instance().store(group=self.group, name=f"base_{name}", node=schema)
            return builder

        return decorate

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)
        if self.configs:
            from hydra.core.config_store import ConfigStore

            ConfigStore.instance().repo.get(self.group, {}).pop(f"base_{name}.yaml", None)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def get(self, name: str, key: str | None = None) -> Entry:
        if name not in self._entries:
            fail(key or f"{self.group}.{self.key}", name, f"allowed: {', '.join(self._entries)}")
        return self._entries[name]

    def entry(self, node) -> Entry:
        return self.get(node.get(self.key) if isinstance(node, (dict, DictConfig)) else node)

    def validate(self, node, prefix: str | None = None, name: str | None = None) -> DictConfig:
        """Check ``node`` against the schema of the option it names (one-line ConfigError); ``name``:
        the option, for a group whose nodes are keyed by their option (``logger.<name>``)."""
        prefix = f"{self.group}." if prefix is None else prefix
        if not isinstance(node, (dict, DictConfig)):
            fail(self.group if name is None else prefix.rstrip("."), node,
                 f"need a config node naming one of: {', '.join(self._entries)}")
        if name is None:
            entry = self.get(node.get(self.key), key=f"{prefix}{self.key}")
        else:
            entry = self.get(name, key=self.group)
        merged = typed(node, entry.schema, prefix)
        try:
            OmegaConf.to_object(merged).validate()
        except ConfigError as err:
            raise ConfigError(f"{prefix}{err}") from None
        return merged

    def build(self, node, *args, **kwargs):
        """The component of ``node``, built from the node completed with its schema's defaults (a YAML
        or an older checkpoint may leave keys out)."""
        entry = self.entry(node)
        if entry.schema is not None:
            node = OmegaConf.merge(OmegaConf.structured(entry.schema), node)
        return entry.builder(node, *args, **kwargs)
