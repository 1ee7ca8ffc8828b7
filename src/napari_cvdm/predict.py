"""The reconstruction job: one input image in, every output and its record out.

``predict(model, info, image, acquisition, settings, hooks, sink)`` is the one front door
that the CLI (``cvdm predict``), the Reconstruct widget and the Python API go through:

1. checks before computing (:func:`check_input`): the image against the model, and sentences
   for a pixel size or optics that differ from the model's training data. Each input value is
   checked once: an in-memory image's here, a lazy image's (dask, zarr) by the engine as it reads
   each plane, so that a NaN in a late plane stops the job there with one sentence;
2. a classical preview and each plane's base b(y), when ``hooks.on_preview`` asks for them;
3. the reconstruction (:func:`napari_cvdm.engine.reconstruct`): mean, variance, γ map;
4. the calibrated std and ± error (:mod:`napari_cvdm.uncertainty.apply`) and the data-consistency map
   (:mod:`napari_cvdm.consistency`);
5. the record (the sidecar's JSON), then every output plane by plane to the ``sink``.

A file sink (any sink but :class:`MemorySink`) gets each plane as soon as it is finished: the job
then holds one plane's outputs at a time, whatever the number of planes, and the input may be a
lazy array (dask, zarr) read one plane at a time. Such a sink may also say which planes an earlier,
stopped run already wrote (``open(layout)`` returns their records): those are not computed again.

Outputs (:data:`OUTPUTS`) are float32 ``(..., H, W)`` arrays; those of one run share the leading
shape of the input's planes, the samples add an axis N before it.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from .acquisition import Acquisition
from .uncertainty.apply import UncertaintyOutputs, uncertainty_outputs
from .checkpoint import ModelInfo
from .consistency import ConsistencyOutput, consistency_output
from .engine.settings import ReconstructionSettings
from .plane_outputs import OUTPUTS, PlaneOutputs, output_layout, output_names  # noqa: F401 - the job's names
from .preview import Preview, classical_preview, has_classical_preview, with_first_base
from . import engine
from .engine import Reconstruction, check_layout, check_pixel_size, plane_count
from .engine.checks import check_values_before_computing

NO_VARIANCE = "not given: one sample (N = 1) has no spread; use 2 or more samples for a variance"


@dataclass
class Hooks:
    """Callbacks of a running job, each optional. ``progress(done, total)`` counts denoising steps;
    ``should_stop()`` is polled between them (a stop raises :class:`~napari_cvdm.errors.Cancelled`
    with the partial result); ``on_partial(reconstruction)`` after each round of samples;
    ``on_preview(preview)`` before the first sample; ``on_note(sentence)`` for each warning."""

    progress: Callable[[int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None
    on_partial: Callable[[Reconstruction], None] | None = None
    on_preview: Callable[[Preview], None] | None = None
    on_note: Callable[[str], None] | None = None

    def note(self, sentence: str | None) -> None:
        if sentence and self.on_note is not None:
            self.on_note(sentence)


@dataclass
class Prediction:
    """A finished job: the reconstruction, its uncertainty and consistency, and the record (JSON-safe)."""

    reconstruction: Reconstruction
    uncertainty: UncertaintyOutputs
    consistency: ConsistencyOutput
    record: dict = field(default_factory=dict)
    layout: dict = field(default_factory=dict)

    def outputs(self) -> dict[str, np.ndarray]:
        """The output arrays that exist, by name (:data:`OUTPUTS` order); none for a streamed job."""
        result, uncertainty = self.reconstruction, self.uncertainty
        n_samples = int(result.metadata.get("n_samples", 2))
        arrays = {"mean": result.mean, "variance": result.variance if n_samples > 1 else None,
                  "std_calibrated": uncertainty.calibrated_std, "error95": uncertainty.error,
                  "gamma": result.gamma_map, "consistency": self.consistency.map, "samples": result.samples}
        return {name: arrays[name] for name in OUTPUTS if arrays[name] is not None}

    def pixel_size_um(self, name: str) -> float | None:
        """The pixel size (µm) of output ``name``: the input's for a map on the input grid."""
        if name == "consistency" and self.consistency.on_input_grid:
            return self.record.get("input_pixel_size_um")
        return self.reconstruction.pixel_size_um


class Sink(Protocol):
    """Where a job's outputs go, plane by plane: ``put(name, plane, planes, data)`` for the 2-D plane
    ``plane`` of ``planes`` of output ``name`` (its leading axes in C order), then ``close(prediction)``.

    A streaming sink may also have ``open(layout) -> {plane: record}`` (called before computing, with
    every output's :class:`~napari_cvdm.plane_outputs.OutputPlan`; returns the planes already written
    by a stopped run) and ``plane_done(plane, record)`` (after every output of input plane ``plane``)."""

    def put(self, name: str, plane: int, planes: int, data: np.ndarray) -> None: ...

    def close(self, prediction: Prediction) -> None: ...


