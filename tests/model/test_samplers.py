import copy

import pytest
import torch

from napari_cvdm.model import (
    CVDM, GRIDS, SAMPLERS, ModelConfig, RuntimeOptions, SamplingOptions, sample, sample_statistics,
)
from napari_cvdm.model.samplers import (
    DDIM, LOG_SNR_MAX, DPMSolver2M, DPMSolver2MSDE, predict_data, time_grid,
)


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
    runs = [sample(model, Y, SamplingOptions(sampler, steps=4), generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = sample(model, Y, SamplingOptions(sampler, steps=4), generator=torch.Generator().manual_seed(8))
    assert not torch.equal(runs[0], other)


@pytest.mark.parametrize("n_samples", [1, 5])
def test_statistics_shapes_for_one_and_many_samples(n_samples):
    stats = sample_statistics(_model(), Y, n_samples, SamplingOptions(steps=3, clip=None), keep_samples=True,
                              generator=torch.Generator().manual_seed(0))
    assert stats.mean.shape == stats.variance.shape == stats.gamma_map.shape == (2, 1, 12, 12)
    assert stats.samples.shape == (2, n_samples, 1, 12, 12)
    if n_samples == 1:
        assert torch.equal(stats.variance, torch.zeros_like(stats.variance))
    else:
        assert (stats.variance > 0).all()


def test_chunked_statistics_equal_the_samples_mean_and_unbiased_variance():
    stats = sample_statistics(_model(), Y, 7, SamplingOptions(steps=3), max_batch=6, keep_samples=True,
                              generator=torch.Generator().manual_seed(0))
    samples = stats.samples.double()
    assert torch.allclose(stats.mean.double(), samples.mean(1), atol=1e-6)
    assert torch.allclose(stats.variance.double(), samples.var(1, unbiased=True), atol=1e-6)


def test_gamma_map_is_the_schedule_at_half_time():
    model = _model()
    stats = sample_statistics(model, Y, 2, SamplingOptions(steps=2))
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
    ours = DDIM(eta=1.0).step(x_t, x0_hat, gamma_t, gamma_s, xi)
    assert torch.allclose(ours, vdm, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_family_equals_first_order_dpm_solver_where_x0_is_clipped(eta):
    """With x̂0 clipped, DDIM (η = 0) is the first-order 2M step and ancestral (η = 1) the first-order
    2M-SDE step: both step from x_t and the clipped x̂0, so the samplers share one limit."""
    g = torch.Generator().manual_seed(4)
    gamma_t = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) * 0.5 + 0.1
    gamma_s = gamma_t + (1 - gamma_t) * torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64)
    x_t, xi = (torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64) for _ in range(2))
    eps_hat = 3 * torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    x0_hat = predict_data(x_t, eps_hat, gamma_t, clip=1.0)
    assert bool((x0_hat.abs() == 1).any())  # the case under test: some pixels clipped

    ddim = DDIM(eta).step(x_t, x0_hat, gamma_t, gamma_s, xi)
    dpm = (DPMSolver2MSDE(eta) if eta > 0 else DPMSolver2M()).step(x_t, x0_hat, gamma_t, gamma_s, xi)
    assert torch.allclose(ddim, dpm, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_exact_denoiser_recovers_a_point_mass(sampler):
    """For data x0 = c the ideal ε̂ is (x_t − α_t c)/σ_t: every sampler must land on c."""
    model = _model()
    target = torch.full((2, 1, 12, 12), 0.3)

    def oracle(x_t, y, gamma):
        return (x_t - gamma.sqrt() * target) / (1 - gamma).sqrt()

    model.predict_noise = oracle
    result = sample(model, Y, SamplingOptions(sampler, steps=6), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(result, target, atol=1e-4)


def test_stop_request_cancels_within_one_step():
    from napari_cvdm.errors import Cancelled

    calls = []
    with pytest.raises(Cancelled):
        sample(_model(), Y, SamplingOptions(steps=50), progress=lambda i, n: calls.append(i), should_stop=lambda: len(calls) >= 2)
    assert len(calls) == 2


# ----------------------------------------------------------------------------- caller-provided noise


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_caller_noise_equals_the_generator_draws_in_order(sampler):
    """The default noise is x₁ then one draw per stochastic step; a caller's source replaces it exactly."""
    model = _model()
    shape = (Y.shape[0], 1, *Y.shape[-2:])
    generator, stages = torch.Generator().manual_seed(7), []

    def source(stage):
        stages.append(stage)
        return torch.randn(shape, generator=generator)

    given = sample(model, Y, SamplingOptions(sampler, steps=4), noise=source)
    default = sample(model, Y, SamplingOptions(sampler, steps=4), generator=torch.Generator().manual_seed(7))
    assert torch.equal(given, default)
    assert stages == ([0, 1, 2, 3] if SamplingOptions(sampler).eta > 0 else [0])


def test_a_row_does_not_depend_on_its_batch():
    """Each row gets the log-SNR grid of its own λ map, so batching inputs changes nothing."""
    model = _model()
    x1 = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    lam = model.schedule.schedule_map(Y) * torch.tensor([1.0, 5.0]).view(2, 1, 1, 1)  # two different grids
    common = SamplingOptions(steps=5, clip=None, grid="log_snr")
    both = sample(model, Y, common, noise=lambda stage: x1, schedule_map=lam)
    medians = lam.flatten(1).median(1).values
    swapped = sample(model, Y, common, noise=lambda stage: x1, schedule_map=lam, lam_ref=medians.flip(0))
    for b in range(2):
        alone = sample(model, Y[b:b + 1], common, noise=lambda stage: x1[b:b + 1], schedule_map=lam[b:b + 1])
        scale = float(alone.abs().max())
        assert float((both[b] - alone[0]).abs().max()) < 1e-5 * scale
        assert float((swapped[b] - alone[0]).abs().max()) > 1e-3 * scale  # control: the grid matters


# ----------------------------------------------------------------------------- time grids


def test_log_snr_grid_is_uniform_in_the_reference_pixels_log_snr():
    model = _model()
    lam = 0.7
    times = time_grid(8, kind="log_snr", schedule=model.schedule, lam=lam)
    assert times.shape == (9,) and times[0] == 1.0 and times[-1] == 0.0
    assert torch.all(times[1:] < times[:-1])
    schedule64 = copy.deepcopy(model.schedule).double()
    gamma = schedule64.gamma(times[:-1].double(), torch.full((8, 1, 1, 1), lam, dtype=torch.float64)).flatten()
    log_snr = torch.log(gamma) - torch.log1p(-gamma)
    steps = log_snr[1:] - log_snr[:-1]
    assert torch.allclose(steps, steps.mean().expand_as(steps), rtol=2e-3)
    assert float(log_snr[-1]) == pytest.approx(LOG_SNR_MAX, abs=0.02)
    assert torch.equal(time_grid(8), torch.linspace(1, 0, 9))


@pytest.mark.parametrize("low,high", [(None, 8.0), (-3.0, 10.0)])
def test_a_narrowed_log_snr_grid_spans_the_asked_range_after_t_equal_1(low, high):
    model = _model()
    lam = 0.7
    times = time_grid(6, kind="log_snr", schedule=model.schedule, lam=lam, log_snr_range=(low, high))
    assert times[0] == 1.0 and times[-1] == 0.0 and torch.all(times[1:] < times[:-1])
    gamma = model.schedule.double().gamma(times[:-1].double(), torch.full((6, 1, 1, 1), lam, dtype=torch.float64))
    log_snr = (torch.log(gamma) - torch.log1p(-gamma)).flatten()
    start = float(log_snr[0]) if low is None else low  # ℓ(1) unless the range starts above it
    expected = torch.linspace(start, high, 6, dtype=torch.float64)[1:]
    assert torch.allclose(log_snr[1:], expected, atol=0.05)


def _gaussian_oracle_model(s2: torch.Tensor) -> CVDM:
    """A CVDM whose denoiser is the exact ε̂ for data x0 ~ N(0, s²) per pixel."""
    model = _model()

    def oracle(x_t, y, gamma):
        gamma = gamma.double()
        return ((1 - gamma).sqrt() * x_t.double() / (gamma * s2 + 1 - gamma)).float()

    model.predict_noise = oracle
    return model


def flow_errors(sampler: str, steps=(20, 40)) -> list[float]:
    """RMS error against the exact probability-flow map of Gaussian data, at each number of steps.

    The ODE maps x₁ to x0 = x₁ s / sqrt(γ₁ s² + 1 − γ₁) exactly. Per-pixel λ spans a
    factor ~20, so the solvers really work per pixel.
    """
    g = torch.Generator().manual_seed(1)
    model = _model()
    lam = model.schedule.schedule_map(Y) * torch.exp(torch.randn(2, 1, 12, 12, generator=g))
    s2 = (0.2 + torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64)) ** 2
    x1 = torch.randn(2, 1, 12, 12, generator=g)
    model = _gaussian_oracle_model(s2)
    gamma1 = model.schedule.gamma(1.0, lam).double()
    exact = x1.double() * s2.sqrt() / (gamma1 * s2 + 1 - gamma1).sqrt()
    return [float((sample(model, Y, SamplingOptions(sampler, steps=k, clip=None, grid="log_snr"), schedule_map=lam,
                          noise=lambda stage: x1).double() - exact).pow(2).mean().sqrt())
            for k in steps]


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("dpm_solver_2m", 2)])
def test_solvers_converge_at_their_order_to_the_exact_flow_on_the_log_snr_grid(sampler, order):
    """The error must shrink by about 2^order per doubling of the steps (:func:`flow_errors`)."""
    errors = flow_errors(sampler)
    assert 0.6 * 2**order < errors[0] / errors[1] < 1.6 * 2**order


