"""``reconstruct()``: N samples of every plane of an image, tiled, with mean, variance and γ map.

``reconstruct(model, info, image, settings)`` turns a raw microscope image into the mean of N CVDM
samples (in the target's unit), their unbiased per-pixel variance (unit²) and the schedule map
γ(t = 0.5, y) (unitless), on the output grid (``info.upsampling_factor`` times finer than the input).

Inputs (``info.config.y_channels`` decides the layout; a channel axis exists only when the
condition has more than one channel): SR ``(..., h, w)`` raw widefield at the input pixel size,
upsampled ×factor inside (the training convention); QPI ``(..., 2, H, W)`` = ``[I(−dz), I(+dz)]``;
leading T/Z axes are processed plane by plane (:mod:`.plane`), in rounds of ``settings.max_batch``
samples over the plane's tiles (:mod:`.tiling`). How tiling, rounds and the residual mean work,
and what is guaranteed: docs/engine.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import asdict, replace

import numpy as np
import torch

from ..acquisition import Acquisition, input_optics
from ..checkpoint import ModelInfo
from ..errors import Cancelled, InputError
from ..model import CVDM, SAMPLERS
from ..model.samplers import RuntimeOptions, SamplingOptions
from ..residual import base_for
from .checks import (
    check_call, check_layout, check_pixel_size, check_plane_values, check_values_before_computing, is_lazy,
    lead_shape, plane_at, plane_count, planes_of, validate_input,
)
from . import data_step
from .outputs import PER_PLANE, Outputs, Reconstruction, Sampling
from .plane import PlaneRun, ProgressCallback, StepCounter, StopCheck, prepare_plane, steps_per_plane
from .settings import ReconstructionSettings, autocast_dtype, resolve_device
from .tiling import NOISE_BLOCK, TileGrid, network_stride

#: ``on_partial(result)``: the reconstruction so far, after each round of samples.
PartialCallback = Callable[["Reconstruction"], None]
#: Output pixels per network call when ``max_batch`` is None (4 samples of a 320² tile).
PIXELS_PER_CALL = 4 * 320 * 320


#: ``on_plane(p, result, raw)``: plane ``p``'s finished result (leading axes dropped) and its raw input ``(Cy, h, w)``.
PlaneCallback = Callable[[int, "Reconstruction", np.ndarray], None]


def reconstruct(
    model: CVDM,
    info: ModelInfo,
    image: np.ndarray,
    settings: ReconstructionSettings | None = None,
    progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    *,
    input_pixel_size_um: float | None = None,
    upsampled: bool = False,
    wavelength_um: float | None = None,
    dz_um: float | None = None,
    na: float | None = None,
    on_partial: PartialCallback | None = None,
    on_base: Callable[[int, np.ndarray], None] | None = None,
    on_plane: PlaneCallback | None = None,
    skip: frozenset[int] = frozenset(),
    values_checked: bool = False,
) -> Reconstruction:
    """Reconstruct ``image`` (layout in the module docstring) with ``model``.

    Stages: checks → per plane, condition, base b(y) and λ on the whole plane → rounds of
    ``settings.max_batch`` samples (all N when None) over its tiles → their blend. After each
    round but the last, ``on_partial(rec)`` gets the result so far (``rec.metadata``:
    ``samples_done`` of plane ``plane`` of ``planes``; later planes zero; no samples).
    ``progress(done, total)`` counts denoising steps; ``should_stop()`` is polled before each
    and raises :class:`~napari_cvdm.errors.Cancelled`, whose ``partial`` is the result of the
    rounds finished (None if none). ``on_base(plane, base)``: a residual model's base b(y) of
    each plane (:meth:`Plane.base_in_target_units`) as soon as it exists, before that plane's
    λ and samples. ``input_pixel_size_um``: None = the model's. ``upsampled``:
    an SR input already on the output grid. ``wavelength_um`` (QPI: illumination, SR: emission), ``dz_um``
    (QPI) and ``na`` (SR): the input's optics (None: the model's; :func:`~napari_cvdm.acquisition.input_optics`).

    ``on_plane``: stream (:data:`PlaneCallback`: one plane held; no arrays returned); ``skip``: planes left out.
    The input's values (NaN, infinity, overflow) are checked once: an in-memory image's before computing,
    unless ``values_checked`` (the caller did, e.g. :func:`napari_cvdm.predict.check_input`); a lazy
    image's (dask, zarr) plane by plane as each is read, whatever ``values_checked`` says.
    """
    settings, optics = _checked(model, info, image, settings, input_pixel_size_um, wavelength_um, dz_um,
                                values_checked)
    device = resolve_device(settings.device)
    model = model.to(device).eval()
    factor = 1 if upsampled else int(info.upsampling_factor)
    count, pixel_size = plane_count(info, image), input_pixel_size_um or info.input_pixel_size_um
    acquisition = Acquisition(pixel_size_um=input_pixel_size_um, wavelength_um=wavelength_um, dz_um=dz_um, na=na)
    outputs, tiling, run, metadata = _prepare(model, info, image, settings, device, factor, acquisition,
                                              streaming=on_plane is not None)

    def result(samples_done: int, plane: int, final: bool, with_samples: bool = False) -> Reconstruction:
        per_plane = {key: list(metadata[key]) for key in PER_PLANE}
        return outputs.result(info, pixel_size, {**metadata, **per_plane, "samples_done": samples_done,
                                                 "plane": plane, "planes": count}, final, with_samples)

    todo, finished = [p for p in range(count) if p not in skip], [0, 0, 0]  # rounds finished, plane, its samples
    counter = StepCounter(len(todo) * steps_per_plane(model, tiling, run), progress, should_stop)
    try:
        for p, done, raw in _sample_planes(model, info, image, skip, factor, optics, device, run, tiling, counter,
                                           on_base, outputs, metadata, streaming=on_plane is not None):
            finished = [finished[0] + 1, p, done]
            if on_partial is not None and (p < todo[-1] or done < run.n_samples):
                on_partial(result(done, p, final=False))
            if on_plane is not None and done == run.n_samples:
                on_plane(p, result(run.n_samples, p, final=False, with_samples=True), raw)
    except Cancelled as stopped:
        partial = result(finished[2], finished[1], final=False) if finished[0] and on_plane is None else None
        raise Cancelled(str(stopped), partial=partial) from None
    final = result(run.n_samples, count - 1, final=on_plane is None)  # streamed: arrays went out plane by plane
    return final if on_plane is None else replace(final, mean=None, variance=None, gamma_map=None, samples=None)


def _prepare(model: CVDM, info: ModelInfo, image, settings: ReconstructionSettings, device: torch.device,
             factor: int, acquisition: Acquisition, streaming: bool):
    """``(outputs, tiling, sampling, metadata)`` of a call: every plane's outputs, or one plane's when ``streaming``."""
    count, lead = plane_count(info, image), lead_shape(info, image)
    outputs = Outputs.allocate(info, () if streaming else lead, 1 if streaming else count, image.shape[-2] * factor,
                               image.shape[-1] * factor, int(settings.n_samples) if settings.keep_samples else 0)
    tiling = TileGrid.build(*outputs.mean.shape[-2:], settings.tile_size, int(settings.tile_overlap),
                            network_stride(model))
    run = _sampling(info, settings, device, tiling, acquisition, factor)
    return outputs, tiling, run, _metadata(settings, run, model, device, tiling, acquisition.pixel_size_um)


def _sample_planes(model: CVDM, info: ModelInfo, image, skip, factor: int, optics: dict, device: torch.device,
                   run: Sampling, tiling: TileGrid, counter: StepCounter, on_base, outputs: Outputs, metadata: dict,
                   streaming: bool):
    """Every plane not in ``skip``, round by round into ``outputs`` (slot 0 when ``streaming``); yields
    ``(plane, samples done, its raw input)`` after each round. Skipped planes get None λ and weight; a lazy
    image's planes have their values checked as they are read (an in-memory one's were, before)."""
    count = plane_count(info, image)
    for p in range(count):
        if p in skip:
            for key in PER_PLANE:
                metadata[key].append(None)
            continue
        raw = plane_at(info, image, p)
        if is_lazy(image):
            check_plane_values(raw, p, count)
        plane_run = PlaneRun.start(model, info, raw, p, factor, optics, device, run, tiling, counter, on_base)
        for done in _rounds(plane_run, p, 0 if streaming else p, model, run, outputs, tiling, metadata,
                            counter, counter.should_stop):
            yield p, done, raw


def _rounds(plane_run: PlaneRun, p: int, slot: int, model: CVDM, run: Sampling, outputs: Outputs,
            tiling: TileGrid, metadata: dict, counter: StepCounter, should_stop: StopCheck | None):
    """Draw plane ``p``'s samples round by round into ``outputs[slot]``, recording its λ reference and
    refinement weight in ``metadata``; yields the samples done after each round."""
    metadata["grid_reference_lambda"].append(plane_run.lam_ref)
    metadata["refinement_weight"].append(None)
    metadata["base_error_variance"].append(plane_run.base_variance)
    plane_run.blend_gamma_into(model, outputs, slot, tiling)
    for first in range(0, run.n_samples, run.chunk):
        plane_run.draw_round(model, first, min(run.chunk, run.n_samples - first), run, counter.tick, should_stop)
        metadata["refinement_weight"][p] = plane_run.blend_into(outputs, slot, tiling,
                                                                run.settings.shrink_refinement)
        yield plane_run.count


def _checked(model: CVDM, info: ModelInfo, image: np.ndarray, settings: ReconstructionSettings | None,
             input_pixel_size_um, wavelength_um, dz_um,
             values_checked: bool) -> tuple[ReconstructionSettings, dict]:
    """Every check before computing (InputError), warnings for mismatched optics; the settings and optics.
    An in-memory image's values are checked here unless ``values_checked``; a lazy image's never are."""
    check_call(settings, input_pixel_size_um)
    settings = settings or ReconstructionSettings()
    settings.check()
    check_layout(info, image)
    if not values_checked:
        check_values_before_computing(info, image)
    mismatch = check_pixel_size(info, input_pixel_size_um)
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=3)
    return settings, _base_optics(info, model, input_pixel_size_um, wavelength_um, dz_um)


def _metadata(settings: ReconstructionSettings, run: Sampling, model: CVDM, device: torch.device,
              tiling: TileGrid, input_pixel_size_um: float | None) -> dict:
    """The resolved settings a Reconstruction records (``grid_reference_lambda`` filled per plane)."""
    return {
        **asdict(settings), **asdict(run.options), **{key: [] for key in PER_PLANE},
        "formulation": model.config.formulation, "device": str(device),
        "precision": "bf16" if run.runtime.autocast_dtype is not None else "fp32",
        "tiles": [len(tiling.rows), len(tiling.cols)], "network_stride": network_stride(model),
        "input_pixel_size_um": input_pixel_size_um, "noise_block": NOISE_BLOCK,
        "consistency_strength": run.consistency_strength, **({"consistency_optics": run.optics} if run.optics else {}),
    }


def _resolve_sampling(info: ModelInfo, settings: ReconstructionSettings) -> SamplingOptions:
    """Sampler, steps, η, clip and time grid: the settings' where given, else the model's."""
    try:
        options = SamplingOptions.resolve(info.sampler, sampler=settings.sampler, steps=settings.steps,
                                          eta=settings.eta, grid=settings.grid)
        if settings.log_snr_max is not None:
            options = replace(options, log_snr_range=(options.log_snr_range[0], float(settings.log_snr_max)))
    except ValueError as error:  # the settings are checked: the model file's defaults are at fault
        raise InputError(f"The model's default sampling settings are unusable: {error}.") from None
    if options.sampler not in SAMPLERS:
        raise InputError(f"The model's default sampler '{options.sampler}' is unknown; "
                         f"choose one of: {', '.join(SAMPLERS)}.")
    return options


def _base_optics(info: ModelInfo, model: CVDM, pixel_size_um, wavelength_um, dz_um) -> dict:
    """The optics the TIE base uses (None = the model's), with a warning when they differ from training."""
    optics, mismatch = base_for(model.config).plane_optics(info, pixel_size_um, wavelength_um, dz_um)
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=3)
    return optics


