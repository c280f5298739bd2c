"""Natural-image patches from the photographs scikit-image ships inside its wheel (``skimage.data``).

Only files inside the installed package are read (``importlib.resources``), so nothing is ever
downloaded. Each photograph is converted to grayscale in [0, 1] (``skimage.color.rgb2gray``), cut
into ``side`` x ``side`` patches every ``stride`` pixels (``skimage.util.view_as_windows``), and the
patches of a split are put in one fixed pseudo-random order (seed 0), so that the first N of them
(``train_size``, ``test_size``) are a sample of every photograph of the split, not of the first one.

The split is by whole photographs: the default test photographs are camera, coins, grass and chelsea
(a portrait, man-made objects, a texture, an animal); training patches come from eight others.
"""

from __future__ import annotations

import functools
from importlib import resources

import numpy as np
import torch

#: name -> the file inside ``skimage/data`` (the photographs among the files of the wheel; the
#: synthetic images, text pages and binary masks are left out)
PHOTOGRAPHS = {
    "astronaut": "astronaut.png", "brick": "brick.png", "camera": "camera.png", "cell": "cell.png",
    "chelsea": "chelsea.png", "clock": "clock_motion.png", "coffee": "coffee.png", "coins": "coins.png",
    "grass": "grass.png", "gravel": "gravel.png", "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png", "moon": "moon.png", "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg", "rocket": "rocket.jpg",
}
TRAIN_IMAGES = ("astronaut", "brick", "coffee", "gravel", "moon", "rocket", "motorcycle", "immunohistochemistry")
TEST_IMAGES = ("camera", "coins", "grass", "chelsea")


def _file(name: str):
    return resources.files("skimage.data").joinpath(PHOTOGRAPHS[name])


@functools.cache
def available() -> tuple[str, ...]:
    """The photographs present in the installed scikit-image."""
    return tuple(n for n in PHOTOGRAPHS if _file(n).is_file())


@functools.cache
def photograph(name: str) -> np.ndarray:
    """A photograph in grayscale, float64 in [0, 1], (H, W)."""
    from skimage import color, io, util

    with resources.as_file(_file(name)) as path:
        img = io.imread(path)
    if img.ndim == 3:
        img = color.rgb2gray(color.rgba2rgb(img) if img.shape[-1] == 4 else img)
    return util.img_as_float(img).clip(0.0, 1.0)


def shape(name: str) -> tuple[int, int]:
    return photograph(name).shape


def patches(names, side: int, stride: int) -> torch.Tensor:
    """Every ``side`` x ``side`` patch, ``stride`` pixels apart, of the photographs ``names``, in one
    fixed order: float32 (N, 1, side, side)."""
    from skimage.util import view_as_windows

    cut = [view_as_windows(photograph(n), (side, side), step=stride).reshape(-1, side, side) for n in names]
    out = torch.from_numpy(np.concatenate(cut)).to(torch.float32).unsqueeze(1)
    return out[torch.randperm(len(out), generator=torch.Generator().manual_seed(0))]