def test_uniform_grid_is_first_order_whatever_the_solver():
    """Its last step predicts x̂0 from t₁ = 1/K: the flow's end is missed by O(1/K) even with 2M."""
    g = torch.Generator().manual_seed(1)
    model = _model()
    lam = model.schedule.schedule_map(Y)
    s2 = (0.2 + torch.rand(2, 1, 12, 12, generator=g, dtype=torch.float64)) ** 2
    x1 = torch.randn(2, 1, 12, 12, generator=g)
    model = _gaussian_oracle_model(s2)
    gamma1 = model.schedule.gamma(1.0, lam).double()
    exact = x1.double() * s2.sqrt() / (gamma1 * s2 + 1 - gamma1).sqrt()

    def error(grid, k):
        out = sample(model, Y, SamplingOptions("dpm_solver_2m", steps=k, clip=None, grid=grid), schedule_map=lam,
                     noise=lambda stage: x1)
        return float((out.double() - exact).pow(2).mean().sqrt())

    assert error("uniform", 20) / error("uniform", 40) < 2.5
    assert error("log_snr", 20) < 0.5 * error("uniform", 20)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_extreme_and_flat_schedules_stay_finite(sampler):
    """λ at its floor (γ ≈ 1 all the way: flat log-SNR steps) and large λ (γ(1) underflows) in one map."""
    model = _model()
    target = torch.full((2, 1, 12, 12), 0.3)
    model.predict_noise = lambda x_t, y, gamma: (x_t - gamma.sqrt() * target) / (1 - gamma).sqrt()
    lam = torch.full((2, 1, 12, 12), 1.0)
    lam[:, :, :4] = 1e-4
    lam[:, :, -4:] = 30.0
    for grid in GRIDS:
        result = sample(model, Y, SamplingOptions(sampler, steps=6, grid=grid), schedule_map=lam,
                        generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(result).all()
        assert torch.allclose(result, target, atol=1e-3)


# ----------------------------------------------------------------------------- GPU options (run on the CPU here)


def test_channels_last_and_bf16_change_only_rounding():
    model = _model()
    options = SamplingOptions(steps=4)
    base = sample(model, Y, options, noise=lambda stage: torch.ones(2, 1, 12, 12) * 0.5)
    nhwc = sample(model, Y, options, RuntimeOptions(channels_last=True),
                  noise=lambda stage: torch.ones(2, 1, 12, 12) * 0.5)
    bf16 = sample(model, Y, options, RuntimeOptions(autocast_dtype=torch.bfloat16),
                  noise=lambda stage: torch.ones(2, 1, 12, 12) * 0.5)
    assert torch.allclose(base, nhwc, atol=1e-5)
    assert bf16.dtype == torch.float32 and 0 < float((bf16 - base).abs().max()) < 0.05


def test_failed_compile_falls_back_to_eager_with_one_warning(monkeypatch):
    model = _model()

    def broken_compile(function, **kwargs):
        def run(*args):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    noise = lambda stage: torch.ones(2, 1, 12, 12) * 0.5  # noqa: E731
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        compiled = sample(model, Y, SamplingOptions(steps=3), RuntimeOptions(compile=True), noise=noise)
    assert torch.equal(compiled, sample(model, Y, SamplingOptions(steps=3), noise=noise))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sample(model, Y, SamplingOptions(steps=3), RuntimeOptions(compile=True), noise=noise)  # remembered: no second warning


def test_log_snr_2m_samplers_reproduce_the_data_variance_at_20_steps():
    """Gaussian data, exact denoiser: the spread of the samples must be the data's.

    Both 2M solvers on the log-SNR grid get within 10 % at 20 evaluations; the paper's
    ancestral sampler (control) is still far below at 20 (it needs hundreds of steps).
    """
    s2 = 0.25
    model = _gaussian_oracle_model(torch.full((4, 1, 32, 32), s2, dtype=torch.float64))
    lam, y = torch.ones(4, 1, 32, 32), torch.zeros(4, 2, 32, 32)

    def variance_ratio(sampler):
        out = sample(model, y, SamplingOptions(sampler, steps=20, clip=None, grid="log_snr"), schedule_map=lam,
                     generator=torch.Generator().manual_seed(0))
        return float(out.var()) / s2

    for sampler in ("dpm_solver_2m", "dpm_solver_2m_sde"):
        assert 0.9 < variance_ratio(sampler) < 1.1, sampler
    assert variance_ratio("ancestral") < 0.7


def test_running_moments_kept_in_float32_match_one_float64_pass():
    from napari_cvdm.model.samplers import RunningMoments

    draws = torch.randn(7, 3, 5, generator=torch.Generator().manual_seed(0)) * 3 + 10
    kept = RunningMoments(dim=0, dtype=torch.float32)
    for batch in draws.split([2, 1, 4]):
        kept.add(batch)
    assert kept.mean.dtype == torch.float32 and kept.count == 7
    assert torch.allclose(kept.mean.double(), draws.double().mean(0), rtol=1e-6)
    assert torch.allclose(kept.variance().double(), draws.double().var(0), rtol=1e-5)
