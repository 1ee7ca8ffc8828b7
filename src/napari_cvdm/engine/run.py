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
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..checkpoint import ModelInfo
from ..errors import Cancelled, InputError
from ..model import CVDM, SAMPLERS
from ..model.samplers import RuntimeOptions, SamplingOptions
from ..residual import base_for
from .checks import check_call, check_memory, check_pixel_size, planes_of, validate_input
from .plane import PlaneRun, ProgressCallback, StepCounter, StopCheck, prepare_plane, steps_per_plane
from .settings import ReconstructionSettings, autocast_dtype, resolve_device
from .tiling import NOISE_BLOCK, TileGrid, network_stride

#: ``on_partial(result)``: the reconstruction so far, after each round of samples.
PartialCallback = Callable[["Reconstruction"], None]
#: Output pixels per network call when ``max_batch`` is None (4 samples of a 320² tile).
PIXELS_PER_CALL = 4 * 320 * 320


@dataclass
class Reconstruction:
    """Result on the output grid, float32.

    ``mean`` ``(..., H_out, W_out)`` in the target unit (``rad`` for QPI): the mean of the N
    samples, for a residual model with its refinement shrunk toward the base
    (``metadata["refinement_weight"]``, one w per plane); ``variance``
    the unbiased variance of the N samples in unit², ``gamma_map`` γ(t = 0.5, y)
    (unitless, low = noise injected early = harder pixel); ``samples``
    ``(..., N, H_out, W_out)`` when kept. A model with several target channels adds a
    channel axis before ``H_out``. ``pixel_size_um`` is the output pixel size.
    ``metadata``: the resolved settings (sampler, steps, η, device, precision, tiles).
    """

    mean: np.ndarray
    variance: np.ndarray
    gamma_map: np.ndarray
    samples: np.ndarray | None
    upsampling_factor: int
    pixel_size_um: float | None
    unit: str = "a.u."
    metadata: dict = field(default_factory=dict)


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
    on_partial: PartialCallback | None = None,
    on_base: Callable[[int, np.ndarray], None] | None = None,
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
    an SR input already on the output grid. ``wavelength_um``/``dz_um``: QPI optics (None: the model's).
    """
    settings, optics = _checked(model, info, image, settings, input_pixel_size_um, wavelength_um, dz_um)
    device = resolve_device(settings.device)
    model = model.to(device).eval()
    factor = 1 if upsampled else int(info.upsampling_factor)
    planes, lead = planes_of(info, np.asarray(image))
    outputs = Outputs.allocate(info, lead, len(planes), planes.shape[-2] * factor, planes.shape[-1] * factor,
                                int(settings.n_samples) if settings.keep_samples else 0)
    tiling = TileGrid.build(*outputs.mean.shape[-2:], settings.tile_size, int(settings.tile_overlap),
                             network_stride(model))
    run = _sampling(info, settings, device, tiling)
    pixel_size = input_pixel_size_um if input_pixel_size_um is not None else info.input_pixel_size_um
    metadata = _metadata(settings, run, model, device, tiling, input_pixel_size_um)

    def result(samples_done: int, plane: int, final: bool) -> Reconstruction:
        per_plane = {key: list(metadata[key]) for key in ("grid_reference_lambda", "refinement_weight")}
        return outputs.result(info, pixel_size, {**metadata, **per_plane, "samples_done": samples_done,
                                                 "plane": plane, "planes": len(planes)}, final)

    counter = StepCounter(len(planes) * steps_per_plane(model, tiling, run), progress, should_stop)
    finished = [0, 0, 0]  # rounds finished, plane, its samples
    try:
        for p, raw in enumerate(planes):
            plane_run = PlaneRun.start(model, info, raw, p, factor, optics, device, run, tiling, counter,
                                       on_base)
            for done in _rounds(plane_run, p, model, run, outputs, tiling, metadata, counter, should_stop):
                finished = [finished[0] + 1, p, done]
                if on_partial is not None and (p < len(planes) - 1 or done < run.n_samples):
                    on_partial(result(done, p, final=False))
    except Cancelled as stopped:
        partial = result(finished[2], finished[1], final=False) if finished[0] else None
        raise Cancelled(str(stopped), partial=partial) from None
    return result(run.n_samples, len(planes) - 1, final=True)


def _rounds(plane_run: PlaneRun, p: int, model: CVDM, run: Sampling, outputs: Outputs, tiling: TileGrid,
            metadata: dict, counter: StepCounter, should_stop: StopCheck | None):
    """Draw plane ``p``'s samples round by round into ``outputs``, recording its λ reference and refinement
    weight in ``metadata``; yields the samples done after each round."""
    metadata["grid_reference_lambda"].append(plane_run.lam_ref)
    metadata["refinement_weight"].append(None)
    plane_run.blend_gamma_into(model, outputs, p, tiling)
    for first in range(0, run.n_samples, run.chunk):
        plane_run.draw_round(model, first, min(run.chunk, run.n_samples - first), run, counter.tick, should_stop)
        metadata["refinement_weight"][p] = plane_run.blend_into(outputs, p, tiling, run.settings.shrink_refinement)
        yield plane_run.count


def _checked(model: CVDM, info: ModelInfo, image: np.ndarray, settings: ReconstructionSettings | None,
             input_pixel_size_um, wavelength_um, dz_um) -> tuple[ReconstructionSettings, dict]:
    """Every check before computing (InputError), warnings for mismatched optics; the settings and optics."""
    check_call(settings, input_pixel_size_um)
    settings = settings or ReconstructionSettings()
    settings.check()
    validate_input(info, image)
    mismatch = check_pixel_size(info, input_pixel_size_um)
    if mismatch:
        warnings.warn(mismatch, UserWarning, stacklevel=3)
    return settings, _base_optics(info, model, input_pixel_size_um, wavelength_um, dz_um)


def _metadata(settings: ReconstructionSettings, run: Sampling, model: CVDM, device: torch.device,
              tiling: TileGrid, input_pixel_size_um: float | None) -> dict:
    """The resolved settings a Reconstruction records (``grid_reference_lambda`` filled per plane)."""
    return {
        **asdict(settings), **asdict(run.options), "grid_reference_lambda": [], "refinement_weight": [],
        "formulation": model.config.formulation, "device": str(device),
        "precision": "bf16" if run.runtime.autocast_dtype is not None else "fp32",
        "tiles": [len(tiling.rows), len(tiling.cols)], "network_stride": network_stride(model),
        "input_pixel_size_um": input_pixel_size_um, "noise_block": NOISE_BLOCK,
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


@dataclass(frozen=True)
class Sampling:
    """Everything resolved once per call that every tile's sampling needs."""

    options: SamplingOptions
    runtime: RuntimeOptions
    n_samples: int
    chunk: int
    settings: ReconstructionSettings

    @property
    def rounds(self) -> int:
        """Rounds of ``chunk`` samples per plane."""
        return -(-self.n_samples // self.chunk)


def _sampling(info: ModelInfo, settings: ReconstructionSettings, device: torch.device,
              tiling: TileGrid) -> Sampling:
    n_samples = int(settings.n_samples)
    largest_tile = max(r1 - r0 for r0, r1 in tiling.rows) * max(c1 - c0 for c0, c1 in tiling.cols)
    per_call = settings.max_batch if settings.max_batch is not None else PIXELS_PER_CALL // largest_tile
    chunk = max(1, min(n_samples, int(per_call)))
    runtime = RuntimeOptions(autocast_dtype(settings.precision, device), settings.channels_last, settings.compile)
    return Sampling(_resolve_sampling(info, settings), runtime, n_samples, chunk, settings)


@dataclass
class Outputs:
    """The output arrays ``(P, Cx, H, W)`` (samples ``(P, N, Cx, H, W)``), filled plane by plane."""

    mean: np.ndarray
    variance: np.ndarray
    gamma: np.ndarray
    samples: np.ndarray | None
    lead: tuple[int, ...]
    x_channels: int

    @classmethod
    def allocate(cls, info: ModelInfo, lead: tuple[int, ...], planes: int, height: int, width: int,
                 kept_samples: int) -> Outputs:
        x_channels = int(info.config.x_channels)
        check_memory(planes * x_channels * height * width * (3 + kept_samples))
        shape = (planes, x_channels, height, width)
        samples = np.zeros((planes, kept_samples, *shape[1:]), np.float32) if kept_samples else None
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                   samples, lead, x_channels)

    def _shaped(self, array: np.ndarray, extra: tuple[int, ...] = ()) -> np.ndarray:
        spatial = array.shape[-2:] if self.x_channels == 1 else array.shape[-3:]
        return array.reshape(*self.lead, *extra, *spatial)

    def result(self, info: ModelInfo, pixel_size: float | None, metadata: dict, final: bool) -> Reconstruction:
        """The arrays as a :class:`Reconstruction` (copies unless ``final``; no samples unless ``final``)."""
        own = (lambda a: a) if final else np.copy
        return Reconstruction(
            mean=self._shaped(own(self.mean)), variance=self._shaped(own(self.variance)),
            gamma_map=self._shaped(own(self.gamma)),
            samples=self._shaped(self.samples, (self.samples.shape[1],)) if final and self.samples is not None
            else None,
            upsampling_factor=int(info.upsampling_factor),
            pixel_size_um=None if pixel_size is None else pixel_size / int(info.upsampling_factor),
            unit=info.target_unit, metadata=metadata,
        )


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