def _sampling(info: ModelInfo, settings: ReconstructionSettings, device: torch.device, tiling: TileGrid,
              acquisition: Acquisition, factor: int) -> Sampling:
    n_samples = int(settings.n_samples)
    largest_tile = max(r1 - r0 for r0, r1 in tiling.rows) * max(c1 - c0 for c0, c1 in tiling.cols)
    per_call = settings.max_batch if settings.max_batch is not None else PIXELS_PER_CALL // largest_tile
    chunk = max(1, min(n_samples, int(per_call)))
    runtime = RuntimeOptions(autocast_dtype(settings.precision, device), settings.channels_last, settings.compile)
    strength, optics = _consistency(info, settings, acquisition, factor)
    return Sampling(_resolve_sampling(info, settings), runtime, n_samples, chunk, settings, strength, optics)


def consistency_strength(info: ModelInfo, settings: ReconstructionSettings, pixel_size_um: float | None = None,
                         upsampled: bool = False) -> float:
    """ζ of the data-consistency step: the setting, else the model's, else 0. InputError (one sentence,
    before any computing) when the step is on and cannot run on this model or input."""
    strength = settings.consistency_strength
    if strength is None:
        strength = float((info.sampler or {}).get("consistency_strength", 0.0))
    if strength == 0:
        return 0.0
    if info.task != "sr" and not (info.task == "qpi" and data_step.QPI_STEP is not None):
        raise InputError(f"The data-consistency step is for SR models (a {info.task} model has none that helps: "
                         "docs/uncertainty.md); set it to 0.")
    if (pixel_size_um or info.input_pixel_size_um) is None:
        raise InputError("The data-consistency step needs the input's pixel size; give it, or set the step to 0.")
    if info.task == "sr" and upsampled:
        raise InputError("The data-consistency step needs the camera-grid input, not one already upsampled.")
    return float(strength)


