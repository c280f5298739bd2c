"""Config composition of every group option, and validation of bad values."""

from pathlib import Path

import pytest

import lifted_cli
from lifted_cli.config import ConfigError, validate_train

CONFIGS = Path(lifted_cli.__file__).parent / "configs"


def options(group):
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("dataset", "arch", "scheme", "solver") for o in options(g)],
)
def test_every_group_option_composes_and_validates(compose_train, group, option):
    overrides = [f"{group}={option}"]
    cfg = compose_train(overrides, output_dir="/tmp/x")
    assert cfg[group].name == option or cfg[group].get("task") in option
    try:
        validate_train(cfg)
    except ConfigError as err:  # only scheme/solver pairing may be refused, with a one-line reason
        assert "minimised by" in str(err) and "\n" not in str(err)


def test_experiments_compose(compose_train):
    for exp in options("experiment"):
        validate_train(compose_train([f"experiment={exp}"], output_dir="/tmp/x"))


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (["dataset.sigma=-1"], "dataset.sigma=-1"),
        (["dataset=mnist_inpaint", "dataset.keep_ratio=1.5"], "keep_ratio=1.5"),
        (["batch_size=0"], "batch_size=0"),
        (["epochs=-2"], "epochs=-2"),
        (["dataset=mnist_deblur", "dataset.kernel_size=4"], "kernel_size=4"),
        (["device=tpu"], "device=tpu"),
        (["arch.activation=swish"], "swish"),
        (["arch.hidden=[]"], "arch.hidden"),
        (["+epochss=3"], "epochss"),
        (["+dataset.sigmaa=3"], "dataset.sigmaa"),
        (["data_sources=[local,ftp]"], "data_sources"),
    ],
)
def test_bad_values_rejected_with_one_line(compose_train, overrides, fragment):
    cfg = compose_train(overrides, output_dir="/tmp/x")
    with pytest.raises(ConfigError) as err:
        validate_train(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value)
