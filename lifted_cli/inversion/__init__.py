"""Inversion of trained networks: the lifted problem (``problem.py``), its u-steps (``usteps.py``),
the regularisers (``regularizers.py``) and the methods the ``invert`` command runs (``methods.py``)."""

from .methods import INVERSION_METHODS
from .problem import LiftedInversion
from .regularizers import REGULARIZERS, build_regularizer

__all__ = ["INVERSION_METHODS", "REGULARIZERS", "LiftedInversion", "build_regularizer"]
