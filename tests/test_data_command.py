"""commands/data.py: `lifted data` validates its sources, fetches (here: the local files) and verifies."""

import pytest
from omegaconf import OmegaConf

from lifted_cli.commands.data import fetch, validate
from lifted_cli.errors import ConfigError, DataError
from tests.conftest import make_fake_mnist, run_lifted


def _cfg(**kw):
    return OmegaConf.create({"source": {"name": "mnist"}, "data_root": "d", "data_sources": ["local", "pypi"],
                             "verify": True, **kw})


def test_sources_are_validated():
    validate(_cfg())
    with pytest.raises(ConfigError, match="data_sources"):
        validate(_cfg(data_sources=["ftp"]))
    with pytest.raises(ConfigError, match="source.name=mnistt"):
        validate(_cfg(source={"name": "mnistt"}))


def test_fake_files_are_found_locally_and_fail_verification(tmp_path):
    make_fake_mnist(tmp_path)
    cfg = _cfg(data_root=str(tmp_path), data_sources=["local"], verify=False)
    assert fetch(cfg) == "local"
    cfg.verify = True
    with pytest.raises(DataError, match="sha256|size"):
        fetch(cfg)


@pytest.mark.slow  # a subprocess: the console script as a user runs it
def test_the_command_exits_1_with_one_line_when_data_cannot_be_had(tmp_path):
    proc = run_lifted(["data", f"data_root={tmp_path}", "data_sources=[local]"], tmp_path, check=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "MNIST not available" in proc.stderr


def test_fashion_mnist_placed_by_hand_is_found_and_present(tmp_path):
    """Files without torchvision's archives: present, nothing to compare their checksums with."""
    make_fake_mnist(tmp_path, folder="FashionMNIST")
    cfg = _cfg(source={"name": "fashion_mnist"}, data_root=str(tmp_path), data_sources=["local"])
    assert fetch(cfg) == "local"
    (tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="md5 differs from torchvision's"):
        fetch(cfg)
