"""The data: MNIST (sources, verification, loading) and the degradation operators of the tasks."""

from .degradations import DEGRADATIONS, Degradation, build_degradation
from .mnist import DATA_SOURCES, data_root, ensure_mnist, load_mnist, load_train_val, raw_folder, verify_mnist

__all__ = ["DATA_SOURCES", "DEGRADATIONS", "Degradation", "build_degradation", "data_root", "ensure_mnist", "load_mnist",
           "load_train_val", "raw_folder", "verify_mnist"]
