import numpy as np
import pytest
import torch

from napari_cvdm.acquisition import Acquisition
from napari_cvdm.checkpoint import ModelInfo
from napari_cvdm.consistency import consistency_output
from napari_cvdm.data.simulate import simulate_sr
from napari_cvdm.engine import ReconstructionSettings, reconstruct
from napari_cvdm.errors import InputError
from napari_cvdm.model import CVDM, ModelConfig

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
