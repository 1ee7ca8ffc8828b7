import pytest
import torch

from napari_cvdm.model import CVDM, SAMPLERS, ModelConfig, sample, sample_statistics
from napari_cvdm.model.samplers import ddim_step, predict_data


def _model(schedule: str = "cvdm") -> CVDM:
    torch.manual_seed(0)
    model = CVDM(ModelConfig(x_channels=1, y_channels=2, preset="tiny", schedule=schedule))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


Y = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_fixed_seed_gives_identical_output(sampler):
    model = _model()
    runs = [sample(model, Y, steps=4, sampler=sampler, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = sample(model, Y, steps=4, sampler=sampler, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize("n_samples", [1, 5])
def test_statistics_shapes_for_one_and_many_samples(n_samples):
    stats = sample_statistics(_model(), Y, n_samples, steps=3, keep_samples=True, clip=None,
                              generator=torch.Generator().manual_seed(0))
    assert stats.mean.shape == stats.variance.shape == stats.gamma_map.shape == (2, 1, 12, 12)
    assert stats.samples.shape == (2, n_samples, 1, 12, 12)
    if n_samples == 1:
        assert torch.equal(stats.variance, torch.zeros_like(stats.variance))
    else:
        assert (stats.variance > 0).all()


def test_chunked_statistics_equal_the_samples_mean_and_unbiased_variance():
    stats = sample_statistics(_model(), Y, 7, steps=3, max_batch=6, keep_samples=True,
                              generator=torch.Generator().manual_seed(0))
    samples = stats.samples.double()
    assert torch.allclose(stats.mean.double(), samples.mean(1), atol=1e-6)
    assert torch.allclose(stats.variance.double(), samples.var(1, unbiased=True), atol=1e-6)


def test_gamma_map_is_the_schedule_at_half_time():
    model = _model()
    stats = sample_statistics(model, Y, 2, steps=2)
    expected = model.schedule.gamma(0.5, model.schedule.schedule_map(Y))
    assert torch.allclose(stats.gamma_map, expected)


def test_eta_one_step_equals_the_vdm_ancestral_update():
    """VDM: z_s = (α_s/α_t)(z_t − c σ_t ε̂) + σ_s sqrt(c) ξ with c = 1 − SNR_t/SNR_s."""
    g = torch.Generator().manual_seed(2)
    gamma_t = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) * 0.5 + 0.1
    gamma_s = gamma_t + (1 - gamma_t) * torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64)
    x_t, eps_hat, xi = (torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(3))

    alpha_t, sigma_t = gamma_t.sqrt(), (1 - gamma_t).sqrt()
    alpha_s, sigma_s = gamma_s.sqrt(), (1 - gamma_s).sqrt()
    c = 1 - (alpha_t**2 / sigma_t**2) / (alpha_s**2 / sigma_s**2)
    vdm = alpha_s / alpha_t * (x_t - c * sigma_t * eps_hat) + sigma_s * c.sqrt() * xi

    x0_hat = predict_data(x_t, eps_hat, gamma_t, clip=None)
    ours = ddim_step(x0_hat, eps_hat, gamma_t, gamma_s, eta=1.0, noise=xi)
    assert torch.allclose(ours, vdm, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_exact_denoiser_recovers_a_point_mass(sampler):
    """For data x0 = c the ideal ε̂ is (x_t − α_t c)/σ_t: every sampler must land on c."""
    model = _model()
    target = torch.full((2, 1, 12, 12), 0.3)

    def oracle(x_t, y, gamma):
        return (x_t - gamma.sqrt() * target) / (1 - gamma).sqrt()

    model.predict_noise = oracle
    result = sample(model, Y, steps=6, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(result, target, atol=1e-4)


def test_stop_request_cancels_within_one_step():
    from napari_cvdm.errors import Cancelled

    calls = []
    with pytest.raises(Cancelled):
        sample(_model(), Y, steps=50, progress=lambda i, n: calls.append(i), should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2
