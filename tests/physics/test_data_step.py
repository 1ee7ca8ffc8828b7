import numpy as np
import torch

from napari_cvdm.physics.consistency import qpi_forward, sr_forward
from napari_cvdm.physics.data_step import QPIFresnelStep, QPITIEStep, SRStep, mirror

DZ, WAVELENGTH, PIXEL = 1.0, 0.521, 0.21


def _even(rng, size: int, smooth: float) -> np.ndarray:
    """A smooth random image whose periodic extension is its mirror extension (size × size)."""
    half = rng.normal(size=(size // 2, size // 2))
    spectrum = np.fft.rfft2(half) * np.exp(-smooth * np.add.outer(np.fft.fftfreq(size // 2) ** 2,
                                                                  np.fft.rfftfreq(size // 2) ** 2) * size**2)
    half = np.fft.irfft2(spectrum, s=half.shape)
    return mirror(torch.from_numpy(half / half.std())).numpy()


def _qpi_case(seed: int = 0, size: int = 32):
    rng = np.random.default_rng(seed)
    phase = 0.3 * _even(rng, size, 0.02)
    stack = qpi_forward(phase, DZ, WAVELENGTH, PIXEL) + rng.normal(0, 0.01, (2, size, size))
    step = QPIFresnelStep(torch.from_numpy(stack), float(stack.mean()), 0.01, DZ, WAVELENGTH, PIXEL)
    return rng, phase, step


def _error(estimate, truth) -> float:
    error = np.asarray(estimate, np.float64)[0] - truth
    return float(np.sqrt(np.mean((error - error.mean()) ** 2)))


def test_the_qpi_step_at_zero_strength_returns_the_estimate():
    rng, phase, step = _qpi_case()
    estimate = torch.from_numpy(phase + rng.normal(0, 0.2, phase.shape))[None].float()
    assert torch.equal(step(estimate, torch.tensor([0.04]), 0.0), estimate)


def test_the_qpi_step_lowers_its_objective_and_the_misfit_to_the_stack():
    rng, phase, step = _qpi_case()
    estimate = torch.from_numpy(phase + rng.normal(0, 0.2, phase.shape))[None]
    corrected = step(estimate, torch.tensor([0.04]), 1.0)
    misfit_before, misfit_after = step.misfit(mirror(estimate))[0], step.misfit(mirror(corrected))[0]
    proximity = 0.5 / 0.04 * float(((mirror(corrected) - mirror(estimate)) ** 2).sum())
    assert misfit_after < misfit_before
    assert step.weight * float(misfit_after) + proximity < step.weight * float(misfit_before)


def test_the_linearised_tie_step_recovers_a_weak_phase_from_its_linear_data():
    rng = np.random.default_rng(2)
    phase = 0.05 * _even(rng, 32, 0.02)
    angle = np.pi * WAVELENGTH * DZ * np.add.outer(np.fft.fftfreq(64, PIXEL) ** 2, np.fft.rfftfreq(64, PIXEL) ** 2)
    difference = np.fft.irfft2(4 * np.sin(angle) * np.fft.rfft2(mirror(torch.from_numpy(phase)).numpy()), s=(64, 64))
    stack = np.stack([1 - difference / 2, 1 + difference / 2])[:, :32, :32]
    step = QPITIEStep(torch.from_numpy(stack), 1.0, 1e-3, DZ, WAVELENGTH, PIXEL)
    estimate = torch.from_numpy(phase + rng.normal(0, 0.05, phase.shape))[None]
    assert _error(step(estimate, torch.tensor([0.0025]), 1.0), phase) < 0.3 * _error(estimate, phase)


def test_the_qpi_misfit_gradient_is_the_derivative_of_the_misfit():
    rng, phase, step = _qpi_case(1, 16)
    x = mirror(torch.from_numpy(phase + rng.normal(0, 0.1, phase.shape))[None])
    direction = torch.from_numpy(rng.normal(0, 1e-6, x.shape))
    numeric = (step.misfit(x + direction)[0] - step.misfit(x - direction)[0]) / 2
    analytic = (step.misfit(x, with_gradient=True)[1] * direction).sum()
    assert float(numeric) == np.float64(analytic).item() or abs(float(numeric - analytic)) < 1e-6 * abs(float(analytic))


def _sr_case(seed: int = 0, size: int = 32):
    rng = np.random.default_rng(seed)
    sr = 5.0 + _even(rng, size, 0.002)
    camera_pixel = 0.0626
    widefield = sr_forward(sr, camera_pixel, 1.4, 0.575, 2) + rng.normal(0, 0.01, (size // 2, size // 2))
    weight = torch.full(widefield.shape, 1.0 / 0.01**2, dtype=torch.float64)
    step = SRStep(torch.from_numpy(widefield), weight, 2, camera_pixel / 2, 1.4, 0.575, 2.0)
    return rng, sr, widefield, step


def test_the_sr_step_at_zero_strength_returns_the_estimate():
    rng, sr, _, step = _sr_case()
    estimate = torch.from_numpy(sr + rng.normal(0, 0.3, sr.shape))[None]
    assert torch.allclose(step(estimate, torch.tensor([0.09]), 0.0), estimate, atol=1e-12)


def test_the_sr_step_makes_the_estimate_explain_the_widefield_image():
    rng, sr, widefield, step = _sr_case()
    estimate = torch.from_numpy(sr + rng.normal(0, 0.3, sr.shape))[None]
    corrected = step(estimate, torch.tensor([0.09]), 1.0)
    misfit = lambda x: np.sqrt(np.mean((sr_forward(x[0].numpy(), 0.0626, 1.4, 0.575, 2) - widefield) ** 2))  # noqa: E731
    assert misfit(corrected) < 0.5 * misfit(estimate)
    assert misfit(corrected) < 0.015  # about the noise (0.01)
