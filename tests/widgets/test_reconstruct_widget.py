"""Reconstruct dock widget in a real napari viewer: layers, geometry, replacement, cancel, responsiveness."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_cvdm._widgets import ReconstructWidget
from napari_cvdm._widgets._reconstruct import ALL_PLANES, CURRENT_PLANE, TWO_LAYERS_MODE

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def open_reconstruct(viewer) -> ReconstructWidget:
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    return widget


def pixel_edges(layer) -> np.ndarray:
    """World coordinates of the outer pixel edges ``[[y0, x0], [y1, x1]]`` of a 2-D layer."""
    scale, translate, shape = np.asarray(layer.scale), np.asarray(layer.translate), np.asarray(layer.data.shape)
    return np.stack([translate - scale / 2, translate + (shape - 0.5) * scale])


def quick_settings(widget, samples=2, steps=2, tile=256):
    widget.samples_spin.setValue(samples)
    widget.steps_spin.setValue(steps)
    widget.tile_spin.setValue(tile)
    widget.device_combo.setCurrentText("cpu")


def test_reconstruct_sr_sample_adds_three_layers_with_upsampled_geometry(viewer, sr_model_path, notifications,
                                                                         wait_idle, qtbot):
    viewer.open_sample("napari-cvdm", "sr_pair")
    widefield = viewer.layers["widefield (simulated microtubules)"]
    # A crop keeps the CPU test fast; it keeps the sample's calibrated scale and gets an offset.
    crop = viewer.add_image(widefield.data[:48, :40], name="wf crop", scale=widefield.scale,
                            translate=(1.0, 2.0))
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    assert "super-resolution" in widget.model_card.text() and "62.6 nm in → 31.3 nm out" in widget.model_card.text()
    assert widget.steps_spin.value() == 2  # the model's sampler defaults
    widget.input_combo.setCurrentText(crop.name)
    quick_settings(widget)

    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    qtbot.wait(50)  # a late progress report must not overwrite the final status
    assert widget.status_label.text().startswith("Done: wf crop CVDM mean")

    names = ["wf crop CVDM mean", "wf crop CVDM variance", "wf crop CVDM γ map"]
    layers = [viewer.layers[name] for name in names]
    pixel = widefield.scale[-1]
    for layer in layers:
        assert layer.data.shape == (96, 80)
        np.testing.assert_allclose(layer.scale, (pixel / 2, pixel / 2))
        np.testing.assert_allclose(layer.translate, (1.0 - pixel / 4, 2.0 - pixel / 4))
        assert layer.metadata["cvdm"]["model"] == str(sr_model_path.resolve())
        assert layer.metadata["cvdm"]["settings"]["n_samples"] == 2
        assert layer.metadata["cvdm"]["output_pixel_size_um"] == pytest.approx(pixel / 2)
    mean, variance, gamma = layers
    assert variance.colormap.name == "magma"
    assert np.all(variance.data >= 0) and variance.data.max() > 0
    assert np.all((gamma.data > 0) & (gamma.data <= 1))
    assert mean.contrast_limits[0] < mean.contrast_limits[1]
    # The output's pixels tile exactly the area covered by the input's pixels (edges, not centres).
    np.testing.assert_allclose(pixel_edges(mean), pixel_edges(crop), atol=1e-9)

    # Running again (another seed) replaces the data of the same layers.
    n_layers = len(viewer.layers)
    widget.seed_spin.setValue(7)
    first_mean = mean.data.copy()
    assert widget.start()
    wait_idle(widget)
    assert len(viewer.layers) == n_layers
    assert viewer.layers["wf crop CVDM mean"] is mean
    assert not np.array_equal(mean.data, first_mean)
    assert mean.metadata["cvdm"]["settings"]["seed"] == 7


def test_reconstruct_keeps_samples_and_handles_planes(viewer, sr_model_path, notifications, wait_idle):
    rng = np.random.default_rng(0)
    stack = viewer.add_image(rng.random((3, 24, 32)).astype(np.float32), name="movie", scale=(5.0, 0.1, 0.1))
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    quick_settings(widget, samples=3)
    widget.keep_samples_check.setChecked(True)
    assert widget.planes_combo.isEnabled()

    widget.planes_combo.setCurrentText(ALL_PLANES)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    mean = viewer.layers["movie CVDM mean"]
    samples = viewer.layers["movie CVDM samples"]
    assert mean.data.shape == (3, 48, 64)
    np.testing.assert_allclose(mean.scale, (5.0, 0.05, 0.05))
    # Samples first (N, T, H, W), so that the time axis stays aligned with the input's.
    assert samples.data.shape == (3, 3, 48, 64)
    np.testing.assert_allclose(samples.scale, (1.0, 5.0, 0.05, 0.05))
    np.testing.assert_allclose(samples.data.mean(axis=0), mean.data, atol=1e-4)

    # The current plane only: a 2-D result that replaces the 3-D layers of the same names.
    viewer.dims.set_point(viewer.dims.ndim - 3, 10.0)  # world t = 10 → plane 2
    widget.planes_combo.setCurrentText(CURRENT_PLANE)
    assert widget.start()
    wait_idle(widget)
    mean = viewer.layers["movie CVDM mean"]
    assert mean.data.shape == (48, 64)
    assert mean.metadata["cvdm"]["plane"] == [2]
    # this run's layers, data consistency included, replace the first run's 3-D ones
    assert len([layer for layer in viewer.layers if layer.name.startswith("movie CVDM")]) == 5
    assert stack in viewer.layers


def test_reconstruct_qpi_from_stack_sample_and_from_two_layers(viewer, qpi_model_path, notifications, wait_idle):
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    stack_layer = viewer.layers["cell defocus stack (±1 µm)"]
    widget = open_reconstruct(viewer)
    widget.select_model(qpi_model_path)
    assert widget.qpi_mode_combo.isVisibleTo(widget)
    # Only the (…, 2, H, W) stack fits a QPI model in stack mode, not the 2-D phase layer.
    assert [widget.input_combo.itemText(i) for i in range(widget.input_combo.count())] == [stack_layer.name]
    quick_settings(widget, tile=64)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    mean = viewer.layers["cell defocus stack (±1 µm) CVDM mean"]
    assert mean.data.shape == stack_layer.data.shape[-2:]
    np.testing.assert_allclose(mean.scale, stack_layer.scale[-2:])
    assert mean.metadata["cvdm"]["unit"] == "rad"

    minus = viewer.add_image(stack_layer.data[0, :40, :48], name="minus")
    plus = viewer.add_image(stack_layer.data[1, :40, :48], name="plus")
    widget.qpi_mode_combo.setCurrentText(TWO_LAYERS_MODE)
    widget.minus_combo.setCurrentText(minus.name)
    widget.plus_combo.setCurrentText(plus.name)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    assert viewer.layers["minus CVDM γ map"].data.shape == (40, 48)


def test_cancel_stops_a_long_reconstruction_within_a_step(viewer, sr_model_path, notifications, qtbot, wait_idle):
    viewer.add_image(np.random.default_rng(1).random((32, 32)).astype(np.float32), name="wf")
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    quick_settings(widget, samples=2, steps=5000)  # minutes of work if not stopped
    assert widget.start()
    qtbot.waitUntil(lambda: widget.progress_bar.value() >= 2, timeout=30_000)
    assert widget.cancel_button.isEnabled()
    pressed = time.monotonic()
    widget.cancel_button.click()
    wait_idle(widget, timeout=10_000)
    assert time.monotonic() - pressed < 5.0
    assert widget.progress_bar.value() < 100
    # No sample finished (rounds of one sample on the CPU): the preview is kept and named as such.
    assert notifications.info == ["Cancelled before the first sample: 'wf CVDM mean' keeps the preview "
                                  "(upsampled input)."]
    assert notifications.error == []
    assert "wf CVDM mean" not in viewer.layers and "wf CVDM mean (preview: upsampled input)" in viewer.layers
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_event_loop_keeps_running_during_a_reconstruction(viewer, sr_model_path, notifications, qtbot, wait_idle,
                                                          stall_meter):
    viewer.add_image(np.random.default_rng(2).random((32, 32)).astype(np.float32), name="wf")
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    quick_settings(widget, samples=4, steps=25)
    result_arrived: list[float] = []
    show_result = widget.show_result

    def timed_show_result(*args):
        result_arrived.append(time.perf_counter())
        return show_result(*args)

    widget.show_result = timed_show_result
    stall_meter.start()
    started = time.perf_counter()
    assert widget.start()
    wait_idle(widget)
    stall_meter.stop()
    assert notifications.error == [] and result_arrived
    computing = result_arrived[0] - started
    assert computing > 0.5, "the run was too short to say anything about responsiveness"
    # From pressing Reconstruct until the result reached the GUI thread, the event loop kept turning
    # (the preview and each round's layers are shown meanwhile, one layer per turn). Sampling on the GUI
    # thread would hold it for the whole run; the bound is a freeze, the speed goal is benchmarks/gui_stall.py's.
    assert len([t for t, _ in stall_meter.ticks if t < result_arrived[0]]) > 20
    longest = stall_meter.longest_stretch_s(until=result_arrived[0])
    assert longest < min(1.0, computing / 2), f"GUI thread busy for {longest:.3f} s at a stretch during a {computing:.1f} s run"


def test_closing_the_viewer_stops_a_running_reconstruction(make_napari_viewer, sr_model_path, notifications, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(3).random((32, 32)).astype(np.float32), name="wf")
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    quick_settings(widget, steps=5000)
    assert widget.start()
    task = widget.task
    qtbot.waitUntil(lambda: task.worker is not None and task.worker.is_running, timeout=10_000)
    viewer.close()
    qtbot.waitUntil(lambda: not task.running, timeout=10_000)
    assert task.stop_requested
    assert notifications.error == [] and notifications.info == []  # nothing reported to a closed window


def test_sampling_choices_survive_a_registry_update(viewer, sr_model_path, qpi_model_path, clean_registry):
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    widget.steps_spin.setValue(37)
    clean_registry.add(qpi_model_path, "trained")  # e.g. the Train widget saved a model meanwhile
    assert widget.selected_entry().path == sr_model_path.resolve()
    assert widget.steps_spin.value() == 37
    widget.select_model(qpi_model_path)  # another model: its defaults
    assert widget.steps_spin.value() == 2


def test_the_one_model_that_fits_the_input_layer_is_preselected(viewer, sr_model_path, qpi_model_path):
    from napari_cvdm._widgets._registry import ModelRegistry

    registry = ModelRegistry(shipped_dirs=[])
    for path in (sr_model_path, qpi_model_path):
        registry.add(path, "opened")
    empty = ReconstructWidget(viewer, registry=registry)
    assert empty.selected_entry() is None  # no layer: two models, no guess

    viewer.open_sample("napari-cvdm", "cell_defocus_stack")  # a (2, H, W) defocus stack: only the QPI model fits
    assert empty.selected_entry().path == qpi_model_path.resolve()
    assert ReconstructWidget(viewer, registry=registry).selected_entry().path == qpi_model_path.resolve()

    viewer.layers.clear()
    viewer.add_image(np.zeros((32, 32), np.float32), name="widefield")  # 2-D: only the SR model fits
    assert ReconstructWidget(viewer, registry=registry).selected_entry().path == sr_model_path.resolve()
    empty.model_combo.setCurrentIndex(0)
    viewer.add_image(np.zeros((2, 32, 32), np.float32), name="either")  # both fit (a 2-plane image or a stack)
    assert empty.selected_entry() is None


def test_of_several_fitting_models_the_one_residual_model_is_preselected(viewer, tiny_model_writer, tmp_path):
    from napari_cvdm._widgets._registry import ModelRegistry

    registry = ModelRegistry(shipped_dirs=[])
    paths = {name: tiny_model_writer(tmp_path / f"{name}.safetensors", task, residual=residual)
             for name, task, residual in (("qpi_paper", "qpi", False), ("qpi_residual", "qpi", True),
                                          ("sr_paper", "sr", False))}
    for path in paths.values():
        registry.add(path, "opened")
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    assert ReconstructWidget(viewer, registry=registry).selected_entry().path == paths["qpi_residual"].resolve()
    registry.add(tiny_model_writer(tmp_path / "qpi_residual_2.safetensors", "qpi", residual=True), "opened")
    assert ReconstructWidget(viewer, registry=registry).selected_entry() is None  # two residual ones: no guess


def test_the_real_cell_sample_preselects_the_shipped_qpi_model(viewer):
    from napari_cvdm._widgets._registry import ModelRegistry, shipped_model_dirs

    if not any(folder.glob("cvdm-qpi-residual.safetensors") for folder in shipped_model_dirs()):
        pytest.fail("the shipped models are missing from this checkout")
    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    widget = ReconstructWidget(viewer, registry=ModelRegistry())
    assert widget.selected_entry().path.name == "cvdm-qpi-residual.safetensors"


def test_the_optics_and_the_data_consistency_strength_go_to_the_job(viewer, sr_model_path):
    viewer.open_sample("napari-cvdm", "sr_pair")
    widget = open_reconstruct(viewer)
    widget.select_model(sr_model_path)
    assert widget.na_spin.isVisibleTo(widget) and widget.consistency_spin.value() == 0.0  # the model's: none
    widget.input_combo.setCurrentText("widefield (simulated microtubules)")
    layer = viewer.layers["widefield (simulated microtubules)"]
    _, job = widget.gather_input(widget.selected_entry().info)
    assert job.settings.consistency_strength == 0.0
    assert job.acquisition.na == layer.metadata["na"]  # "model's": the layer's own optics first
    widget.wavelength_spin.setValue(0.52)
    widget.na_spin.setValue(1.2)
    widget.consistency_spin.setValue(1.0)
    _, job = widget.gather_input(widget.selected_entry().info)
    assert (job.acquisition.wavelength_um, job.acquisition.na) == (pytest.approx(0.52), pytest.approx(1.2))
    assert job.settings.consistency_strength == 1.0
