import numpy as np
import pytest

from napari_cvdm.physics.optics import (
    apply_transfer,
    bin_pixels,
    frequency_grid,
    incoherent_otf,
    pixel_integration_mtf,
    propagate,
    psf_from_otf,
    upsample,
)

WAVELENGTH_UM, PIXEL_UM = 0.521, 0.21


def smooth_field(rng, n=64, phase_rad=1.0):
    """A complex field band-limited well inside 1/λ (no evanescent part)."""
    fy, fx = frequency_grid((n, n), PIXEL_UM)
    lowpass = np.sqrt(fx**2 + fy**2) < 0.6  # cycles/µm, ≪ 1/λ ≈ 1.9
    phase = apply_transfer(rng.normal(size=(n, n)), lowpass)
    field = (1.0 + 0.3 * rng.normal(size=(n, n))) * np.exp(1j * phase_rad * phase / phase.std())
    return np.fft.ifft2(np.fft.fft2(field) * lowpass)


def gaussian_bump(n, sigma_px, height):
    y, x = np.mgrid[:n, :n] - n // 2
    return height * np.exp(-(x**2 + y**2) / (2 * sigma_px**2))


def test_otf_formula_cutoff_and_normalisation():
    # Grid with 1 cycle/µm steps and a 20 cycles/µm cut-off, so f = 10 is exactly ρ = 0.5.
    shape, pixel, na, wavelength = (100, 100), 0.01, 1.2, 0.12
    otf = incoherent_otf(shape, pixel, na, wavelength)
    fy, fx = frequency_grid(shape, pixel)
    f = np.sqrt(fx**2 + fy**2)
    assert otf[0, 0] == pytest.approx(1.0)
    assert otf[0, 10] == pytest.approx((2 / np.pi) * (np.arccos(0.5) - 0.5 * np.sqrt(0.75)))
    assert np.all(otf[f >= 20] == 0) and np.all(otf[f < 19.9] > 0)
    doubled = incoherent_otf(shape, pixel, na, wavelength, cutoff_scale=2.0)
    assert doubled[0, 20] == pytest.approx(otf[0, 10])  # same ρ at twice the frequency
    assert np.all(doubled[f >= 40] == 0) and doubled[0, 30] > 0


def fwhm_px(profile):
    """Full width at half maximum of a centred, single-peaked 1-D profile (linear interpolation)."""
    peak = int(np.argmax(profile))
    half = profile[peak] / 2
    right = peak + int(np.argmax(profile[peak:] < half))
    left = peak - int(np.argmax(profile[peak::-1] < half))
    interp = lambda i, j: i + (half - profile[i]) / (profile[j] - profile[i]) * (j - i)
    return interp(right - 1, right) - interp(left + 1, left)


def test_psf_is_normalised_and_the_target_psf_is_half_as_wide():
    shape, pixel, na, wavelength = (256, 256), 0.01, 1.4, 0.6
    psf = psf_from_otf(incoherent_otf(shape, pixel, na, wavelength))
    assert psf.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(psf), shape) == (128, 128)
    # Airy pattern: FWHM ≈ 0.51 λ/NA.
    assert fwhm_px(psf[128]) * pixel == pytest.approx(0.51 * wavelength / na, rel=0.03)
    psf_target = psf_from_otf(incoherent_otf(shape, pixel, na, wavelength, cutoff_scale=2.0))
    assert fwhm_px(psf_target[128]) / fwhm_px(psf[128]) == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("method", ["fresnel", "angular"])
def test_zero_distance_is_identity(method):
    field = smooth_field(np.random.default_rng(0))
    np.testing.assert_allclose(propagate(field, 0.0, WAVELENGTH_UM, PIXEL_UM, method), field, atol=1e-12)
    # Also for a field with content at every frequency, evanescent ones included.
    rough = np.random.default_rng(5).normal(size=(32, 32)) + 0j
    np.testing.assert_allclose(propagate(rough, 0.0, WAVELENGTH_UM, PIXEL_UM, method), rough, atol=1e-12)


