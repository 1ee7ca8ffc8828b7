import numpy as np
import pytest

from napari_cvdm.data.simulate import phase_object_stack
from napari_cvdm.physics.noise import defocus_relative_noise_std
from napari_cvdm.physics.optics import apply_transfer, frequency_grid
from napari_cvdm.physics.tie import (
    fft_tie, fit_regularization, inverse_laplacian, laplacian_symbol,
    noise_adaptive_regularization, us_tie,
)

WAVELENGTH_UM, PIXEL_UM, DZ_UM = 0.521, 0.21, 1.0
N = 128


def smooth_phase(rng, range_rad, cutoff_cycles_per_um=0.25):
    fy, fx = frequency_grid((N, N), PIXEL_UM)
    field = apply_transfer(rng.normal(size=(N, N)), np.exp(-((fx**2 + fy**2) / cutoff_cycles_per_um**2)))
    return range_rad * (field - field.min()) / np.ptp(field)


def centred_mae(estimate, truth):
    return np.mean(np.abs((estimate - estimate.mean()) - (truth - truth.mean())))


def test_inverse_laplacian_inverts_the_laplacian_symbol():
    rng = np.random.default_rng(0)
    phi = smooth_phase(rng, 1.0)
    laplacian = np.real(np.fft.ifft2(np.fft.fft2(phi) * laplacian_symbol((N, N), PIXEL_UM)))
    recovered = inverse_laplacian(laplacian, PIXEL_UM, regularization=1e-12)
    np.testing.assert_allclose(recovered, phi - phi.mean(), atol=1e-8)
    # Tikhonov damps the lowest frequencies: a large a shrinks the answer.
    assert np.abs(inverse_laplacian(laplacian, PIXEL_UM, regularization=1.0)).max() < 0.5 * np.ptp(phi)


def test_fft_tie_recovers_a_weak_phase_within_two_percent():
    rng = np.random.default_rng(1)
    phi = smooth_phase(rng, 0.5)
    stack = phase_object_stack(phi, DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    estimate = fft_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, regularization=1e-6)
    assert estimate.mean() == pytest.approx(0.0, abs=1e-10)
    assert centred_mae(estimate, phi) < 0.02 * np.ptp(phi)
    # The planes swapped (the opposite sign convention) would give the negated phase.
    swapped = fft_tie(stack[::-1], DZ_UM, WAVELENGTH_UM, PIXEL_UM, regularization=1e-6)
    assert centred_mae(swapped, phi) > 0.2 * np.ptp(phi)


def test_us_tie_beats_fft_tie_on_an_object_with_non_uniform_intensity():
    rng = np.random.default_rng(2)
    phi = smooth_phase(rng, 2.0)
    y, x = np.mgrid[:N, :N]
    # Absorbing and brighter regions: transmittance between ~0.35 and 1.2.
    amplitude = 1.0 - 0.65 * np.exp(-((x - 40) ** 2 + (y - 70) ** 2) / (2 * 12**2)) + 0.2 * np.exp(
        -((x - 90) ** 2 + (y - 30) ** 2) / (2 * 8**2)
    )
    stack = phase_object_stack(phi, DZ_UM, WAVELENGTH_UM, PIXEL_UM, amplitude=amplitude)
    fft_error = centred_mae(fft_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, regularization=1e-6), phi)
    estimate, info = us_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, regularization=1e-6, return_info=True)
    us_error = centred_mae(estimate, phi)
    assert us_error < 0.5 * fft_error
    assert us_error < 0.02 * np.ptp(phi)
    assert info.iterations > 1 and info.residuals[-1] < info.residuals[0]


def test_us_tie_stops_at_the_tolerance_on_a_uniform_intensity_object():
    rng = np.random.default_rng(3)
    phi = smooth_phase(rng, 0.5)
    stack = phase_object_stack(phi, DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    _, info = us_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, regularization=1e-6, tolerance=1e-3, return_info=True)
    assert info.stopped_because == "converged"
    assert info.residuals[-1] < 1e-3


