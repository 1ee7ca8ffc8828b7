"""The Reconstruct widget and ``cvdm predict`` give the same outputs for the same input, model and seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_cvdm._widgets import ReconstructWidget
from napari_cvdm._widgets._layers import (
    CALIBRATED_STD_SUFFIX, CONSISTENCY_SUFFIX, ERROR_SUFFIX, GAMMA_SUFFIX, MEAN_SUFFIX, VARIANCE_SUFFIX,
)
from napari_cvdm.cli import main
from napari_cvdm.io import read_image

MODELS = Path(__file__).resolve().parents[2] / "models"
SETTINGS = {"n_samples": 3, "steps": 4, "seed": 7}
#: CLI output name → widget layer suffix: every output both front ends give.
SHARED = {"mean": MEAN_SUFFIX, "variance": VARIANCE_SUFFIX, "std_calibrated": CALIBRATED_STD_SUFFIX,
          "error95": ERROR_SUFFIX, "gamma": GAMMA_SUFFIX, "consistency": CONSISTENCY_SUFFIX}


def _cli_outputs(tmp_path: Path, task: str, model: Path) -> tuple[Path, dict[str, np.ndarray]]:
    data = tmp_path / "data"
    assert main(["simulate", "--task", task, "--out", str(data), "--images", "1", "--size", "64",
                 "--split", "test", "--seed", "3"]) == 0
    (image,) = sorted((data / "inputs").glob("*.tif"))
    assert main(["predict", str(image), "--model", str(model), "--out", str(tmp_path / "out"), "--device", "cpu",
                 "--n-samples", "3", "--steps", "4", "--seed", "7"]) == 0
    written = {name: read_image(tmp_path / "out" / f"{image.stem}_{name}.tif").array for name in SHARED}
    return image, written


@pytest.mark.parametrize("task", ["qpi", "sr"])
def test_widget_and_cli_give_the_same_outputs(make_napari_viewer, tmp_path, task, notifications, wait_idle):
    model = MODELS / f"cvdm-{task}-residual.safetensors"
    image, cli = _cli_outputs(tmp_path, task, model)
    viewer = make_napari_viewer()
    source = read_image(image)
    scale = (1.0,) * (source.array.ndim - 2) + (source.pixel_size_um,) * 2
    viewer.add_image(source.array, name="input", scale=scale)
    widget = ReconstructWidget(viewer)
    widget.select_model(model)
    widget.input_combo.setCurrentText("input")
    widget.samples_spin.setValue(SETTINGS["n_samples"])
    widget.steps_spin.setValue(SETTINGS["steps"])
    widget.seed_spin.setValue(SETTINGS["seed"])
    widget.device_combo.setCurrentText("cpu")
    assert widget.start()
    wait_idle(widget, timeout=120_000)
    assert notifications.error == []
    for name, suffix in SHARED.items():
        shown = np.asarray(viewer.layers[f"input {suffix}"].data, np.float64)
        written = cli[name].astype(np.float64)
        assert shown.shape == written.shape, name
        assert np.max(np.abs(shown - written)) <= 1e-5 * np.max(np.abs(written)), name