@pytest.mark.parametrize("method", ["fresnel", "angular"])
def test_energy_is_conserved_and_back_propagation_returns_the_field(method):
    field = smooth_field(np.random.default_rng(1))
    forward = propagate(field, 3.0, WAVELENGTH_UM, PIXEL_UM, method)
    assert np.sum(np.abs(forward) ** 2) == pytest.approx(np.sum(np.abs(field) ** 2), rel=1e-10)
    assert not np.allclose(np.abs(forward), np.abs(field), atol=1e-3)  # it did propagate
    back = propagate(forward, -3.0, WAVELENGTH_UM, PIXEL_UM, method)
    np.testing.assert_allclose(back, field, atol=1e-10)


def test_angular_spectrum_agrees_with_fresnel_for_paraxial_fields():
    field = smooth_field(np.random.default_rng(2))
    fresnel = propagate(field, 1.0, WAVELENGTH_UM, PIXEL_UM, "fresnel")
    angular = propagate(field, 1.0, WAVELENGTH_UM, PIXEL_UM, "angular")
    assert np.abs(fresnel - angular).max() < 0.02 * np.abs(field).max()


def test_sign_convention_a_positive_phase_bump_focuses_at_positive_dz():
    # A positive phase bump is a converging lens: at +dz its centre gets brighter, at -dz darker.
    n = 64
    field = np.exp(1j * gaussian_bump(n, sigma_px=5, height=0.5))
    for method in ("fresnel", "angular"):
        plus = np.abs(propagate(field, 1.0, WAVELENGTH_UM, PIXEL_UM, method)) ** 2
        minus = np.abs(propagate(field, -1.0, WAVELENGTH_UM, PIXEL_UM, method)) ** 2
        assert plus[n // 2, n // 2] > 1.02
        assert minus[n // 2, n // 2] < 0.98
    # The TIE for unit intensity: dI/dz = -(1/k)∇²φ, with ∇²φ < 0 at the top of the bump.
    k = 2 * np.pi / WAVELENGTH_UM
    phi = gaussian_bump(n, 5, 0.05)  # weak, so the TIE is accurate
    laplacian = (np.roll(phi, 1, 0) + np.roll(phi, -1, 0) + np.roll(phi, 1, 1) + np.roll(phi, -1, 1) - 4 * phi) / PIXEL_UM**2
    dz = 0.2
    didz = (
        np.abs(propagate(np.exp(1j * phi), dz, WAVELENGTH_UM, PIXEL_UM)) ** 2
        - np.abs(propagate(np.exp(1j * phi), -dz, WAVELENGTH_UM, PIXEL_UM)) ** 2
    ) / (2 * dz)
    np.testing.assert_allclose(didz, -laplacian / k, atol=0.03 * np.abs(laplacian / k).max())


def test_upsample_interpolates_band_limited_images_with_pixel_area_alignment():
    # A DCT-II basis function (samples at pixel centres (i + 0.5)/N) is reproduced exactly on the fine grid.
    n, factor = 16, 2
    coarse_pos = (np.arange(n) + 0.5) / n
    fine_pos = (np.arange(factor * n) + 0.5) / (factor * n)
    basis = lambda pos, k: np.cos(np.pi * k * pos)
    image = 3.0 + basis(coarse_pos, 5)[:, None] * basis(coarse_pos, 3)[None, :]
    expected = 3.0 + basis(fine_pos, 5)[:, None] * basis(fine_pos, 3)[None, :]
    up = upsample(image, factor)
    assert up.dtype == np.float32 and up.shape == (32, 32)
    np.testing.assert_allclose(up, expected, atol=1e-5)
    # Stacks are upsampled plane by plane.
    assert upsample(np.stack([image, 2 * image]), 2).shape == (2, 32, 32)


def test_binning_then_upsampling_equals_pixel_integration_blur():
    rng = np.random.default_rng(3)
    n = 128
    fy, fx = frequency_grid((n, n), 1.0)
    fine = apply_transfer(rng.normal(size=(n, n)), np.sqrt(fx**2 + fy**2) < 0.15)  # cycles per fine pixel
    camera = bin_pixels(fine, 2)
    assert camera.shape == (64, 64)
    assert camera[3, 5] == pytest.approx(fine[6:8, 10:12].mean())
    expected = apply_transfer(fine, pixel_integration_mtf((n, n), 2))
    interior = (slice(24, -24), slice(24, -24))  # the mirror boundary of upsample differs from periodic
    error = np.abs(upsample(camera, 2) - expected)[interior].max()
    assert error < 0.02 * np.abs(expected).max()
