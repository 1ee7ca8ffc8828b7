import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from napari_cvdm import metrics
from napari_cvdm.data.simulate import simulate_sr

torch.set_num_threads(1)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    from scipy.ndimage import gaussian_filter

    reference = gaussian_filter(rng.random((256, 256)), 2)
    reference = (reference - reference.min()) / np.ptp(reference)
    prediction = np.clip(reference + 0.05 * rng.normal(size=reference.shape), 0, 1)
    return prediction, reference


def test_psnr_and_ssim_agree_with_scikit_image(images):
    prediction, reference = images
    assert metrics.psnr(prediction, reference, data_range=1.0) == pytest.approx(
        peak_signal_noise_ratio(reference, prediction, data_range=1.0), abs=1e-4
    )
    expected = structural_similarity(
        reference, prediction, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert metrics.ssim(prediction, reference, data_range=1.0) == pytest.approx(expected, abs=1e-4)
    assert metrics.ssim(reference, reference) == pytest.approx(1.0)
    assert metrics.psnr(reference, reference) == float("inf")


def test_ssim_of_images_smaller_than_the_window(images):
    prediction, reference = images
    for size in (10, 7, 4):
        crop = (slice(0, size), slice(0, size))
        assert 0.0 < metrics.ssim(prediction[crop], reference[crop], data_range=1.0) < 1.0
        assert metrics.ssim(reference[crop], reference[crop], data_range=1.0) == pytest.approx(1.0)


def test_ms_ssim_agrees_with_pytorch_msssim(images):
    from pytorch_msssim import ms_ssim as torch_ms_ssim

    prediction, reference = images
    for noisy in (prediction, np.clip(reference + 0.2 * np.random.default_rng(1).normal(size=reference.shape), 0, 1)):
        expected = torch_ms_ssim(
            torch.tensor(noisy)[None, None], torch.tensor(reference)[None, None], data_range=1.0
        ).item()
        assert metrics.ms_ssim(noisy, reference, data_range=1.0) == pytest.approx(expected, abs=1e-3)


def test_ms_ssim_on_small_crops_uses_fewer_scales(images):
    prediction, reference = images
    for size in (128, 64, 32, 16, 7):
        crop = (slice(0, size), slice(0, size))
        value = metrics.ms_ssim(prediction[crop], reference[crop], data_range=1.0)
        assert 0.0 < value < 1.0
        assert metrics.ms_ssim(reference[crop], reference[crop], data_range=1.0) == pytest.approx(1.0)


def test_mae_is_on_the_reference_unit_range():
    reference = np.linspace(10.0, 20.0, 100).reshape(10, 10)
    assert metrics.mae(reference + 1.0, reference) == pytest.approx(0.1)
    assert metrics.mae(reference, reference) == 0.0
    flat = np.zeros((10, 10))
    assert metrics.mae(flat + 0.5, flat, data_range=2.0) == pytest.approx(0.25)  # a fixed range: flat is fine
    with pytest.raises(ValueError, match="constant"):
        metrics.mae(flat + 0.5, flat)
    phase = np.random.default_rng(2).random((8, 8))
    np.testing.assert_allclose(metrics.align_offset(phase + 5.0, phase), phase)
    np.testing.assert_allclose(metrics.scale_to_reference(3 * phase - 2, phase), phase, atol=1e-12)


def band_limited_noise(rng, n, cutoff, noise=0.1):
    fy = np.fft.fftfreq(n)[:, None] / 0.5
    fx = np.fft.fftfreq(n)[None, :] / 0.5
    image = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * (np.sqrt(fx**2 + fy**2) < cutoff)))
    return image / image.std() + noise * rng.normal(size=(n, n))


@pytest.mark.parametrize("cutoff", [0.3, 0.5, 0.8])
def test_decorrelation_finds_the_cutoff_of_band_limited_images(cutoff):
    rng = np.random.default_rng(3)
    image = band_limited_noise(rng, 256, cutoff)
    # Cut-off k_c (Nyquist = 1) ⇒ resolution 2·pixel/k_c.
    pixel_nm = 30.0
    assert metrics.decorrelation_resolution(image, pixel_nm) == pytest.approx(2 * pixel_nm / cutoff, rel=0.1)


def test_decorrelation_finds_nothing_in_pure_noise():
    result = metrics.decorrelation_analysis(np.random.default_rng(4).normal(size=(128, 128)))
    assert result.cutoff == 0.0 and np.isnan(metrics.decorrelation_resolution(np.random.default_rng(4).normal(size=(128, 128)), 1.0))


def test_decorrelation_resolves_the_target_about_twice_as_finely_as_the_widefield():
    sample = simulate_sr(np.random.default_rng(5), 256, kind="microtubule", peak_photons=1000)
    widefield_nm = metrics.decorrelation_resolution(sample.widefield, 1000 * sample.camera_pixel_um)
    target_nm = metrics.decorrelation_resolution(sample.target, 1000 * sample.target_pixel_um)
    assert 1.6 < widefield_nm / target_nm < 2.4
    # The widefield estimate is near the diffraction limit λ/(2NA).
    assert widefield_nm == pytest.approx(1000 * sample.wavelength_um / (2 * sample.na), rel=0.35)


def test_frc_resolution_tracks_the_blur_of_an_estimate():
    from scipy.ndimage import gaussian_filter
    from skimage.data import camera

    from napari_cvdm.metrics import frc_resolution

    image = camera()[:128, :128].astype(float) / 255
    noise = np.random.default_rng(0).normal(0, 0.01, image.shape)
    sharp, blurred = (frc_resolution(gaussian_filter(image, s) + noise, image, 1.0) for s in (0.7, 2.5))
    assert 2.0 <= sharp < blurred  # pixels; a finer estimate resolves finer


def test_octave_error_power_sums_to_the_mse_and_finds_the_band():
    from napari_cvdm.metrics import octave_error_power

    yy, xx = np.mgrid[:64, :64]
    error = np.cos(2 * np.pi * 5 * xx / 64)  # 5 cycles per image: the 4–8 band
    bands = octave_error_power(error, np.zeros_like(error))
    assert np.argmax(bands) == 2
    assert sum(bands) == pytest.approx(np.mean(error**2), rel=1e-9)