def _consistency(info: ModelInfo, settings: ReconstructionSettings, acquisition: Acquisition,
                 factor: int) -> tuple[float, dict]:
    """:func:`consistency_strength` and, when the step is on, its optics (with the input pixel, µm)."""
    strength = consistency_strength(info, settings, acquisition.pixel_size_um,
                                    upsampled=factor != int(info.upsampling_factor))
    if strength == 0:
        return 0.0, {}
    optics, _ = input_optics(info, acquisition)
    return strength, {**optics, "input_pixel_um": float(acquisition.pixel_size_um or info.input_pixel_size_um)}


def reconstruct_base(model: CVDM, info: ModelInfo, image: np.ndarray, *, device: str = "auto",
                     input_pixel_size_um: float | None = None, wavelength_um: float | None = None,
                     dz_um: float | None = None) -> np.ndarray | None:
    """The residual model's base estimate b(y) alone, on the output grid in the target unit.

    Cheap (no sampling: one TIE solve or one predictor pass per plane), so it serves as a
    preview and as the direct predictor's own result. Shaped like ``reconstruct(...).mean``;
    None for a model of the paper's formulation, which has no base.
    """
    if not base_for(model.config).has_base:
        return None
    validate_input(info, image)
    optics = _base_optics(info, model, input_pixel_size_um, wavelength_um, dz_um)
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    planes, lead = planes_of(info, np.asarray(image))
    out = [prepare_plane(model, info, raw, int(info.upsampling_factor), torch_device, optics).base_in_target_units()
           for raw in planes]
    return np.stack(out).reshape(*lead, *out[0].shape)


def output_pixel_size(info: ModelInfo, input_pixel_size_um: float | None) -> float | None:
    """Output pixel size (µm) for an input of ``input_pixel_size_um`` (None: the model's)."""
    size = input_pixel_size_um if input_pixel_size_um is not None else info.input_pixel_size_um
    return None if size is None else size / int(info.upsampling_factor)
