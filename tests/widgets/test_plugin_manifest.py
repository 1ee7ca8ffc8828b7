"""The npe2 manifest, the plugin's menus, the offline sample data and the model registry."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cvdm._sample_data import QPI_DEFOCUS_UM, QPI_WAVELENGTH_UM, cell_phase
from napari_cvdm._widgets import ModelRegistry, ReconstructWidget, TrainWidget
from napari_cvdm._widgets._layers import output_geometry, robust_limits
from napari_cvdm._widgets._loss_plot import LossPlot
from napari_cvdm._widgets._registry import model_card, shipped_model_dirs
from napari_cvdm.physics import fft_tie

REPO = Path(__file__).resolve().parents[2]


def test_manifest_validates_and_is_the_packaged_file():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run([str(npe2), "validate", "napari-cvdm"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    packaged = REPO / "src" / "napari_cvdm" / "napari.yaml"
    assert packaged.is_symlink() and packaged.resolve() == (REPO / "napari.yaml").resolve()


def test_manifest_contributions_are_registered():
    from npe2 import PluginManager

    manager = PluginManager.instance()
    manager.discover()
    manifest = manager.get_manifest("napari-cvdm")
    assert {w.display_name for w in manifest.contributions.widgets} == {"Reconstruct", "Train"}
    assert {s.key for s in manifest.contributions.sample_data} == {"sr_pair", "defocus_stack", "cell_defocus_stack"}
    for command in manifest.contributions.commands:  # every command names an importable callable
        module, attribute = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attribute))


@pytest.mark.gui
def test_widgets_open_from_the_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    _, reconstruct = viewer.window.add_plugin_dock_widget("napari-cvdm", "Reconstruct")
    _, train = viewer.window.add_plugin_dock_widget("napari-cvdm", "Train")
    assert isinstance(reconstruct, ReconstructWidget) and isinstance(train, TrainWidget)
    titles = [action.text() for action in viewer.window.plugins_menu.actions()]
    assert any("napari-cvdm" in title or "CVDM" in title for title in titles)


@pytest.mark.gui
def test_sample_data_loads_offline(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-cvdm", "sr_pair")
    widefield = viewer.layers["widefield (simulated microtubules)"]
    target = viewer.layers["SIM-like target (simulated microtubules)"]
    assert widefield.data.shape == (256, 256) and target.data.shape == (512, 512)
    np.testing.assert_allclose(widefield.scale, (0.0626, 0.0626))
    np.testing.assert_allclose(target.scale, (0.0313, 0.0313))
    # Target pixels are aligned with the camera pixels they subdivide (same pixel-edge extent).
    np.testing.assert_allclose(target.translate, (-0.0313 / 2, -0.0313 / 2))

    viewer.open_sample("napari-cvdm", "defocus_stack")
    stack = viewer.layers["defocus stack (simulated)"]
    assert stack.data.shape == (2, 256, 256)
    np.testing.assert_allclose(stack.scale, (2.0, 0.21, 0.21))
    np.testing.assert_allclose(stack.translate[0], -1.0)  # the z slider reads −1 and +1 µm

    viewer.open_sample("napari-cvdm", "cell_defocus_stack")
    cell = viewer.layers["cell defocus stack (±1 µm)"]
    phase = viewer.layers["cell phase (rad)"]
    assert cell.data.shape == (2, 330, 275) and phase.data.shape == (330, 275)
    assert cell.metadata["defocus_um"] == [-1.0, 1.0]


def test_cell_defocus_stack_is_consistent_with_the_transport_of_intensity_equation():
    from napari_cvdm._sample_data import cell_defocus_stack

    (stack, _, _), (phase, _, _) = cell_defocus_stack()
    _, pixel = cell_phase()
    assert np.isclose(stack.mean(), 1.0, atol=0.01)  # a pure phase object: unit mean intensity
    retrieved = fft_tie(stack.astype(np.float64), QPI_DEFOCUS_UM, QPI_WAVELENGTH_UM, pixel, 1e-3)
    # FFT-TIE recovers the phase up to an offset and low frequencies: compare the mean-free fields.
    a, b = retrieved - retrieved.mean(), phase - phase.mean()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.8


def test_sample_data_imports_no_downloader(monkeypatch):
    import skimage.data

    monkeypatch.setattr(skimage.data, "download_all", lambda *a, **k: pytest.fail("tried to download"))
    phase, pixel = cell_phase()
    assert phase.shape == (330, 275) and pixel == pytest.approx(0.214)
    assert -2 < phase.min() < 0 < phase.max() < 3.5


def test_output_geometry_centres_the_subpixels():
    scale, translate = output_geometry((5.0, 0.2, 0.1), (1.0, 10.0, 20.0), 2)
    assert scale == (5.0, 0.1, 0.05)
    assert translate == pytest.approx((1.0, 10.0 - 0.05, 20.0 - 0.025))
    assert output_geometry((0.3, 0.3), (0.0, 0.0), 1) == ((0.3, 0.3), (0.0, 0.0))
    scale, translate = output_geometry((1.0, 1.0), (0.0, 0.0), 3)
    # Three output pixels centred at −1/3, 0, +1/3 around the input pixel centre 0.
    assert translate == pytest.approx((-1 / 3, -1 / 3)) and scale == pytest.approx((1 / 3, 1 / 3))


def test_robust_limits():
    data = np.concatenate([np.linspace(0, 1, 1000), [1e6, np.nan]])
    low, high = robust_limits(data)
    assert 0 <= low < 0.01 and 0.99 < high < 2
    assert robust_limits(np.zeros(10)) == (0.0, 1.0)
    assert robust_limits(np.full(10, 5.0))[1] > 5.0
    assert robust_limits(np.linspace(1, 2, 100), from_zero=True)[0] == 0.0


def test_registry_lists_shipped_opened_and_trained_models(tmp_path, sr_model_path, qpi_model_path,
                                                          tiny_model_writer):
    shipped = tmp_path / "shipped"
    tiny_model_writer(shipped / "biosr_tiny.safetensors", "sr")
    (shipped / "notes.txt").write_text("not a model")
    registry = ModelRegistry(shipped_dirs=[shipped])
    changes = []
    registry.changed.connect(lambda: changes.append(1))
    assert [e.label for e in registry.entries()] == ["biosr_tiny.safetensors (sr, shipped)"]

    registry.add(qpi_model_path, "opened")
    registry.add(sr_model_path, "trained")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"garbage")
    bad = registry.add(broken)
    assert len(changes) == 3
    assert [e.origin for e in registry.entries()] == ["shipped", "trained", "opened", "opened"]
    assert bad.info is None and "broken.safetensors" in bad.error and bad.label == "broken.safetensors (unreadable)"
    assert model_card(bad) == bad.error
    card = model_card(registry.get(qpi_model_path))
    assert "defocus stack → phase" in card and "210.0 nm" in card and "Trained on: nothing (test model)" in card

    registry.remove(broken)
    assert registry.get(broken) is None and len(changes) == 4
    qpi_model_path.unlink()
    registry.rescan()
    assert registry.get(qpi_model_path).error  # a vanished file stays listed, with the reason


def test_shipped_models_folder_is_the_repository_models_folder():
    assert (REPO / "models").resolve() in [folder.resolve() for folder in shipped_model_dirs()]


@pytest.mark.gui
def test_loss_plot_draws_curves(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(300, 160)
    plot.grab()  # empty plot
    plot.total_steps = 50
    for step in range(1, 30):
        plot.add_training(step, 1.0 / step)
    plot.add_validation(10, 0.2)
    plot.add_validation(20, float("nan"))  # ignored
    image = plot.grab().toImage()
    assert len(plot.training) == 29 and len(plot.validation) == 1
    assert not image.isNull() and image.width() == 300
