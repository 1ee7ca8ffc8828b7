import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_cvdm.data.simulate import phase_object_stack, simulate_qpi, simulate_sr
from napari_cvdm.physics.consistency import (
    qpi_consistency,
    qpi_forward,
    qpi_residual_planes,
    sr_consistency,
    sr_forward,
)
from napari_cvdm.physics.noise import widefield_noise_variance
from napari_cvdm.physics.optics import bin_pixels, incoherent_otf

WAVELENGTH_UM, PIXEL_UM, DZ_UM = 0.521, 0.21, 1.0
QPI_OPTICS = (DZ_UM, WAVELENGTH_UM, PIXEL_UM)
READ_NOISE = 1.5  # the simulator's default, electrons = ADU


@pytest.fixture(scope="module")
def sr_sample():
    return simulate_sr(np.random.default_rng(5), 128, kind="microtubule", peak_photons=1000)


@pytest.fixture(scope="module")
def qpi_sample():
    return simulate_qpi(np.random.default_rng(0), 128, noise_std=0.05)


def sr_map(sample, image, **kwargs):
    optics = sample.camera_pixel_um, sample.na, sample.wavelength_um
    return sr_consistency(image, sample.widefield, *optics, **kwargs)


def expected_photons(sample):
    """Noise-free camera image (photons, offset-free) from the simulator's object."""
    optics = sample.camera_pixel_um, sample.na, sample.wavelength_um
    return sr_forward(sample.object, *optics, target_cutoff_scale=None)


def test_sr_forward_of_the_object_is_the_simulators_camera_image():
    sample = simulate_sr(np.random.default_rng(1), 64, kind="ccp", peak_photons=100)
    fine = 0.5 * sample.camera_pixel_um
    otf = incoherent_otf((64, 64), fine, sample.na, sample.wavelength_um)
    camera = bin_pixels(np.real(np.fft.ifft2(np.fft.fft2(sample.object) * otf)), 2)
    np.testing.assert_allclose(expected_photons(sample), camera, atol=1e-3 * camera.max())
    # The SIM-like target carries the same widefield band once its own OTF is divided out.
    from_target = sr_forward(sample.target, sample.camera_pixel_um, sample.na, sample.wavelength_um)
    np.testing.assert_allclose(from_target, camera, atol=1e-4 * camera.max())


def test_widefield_noise_variance_is_estimated_from_the_widefield_alone(sr_sample):
    optics = sr_sample.camera_pixel_um, sr_sample.na, sr_sample.wavelength_um
    variance = widefield_noise_variance(sr_sample.widefield, *optics)
    true_variance = expected_photons(sr_sample) + sr_sample.background_photons + READ_NOISE**2
    assert np.median(variance / true_variance) == pytest.approx(1.0, abs=0.1)


def test_sr_map_of_the_true_object_is_unit_variance_noise(sr_sample):
    z = sr_map(sr_sample, sr_sample.target)
    assert z.shape == sr_sample.widefield.shape
    # 4096 pixels: the mean of z² has a sampling error of sqrt(2/4096) ≈ 0.02; the rest is
    # the noise-variance estimate (±10 %).
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.15)
    assert abs(z.mean()) < 0.1
    true_variance = expected_photons(sr_sample) + sr_sample.background_photons + READ_NOISE**2
    z_known = sr_map(sr_sample, sr_sample.target, noise_variance=true_variance)
    assert np.mean(z_known**2) == pytest.approx(1.0, abs=0.1)


def test_sr_map_of_a_wrong_object_is_much_larger(sr_sample):
    shifted = np.roll(sr_sample.target, 3, axis=1)  # 94 nm
    blurred = gaussian_filter(sr_sample.target, 2.0, mode="wrap")  # 63 nm: widefield-band detail lost
    assert np.mean(sr_map(sr_sample, shifted) ** 2) > 10
    assert np.mean(sr_map(sr_sample, blurred) ** 2) > 3
    # An intensity scale and offset are the model's own units, not an inconsistency.
    assert np.mean(sr_map(sr_sample, 3.0 * sr_sample.target + 7.0) ** 2) == pytest.approx(
        np.mean(sr_map(sr_sample, sr_sample.target) ** 2), rel=1e-6
    )


def test_sr_bad_shapes_and_settings_are_refused(sr_sample):
    with pytest.raises(ValueError, match="2× the widefield"):
        sr_map(sr_sample, sr_sample.target[:64])
    with pytest.raises(ValueError, match="at least 1"):
        sr_map(sr_sample, sr_sample.target, target_cutoff_scale=0.5)
    with pytest.raises(ValueError, match="positive"):
        sr_map(sr_sample, sr_sample.target, noise_variance=0.0)
    with pytest.raises(ValueError, match="give the noise variance"):
        widefield_noise_variance(sr_sample.widefield, sr_sample.camera_pixel_um, 1.49, 0.3)  # cut-off beyond Nyquist


