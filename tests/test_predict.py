"""The reconstruction job: which outputs it gives, its sinks, its notes and its record."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cvdm.checkpoint import load_model
from napari_cvdm.engine import ReconstructionSettings
from napari_cvdm.errors import InputError
from napari_cvdm.io import TiffSink
from napari_cvdm.predict import Acquisition, Hooks, MemorySink, output_names, predict
from napari_cvdm.residual import TIEBase

FAST = dict(n_samples=2, steps=2, device="cpu", seed=3)


@pytest.fixture
def qpi_model(tmp_path, residual_qpi_writer):
    base = TIEBase(10.0, 0.521, 1.0, 0.21, 1.75)
    return load_model(residual_qpi_writer(tmp_path / "qpi.safetensors", base), "cpu")


def _stack(planes: int = 1) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (1.0 + 0.05 * rng.standard_normal((planes, 2, 24, 24))).astype(np.float32)


def test_the_outputs_given_are_the_outputs_planned(qpi_model):
    model, info = qpi_model
    for settings in (ReconstructionSettings(**FAST), ReconstructionSettings(**{**FAST, "n_samples": 1}),
                     ReconstructionSettings(**FAST, keep_samples=True)):
        prediction = predict(model, info, _stack()[0], Acquisition(pixel_size_um=0.21), settings)
        assert list(prediction.outputs()) == output_names(info, settings)
    assert "variance" not in output_names(info, ReconstructionSettings(**{**FAST, "n_samples": 1}))


def test_a_memory_sink_gets_every_plane_and_reassembles_the_outputs(qpi_model):
    model, info = qpi_model
    sink = MemorySink()
    prediction = predict(model, info, _stack(3), Acquisition(pixel_size_um=0.21), ReconstructionSettings(**FAST),
                         sink=sink)
    assert set(sink.arrays) == set(prediction.outputs())
    for name, array in prediction.outputs().items():
        np.testing.assert_array_equal(sink.arrays[name], array)
    assert sink.arrays["mean"].shape == (3, 24, 24)


def test_a_tiff_sink_writes_the_planned_files_and_the_record(qpi_model, tmp_path):
    model, info = qpi_model
    settings = ReconstructionSettings(**FAST)
    paths = {name: tmp_path / f"cell_{name}.tif" for name in output_names(info, settings)}
    sink = TiffSink(paths, tmp_path / "cell_cvdm.json", axes="ZYX")
    prediction = predict(model, info, _stack(2), Acquisition("cell.tif", 0.21), settings, sink=sink,
                         model_path="qpi.safetensors")
    for name, path in paths.items():
        np.testing.assert_array_equal(tifffile.imread(path), prediction.outputs()[name])
    assert sink.written["sidecar"].exists() and prediction.record["input"] == "cell.tif"
    assert prediction.record["consistency"]["optics_source"] == "the model's"


def test_notes_come_through_the_hook_and_bad_input_stops_before_computing(qpi_model):
    model, info = qpi_model
    notes, steps = [], []
    hooks = Hooks(progress=lambda done, total: steps.append(done), on_note=notes.append)
    predict(model, info, _stack()[0], Acquisition(pixel_size_um=0.5), ReconstructionSettings(**FAST), hooks)
    assert any("pixel size" in note for note in notes) and steps
    steps.clear()
    with pytest.raises(InputError):
        predict(model, info, _stack()[0, :1], Acquisition(pixel_size_um=0.21), ReconstructionSettings(**FAST), hooks)
    assert steps == []
