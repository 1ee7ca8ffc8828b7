"""The Gaussian oracle: a conditional problem whose posterior is known exactly.

Condition ``y = [signal, region]`` ``(B, 2, H, W)``: a smooth random signal and
a smooth random map in [0, 1]. Target ``x0 = blur(signal) + s · n`` with
``n ~ N(0, 1)`` per pixel and a noise level ``s = S_MIN + (S_MAX − S_MIN) ·
region`` that varies across the image. Hence the posterior ``p(x0 | y)`` is
``N(blur(signal), s²)`` per pixel: a sampler's mean and variance, and a learned
schedule map, can be checked against the truth. Used by the foundation
benchmark, the quick demo and tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

S_MIN = 0.05
S_MAX = 0.4


class OracleBatch(NamedTuple):
    """``x0`` ``(B,1,H,W)``, ``y`` ``(B,2,H,W)``, posterior mean and std ``(B,1,H,W)``."""

    x0: torch.Tensor
    y: torch.Tensor
    posterior_mean: torch.Tensor
    posterior_std: torch.Tensor


def gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur with periodic boundaries, per channel."""
    radius = max(1, int(3 * sigma_px))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma_px) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="circular"), horizontal, groups=channels)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="circular"), vertical, groups=channels)


def _smooth_field(batch: int, size: int, sigma_px: float, generator: torch.Generator) -> torch.Tensor:
    field = gaussian_blur(torch.randn(batch, 1, size, size, generator=generator), sigma_px)
    return field / field.flatten(1).std(1).view(-1, 1, 1, 1)


#: ``μ² + s²`` of the de-confounded variant: every pixel has the same E[x0² | y].
SECOND_MOMENT = S_MAX**2 + 0.1


def gaussian_oracle_batch(batch: int, size: int, generator: torch.Generator,
                          deconfounded: bool = False) -> OracleBatch:
    """Draw ``batch`` pairs of ``size × size`` pixels with their exact posterior.

    ``deconfounded``: the posterior mean is ``μ = sign(blur(signal))·sqrt(C − s²)`` with
    ``C = SECOND_MOMENT``, so ``E[x0² | y] = μ² + s²`` is the same everywhere. In the default
    problem it grows with s, so a λ map that follows the target's intensity (what the prior
    term's gradient ∝ γ₁ x0² asks for) and one that follows the noise level look alike.
    """
    signal = 0.5 * _smooth_field(batch, size, 2.0, generator)
    region = torch.sigmoid(3.0 * _smooth_field(batch, size, 6.0, generator))
    posterior_mean = gaussian_blur(signal, 1.5)
    posterior_std = S_MIN + (S_MAX - S_MIN) * region
    if deconfounded:
        posterior_mean = torch.sign(posterior_mean) * (SECOND_MOMENT - posterior_std**2).sqrt()
    x0 = posterior_mean + posterior_std * torch.randn(batch, 1, size, size, generator=generator)
    return OracleBatch(x0, torch.cat([signal, region], dim=1), posterior_mean, posterior_std)
