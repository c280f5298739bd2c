"""One source for every default: the YAML options of the config groups extend their schemas (stored in
Hydra's ConfigStore by the registries) and hold only what differs, so a default cannot drift; every
key of a schema is described where it is defined."""

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from lifted_cli.lifted import SCHEMES, SOLVERS
from lifted_cli.nets import ARCHITECTURES
from lifted_cli.parallel import PARALLEL

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
GROUPS = {"arch": ARCHITECTURES, "scheme": SCHEMES, "solver": SOLVERS, "parallel": PARALLEL}
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONFIGS / group).glob("*.yaml"))]


def default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


@pytest.mark.parametrize("group,option", OPTIONS)
def test_an_option_extends_its_schema_and_holds_only_what_differs(group, option):
    data = yaml.safe_load((CONFIGS / group / f"{option}.yaml").read_text()) or {}
    assert data.pop("defaults", [None])[0] == f"base_{option}", "the schema comes first in the defaults list"
    schema = {f.name: default(f) for f in fields(GROUPS[group].get(option).schema)}
    repeated = {k: v for k, v in data.items() if k in schema and schema[k] == v}
    assert not repeated, f"{group}/{option}.yaml repeats its schema's defaults {repeated}"
    assert set(data) <= set(schema)


@pytest.mark.parametrize("group,option", OPTIONS)
def test_the_composed_option_is_its_schema_with_its_changes(compose_train, group, option):
    overrides = [f"{group}={option}"] + (["parallel.nproc=2"] if group == "parallel" and option != "none" else [])
    cfg = compose_train(["~tuned", *overrides])
    data = yaml.safe_load((CONFIGS / group / f"{option}.yaml").read_text()) or {}
    data.pop("defaults", None)
    want = {**OmegaConf.to_container(OmegaConf.structured(GROUPS[group].get(option).schema)), **data}
    if group == "parallel" and option != "none":
        want["nproc"] = 2
    assert OmegaConf.to_container(cfg[group]) == want


@pytest.mark.parametrize("group", GROUPS)
def test_every_key_of_a_schema_is_described(group):
    for name in GROUPS[group].names():
        for f in fields(GROUPS[group].get(name).schema):
            assert f.metadata.get("help"), f"{group}={name}: {f.name} has no description"
