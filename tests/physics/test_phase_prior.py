import numpy as np
import pytest

from napari_cvdm.physics.optics import apply_transfer
from napari_cvdm.physics.phase_prior import (
    PhasePrior, draw_phase, fit_phase_prior, periodogram, pixel_variance, tie_filter_error_spectrum,
    tie_posterior_spectrum, tie_transfer, wiener_tie,
)
from napari_cvdm.physics.tie import fft_tie, inverse_laplacian, laplacian_symbol

WAVELENGTH_UM, PIXEL_UM, DZ_UM = 0.521, 0.21, 1.0
OPTICS = (PIXEL_UM, DZ_UM, WAVELENGTH_UM)  # the spectra's argument order
PRIOR = PhasePrior(amplitude=0.02, exponent=3.0, corner=0.3)


def linear_stack(phase, noise_std, rng, mean_intensity=1.3):
    """``I± = I0·(1 ∓ (λ·dz/(2π))·∇²φ) + noise`` (∇² spectral, periodic), ``(2, H, W)``."""
    laplacian = apply_transfer(phase, laplacian_symbol(phase.shape, PIXEL_UM))
    contrast = WAVELENGTH_UM * DZ_UM / (2 * np.pi) * laplacian
    planes = mean_intensity * np.stack([1 + contrast, 1 - contrast])
    return planes + mean_intensity * noise_std * rng.normal(size=planes.shape)


def error_variance(estimate, truth):
    error = estimate - truth
    return float(np.mean((error - error.mean()) ** 2))


def test_prior_dict_round_trip_and_validation():
    assert PhasePrior.from_dict(PRIOR.to_dict()) == PRIOR
    with pytest.raises(ValueError, match="corner"):
        PhasePrior.from_dict({"amplitude": 1.0, "exponent": 3.0})
    with pytest.raises(ValueError, match="amplitude"):
        PhasePrior.from_dict({"amplitude": -1.0, "exponent": 3.0, "corner": 0.1})
    with pytest.raises(ValueError, match="exponent"):
        PhasePrior.from_dict({"amplitude": 1.0, "exponent": float("nan"), "corner": 0.1})
    with pytest.raises(ValueError, match="slope"):
        PhasePrior.from_dict({**PRIOR.to_dict(), "slope": 2.0})
    with pytest.raises(ValueError, match="mapping"):
        PhasePrior.from_dict([1.0, 3.0, 0.1])


def test_drawn_fields_have_the_predicted_pixel_variance():
    rng = np.random.default_rng(0)
    shape = (64, 96)
    variances = [np.var(draw_phase(PRIOR, shape, PIXEL_UM, rng)) for _ in range(64)]
    assert np.mean(variances) == pytest.approx(PRIOR.pixel_variance(shape, PIXEL_UM), rel=0.08)
    # white noise: a flat spectrum of variance v·p² per pixel
    white = PhasePrior(amplitude=0.5 * PIXEL_UM**2, exponent=0.0, corner=0.0)
    assert white.pixel_variance((32, 32), PIXEL_UM) == pytest.approx(0.5 * (1 - 1 / 32**2))


def test_periodogram_sums_to_the_image_variance():
    rng = np.random.default_rng(1)
    phase = draw_phase(PRIOR, (64, 64), PIXEL_UM, rng) + 2.0
    spectrum = periodogram(phase, PIXEL_UM, window=False)
    assert pixel_variance(spectrum, PIXEL_UM) == pytest.approx(np.var(phase))


@pytest.mark.parametrize("window", [False, True])
def test_fit_recovers_the_prior_of_drawn_fields(window):
    rng = np.random.default_rng(2)
    phases = [draw_phase(PRIOR, (128, 128), PIXEL_UM, rng) for _ in range(16)]
    fitted = fit_phase_prior(phases, PIXEL_UM, window=window)
    assert fitted.exponent == pytest.approx(PRIOR.exponent, abs=0.15)
    assert fitted.corner == pytest.approx(PRIOR.corner, rel=0.25)
    expected = PRIOR.pixel_variance((128, 128), PIXEL_UM)
    assert fitted.pixel_variance((128, 128), PIXEL_UM) == pytest.approx(expected, rel=0.1)


