"""The Reconstruct widget on large layers: a multiscale (dask) layer's every plane goes to OME-Zarr stores
shown as lazy multiscale layers; its current plane is read alone; no output folder is one notification;
starting reads none of its values on the GUI thread, and a NaN in one of its planes is one notification."""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest

from napari_cvdm._widgets._reconstruct import ALL_PLANES, CURRENT_PLANE
from napari_cvdm.io.omezarr import read_ome_zarr

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _frames() -> np.ndarray:
    return np.random.default_rng(0).uniform(50, 150, (2, 48, 40)).astype(np.float32)


def _pyramid_layer(viewer, full=None):
    """A two-level layer "series" of :func:`_frames`; ``full``: its level 0 instead (a dask array)."""
    frames = _frames()
    full = da.from_array(frames, chunks=(1, 48, 40)) if full is None else full
    levels = [full, da.from_array(frames[:, ::2, ::2], chunks=(1, 24, 20))]
    return viewer.add_image(levels, multiscale=True, name="series", scale=(1.0, 0.0626, 0.0626)), frames


def _widget(viewer, model_path):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    widget.select_model(model_path)
    widget.input_combo.setCurrentText("series")
    widget.samples_spin.setValue(2)
    widget.steps_spin.setValue(2)
    widget.device_combo.setCurrentText("cpu")
    return widget


def test_every_plane_of_a_multiscale_layer_fills_lazy_store_layers(viewer, sr_model_path, notifications,
                                                                   wait_idle, tmp_path):
    _pyramid_layer(viewer)
    widget = _widget(viewer, sr_model_path)
    widget.planes_combo.setCurrentText(ALL_PLANES)
    widget.output_folder_edit.setText(str(tmp_path / "out"))
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    mean = viewer.layers["series CVDM mean"]
    assert mean.multiscale and mean.data[0].shape == (2, 96, 80)
    stored = np.asarray(read_ome_zarr(tmp_path / "out" / "series_mean.ome.zarr").array)
    assert np.isfinite(stored).all() and stored.shape == (2, 96, 80)
    np.testing.assert_array_equal(np.asarray(mean.data[0]), stored)
    assert widget.status_label.text().startswith("Done: every plane")


def test_all_planes_of_a_large_layer_need_an_output_folder_and_never_replace_one(viewer, sr_model_path,
                                                                                notifications, tmp_path):
    _pyramid_layer(viewer)
    widget = _widget(viewer, sr_model_path)
    widget.planes_combo.setCurrentText(ALL_PLANES)
    assert not widget.start()
    assert len(notifications.error) == 1 and "output folder" in notifications.error[0]
    (tmp_path / "series_mean.ome.zarr").mkdir()
    widget.output_folder_edit.setText(str(tmp_path))
    assert not widget.start()
    assert len(notifications.error) == 2 and "already exists" in notifications.error[1]


def test_the_current_plane_of_a_multiscale_layer_is_reconstructed_in_memory(viewer, sr_model_path, notifications,
                                                                             wait_idle):
    _pyramid_layer(viewer)
    widget = _widget(viewer, sr_model_path)
    widget.planes_combo.setCurrentText(CURRENT_PLANE)
    assert widget.start()
    wait_idle(widget)
    assert notifications.error == []
    assert viewer.layers["series CVDM mean"].data.shape == (96, 80)


def test_starting_on_a_lazy_layer_reads_none_of_its_values_on_the_gui_thread(viewer, sr_model_path, notifications,
                                                                            wait_idle, tmp_path, plane_reads):
    lazy = plane_reads(_frames())
    _pyramid_layer(viewer, lazy.array)
    widget = _widget(viewer, sr_model_path)
    widget.planes_combo.setCurrentText(ALL_PLANES)
    widget.output_folder_edit.setText(str(tmp_path / "out"))
    gui = threading.current_thread().name
    with dask.config.set(scheduler="synchronous"):  # a plane is computed in the thread that reads it
        before = len(lazy.reads)
        assert widget.start()
        read_by_start = [plane for plane, thread in lazy.reads[before:] if thread == gui]
        wait_idle(widget)
    assert read_by_start == []
    assert notifications.error == [] and widget.status_label.text().startswith("Done: every plane")
    assert {plane for plane, thread in lazy.reads[before:] if thread != gui} == {0, 1}  # the job read them


def test_a_nan_in_the_last_plane_of_a_lazy_layer_is_one_notification_from_the_job(viewer, sr_model_path,
                                                                                  notifications, wait_idle, tmp_path):
    frames = _frames()
    frames[1, 10, 20] = np.nan
    _pyramid_layer(viewer, da.from_array(frames, chunks=(1, 48, 40)))
    widget = _widget(viewer, sr_model_path)
    widget.planes_combo.setCurrentText(ALL_PLANES)
    widget.output_folder_edit.setText(str(tmp_path / "out"))
    assert widget.start()  # no value is read before the job
    wait_idle(widget)
    assert notifications.error == ["The image contains NaN values in plane 1 (1 pixels); replace them before "
                                   "reconstructing."]
