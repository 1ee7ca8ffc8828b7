"""The reconstruction job: which outputs it gives, its sinks, its notes and its record."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cvdm.checkpoint import load_model
from napari_cvdm.engine import ReconstructionSettings
from napari_cvdm.errors import InputError
from napari_cvdm.io import TiffSink
from napari_cvdm.predict import Acquisition, Hooks, MemorySink, check_input, output_names, predict
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


def test_a_tiff_sink_writes_the_planned_files_plane_by_plane_and_the_record(qpi_model, tmp_path):
    model, info = qpi_model
    settings = ReconstructionSettings(**FAST)
    paths = {name: tmp_path / f"cell_{name}.tif" for name in output_names(info, settings)}
    sink = TiffSink(paths, tmp_path / "cell_cvdm.json", axes="ZYX")
    prediction = predict(model, info, _stack(2), Acquisition("cell.tif", 0.21), settings, sink=sink,
                         model_path="qpi.safetensors")
    assert prediction.outputs() == {}  # streamed: the planes went to the files, none is held
    whole = predict(model, info, _stack(2), Acquisition("cell.tif", 0.21), settings)
    for name, path in paths.items():
        np.testing.assert_array_equal(tifffile.imread(path), whole.outputs()[name])
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


# ----------------------------------------------------------------------------- lazy input, values checked once


class _Discard:
    """A streaming sink (not ``holds_all``) that keeps only which input planes it was given."""

    def __init__(self):
        self.planes: set[int] = set()

    def put(self, name: str, plane: int, planes: int, data: np.ndarray) -> None:
        if name == "mean":
            self.planes.add(plane)

    def close(self, prediction) -> None:
        pass


def test_check_input_reads_no_value_of_a_lazy_input(qpi_model, plane_reads):
    _, info = qpi_model
    stack = _stack(3)
    stack[2, 0, 5, 5] = np.nan
    lazy = plane_reads(stack)
    assert check_input(info, lazy.array, Acquisition(pixel_size_um=0.21), values=True) == []
    assert lazy.reads == []
    with pytest.raises(InputError, match="QPI"):  # the layout is still checked
        check_input(info, plane_reads(stack[:, :1]).array, Acquisition())
    with pytest.raises(InputError, match="NaN values in plane 2"):  # an in-memory image's values: read
        check_input(info, stack, Acquisition())
    check_input(info, stack, Acquisition(), values=False)


def test_a_lazy_input_is_read_once_per_plane_by_the_job(qpi_model, plane_reads):
    model, info = qpi_model
    lazy, sink = plane_reads(_stack(3)), _Discard()
    predict(model, info, lazy.array, Acquisition(pixel_size_um=0.21), ReconstructionSettings(**FAST), sink=sink)
    assert sink.planes == {0, 1, 2}
    assert [lazy.count(p) for p in range(3)] == [1, 1, 1]


def test_a_nan_in_a_late_plane_of_a_lazy_input_stops_the_job_there_with_one_sentence(qpi_model, plane_reads):
    model, info = qpi_model
    stack = _stack(3)
    stack[2, 1, 7, 3] = np.nan
    lazy, sink, steps = plane_reads(stack), _Discard(), []
    with pytest.raises(InputError) as error:
        predict(model, info, lazy.array, Acquisition(pixel_size_um=0.21), ReconstructionSettings(**FAST),
                Hooks(progress=lambda done, total: steps.append(done)), sink=sink)
    assert str(error.value) == ("The image contains NaN values in plane 2 (1 pixels); replace them before "
                                "reconstructing.")
    assert sink.planes == {0, 1} and steps  # the planes before it were computed and delivered
    assert [lazy.count(p) for p in range(3)] == [1, 1, 1]


@pytest.mark.parametrize("lazy_input", [False, True], ids=["in memory", "lazy"])
@pytest.mark.parametrize("streamed", [False, True], ids=["memory sink", "streaming sink"])
def test_each_plane_s_values_are_checked_once_on_the_job_path(qpi_model, plane_reads, monkeypatch, lazy_input,
                                                              streamed):
    import napari_cvdm.engine.checks as checks
    import napari_cvdm.engine.run as run

    checked = []

    def counting(plane, p=0, planes=1):
        checked.append(p)
        original(plane, p, planes)

    original = checks.check_plane_values
    monkeypatch.setattr(checks, "check_plane_values", counting)
    monkeypatch.setattr(run, "check_plane_values", counting)
    model, info = qpi_model
    image = plane_reads(_stack(3)).array if lazy_input else _stack(3)
    predict(model, info, image, Acquisition(pixel_size_um=0.21), ReconstructionSettings(**FAST),
            sink=_Discard() if streamed else MemorySink())
    assert sorted(checked) == [0, 1, 2]


def test_a_data_consistency_step_a_model_cannot_take_is_refused_before_any_file_is_written(tmp_path, qpi_model):
    model, info = qpi_model
    tmp_path = tmp_path / "out"
    tmp_path.mkdir()
    paths = {name: tmp_path / f"s_{name}.tif" for name in ("mean", "variance", "gamma")}
    with pytest.raises(InputError, match="for SR models"):
        predict(model, info, _stack()[0], Acquisition(pixel_size_um=0.21),
                ReconstructionSettings(**FAST, consistency_strength=1.0), sink=TiffSink(paths, tmp_path / "s.json"))
    assert list(tmp_path.iterdir()) == []