class MemorySink:
    """Keeps every output in memory (the widget and the Python API): ``arrays[name]``, shaped as the job gave it."""

    holds_all = True  # the job computes every plane in memory, as a whole

    def __init__(self):
        self._planes: dict[str, list[np.ndarray]] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, name: str, plane: int, planes: int, data: np.ndarray) -> None:
        self._planes.setdefault(name, []).append(data)

    def close(self, prediction: Prediction) -> None:
        for name, array in prediction.outputs().items():
            self.arrays[name] = np.stack(self._planes.pop(name)).reshape(array.shape)


def check_input(info: ModelInfo, image, acquisition: Acquisition, values: bool = True) -> list[str]:
    """InputError (one sentence) if ``image`` cannot go through the model; else the warnings: a pixel
    size or QPI optics unlike the model's training data.

    ``values``: check an in-memory image's values too (NaN, infinity, overflow; one pass over the
    array). A lazy image's (dask, zarr) are never read here, so this is safe on a GUI thread for it;
    the job checks them plane by plane as it reads them.
    """
    check_layout(info, image, acquisition.axes)
    if values:
        check_values_before_computing(info, image)
    notes = [check_pixel_size(info, acquisition.pixel_size_um)]
    if info.base:
        from .residual import TIEBase, optics_mismatch

        notes.append(optics_mismatch(TIEBase.from_dict(info.base), acquisition.wavelength_um, acquisition.dz_um))
    return [note for note in notes if note]


def start_job(info: ModelInfo, image, acquisition: Acquisition, settings: ReconstructionSettings,
              hooks: Hooks) -> None:
    """What every job checks before it opens an output or computes: the settings, whether the
    data-consistency step can run, and the input (:func:`check_input`; its warnings go to ``hooks``)."""
    settings.check()
    engine.consistency_strength(info, settings, acquisition.pixel_size_um)
    for note in check_input(info, image, acquisition):
        hooks.note(note)


