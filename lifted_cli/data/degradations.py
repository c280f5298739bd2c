"""Degradation operators (the imaging tasks; docs/method.md, section 7.2): y = A x + sigma * n, n ~ N(0, I).

Every operator is linear with ``A`` and ``A_adjoint`` (deepinv's naming) acting on batches of shape
(B, C, H, W); the image size is preserved. Randomness (noise, inpainting masks) comes only from an
explicit ``torch.Generator`` so that a seed fixes the measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..registry import Registry, Schema, check, check_nonnegative, check_positive, check_seed, option

#: the imaging tasks (config group ``task``)
DEGRADATIONS = Registry("task")


@dataclass
class DenoiseConfig(Schema):
    name: str = option("denoise", "the degradation: denoise (y = x + sigma n) | deblur | inpaint")
    sigma: float = option(0.3, "std of the additive Gaussian noise (images in [0, 1])")
    test_seed: int = option(1234, "seeds the test-set degradation: identical test data for every run")

    def validate(self):
        check_nonnegative("sigma", self.sigma)
        check_seed("test_seed", self.test_seed)


@dataclass
class DeblurConfig(DenoiseConfig):
    name: str = option("deblur", "the degradation: y = k * x + sigma n, Gaussian kernel k, zero boundary")
    kernel_size: int = option(7, "odd side length of the blur kernel")
    blur_width: float = option(1.5, "std (pixels) of the Gaussian blur kernel")

    def validate(self):
        super().validate()
        check(1 <= self.kernel_size <= 27 and self.kernel_size % 2 == 1, "kernel_size", self.kernel_size,
              "must be odd, between 1 and 27")
        check_positive("blur_width", self.blur_width)


@dataclass
class InpaintConfig(DenoiseConfig):
    name: str = option("inpaint", "the degradation: y = m x + sigma n, a fresh random pixel mask m per image")
    keep_ratio: float = option(0.5, "probability that a pixel is observed, in (0, 1]")

    def validate(self):
        super().validate()
        check(0 < self.keep_ratio <= 1, "keep_ratio", self.keep_ratio, "keep ratio must be in (0, 1]")


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


@DEGRADATIONS.register("denoise", DenoiseConfig)
class Denoising(Degradation):
    """A = I."""

    def __init__(self, cfg):
        super().__init__(cfg.sigma)

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


@DEGRADATIONS.register("deblur", DeblurConfig)
class Blur(Degradation):
    """Gaussian blur, A x = k * x (convolution) with **zero boundary condition**.

    The image is treated as zero outside its support ("same" convolution with zero padding), so the
    output keeps the input size; MNIST's background is black, so there zero is also the physically right
    extension (natural patches get darker borders: the operator the task defines). A^T is the
    correlation with the same kernel (``conv_transpose2d``), exact for any kernel, symmetric or not.
    """

    def __init__(self, cfg):
        super().__init__(cfg.sigma)
        self.kernel = gaussian_kernel(cfg.kernel_size, cfg.blur_width)
        self.pad = cfg.kernel_size // 2

    def _k(self, t):
        return self.kernel.to(t.device, t.dtype).expand(t.shape[1], 1, *self.kernel.shape)

    def A(self, x, mask=None):
        # conv2d in torch is a correlation; flipping the kernel makes it a true convolution
        return F.conv2d(x, self._k(x).flip(-1, -2), padding=self.pad, groups=x.shape[1])

    def A_adjoint(self, y, mask=None):
        return F.conv_transpose2d(y, self._k(y).flip(-1, -2), padding=self.pad, groups=y.shape[1])


@DEGRADATIONS.register("inpaint", InpaintConfig)
class Inpainting(Degradation):
    """A x = m * x with a random binary mask m per image, each pixel kept with probability
    ``keep_ratio``; A^T = A (a diagonal operator). The mask is drawn from the generator."""

    def __init__(self, cfg):
        super().__init__(cfg.sigma)
        self.keep_ratio = float(cfg.keep_ratio)

    def draw_mask(self, x, generator):
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (u < self.keep_ratio).to(x.dtype)

    def A(self, x, mask=None):
        if mask is None:
            raise ValueError("Inpainting.A needs a mask (draw one with draw_mask)")
        return x * mask

    def A_adjoint(self, y, mask=None):
        return self.A(y, mask)


def build_degradation(cfg) -> Degradation:
    """The operator described by a ``task`` config node (see ``configs/task/*.yaml``)."""
    return DEGRADATIONS.build(cfg)
