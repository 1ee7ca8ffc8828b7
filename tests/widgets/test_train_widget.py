"""Train dock widget: train from layers, stop, resume, and use the model in the Reconstruct widget."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cvdm._widgets import MODEL_REGISTRY
from napari_cvdm._widgets._registry import model_card
from napari_cvdm._widgets._train import FOLDERS_SOURCE, TrainWidget, format_duration, split_planes
from napari_cvdm.config import FINE_TUNE_STEPS, TrainConfig
from napari_cvdm.data import simulate_sr

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def add_sr_pairs(viewer, n=3, size=64):
    """Raw widefield stack (n, size/2, size/2) and SIM-like target stack (n, size, size) as layers."""
    rng = np.random.default_rng(0)
    samples = [simulate_sr(rng, size, kind="microtubule") for _ in range(n)]
    camera, fine = samples[0].camera_pixel_um, samples[0].target_pixel_um
    widefield = viewer.add_image(np.stack([s.widefield for s in samples]), name="wf stack", scale=(1, camera, camera))
    target = viewer.add_image(np.stack([s.target for s in samples]), name="sim stack", scale=(1, fine, fine))
    return widefield, target


def configure(widget, output, steps, validate_every):
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("sr"))
    widget.base_combo.setCurrentIndex(0)  # a new model, not the preselected shipped one
    widget.preset_combo.setCurrentText("tiny")
    widget.patch_spin.setValue(32)
    widget.batch_spin.setValue(2)
    widget.steps_spin.setValue(steps)
    widget.validate_every_spin.setValue(validate_every)
    widget.validation_spin.setValue(0.34)  # one of three images held out
    widget.device_combo.setCurrentText("cpu")
    widget.output_edit.setText(str(output))


def test_train_from_layers_stop_resume_and_reconstruct(viewer, tmp_path, notifications, qtbot, wait_idle):
    widefield, target = add_sr_pairs(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Train")
    assert isinstance(widget, TrainWidget)
    widget.input_layer_combo.setCurrentText(widefield.name)
    widget.target_layer_combo.setCurrentText(target.name)
    output = tmp_path / "trained_sr.safetensors"
    configure(widget, output, steps=400, validate_every=2)
    assert not widget.resume_button.isEnabled()

    assert widget.start()
    assert widget.stop_button.isEnabled() and not widget.start_button.isEnabled()
    qtbot.waitUntil(lambda: len(widget.loss_plot.validation) >= 1 and len(widget.loss_plot.training) >= 3,
                    timeout=60_000)
    widget.stop_button.click()
    wait_idle(widget)
    assert notifications.error == []
    result = widget.last_result
    assert result.stopped and 3 <= result.steps_done < 400
    assert output.is_file()
    assert "stopped" in notifications.info[-1] and "Resume" in notifications.info[-1]
    assert widget.resume_button.isEnabled() and widget.start_button.isEnabled()
    entry = MODEL_REGISTRY.get(output)
    assert entry is not None and entry.origin == "trained" and entry.info.task == "sr"
    assert entry.info.input_pixel_size_um == pytest.approx(widefield.scale[-1])

    # Resume to a lower total: it continues from the checkpoint and finishes there; the curve is reloaded.
    stopped_at = result.steps_done
    widget.steps_spin.setValue(stopped_at + 2)
    assert widget.start(resume=True)
    assert widget.loss_plot.training[0][0] == 1  # history of the first part, from log.csv
    wait_idle(widget)
    assert notifications.error == []
    result = widget.last_result
    assert not result.stopped and result.steps_done == stopped_at + 2
    assert [step for step, _ in widget.loss_plot.training] == list(range(1, stopped_at + 3))
    assert widget.loss_plot.validation  # validated on the held-out image

    # The trained model is in the Reconstruct picker at once and reconstructs.
    _, reconstruct = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    labels = [reconstruct.model_combo.itemText(i) for i in range(reconstruct.model_combo.count())]
    assert "trained_sr.safetensors (sr, trained)" in labels
    reconstruct.model_combo.setCurrentText("trained_sr.safetensors (sr, trained)")
    small = viewer.add_image(widefield.data[0, :16, :24], name="small wf", scale=widefield.scale[1:])
    reconstruct.input_combo.setCurrentText(small.name)
    reconstruct.samples_spin.setValue(2)
    reconstruct.steps_spin.setValue(2)
    reconstruct.device_combo.setCurrentText("cpu")
    assert reconstruct.start()
    wait_idle(reconstruct)
    assert notifications.error == []
    assert viewer.layers["small wf CVDM mean"].data.shape == (32, 48)


def test_train_errors_are_notifications(viewer, tmp_path, notifications, wait_idle):
    widefield, target = add_sr_pairs(viewer, n=1, size=32)
    widget = TrainWidget(viewer)
    widget.input_layer_combo.setCurrentText(widefield.name)
    widget.target_layer_combo.setCurrentText(widefield.name)
    configure(widget, tmp_path / "m.safetensors", steps=2, validate_every=1)

    assert not widget.start()  # the same layer as input and target
    assert "same layer" in notifications.error[-1]

    widget.target_layer_combo.setCurrentText(target.name)
    errors = len(notifications.error)
    assert widget.start()  # one image of 32² px has no room for a training patch, a gap and a band
    wait_idle(widget)
    assert len(notifications.error) == errors + 1 and "too small to hold out a validation band" in notifications.error[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no file written

    widget.source_combo.setCurrentText(FOLDERS_SOURCE)
    assert not widget.start()
    assert "folder" in notifications.error[-1]
    widget.input_dir_edit.setText(str(tmp_path / "missing_inputs"))
    widget.target_dir_edit.setText(str(tmp_path / "missing_targets"))
    assert widget.start()
    wait_idle(widget)
    assert "does not exist" in notifications.error[-1]
    assert not widget.running and widget.start_button.isEnabled()


def test_train_from_tiff_folders(viewer, tmp_path, notifications, wait_idle):
    from napari_cvdm.data import write_simulated_folders

    inputs, targets = write_simulated_folders(tmp_path / "pairs", "qpi", n_images=2, size=32)
    widget = TrainWidget(viewer)
    widget.source_combo.setCurrentText(FOLDERS_SOURCE)
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("qpi"))
    widget.input_dir_edit.setText(str(inputs))
    widget.target_dir_edit.setText(str(targets))
    configure(widget, tmp_path / "qpi_from_folders.safetensors", steps=2, validate_every=1)
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("qpi"))  # configure() chose sr
    widget.validation_spin.setValue(0.0)  # validation is covered above; keep this run short
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    assert widget.last_result.steps_done == 2 and not widget.last_result.stopped
    entry = MODEL_REGISTRY.get(tmp_path / "qpi_from_folders.safetensors")
    assert entry.info.task == "qpi" and entry.info.config.y_channels == 2
    assert entry.info.input_pixel_size_um == pytest.approx(0.21)  # read from the TIFFs


def test_fine_tune_a_model_of_the_chosen_task(viewer, tmp_path, notifications, wait_idle, sr_model_path,
                                              qpi_model_path):
    widefield, target = add_sr_pairs(viewer, n=2, size=32)
    MODEL_REGISTRY.add(sr_model_path)
    MODEL_REGISTRY.add(qpi_model_path)
    widget = TrainWidget(viewer)
    widget.input_layer_combo.setCurrentText(widefield.name)
    widget.target_layer_combo.setCurrentText(target.name)
    configure(widget, tmp_path / "tuned.safetensors", steps=2, validate_every=1)
    widget.validation_spin.setValue(0.0)
    widget.preset_combo.setCurrentText("small")
    bases = [widget.base_combo.itemData(i) for i in range(widget.base_combo.count())]
    assert bases[0] is None and sr_model_path.resolve() in bases and qpi_model_path.resolve() not in bases

    widget.base_combo.setCurrentIndex(widget.base_index(sr_model_path))
    assert widget.preset_combo.currentText() == "tiny" and not widget.preset_combo.isEnabled()
    assert not widget.schedule_combo.isEnabled()
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == [] and notifications.warning == []
    assert widget.base_model == sr_model_path.resolve()  # the new model in the registry kept the choice
    entry = MODEL_REGISTRY.get(tmp_path / "tuned.safetensors")
    assert entry.info.training["fine_tuned_from"]["file"] == sr_model_path.name
    assert entry.info.config.preset == "tiny"
    assert "Training steps: 2 (fine-tuned from tiny_sr.safetensors)" in model_card(entry).splitlines()

    # Resume continues the run from the model it started from, whatever 'Start from' shows now
    widget.base_combo.setCurrentIndex(0)
    widget.steps_spin.setValue(3)
    assert widget.output_path() == tmp_path / "tuned.safetensors"  # a typed name is kept
    assert widget.start(resume=True)
    wait_idle(widget)
    assert notifications.error == [] and widget.last_result.steps_done == 3

    widget.output_edit.setText("")  # suggested names follow the choice, so a base is never overwritten
    widget.base_combo.setCurrentIndex(widget.base_index(sr_model_path))
    assert widget.output_path().name == "tiny_sr_tuned.safetensors"
    widget.base_combo.setCurrentIndex(0)
    assert widget.output_path().name == "sr_model.safetensors"

    widget.task_combo.setCurrentIndex(widget.task_combo.findData("qpi"))  # only QPI models are offered now
    bases = [widget.base_combo.itemData(i) for i in range(widget.base_combo.count())]
    assert qpi_model_path.resolve() in bases and sr_model_path.resolve() not in bases
    widget.base_combo.setCurrentIndex(widget.base_index(qpi_model_path))
    MODEL_REGISTRY.remove(qpi_model_path)  # a chosen base that disappears is said, not silently dropped
    assert widget.base_model is None and "no longer offered" in notifications.warning[-1]
    assert widget.preset_combo.isEnabled() and widget.schedule_combo.isEnabled()


def test_helpers():
    assert format_duration(None) == "–"
    assert format_duration(65) == "1:05"
    assert format_duration(3725) == "1:02:05"
    planes = split_planes(np.zeros((2, 3, 2, 8, 8)), 3)
    assert len(planes) == 6 and planes[0].shape == (2, 8, 8)


def test_the_train_widget_offers_both_formulations_and_passes_the_choice(make_napari_viewer, tmp_path):
    from napari_cvdm._widgets._train import TrainWidget

    widget = TrainWidget(make_napari_viewer())
    choices = [widget.formulation_combo.itemText(i) for i in range(widget.formulation_combo.count())]
    assert choices == ["paper", "residual"] and widget.formulation_combo.currentText() == "residual"
    widget.formulation_combo.setCurrentText("paper")
    widget.input_dir_edit.setText(str(tmp_path))
    widget.target_dir_edit.setText(str(tmp_path))
    assert widget.config(pairs_from_layers=False).formulation == "paper"


def test_the_base_correction_is_offered_for_residual_qpi_and_kept_by_a_corrected_model(make_napari_viewer, tmp_path):
    from napari_cvdm._widgets._train import TrainWidget

    widget = TrainWidget(make_napari_viewer())
    widget.input_dir_edit.setText(str(tmp_path))
    widget.target_dir_edit.setText(str(tmp_path))
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("qpi"))
    widget.base_combo.setCurrentIndex(0)  # random weights
    widget.formulation_combo.setCurrentText("residual")
    assert widget.correction_check.isEnabled()
    widget.correction_check.setChecked(True)
    assert widget.config(pairs_from_layers=False).base_correction
    widget.formulation_combo.setCurrentText("paper")
    assert not widget.correction_check.isEnabled() and not widget.config(pairs_from_layers=False).base_correction
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("sr"))
    widget.formulation_combo.setCurrentText("residual")
    assert not widget.correction_check.isEnabled()
    # the shipped QPI model has a corrected base: fine-tuning it keeps the box checked and fixed
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("qpi"))
    shipped = [i for i in range(widget.base_combo.count()) if "cvdm-qpi-residual" in widget.base_combo.itemText(i)]
    assert shipped, [widget.base_combo.itemText(i) for i in range(widget.base_combo.count())]
    widget.base_combo.setCurrentIndex(shipped[0])
    assert widget.correction_check.isChecked() and not widget.correction_check.isEnabled()
    assert widget.config(pairs_from_layers=False).base_correction


def test_an_existing_model_is_replaced_only_when_the_user_agrees(viewer, tmp_path, notifications, wait_idle,
                                                                   monkeypatch):
    from napari_cvdm.data import write_simulated_folders

    inputs, targets = write_simulated_folders(tmp_path / "pairs", "qpi", n_images=2, size=32)
    existing = tmp_path / "mine.safetensors"
    existing.write_bytes(b"the user's model")
    widget = TrainWidget(viewer)
    widget.source_combo.setCurrentText(FOLDERS_SOURCE)
    widget.input_dir_edit.setText(str(inputs))
    widget.target_dir_edit.setText(str(targets))
    configure(widget, existing, steps=1, validate_every=0)
    widget.task_combo.setCurrentIndex(widget.task_combo.findData("qpi"))
    widget.validation_spin.setValue(0.0)
    asked = []
    monkeypatch.setattr(widget, "confirm_replace", lambda path: asked.append(path) or False)
    assert not widget.start()
    assert asked == [existing] and existing.read_bytes() == b"the user's model"
    monkeypatch.setattr(widget, "confirm_replace", lambda path: True)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == [] and existing.read_bytes() != b"the user's model"


def test_start_from_preselects_the_shipped_model_that_fits_the_layers(viewer, tmp_path):
    widefield, target = add_sr_pairs(viewer, n=1, size=64)  # 0.0626 µm camera pixels, as the shipped SR model's
    widget = TrainWidget(viewer)
    entry = MODEL_REGISTRY.get(widget.base_model)
    assert entry.origin == "shipped" and entry.info.config.formulation == "residual"
    assert f"Fine-tuning {entry.path.name}" in widget.start_hint.text()
    assert "within its range" in widget.start_hint.text()
    assert widget.steps_spin.value() == FINE_TUNE_STEPS and not widget.preset_combo.isEnabled()

    widget.base_combo.setCurrentIndex(0)  # a new model is one choice away, and the choice is kept
    assert widget.base_model is None and widget.steps_spin.value() == TrainConfig().steps
    viewer.add_image(np.zeros((8, 8)), name="another layer")
    assert widget.base_model is None

    widefield.scale, target.scale = (1, 0.2, 0.2), (1, 0.1, 0.1)  # pixels the shipped model never saw
    other = TrainWidget(viewer)
    assert other.base_model is None and "outside" in other.start_hint.text()


def test_bad_layers_give_one_notification_and_write_nothing(viewer, tmp_path, notifications, wait_idle):
    widefield, target = add_sr_pairs(viewer, n=1, size=64)
    widget = TrainWidget(viewer)
    configure(widget, tmp_path / "m.safetensors", steps=2, validate_every=1)
    target.scale = (1, 0.05, 0.05)  # the target's pixels are not half the widefield's 0.0626 µm
    assert not widget.start()
    assert len(notifications.error) == 1 and "check both calibrations" in notifications.error[0]
    target.scale = (1, widefield.scale[-1] / 2, widefield.scale[-1] / 2)
    widget.input_layer_combo.setCurrentText(target.name)  # SIM given as the input, widefield as the target
    widget.target_layer_combo.setCurrentText(widefield.name)
    assert not widget.start()
    assert len(notifications.error) == 2 and "look swapped" in notifications.error[1]
    viewer.layers[widefield.name].data[0, 0, 0] = np.nan
    widget.input_layer_combo.setCurrentText(widefield.name)
    widget.target_layer_combo.setCurrentText(target.name)
    widget.start()
    wait_idle(widget)
    assert len(notifications.error) == 3 and "NaN" in notifications.error[2]
    assert list(tmp_path.iterdir()) == []


def test_preview_layer_is_updated_in_place_over_the_held_out_band(viewer, tmp_path, notifications, wait_idle):
    widefield, target = add_sr_pairs(viewer, n=1, size=288)
    widget = TrainWidget(viewer)
    configure(widget, tmp_path / "one.safetensors", steps=2, validate_every=1)
    widget.validation_spin.setValue(0.1)
    assert widget.split_combo.currentData() == "auto" and widget.preview_check.isChecked()
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    previews = [layer for layer in viewer.layers if layer.name.startswith("CVDM training preview")]
    assert len(previews) == 1 and previews[0].name.endswith("(step 2)") and previews[0].data.shape == (32, 256)
    fine = target.scale[-1]
    assert previews[0].translate[-2] == pytest.approx(target.translate[-2] + 256 * fine)
    assert "Validation: a band" in notifications.info[-1] and "calibrated on it" in notifications.info[-1]
    assert MODEL_REGISTRY.get(tmp_path / "one.safetensors").info.calibration


def test_separate_validation_layers(viewer, tmp_path, notifications, wait_idle):
    widefield, target = add_sr_pairs(viewer, n=2, size=64)
    widget = TrainWidget(viewer)
    configure(widget, tmp_path / "given.safetensors", steps=1, validate_every=1)
    widget.preview_check.setChecked(False)
    widget.split_combo.setCurrentIndex(widget.split_combo.findData("layers"))
    widget.val_input_combo.setCurrentText(widefield.name)
    widget.val_target_combo.setCurrentText(target.name)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    split = MODEL_REGISTRY.get(tmp_path / "given.safetensors").info.training["validation_split"]
    assert split["kind"] == "given" and split["images"] == 2
    assert not [layer for layer in viewer.layers if layer.name.startswith("CVDM training preview")]
