"""lifted: lifted training and inversion of neural networks on imaging benchmarks.

The Python API (``lifted_cli/api.py``) is importable from here: ``lifted_cli.train(overrides)``,
``invert``, ``resume``, ``report``, ``compose``, ``load_network``, ``training`` and ``lifted_step``.
It is loaded on first use, so that ``lifted --help`` does not import torch and Hydra's composition.
"""

__version__ = "0.1.0"

_API = ("Training", "compose", "invert", "lifted_step", "load_network", "report", "resume", "train", "training")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'lifted_cli' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