def qpi_map(sample, phase, **kwargs):
    return qpi_consistency(phase, sample.stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, **kwargs)


def test_qpi_forward_is_the_simulators_stack(qpi_sample):
    np.testing.assert_allclose(
        qpi_forward(qpi_sample.phase, DZ_UM, WAVELENGTH_UM, PIXEL_UM),
        phase_object_stack(qpi_sample.phase.astype(np.float64), DZ_UM, WAVELENGTH_UM, PIXEL_UM),
        atol=1e-12,
    )


@pytest.mark.parametrize("noise_std", [None, 0.05])
def test_qpi_map_of_the_true_phase_is_unit_noise_and_of_a_wrong_one_much_larger(qpi_sample, noise_std):
    z = qpi_map(qpi_sample, qpi_sample.phase, noise_std=noise_std)
    assert z.shape == qpi_sample.phase.shape and z.min() >= 0
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.1)  # 2·16384 values: sampling error ≈ 0.01
    shifted = np.roll(qpi_sample.phase, 2, axis=1)
    blurred = gaussian_filter(qpi_sample.phase, 1.5, mode="wrap")
    assert np.mean(qpi_map(qpi_sample, shifted, noise_std=noise_std) ** 2) > 10
    assert np.mean(qpi_map(qpi_sample, blurred, noise_std=noise_std) ** 2) > 3


def test_qpi_residual_planes_are_signed_and_amplitude_options_checked(qpi_sample):
    planes = qpi_residual_planes(qpi_sample.phase, qpi_sample.stack, *QPI_OPTICS, noise_std=0.05)
    # A free phase offset changes nothing: intensities do not see it.
    offset = qpi_sample.phase.astype(np.float64) + 1.0
    np.testing.assert_allclose(
        qpi_residual_planes(offset, qpi_sample.stack, *QPI_OPTICS, noise_std=0.05), planes, atol=1e-9
    )
    assert planes.shape == (2, 128, 128)
    assert np.mean(planes, axis=(1, 2)) == pytest.approx([0.0, 0.0], abs=0.05)
    # Twice the illumination is absorbed by the fitted intensity scale.
    doubled = qpi_residual_planes(qpi_sample.phase, 2 * qpi_sample.stack, *QPI_OPTICS, noise_std=0.1)
    np.testing.assert_allclose(doubled, planes, atol=1e-9)
    measured = qpi_map(qpi_sample, qpi_sample.phase, amplitude="measured", noise_std=0.05)
    assert np.isfinite(measured).all()
    with pytest.raises(ValueError, match="amplitude"):
        qpi_map(qpi_sample, qpi_sample.phase, amplitude="ones")
    with pytest.raises(ValueError, match=r"\(2, H, W\)"):
        qpi_map(qpi_sample, qpi_sample.phase[:64])
    with pytest.raises(ValueError, match="noise std must be positive"):
        qpi_map(qpi_sample, qpi_sample.phase, noise_std=0.0)


def test_reconstruction_consistency_maps_every_plane_of_a_stack(qpi_sample, sr_sample):
    from napari_cvdm.physics.consistency import reconstruction_consistency

    qpi_optics = {"dz_um": DZ_UM, "wavelength_um": WAVELENGTH_UM}
    phases = np.stack([qpi_sample.phase, np.roll(qpi_sample.phase, 2, axis=1)])  # right, wrong
    stacks = np.stack([qpi_sample.stack, qpi_sample.stack])
    z = reconstruction_consistency("qpi", phases, stacks, PIXEL_UM, qpi_optics)
    assert z.shape == phases.shape
    assert np.mean(z[0] ** 2) == pytest.approx(1.0, abs=0.1) and np.mean(z[1] ** 2) > 10
    sr_optics = {"na": sr_sample.na, "wavelength_um": sr_sample.wavelength_um}
    z = reconstruction_consistency("sr", sr_sample.target[None], sr_sample.widefield[None],
                                   sr_sample.camera_pixel_um, sr_optics, factor=2)
    assert z.shape == (1, *sr_sample.widefield.shape)
    assert np.mean(z**2) == pytest.approx(1.0, abs=0.15)
    with pytest.raises(ValueError, match="plane"):
        reconstruction_consistency("qpi", phases, stacks[:1], PIXEL_UM, qpi_optics)
    with pytest.raises(ValueError, match="forward model"):
        reconstruction_consistency("generic", phases, stacks, PIXEL_UM, qpi_optics)
