import math

import numpy as np
import torch

from lifted_cli.metrics import per_image_metrics, summarise


def test_psnr_by_hand():
    x = torch.zeros(2, 1, 8, 8)
    x_hat = x.clone()
    x_hat[0] += 0.1  # MSE 0.01 -> 20 dB
    x_hat[1, 0, :4] = 0.5  # MSE 0.125 -> 9.03 dB
    psnr, ssim = per_image_metrics(x_hat, x)
    assert math.isclose(psnr[0], 20.0, rel_tol=1e-6)
    assert math.isclose(psnr[1], 10 * math.log10(1 / 0.125), rel_tol=1e-6)
    assert ssim.shape == (2,)


def test_clamping_to_unit_range():
    x = torch.full((1, 1, 8, 8), 1.0)
    psnr, _ = per_image_metrics(x + 5.0, x)  # clamped back to 1: exact
    assert psnr[0] == math.inf


def test_ssim_identical_is_one_and_summary():
    x = torch.rand(3, 1, 28, 28)
    _, ssim = per_image_metrics(x, x)
    assert np.allclose(ssim, 1.0)
    s = summarise(np.array([1.0, 2.0, 3.0]))
    assert s == {"mean": 2.0, "std": 1.0, "count": 3}


def test_mean_of_per_image_not_pooled():
    x = torch.zeros(2, 1, 8, 8)
    x_hat = x.clone()
    x_hat[0] += 0.1
    x_hat[1] += 0.01
    psnr, _ = per_image_metrics(x_hat, x)
    assert math.isclose(summarise(psnr)["mean"], 30.0, rel_tol=1e-6)  # (20 + 40) / 2, pooled would be 23
