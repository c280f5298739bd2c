"""Image-quality metrics (docs/method.md, section 7.3): per-image PSNR and SSIM with scikit-image,
summarised as mean, std, count.

Images are clamped to [0, 1] and compared with ``data_range=1.0``. The mean of per-image values is
reported, never a PSNR of the pooled batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IMPLEMENTATION = "skimage.metrics.peak_signal_noise_ratio / structural_similarity, data_range=1.0, images clamped to [0, 1]"


def per_image_metrics(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PSNR and SSIM of every image of a batch (B, 1, H, W) against the truth ``x``."""
    # imported here: scikit-image brings scipy.stats (a second of start-up), which only evaluations need
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    est = x_hat.detach().clamp(0, 1).cpu().numpy().astype(np.float64)
    ref = x.detach().clamp(0, 1).cpu().numpy().astype(np.float64)
    psnr = np.empty(len(ref))
    ssim = np.empty(len(ref))
    side = min(ref.shape[-2:])
    win = 7 if side >= 7 else max(3, side - (1 - side % 2))  # skimage's default 7, smaller for tiny images
    for i in range(len(ref)):
        psnr[i] = peak_signal_noise_ratio(ref[i, 0], est[i, 0], data_range=1.0)
        ssim[i] = structural_similarity(ref[i, 0], est[i, 0], data_range=1.0, win_size=win)
    return psnr, ssim


def summarise(values: np.ndarray) -> dict:
    """Mean, sample std and count; an exact reconstruction (inf dB) is kept as inf, not dropped."""
    values = np.asarray(values, dtype=np.float64)
    n = int(values.size)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "count": n}
