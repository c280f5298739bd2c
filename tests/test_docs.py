"""The documentation's worked examples run: every Python block of docs/extending.md is executed, its
YAML files are stored in Hydra's ConfigStore in place of configs/, and each new component trains (or
inverts) through the entry point of `lifted train` / `lifted invert`; then they are taken out again."""

import json
import re
from pathlib import Path

import pytest
import yaml
from hydra.core.config_store import ConfigStore

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "extending.md"
BLOCK = re.compile(r"```(python|yaml)\n(.*?)```", re.S)

#: what the page registers: (registry module, registry name, option)
REGISTERED = [("lifted_cli.nets", "ACTIVATIONS", "shifted_relu"), ("lifted_cli.nets", "ARCHITECTURES", "gated"),
              ("lifted_cli.lifted", "SCHEMES", "half_bregman"), ("lifted_cli.lifted.solvers", "SOLVERS", "adamw"),
              ("lifted_cli.inversion.regularizers", "REGULARIZERS", "nonneg"),
              ("lifted_cli.data.degradations", "DEGRADATIONS", "subsample")]


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(PAGE.read_text()) if k == kind]


@pytest.fixture(scope="module")
def extended():
    import importlib

    for code in blocks("python"):
        exec(compile(code, str(PAGE), "exec"), {"__name__": "docs_extending"})  # each block stands alone
    cs = ConfigStore.instance()
    stored = []
    for text in blocks("yaml"):
        m = re.match(r"# configs/(\w+)/(\w+)\.yaml\n", text)
        if m:
            cs.store(group=m.group(1), name=m.group(2), node=yaml.safe_load(text))
            stored.append((m.group(1), m.group(2)))
    yield stored
    for module, registry, name in REGISTERED:
        getattr(importlib.import_module(module), registry).unregister(name)
    for group, name in stored:
        cs.repo[group].pop(f"{name}.yaml", None)


def test_the_page_registers_what_it_says(extended):
    import importlib

    for module, registry, name in REGISTERED:
        assert name in getattr(importlib.import_module(module), registry), (registry, name)
    assert {("arch", "gated"), ("scheme", "half_bregman"), ("solver", "adamw"), ("task", "subsample")} <= set(extended)


@pytest.mark.parametrize("overrides", [
    ["arch=gated", "arch.depth=2", "arch.width=16", "arch.activation=shifted_relu:-0.1", "scheme=half_bregman"],
    ["arch=gated", "arch.depth=2", "arch.width=16", "scheme=backprop", "solver=adamw"],
    ["task=subsample", "task.stride=3", "arch.hidden=[16]"],
])
def test_each_example_trains_through_lifted_train(extended, overrides, tmp_path, fake_mnist, monkeypatch):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    common = [f"data_root={fake_mnist}", "train_size=32", "test_size=8", "epochs=1", "batch_size=16", "num_samples=0",
              "progress=false", "hydra.run.dir=run"]
    assert main(["train", *overrides, *common]) == 0
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["status"] == "finished" and m["test"]["psnr"]["mean"] > 0


def test_the_regulariser_inverts_through_lifted_invert(extended, tmp_path, fake_mnist, monkeypatch):
    from lifted_cli.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["invert", "network=random_perceptron", "perceptron.out_dim=32", "perceptron.image_size=8",
                 "regularizer=nonneg", "num_images=2", "iterations=20", "num_samples=0", "progress=false",
                 f"data_root={fake_mnist}", "hydra.run.dir=inv"]) == 0
    m = json.loads((tmp_path / "inv" / "metrics.json").read_text())
    assert m["regularizer"] == "nonneg" and m["recovered"]["psnr"]["mean"] > 0