def predict(model, info: ModelInfo, image: np.ndarray, acquisition: Acquisition | None = None,
            settings: ReconstructionSettings | None = None, hooks: Hooks | None = None,
            sink: Sink | None = None, model_path: str | Path | None = None) -> Prediction:
    """Reconstruct ``image`` (layout as for :func:`napari_cvdm.engine.reconstruct`) with every output.

    ``model_path`` goes into the record. Without a ``sink`` the outputs stay in the returned
    :class:`Prediction`. Raises InputError before computing when the input or settings are unusable;
    for bad values in a lazy input, when the plane holding them is read.
    """
    acquisition, hooks = acquisition or Acquisition(), hooks or Hooks()
    settings = settings or ReconstructionSettings()
    start_job(info, image, acquisition, settings, hooks)
    if sink is not None and not getattr(sink, "holds_all", False):
        return _predict_planes(model, info, image, acquisition, settings, hooks, sink, model_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said through hooks.note above
        result = engine.reconstruct(model, info, image, settings, hooks.progress, hooks.should_stop,
                             input_pixel_size_um=acquisition.pixel_size_um, wavelength_um=acquisition.wavelength_um,
                             dz_um=acquisition.dz_um, na=acquisition.na, on_partial=hooks.on_partial,
                             on_base=_preview_bases(info, image, acquisition, hooks), values_checked=True)
    uncertainty = uncertainty_outputs(info, result.variance, image, settings.n_samples, acquisition.pixel_size_um,
                                      sampling=result.metadata)
    hooks.note(" ".join(note for note in (uncertainty.warning, uncertainty.sampler_note) if note))
    consistency = consistency_output(info, result.mean, image, acquisition)
    prediction = Prediction(result, uncertainty, consistency)
    prediction.record = _record(prediction, info, image, acquisition, model_path)
    _deliver(prediction, sink)
    return prediction


def _predict_planes(model, info: ModelInfo, image, acquisition: Acquisition, settings: ReconstructionSettings,
                    hooks: Hooks, sink: Sink, model_path: str | Path | None) -> Prediction:
    """The job plane by plane into a streaming ``sink``: one plane's outputs held at a time; the planes
    the sink already holds (a resumed run) are skipped."""
    layout = output_layout(info, image, settings, acquisition.pixel_size_um)
    done = dict(sink.open(layout) or {}) if hasattr(sink, "open") else {}
    planes = PlaneOutputs(info, settings, acquisition, records=done)

    def on_plane(p: int, result: Reconstruction, raw: np.ndarray) -> None:
        deliver_plane(sink, layout, p, planes.plane(p, result, raw), planes.records[p])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # said through hooks.note above
        result = engine.reconstruct(model, info, image, settings, hooks.progress, hooks.should_stop,
                                    input_pixel_size_um=acquisition.pixel_size_um,
                                    wavelength_um=acquisition.wavelength_um, dz_um=acquisition.dz_um,
                                    na=acquisition.na, on_partial=hooks.on_partial, on_plane=on_plane,
                                    skip=frozenset(done), values_checked=True)
    return finish_planes(result, planes, layout, info, image, acquisition, hooks, sink, model_path)


def deliver_plane(sink: Sink, layout: dict, p: int, arrays: dict[str, np.ndarray], record: dict) -> None:
    """Put input plane ``p``'s outputs (``arrays``, as :meth:`PlaneOutputs.plane` gives them) in ``sink``;
    an output missing for this plane (a consistency map that could not be computed) is written as NaN."""
    for name, plan in layout.items():
        per_plane = plan.planes // max(1, int(np.prod(plan.shape[:plan.n_lead], dtype=np.int64)))
        array = arrays.get(name)
        flat = np.full((per_plane, *plan.shape[-2:]), np.nan, np.float32) if array is None \
            else array.reshape(-1, *array.shape[-2:])
        for i, data in enumerate(flat):
            sink.put(name, p * len(flat) + i, plan.planes, data)
    if hasattr(sink, "plane_done"):
        sink.plane_done(p, record)


def finish_planes(result: Reconstruction, planes: PlaneOutputs, layout: dict, info: ModelInfo, image,
                  acquisition: Acquisition, hooks: Hooks, sink: Sink, model_path: str | Path | None) -> Prediction:
    """The streamed job's Prediction (summaries, no arrays) and record, and the sink closed."""
    result.metadata = planes.metadata(result.metadata)
    uncertainty = planes.uncertainty(result.metadata)
    hooks.note(" ".join(note for note in (uncertainty.warning, uncertainty.sampler_note) if note))
    prediction = Prediction(result, uncertainty, planes.consistency(image), layout=layout)
    prediction.record = _record(prediction, info, image, acquisition, model_path)
    sink.close(prediction)
    return prediction


def _preview_bases(info: ModelInfo, image: np.ndarray, acquisition: Acquisition, hooks: Hooks):
    """Report the classical preview now, and return the engine's ``on_base``: the first plane's base
    replaces its preview (later planes' bases arrive after samples, no longer a preview)."""
    if hooks.on_preview is None:
        return None
    preview = None
    if has_classical_preview(info):
        preview = classical_preview(info, image, pixel_um=acquisition.pixel_size_um, dz_um=acquisition.dz_um,
                                    wavelength_um=acquisition.wavelength_um)
        hooks.on_preview(preview)
    planes = plane_count(info, image)

    def on_base(plane: int, base: np.ndarray) -> None:
        shown = with_first_base(preview, base, planes) if plane == 0 else None
        if shown is not None:
            hooks.on_preview(shown)

    return on_base


def _record(prediction: Prediction, info: ModelInfo, image: np.ndarray, acquisition: Acquisition,
            model_path: str | Path | None) -> dict:
    """The JSON-safe record of a finished job (a CLI sidecar, a layer's metadata)."""
    from . import __version__

    result, uncertainty = prediction.reconstruction, prediction.uncertainty
    pixel = acquisition.pixel_size_um if acquisition.pixel_size_um is not None else info.input_pixel_size_um
    record = {
        "input": acquisition.name, "input_shape": list(np.shape(image)), "input_axes": acquisition.axes,
        "input_pixel_size_um": pixel, "output_pixel_size_um": result.pixel_size_um,
        "upsampling_factor": result.upsampling_factor, "unit": result.unit,
        "calibrated": uncertainty.calibrated, "uncertainty": uncertainty.summary(),
        "consistency": prediction.consistency.summary,
        "model": {"path": None if model_path is None else str(Path(model_path).resolve()), **info.to_dict()},
        "settings": result.metadata, "napari_cvdm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if int(result.metadata.get("n_samples", 2)) < 2:
        record["variance"] = NO_VARIANCE
    return record


def _deliver(prediction: Prediction, sink: Sink | None) -> None:
    """Hand every output to ``sink`` one 2-D plane at a time (C order of its leading axes), then close it."""
    if sink is None:
        return
    for name, array in prediction.outputs().items():
        planes = array.reshape(-1, *array.shape[-2:])
        for index, plane in enumerate(planes):
            sink.put(name, index, len(planes), plane)
    sink.close(prediction)
