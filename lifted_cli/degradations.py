"""Degradation operators (the imaging tasks): y = A x + sigma * n, n ~ N(0, I).

Every operator is linear with ``A`` and ``A_adjoint`` (deepinv's naming) acting on batches of shape
(B, C, H, W); the image size is preserved. Randomness (noise, inpainting masks) comes only from an
explicit ``torch.Generator`` so that a seed fixes the measurement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Degradation:
    """Base class: a linear operator ``A`` plus additive white Gaussian noise of std ``sigma``."""

    def __init__(self, sigma: float):
        self.sigma = float(sigma)

    def A(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def draw_mask(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Random parameters of the operator for each image (None for deterministic operators)."""
        return None

    def measure(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """y = A x + sigma n with a fresh operator draw and fresh noise from ``generator``."""
        mask = self.draw_mask(x, generator)
        y = self.A(x, mask)
        if self.sigma > 0:
            y = y + self.sigma * torch.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        return y


class Denoising(Degradation):
    """A = I."""

    def A(self, x, mask=None):
        return x

    def A_adjoint(self, y, mask=None):
        return y


def gaussian_kernel(kernel_size: int, width: float) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel exp(-(i^2 + j^2) / (2 width^2)), odd size, sum 1."""
    r = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    g = torch.exp(-(r**2) / (2 * width**2))
    k = torch.outer(g, g)
    return (k / k.sum()).to(torch.float32)


class Blur(Degradation):
    """Gaussian blur, A x = k * x (convolution) with **zero boundary condition**.

    The image is treated as zero outside its support ("same" convolution with zero padding), so the
    output keeps the input size (28x28 for MNIST); MNIST's background is black, so zero is also the
    physically right extension. A^T is the correlation with the same kernel (``conv_transpose2d``),
    exact for any kernel, symmetric or not.
    """

    def __init__(self, sigma: float, kernel_size: int, width: float):
        super().__init__(sigma)
        self.kernel = gaussian_kernel(kernel_size, width)
        self.pad = kernel_size // 2

    def _k(self, t):
        return self.kernel.to(t.device, t.dtype).expand(t.shape[1], 1, *self.kernel.shape)

    def A(self, x, mask=None):
        # conv2d in torch is a correlation; flipping the kernel makes it a true convolution
        return F.conv2d(x, self._k(x).flip(-1, -2), padding=self.pad, groups=x.shape[1])

    def A_adjoint(self, y, mask=None):
        return F.conv_transpose2d(y, self._k(y).flip(-1, -2), padding=self.pad, groups=y.shape[1])


class Inpainting(Degradation):
    """A x = m * x with a random binary mask m per image, each pixel kept with probability
    ``keep_ratio``; A^T = A (a diagonal operator). The mask is drawn from the generator."""

    def __init__(self, sigma: float, keep_ratio: float):
        super().__init__(sigma)
        self.keep_ratio = float(keep_ratio)

    def draw_mask(self, x, generator):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (u < self.keep_ratio).to(x.dtype)

    def A(self, x, mask=None):
        if mask is None:
            raise ValueError("Inpainting.A needs a mask (draw one with draw_mask)")
        return x * mask

    def A_adjoint(self, y, mask=None):
        return self.A(y, mask)


TASKS = ("denoise", "deblur", "inpaint")


def build_degradation(cfg) -> Degradation:
    """The operator described by a ``dataset`` config node (see ``configs/dataset/*.yaml``)."""
    if cfg.task == "denoise":
        return Denoising(cfg.sigma)
    if cfg.task == "deblur":
        return Blur(cfg.sigma, cfg.kernel_size, cfg.blur_width)
    if cfg.task == "inpaint":
        return Inpainting(cfg.sigma, cfg.keep_ratio)
    raise ValueError(f"unknown task {cfg.task!r}; allowed: {', '.join(TASKS)}")

