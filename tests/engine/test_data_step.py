import numpy as np
import pytest
import torch

from napari_cvdm.acquisition import Acquisition
from napari_cvdm.checkpoint import ModelInfo
from napari_cvdm.consistency import consistency_output
from napari_cvdm.data.simulate import simulate_sr
from napari_cvdm.engine import ReconstructionSettings, reconstruct
from napari_cvdm.engine.data_step import SRStep, mirror
from napari_cvdm.errors import InputError
from napari_cvdm.model import CVDM, ModelConfig
from napari_cvdm.physics.consistency import sr_forward

FAST = {"n_samples": 2, "steps": 3, "seed": 3}


def _tiny_sr(sampler: dict | None = None, pixel: float | None = 0.0626) -> tuple[CVDM, ModelInfo]:
    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=1, preset="tiny")
    model = CVDM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    info = ModelInfo(task="sr", config=config, input_pixel_size_um=pixel, upsampling_factor=2,
                     input_normalization={"mode": "percentile"}, target_normalization={"mode": "percentile"},
                     sampler=sampler or {})
    return model.eval(), info


def _widefield(size: int = 32) -> np.ndarray:
    return simulate_sr(np.random.default_rng(0), 2 * size, kind="microtubule").widefield


def _rms(info, mean, image) -> float:
    return consistency_output(info, mean, image, Acquisition(pixel_size_um=0.0626)).summary["rms"]


def test_strength_zero_is_the_plain_sampler_bitwise():
    model, info = _tiny_sr()
    image = _widefield()
    plain = reconstruct(model, info, image, ReconstructionSettings(**FAST))
    off = reconstruct(model, info, image, ReconstructionSettings(**FAST, consistency_strength=0.0))
    assert np.array_equal(plain.mean, off.mean) and np.array_equal(plain.variance, off.variance)
    assert off.metadata["consistency_strength"] == 0.0


def test_the_step_makes_the_mean_explain_the_input_and_the_model_file_gives_its_default():
    image = _widefield()
    model, info = _tiny_sr({"consistency_strength": 3.0})
    on = reconstruct(model, info, image, ReconstructionSettings(**FAST))
    off = reconstruct(model, info, image, ReconstructionSettings(**FAST, consistency_strength=0.0))
    assert on.metadata["consistency_strength"] == 3.0 and on.metadata["consistency_optics"]["na"] > 0
    assert _rms(info, on.mean, image) < 0.5 * _rms(info, off.mean, image)


def test_the_step_needs_a_pixel_size_and_the_camera_grid():
    model, info = _tiny_sr({"consistency_strength": 1.0}, pixel=None)
    with pytest.raises(InputError, match="pixel size"):
        reconstruct(model, info, _widefield(), ReconstructionSettings(**FAST))
    model, info = _tiny_sr({"consistency_strength": 1.0})
    with pytest.raises(InputError, match="camera-grid"):
        reconstruct(model, info, np.kron(_widefield(), np.ones((2, 2))), ReconstructionSettings(**FAST), upsampled=True)


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
