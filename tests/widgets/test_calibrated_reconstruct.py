"""Reconstruct widget with a calibrated model: the ± error layer, the card, the out-of-distribution notification."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from napari_cvdm._widgets import ReconstructWidget
from napari_cvdm.uncertainty.calibrate import calibrate_model, with_calibration
from napari_cvdm.checkpoint import load_model, save_model
from napari_cvdm.data import ImagePair
from napari_cvdm.physics import upsample
from napari_cvdm.engine import ReconstructionSettings

pytestmark = pytest.mark.gui
PIXEL = 0.0626  # the tiny SR model's input pixel size (µm)


def smooth(seed: int, size: int = 24) -> np.ndarray:
    """A smooth positive widefield-like image ``(size, size)``, float32."""
    noise = np.random.default_rng(seed).random((size, size))
    return (100 + 50 * gaussian_filter(noise, 2.0)).astype(np.float32)


@pytest.fixture
def calibrated_sr_path(sr_model_path, tmp_path):
    model, info = load_model(sr_model_path)
    pairs = [ImagePair(f"p{seed}", upsample(smooth(seed)[None], 2), upsample(smooth(seed)[None], 2))
             for seed in (1, 2)]
    settings = ReconstructionSettings(n_samples=2, steps=2, device="cpu", tile_size=None)
    calibration = calibrate_model(model, info, pairs, settings, source="two smooth images")
    return save_model(tmp_path / "tiny_sr_calibrated.safetensors", model, with_calibration(info, calibration))


def reconstruct_layer(viewer, model_path, data, wait_idle, name="wf", samples=2):
    viewer.add_image(data, name=name, scale=(PIXEL, PIXEL))
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    widget: ReconstructWidget
    widget.select_model(model_path)
    widget.input_combo.setCurrentText(name)
    widget.samples_spin.setValue(samples)
    widget.steps_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    assert widget.start()
    wait_idle(widget)
    return widget


def test_a_calibrated_model_adds_the_error_layer_beside_the_variance(make_napari_viewer, calibrated_sr_path,
                                                                     notifications, wait_idle):
    viewer = make_napari_viewer()
    widget = reconstruct_layer(viewer, calibrated_sr_path, smooth(3), wait_idle)
    assert notifications.error == [] and notifications.warning == []
    assert "Error bars: calibrated from two smooth images" in widget.model_card.text()
    error, variance = viewer.layers["wf CVDM ± error (95 %)"], viewer.layers["wf CVDM variance"]
    assert error.colormap.name == "magma" and error.data.shape == variance.data.shape == (48, 48)
    assert error.metadata["cvdm"]["calibrated"] is True and error.metadata["cvdm"]["level"] == 0.95
    assert np.all(error.data > 0)
    np.testing.assert_allclose(error.scale, variance.scale)
    assert variance.metadata["cvdm"]["calibrated"] is True  # the raw variance says which model it came from


def test_an_uncalibrated_model_has_no_error_layer_and_says_so(make_napari_viewer, sr_model_path, notifications,
                                                              wait_idle):
    viewer = make_napari_viewer()
    widget = reconstruct_layer(viewer, sr_model_path, smooth(3), wait_idle)
    assert "Error bars: uncalibrated" in widget.model_card.text()
    assert "wf CVDM ± error (95 %)" not in viewer.layers
    assert viewer.layers["wf CVDM variance"].metadata["cvdm"]["calibration"] == "uncalibrated"
    assert viewer.layers["wf CVDM variance"].metadata["cvdm"]["calibrated"] is False


def test_an_input_unlike_the_calibration_data_is_one_warning(make_napari_viewer, calibrated_sr_path,
                                                             notifications, wait_idle):
    viewer = make_napari_viewer()
    white_noise = (100 + 50 * np.random.default_rng(4).random((24, 24))).astype(np.float32)
    reconstruct_layer(viewer, calibrated_sr_path, white_noise, wait_idle)
    assert notifications.error == []
    assert len(notifications.warning) == 1 and "unlike the 2 calibration image(s)" in notifications.warning[0]
    assert "noise level" in notifications.warning[0]
    assert "wf CVDM ± error (95 %)" in viewer.layers  # shown all the same, with the warning in its metadata
    assert viewer.layers["wf CVDM ± error (95 %)"].metadata["cvdm"]["out_of_distribution"]


def test_one_sample_gives_no_variance_layer_and_says_why(make_napari_viewer, calibrated_sr_path, notifications,
                                                         wait_idle):
    viewer = make_napari_viewer()
    reconstruct_layer(viewer, calibrated_sr_path, smooth(3), wait_idle, samples=1)
    assert notifications.error == [] and any("no variance" in text for text in notifications.info)
    assert "wf CVDM mean" in viewer.layers
    assert "wf CVDM variance" not in viewer.layers and "wf CVDM ± error (95 %)" not in viewer.layers