def test_one_step_transfer_is_the_tikhonov_filter_and_iterations_match_the_loop():
    rng = np.random.default_rng(3)
    shape, a, gain = (32, 32), 2e-3, 0.8
    symbol = laplacian_symbol(shape, PIXEL_UM)
    expected = symbol / (symbol**2 + a)
    expected[0, 0] = 0.0
    np.testing.assert_allclose(tie_transfer(shape, PIXEL_UM, a), expected, rtol=1e-9, atol=1e-12)
    rhs = rng.normal(size=shape)
    phase = np.zeros(shape)
    for _ in range(5):
        phase += inverse_laplacian(gain * (rhs - apply_transfer(phase, symbol)), PIXEL_UM, a)
    transfer = tie_transfer(shape, PIXEL_UM, a, iterations=5, gain=gain)
    np.testing.assert_allclose(phase, apply_transfer(rhs, transfer), atol=1e-9)


def monte_carlo_error(solve, seed: int, shape=(64, 64), noise_std: float = 0.05, draws: int = 256) -> float:
    """Mean error variance (rad², offset removed) of ``solve(stack)`` on phases drawn from the prior."""
    rng = np.random.default_rng(seed)
    measured = []
    for _ in range(draws):
        phase = draw_phase(PRIOR, shape, PIXEL_UM, rng)
        measured.append(error_variance(solve(linear_stack(phase, noise_std, rng)), phase))
    return float(np.mean(measured))


@pytest.mark.parametrize("regularization", [1e-3, 3e-2, 3e-1])  # noise-dominated, mixed, bias-dominated
def test_filter_error_spectrum_matches_monte_carlo(regularization):
    shape, noise_std = (64, 64), 0.05
    measured = monte_carlo_error(lambda stack: fft_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, regularization,
                                                       boundary="periodic"), 4)
    spectrum = tie_filter_error_spectrum(shape, *OPTICS, noise_std, PRIOR, regularization)
    assert measured == pytest.approx(pixel_variance(spectrum, PIXEL_UM), rel=0.1)


def test_posterior_spectrum_matches_monte_carlo_and_bounds_the_filter_error():
    shape, noise_std = (64, 64), 0.05
    measured = monte_carlo_error(lambda stack: wiener_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, noise_std, PRIOR), 5)
    posterior = tie_posterior_spectrum(shape, *OPTICS, noise_std, PRIOR)
    assert np.mean(measured) == pytest.approx(pixel_variance(posterior, PIXEL_UM), rel=0.1)
    for a in (1e-5, 1e-3, 1e-1):
        tikhonov = tie_filter_error_spectrum(shape, *OPTICS, noise_std, PRIOR, a)
        assert np.all(posterior <= tikhonov * (1 + 1e-9))


def test_noise_free_posterior_is_zero_and_filter_error_is_the_bias_only():
    shape = (32, 32)
    assert np.all(tie_posterior_spectrum(shape, *OPTICS, 0.0, PRIOR) == 0)
    symbol = laplacian_symbol(shape, PIXEL_UM)
    bias = (1e-3 / (symbol**2 + 1e-3)) ** 2 * PRIOR.on_grid(shape, PIXEL_UM)
    np.testing.assert_allclose(tie_filter_error_spectrum(shape, *OPTICS, 0.0, PRIOR, 1e-3), bias, rtol=1e-9)


def test_an_images_own_periodogram_predicts_its_noise_free_error_exactly():
    rng = np.random.default_rng(6)
    phase = draw_phase(PRIOR, (64, 64), PIXEL_UM, rng)
    stack = linear_stack(phase, 0.0, rng)
    estimate = fft_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, 3e-2, boundary="periodic")
    own = periodogram(phase, PIXEL_UM, window=False)
    spectrum = tie_filter_error_spectrum(phase.shape, *OPTICS, 0.0, own, 3e-2)
    assert pixel_variance(spectrum, PIXEL_UM) == pytest.approx(error_variance(estimate, phase), rel=1e-9)
    with pytest.raises(ValueError, match="shaped"):
        tie_posterior_spectrum((32, 32), *OPTICS, 0.05, own)
