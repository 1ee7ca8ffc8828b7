"""Samplers against a Gaussian whose exact denoiser is known in closed form.

For x0 ~ N(m, s²) per pixel, E[ε | x_t] = σ_t (x_t − α_t m) / (α_t² s² + σ_t²).
With that denoiser every sampler must turn N(0, 1) into samples of N(m, s²),
on a per-pixel learned schedule as well as on the fixed one.
"""

import pytest
import torch

from napari_cvdm.model import CVDM, SAMPLERS, ModelConfig, SamplingOptions, sample

STEPS = {"ancestral": 200, "ddim": 50, "dpm_solver_2m": 20}


@pytest.mark.parametrize("schedule", ["cvdm", "cddpm"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_exact_gaussian_denoiser_gives_the_right_mean_and_variance(schedule, sampler):
    torch.manual_seed(0)
    model = CVDM(ModelConfig(x_channels=1, y_channels=1, preset="tiny", schedule=schedule)).eval()
    with torch.no_grad():  # a per-pixel schedule map that varies across the image
        for p in model.schedule.parameters():
            p.add_(0.1 * torch.randn_like(p))
    n, size = 2000, 4
    y = torch.randn(1, 1, size, size).expand(n, 1, size, size)
    mean = torch.linspace(-0.5, 0.5, size * size).view(1, 1, size, size)
    std = torch.linspace(0.05, 0.4, size * size).view(1, 1, size, size)

    def exact_noise(x_t, y, gamma):
        alpha2, sigma2 = gamma, 1 - gamma
        return sigma2.sqrt() * (x_t - alpha2.sqrt() * mean) / (alpha2 * std**2 + sigma2)

    model.predict_noise = exact_noise
    draws = sample(model, y, SamplingOptions(sampler, steps=STEPS.get(sampler, 20), clip=None, grid="log_snr"),
                   generator=torch.Generator().manual_seed(1))
    assert torch.allclose(draws.mean(0, keepdim=True), mean, atol=4 * 0.4 / n**0.5)
    ratio = draws.var(0, keepdim=True) / std**2
    assert ((ratio - 1).abs() < 0.2).all(), ratio.flatten()
