"""Every user error in the Reconstruct widget is one notification; no exception escapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_cvdm.engine as engine
from napari_cvdm._widgets import ReconstructWidget
from napari_cvdm._widgets._reconstruct import TWO_LAYERS_MODE

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    widget.samples_spin.setValue(2)
    widget.steps_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    return widget


def image(shape=(24, 24), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def test_the_grid_end_reaches_the_settings_and_follows_the_chosen_model(widget, qpi_model_path):
    widget.select_model(qpi_model_path)
    assert widget.settings().log_snr_max == pytest.approx(13.3)  # the tiny model names no range
    widget.log_snr_max_spin.setValue(8.0)
    assert widget.settings().log_snr_max == 8.0


def test_the_plain_mean_box_turns_the_refinement_shrinkage_off(widget):
    assert widget.settings().shrink_refinement and not widget.plain_mean_check.isChecked()
    widget.plain_mean_check.setChecked(True)
    assert widget.settings().shrink_refinement is False


def test_no_model_chosen(viewer, widget, notifications):
    viewer.add_image(image(), name="wf")
    widget.model_combo.setCurrentIndex(0)
    assert widget.selected_entry() is None
    widget.run_button.click()
    assert notifications.error == ["No model chosen: pick a model or press Open… to load a model file."]
    assert not widget.running


def test_no_compatible_layer_for_a_qpi_model(viewer, widget, qpi_model_path, notifications):
    viewer.add_image(image(), name="plain 2-D image")
    viewer.add_labels(np.zeros((24, 24), dtype=np.uint8), name="labels")
    viewer.add_image(image((24, 24, 3)), name="rgb", rgb=True)
    widget.select_model(qpi_model_path)
    assert widget.input_combo.count() == 0  # neither a 2-D image, labels nor RGB is a defocus stack
    widget.run_button.click()
    assert len(notifications.error) == 1
    assert "QPI model needs a defocus stack shaped (…, 2, H, W)" in notifications.error[0]

    # Two layers of different shapes as −dz and +dz.
    viewer.add_image(image((16, 16)), name="other size")
    widget.qpi_mode_combo.setCurrentText(TWO_LAYERS_MODE)
    widget.minus_combo.setCurrentText("plain 2-D image")
    widget.plus_combo.setCurrentText("other size")
    widget.run_button.click()
    assert "differ in shape" in notifications.error[-1]
    # Labels and RGB layers are never offered.
    offered = {widget.minus_combo.itemText(i) for i in range(widget.minus_combo.count())}
    assert offered == {"plain 2-D image", "other size"}


def test_model_of_the_other_task(viewer, widget, sr_model_path, notifications):
    viewer.open_sample("napari-cvdm", "defocus_stack")
    widget.select_model(sr_model_path)
    widget.input_combo.setCurrentText("defocus stack (simulated)")
    widget.run_button.click()
    assert notifications.error == ["Layer 'defocus stack (simulated)' is a defocus stack, but this model is for "
                                   "widefield super-resolution; choose a QPI model."]


def test_wrong_shape_is_reported_by_the_engine_check(viewer, widget, sr_model_path, notifications):
    viewer.add_image(image((4, 40)), name="thin")
    widget.select_model(sr_model_path)
    widget.run_button.click()
    assert len(notifications.error) == 1 and "too small" in notifications.error[0]
    assert not widget.running


@pytest.mark.parametrize("scanned_first", [True, False], ids=["small: before the job", "large: by the job"])
def test_a_nan_in_an_in_memory_layer_is_one_notification(viewer, widget, sr_model_path, notifications, wait_idle,
                                                         monkeypatch, scanned_first):
    if not scanned_first:  # a layer larger than the GUI thread scans
        monkeypatch.setattr("napari_cvdm._widgets._reconstruct.QUICK_SCAN_BYTES", 0)
    data = image()
    data[3, 4] = np.nan
    viewer.add_image(data, name="wf")
    widget.select_model(sr_model_path)
    assert widget.start() is not scanned_first
    wait_idle(widget)
    assert notifications.error == ["The image contains NaN values (1 pixels); replace them before reconstructing."]
    assert "wf CVDM mean" not in viewer.layers


def test_corrupt_model_file(viewer, widget, tmp_path, notifications):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    viewer.add_image(image(), name="wf")
    entry = widget.open_model_file(broken)
    assert entry.error and notifications.error == [entry.error]
    assert "broken.safetensors" in widget.model_card.text()
    widget.run_button.click()
    assert notifications.error[-1] == entry.error
    assert not widget.running


def test_weights_damaged_after_the_card_was_read(viewer, widget, sr_model_path, notifications, wait_idle):
    viewer.add_image(image(), name="wf")
    widget.select_model(sr_model_path)
    data = sr_model_path.read_bytes()
    sr_model_path.write_bytes(data[: len(data) - 200])  # truncated: the header is intact, the weights are not
    assert widget.start()
    wait_idle(widget)
    assert len(notifications.error) == 1 and "truncated" in notifications.error[0]
    assert "wf CVDM mean" not in viewer.layers


def test_out_of_gpu_memory_suggests_smaller_tiles(viewer, widget, sr_model_path, notifications, wait_idle,
                                                  monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(engine, "reconstruct", out_of_memory)
    viewer.add_image(image(), name="wf")
    widget.select_model(sr_model_path)
    widget.tile_spin.setValue(512)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == ["Reconstruction ran out of memory on the device: use a smaller tile size than "
                                   "512, fewer samples, or the CPU."]
    assert widget.run_button.isEnabled()


def test_unexpected_failure_is_one_notification(viewer, widget, sr_model_path, notifications, wait_idle,
                                                monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(engine, "reconstruct", broken)
    viewer.add_image(image(), name="wf")
    widget.select_model(sr_model_path)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == ["Reconstruction failed unexpectedly (ZeroDivisionError: division by zero)."]


def test_pixel_size_mismatch_warns_but_runs(viewer, widget, sr_model_path, notifications, wait_idle):
    viewer.add_image(image(), name="wf", scale=(0.1, 0.1))  # the model was trained at 0.0626 µm
    widget.select_model(sr_model_path)
    assert widget.start()
    wait_idle(widget)
    assert len(notifications.warning) == 1 and "pixel size" in notifications.warning[0]
    assert notifications.error == []
    assert "wf CVDM mean" in viewer.layers


def test_second_start_while_running_is_refused(viewer, widget, sr_model_path, notifications, wait_idle):
    viewer.add_image(image(), name="wf")
    widget.select_model(sr_model_path)
    widget.steps_spin.setValue(2000)
    assert widget.start()
    assert not widget.start()
    assert "already running" in notifications.warning[-1]
    widget.cancel()
    wait_idle(widget)
    assert isinstance(widget, ReconstructWidget)
