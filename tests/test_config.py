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
    from hydra import compose, initialize_config_module

    from lifted_cli.config import EXPERIMENTS, validate_invert

    assert sorted(options("experiment")) == sorted(EXPERIMENTS["train"] + EXPERIMENTS["invert"])
    for exp in EXPERIMENTS["train"]:
        validate_train(compose_train([f"experiment={exp}"], output_dir="/tmp/x"))
    for exp in EXPERIMENTS["invert"]:
        with initialize_config_module(config_module="lifted_cli.configs", version_base="1.3"):
            cfg = compose(config_name="invert", overrides=[f"experiment={exp}", "checkpoint=x"])
        cfg.output_dir = "/tmp/x"
        validate_invert(cfg)


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
        (["arch=conv_autoencoder", "arch.kernel=3"], "arch.kernel=3"),
        (["arch=conv_autoencoder", "arch.channels=[4,4,4]"], "arch.channels"),
        (["arch=conv_autoencoder", "arch.code=0"], "arch.code=0"),
    ],
)
def test_bad_values_rejected_with_one_line(compose_train, overrides, fragment):
    cfg = compose_train(overrides, output_dir="/tmp/x")
    with pytest.raises(ConfigError) as err:
        validate_train(cfg)
    assert fragment in str(err.value) and "\n" not in str(err.value)
