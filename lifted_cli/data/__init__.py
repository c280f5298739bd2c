"""The data: image sources (``source``: MNIST, Fashion-MNIST, KMNIST, natural patches) and the
degradation operators of the tasks (``task``: denoise, deblur, inpaint)."""

from .degradations import DEGRADATIONS, Degradation, build_degradation
from .mnist import data_root, raw_folder, verify_mnist
from .sources import (DATA_SOURCES, SOURCES, Source, build_source, image_side, load_images, load_train_val)

__all__ = ["DATA_SOURCES", "DEGRADATIONS", "Degradation", "SOURCES", "Source", "build_degradation", "build_source",
           "data_root", "image_side", "load_images", "load_train_val", "raw_folder", "verify_mnist"]
