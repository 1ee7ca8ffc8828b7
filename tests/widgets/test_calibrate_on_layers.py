"""Reconstruct widget, "Calibrate on layers…": an input layer and its true target → a NEW calibrated model file."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cvdm._widgets import ReconstructWidget
from napari_cvdm.checkpoint import read_model_info

pytestmark = pytest.mark.gui


@pytest.fixture
def cell(make_napari_viewer):
    """A viewer with a 48 × 40 crop of the real-cell stack and of its phase (the truth)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    stack, phase = viewer.layers["cell defocus stack (±1 µm)"], viewer.layers["cell phase (rad)"]
    stack.data, phase.data = stack.data[:, 100:148, 100:140], phase.data[100:148, 100:140]
    return viewer, stack, phase


def widget_for(viewer, model_path) -> ReconstructWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    widget.select_model(model_path)
    widget.samples_spin.setValue(2)
    widget.steps_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    return widget


def test_calibrating_on_a_layer_pair_saves_a_new_model_and_selects_it(cell, qpi_model_path, tmp_path,
                                                                      notifications, wait_idle):
    viewer, stack, phase = cell
    widget = widget_for(viewer, qpi_model_path)
    original = qpi_model_path.read_bytes()
    target_path = tmp_path / "calibrated.safetensors"
    assert widget.calibrate_on_layers(stack, phase, target_path)
    assert not widget.run_button.isEnabled() and not widget.calibrate_button.isEnabled()
    wait_idle(widget)
    assert notifications.error == []
    info = read_model_info(target_path)
    assert info.calibration and "cell defocus stack" in info.calibration["source"]
    assert qpi_model_path.read_bytes() == original  # the model it came from is untouched
    assert widget.selected_entry().path == target_path.resolve()
    assert widget.status_label.text().startswith("Saved calibrated.safetensors: calibrated from napari layers")
    assert "Error bars: calibrated" in widget.model_card.text()


def test_bad_layer_pairs_and_paths_are_one_notification_each(cell, qpi_model_path, tmp_path, notifications):
    viewer, stack, phase = cell
    widget = widget_for(viewer, qpi_model_path)
    wrong = viewer.add_image(np.zeros((20, 20), np.float32), name="wrong size")
    assert not widget.calibrate_on_layers(stack, wrong, tmp_path / "a.safetensors")
    assert not widget.calibrate_on_layers(phase, phase, tmp_path / "b.safetensors")
    assert not widget.calibrate_on_layers(stack, phase, qpi_model_path)
    assert notifications.error == [
        "Target layer 'wrong size' has shape (20, 20); it must be 2-D on the input's grid, (48, 40).",
        "Layer 'cell phase (rad)' has shape (48, 40); calibrating this model needs one stack shaped (2, H, W) "
        "as the input.",
        f"Choose a new file: the calibrated model never replaces {qpi_model_path.name}.",
    ]
    assert not widget.running and not list(tmp_path.glob("[ab].safetensors"))


def test_the_button_asks_for_the_layers_and_a_new_file(cell, qpi_model_path, tmp_path, notifications, monkeypatch,
                                                       wait_idle):
    from napari_cvdm._widgets import _reconstruct

    viewer, stack, phase = cell
    widget = widget_for(viewer, qpi_model_path)
    answers = iter([(stack.name, True), (phase.name, True)])
    asked = []
    monkeypatch.setattr(_reconstruct.QInputDialog, "getItem",
                        lambda parent, title, label, items, *rest: asked.append(items) or next(answers))
    monkeypatch.setattr(_reconstruct.QFileDialog, "getSaveFileName",
                        lambda parent, title, suggested, *rest: asked.append(suggested) or (
                            str(tmp_path / "from-button.safetensors"), ""))
    widget.calibrate_button.click()
    wait_idle(widget)
    assert notifications.error == []
    assert asked[0] == [stack.name, phase.name]  # image layers, no outputs
    assert asked[2].endswith("tiny_qpi-calibrated.safetensors")
    assert read_model_info(tmp_path / "from-button.safetensors").calibration


def test_a_residual_qpi_model_is_asked_to_refit_its_tie_base_on_the_pair_first(cell, tiny_model_writer, tmp_path,
                                                                               notifications, monkeypatch, wait_idle):
    from napari_cvdm._widgets import _reconstruct
    from napari_cvdm.residual import TIEBase

    viewer, stack, phase = cell
    model_path = tiny_model_writer(tmp_path / "residual.safetensors", "qpi", residual=True)
    widget = widget_for(viewer, model_path)
    answers = iter([(stack.name, True), (phase.name, True)])
    monkeypatch.setattr(_reconstruct.QInputDialog, "getItem", lambda *args: next(answers))
    monkeypatch.setattr(_reconstruct.QFileDialog, "getSaveFileName",
                        lambda *args: (str(tmp_path / "refitted.safetensors"), ""))
    asked = []
    monkeypatch.setattr(_reconstruct.QMessageBox, "question",
                        lambda parent, title, text, *rest: asked.append(text) or _reconstruct.QMessageBox.StandardButton.Yes)
    widget.calibrate_button.click()
    wait_idle(widget)
    assert notifications.error == [] and len(asked) == 1 and "TIE base" in asked[0]
    before, after = read_model_info(model_path), read_model_info(tmp_path / "refitted.safetensors")
    assert after.calibration
    # the untrained file's regulariser (strength 10) is far off for this cell: the refit replaces it
    assert TIEBase.from_dict(after.base) != TIEBase.from_dict(before.base)
    assert "TIE base refitted on 1 pair(s)" in widget.status_label.text()


def test_refitting_a_model_without_a_tie_base_is_one_notification(cell, qpi_model_path, tmp_path, notifications):
    viewer, stack, phase = cell
    widget = widget_for(viewer, qpi_model_path)
    assert not widget.calibrate_on_layers(stack, phase, tmp_path / "new.safetensors", refit=True)
    assert notifications.error == ["tiny_qpi.safetensors has no TIE base to refit: refitting is for residual QPI "
                                   "models."]
    assert not (tmp_path / "new.safetensors").exists()