@pytest.mark.parametrize("solver", [fft_tie, us_tie])
def test_mirror_boundary_does_not_wrap_one_edge_into_the_opposite_one(solver):
    # a real stack is not periodic: what lies at its left edge must not act on its right edge
    rng = np.random.default_rng(3)
    stack = phase_object_stack(smooth_phase(rng, 1.0), DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    bumped = stack.copy()
    bumped[1, N // 2 - 3:N // 2 + 3, 1:4] += 0.05  # a local defocus signal at the left edge
    right_edge = (slice(N // 2 - 10, N // 2 + 10), slice(N - 4, N))

    def effect_at_right_edge(boundary):
        change = (solver(bumped, DZ_UM, WAVELENGTH_UM, PIXEL_UM, 1e-4, boundary=boundary)
                  - solver(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, 1e-4, boundary=boundary))
        assert change.shape == (N, N) and abs(change.mean()) < 1e-9
        return np.abs(change[right_edge] - change.mean()).mean()

    assert effect_at_right_edge("mirror") < 0.5 * effect_at_right_edge("periodic")  # measured: 0.38 (FFT-TIE)


def test_us_tie_refuses_an_unknown_boundary():
    stack = phase_object_stack(np.zeros((16, 16)), DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    with pytest.raises(ValueError, match="unknown boundary 'wrap'"):
        us_tie(stack, DZ_UM, WAVELENGTH_UM, PIXEL_UM, boundary="wrap")


def test_the_fit_chooses_the_periodic_boundary_for_a_periodic_scene():
    rng = np.random.default_rng(6)
    phases = [smooth_phase(rng, 1.5) for _ in range(2)]
    stacks = [phase_object_stack(p, DZ_UM, WAVELENGTH_UM, PIXEL_UM) for p in phases]
    strength, exponent, boundary, error = fit_regularization(stacks, phases, DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    assert boundary == "periodic" and error < 0.02


@pytest.mark.parametrize("noise_std", [0.0, 0.02, 0.1])
def test_noise_estimate_recovers_the_added_noise(noise_std):
    rng = np.random.default_rng(4)
    stack = phase_object_stack(smooth_phase(rng, 2.0), DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    noisy = stack + rng.normal(0.0, noise_std, stack.shape)
    # the flattest-tenth estimate reads ~10 % low; 2e-3 absolute for the noise-free stack
    assert defocus_relative_noise_std(noisy) == pytest.approx(0.9 * noise_std, rel=0.12, abs=2e-3)


def test_noise_estimate_is_not_fooled_by_phase_texture():
    rng = np.random.default_rng(7)
    texture = np.cumsum(rng.normal(size=(N, N)), axis=1) % 3.0  # sharp phase steps in every row
    stack = phase_object_stack(texture, DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    stack[:, : N // 4] = stack[:, : N // 4].mean()  # and a flat quarter, as most images have somewhere
    assert defocus_relative_noise_std(stack) < 0.01


def test_regularisation_fit_prefers_less_damping_for_cleaner_data():
    rng = np.random.default_rng(5)
    phases = [smooth_phase(rng, 2.0) for _ in range(3)]
    clean = [phase_object_stack(p, DZ_UM, WAVELENGTH_UM, PIXEL_UM) for p in phases]
    noisy = [s + rng.normal(0.0, 0.1, s.shape) for s in clean]
    strength, exponent, boundary, error = fit_regularization(noisy, phases, DZ_UM, WAVELENGTH_UM, PIXEL_UM)
    # the fitted strength beats no regularisation and heavy regularisation on the same data
    for a in (1e-8, 10.0):
        assert error < np.mean([centred_mae(fft_tie(s, DZ_UM, WAVELENGTH_UM, PIXEL_UM, a, boundary), p)
                                for s, p in zip(noisy, phases)])
    assert (noise_adaptive_regularization(noisy[0], strength, exponent)
            > noise_adaptive_regularization(clean[0], strength, exponent))
