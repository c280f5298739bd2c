"""lifted: lifted training and inversion of neural networks on imaging benchmarks."""

__version__ = "0.1.0"
