"""The Reconstruct widget on large layers: a multiscale (dask) layer's every plane goes to OME-Zarr stores
shown as lazy multiscale layers; its current plane is read alone; no output folder is one notification."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_cvdm._widgets._reconstruct import ALL_PLANES, CURRENT_PLANE
from napari_cvdm.io.omezarr import read_ome_zarr

pytestmark = pytest.mark.gui


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


def _pyramid_layer(viewer):
    frames = np.random.default_rng(0).uniform(50, 150, (2, 48, 40)).astype(np.float32)
    levels = [da.from_array(frames, chunks=(1, 48, 40)), da.from_array(frames[:, ::2, ::2], chunks=(1, 24, 20))]
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
