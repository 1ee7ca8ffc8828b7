import numpy as np
import torch

from napari_cvdm.physics.consistency import sr_forward
from napari_cvdm.physics.data_step import SRStep, mirror


def _even(rng, size: int, smooth: float) -> np.ndarray:
    """A smooth random image whose periodic extension is its mirror extension (size × size)."""
    half = rng.normal(size=(size // 2, size // 2))
    spectrum = np.fft.rfft2(half) * np.exp(-smooth * np.add.outer(np.fft.fftfreq(size // 2) ** 2,
                                                                  np.fft.rfftfreq(size // 2) ** 2) * size**2)
    half = np.fft.irfft2(spectrum, s=half.shape)
    return mirror(torch.from_numpy(half / half.std())).numpy()


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
