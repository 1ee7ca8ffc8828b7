"""Batch reconstruction: N samples per image, tiled, with mean, variance and γ map.

``reconstruct(model, info, image, settings)`` turns a raw microscope image into
the mean of N CVDM samples (in the target's physical unit), their unbiased
per-pixel variance (unit²) and the schedule map γ(t = 0.5, y) (unitless), on the
output grid (``info.upsampling_factor`` times finer than the input).

Inputs (``info.config.y_channels`` decides the layout; a channel axis exists only
when the condition has more than one channel):

- SR: ``(..., h, w)`` raw widefield at the input pixel size, upsampled ×factor
  inside with :func:`napari_cvdm.physics.upsample` (the training convention);
- QPI: ``(..., 2, H, W)`` = ``[I(−dz), I(+dz)]``;
- leading T/Z dimensions are processed plane by plane.

Tiling (``settings.tile_size``, ``settings.tile_overlap``, output pixels)
-------------------------------------------------------------------------
Tiles start at multiples of the network stride (its down-sampling factor), so a
tile sees the same pixel grid phase as the whole image. Each tile's result is
weighted by a separable profile that is 0 in the outer quarter of every
overlap at an inner tile edge, rises as a raised cosine over the middle half,
and is 1 elsewhere (image borders are not ramped); the weighted sums are divided
by the summed weights. Mean, variance, γ map and the kept samples all use the
same weights. The initial noise (and the per-step noise of the stochastic
samplers) is a function of the *global* pixel position: it is drawn in fixed
64 × 64 blocks, each from a generator seeded by (seed, plane, step, sample, block
row, block column), so a tile sees exactly the noise the untiled run would see there
and goes through :func:`napari_cvdm.model.sample` as its ``noise`` source.

Rounds: a plane's N samples are drawn in rounds of ``settings.max_batch`` (the samples
run through the network together; all N when None) over all of its tiles, so a
caller sees the mean and variance of the samples so far after each round
(``on_partial``), and a stop keeps them. Each sample's noise is keyed to its index,
so the result does not depend on how the samples are split into rounds.

Residual models (:mod:`napari_cvdm.model.cvdm`): the base b(y) is computed once per
*plane* before any tiling (the TIE phase of the whole stack, or the direct predictor
on the whole plane), and so is λ of their smooth schedule network; tiles are then cut
from the condition ``[y, b]`` and from λ, so both are the same whatever the tiling.
The output is ``b + s·r̂`` per sample, the variance s² times the residuals'. The mean is
``b + w·d`` with d = s times the residuals' mean and w the share of d that is not the
sampling noise of N samples (:func:`~napari_cvdm.model.cvdm.refinement_weight`, computed on
the whole blended plane; ``settings.shrink_refinement=False``: w = 1, the plain sample mean). The paper's formulation computes λ(y) once per tile
before sampling, as its files expect. Either way the ``log_snr`` time grid is built
for the median of the plane's blended λ map, so all tiles walk the grid the untiled
image would.

Variance in overlaps: per-tile variances are blended with the same weights as
the means, ``V = w V_a + (1 − w) V_b``. Each tile's N-sample variance estimates
the same per-pixel posterior variance, so their weighted average does too,
whatever the relation between the tiles' samples. That relation is not fixed:
the noise is position-keyed, but a trained U-Net sees a different context in each
tile (GroupNorm, attention), and its trajectories diverge — sample n of one tile
and sample n of its neighbour correlate at ~0.6 for DPM-Solver++ 2M and ~0 for
the stochastic samplers (docs/benchmarks.md), at ~1 only for networks that are
local or nearly untrained. The variance of the blended samples,
``w² V_a + (1 − w)² V_b + 2w(1 − w) C_ab``, would therefore dip by up to half in
the middle of every overlap (a stripe of false confidence along each seam), and
the mixture rule ``w V_a + (1 − w) V_b + w(1 − w)(m_a − m_b)²`` would add the
tiles' disagreement, a tiling error rather than posterior spread. Consequence for
``keep_samples``: in the cross-faded band the kept samples are blends of two
tiles' samples, less spread than the reported variance says there.

What is guaranteed: for a network that is translation-equivariant under shifts
by its stride and whose output (through the schedule network and every
sampling step) depends only on inputs within ``tile_overlap // 4`` pixels, the
tiled result equals the untiled one up to float rounding, for every sampler.
The shipped U-Nets are *not* local in that sense: GroupNorm and the
bottleneck self-attention use statistics of the whole tile. A tile therefore
differs slightly from the same region of the whole image; the cross-fade makes
the difference a smooth field (no seams), whose size the tests measure. Memory
grows with ``tile_size² × n_samples`` for the network and linearly with the image
for the input and the three output maps, so large images need a tile size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple
from dataclasses import asdict, dataclass, field, replace

import warnings

import numpy as np
import torch

from .checkpoint import ModelInfo
from .errors import Cancelled, InputError
from .residual import ResidualBase, WholePlane, base_for
from .model import CVDM, SAMPLERS, refinement_weight
from .engine.settings import (  # noqa: F401 - the engine's public names
    MAX_SAMPLER_STEPS, MAX_SAMPLES, MIN_TILE_SIZE, ReconstructionSettings, autocast_dtype, available_devices,
    resolve_device,
)
from .model.samplers import RunningMoments, RuntimeOptions, SamplingOptions, sample

ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]
#: ``on_partial(result)``: the reconstruction so far, after each round of samples.
PartialCallback = Callable[["Reconstruction"], None]

#: Side of the global noise blocks (output pixels); changing it changes the noise for a seed.
NOISE_BLOCK = 64
#: Smallest image side (input pixels) a model is run on.
MIN_INPUT_SIZE = 8
#: Largest |value| of an input image: the variance of float32 samples of larger values overflows.
MAX_INPUT_MAGNITUDE = 1e15
#: Output pixels per network call when ``max_batch`` is None (4 samples of a 320² tile).
PIXELS_PER_CALL = 4 * 320 * 320
#: Fraction of the machine's memory a reconstruction's outputs may take.
MEMORY_FRACTION = 0.7
#: Relative mismatch of input and training pixel size above which a warning is given.
PIXEL_SIZE_TOLERANCE = 0.1


# ----------------------------------------------------------------------------- settings and result


def check_call(settings, input_pixel_size_um) -> None:
    """InputError for arguments of :func:`reconstruct` of the wrong kind (before any computing)."""
    if settings is not None and not isinstance(settings, ReconstructionSettings):
        raise InputError(f"settings must be a ReconstructionSettings (got {type(settings).__name__}); "
                         "e.g. ReconstructionSettings(**your_dict).")
    if input_pixel_size_um is None:
        return
    if isinstance(input_pixel_size_um, bool) or not isinstance(input_pixel_size_um, int | float | np.floating) \
            or not np.isfinite(input_pixel_size_um) or input_pixel_size_um <= 0:
        raise InputError(f"input_pixel_size_um must be a positive number of µm (got {input_pixel_size_um!r}).")


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


# ----------------------------------------------------------------------------- input checks


def _task_words(info: ModelInfo) -> str:
    return {"sr": "super-resolution", "qpi": "QPI"}.get(info.task, info.task)


def validate_input(info: ModelInfo, image: np.ndarray, axes: str | None = None) -> None:
    """Raise InputError with one clear sentence if ``image`` cannot go through this model.

    Cheap (shape, dtype, finiteness): safe to call on the GUI thread. ``axes`` (e.g.
    ``"CYX"`` from a TIFF) lets a named channel axis be checked against the model.
    """
    channels = int(info.config.y_channels)
    try:
        array = np.asarray(image)
    except Exception:  # noqa: BLE001 - anything not array-like
        raise InputError(f"The input is not an image (got {type(image).__name__}).") from None
    if array.dtype.kind not in "uif":
        raise InputError(f"The input holds {array.dtype} values; expected a grayscale intensity image.")
    if channels == 1:
        layout = "a 2-D image (H, W) or a stack (…, H, W)"
        if info.task == "sr":
            layout = "a raw widefield image (H, W) or a stack of them (…, H, W)"
        if array.ndim < 2:
            raise InputError(f"This {_task_words(info)} model needs {layout}; got shape {array.shape}.")
        if axes and "C" in axes and array.shape[axes.index("C")] > 1:
            raise InputError(
                f"The image has {array.shape[axes.index('C')]} channels (axes {axes}), but this "
                f"{_task_words(info)} model takes single-channel images"
                + ("; a defocus stack needs a QPI model." if array.shape[axes.index("C")] == 2 else ".")
            )
    else:
        what = "a defocus stack [I(−dz), I(+dz)]" if info.task == "qpi" else f"{channels} channels"
        if array.ndim < 3 or array.shape[-3] != channels:
            raise InputError(f"This {_task_words(info)} model needs {what} shaped (…, {channels}, H, W); "
                             f"got shape {array.shape}.")
        if axes and len(axes) == array.ndim and axes[-3] not in "CZ":
            raise InputError(f"This {_task_words(info)} model needs the channel axis third from last "
                             f"(…, {channels}, H, W); the image's axes are {axes}.")
    if min(array.shape[-2:]) < MIN_INPUT_SIZE:
        raise InputError(f"The image is too small ({array.shape[-2]}×{array.shape[-1]} pixels); "
                         f"at least {MIN_INPUT_SIZE}×{MIN_INPUT_SIZE} is needed.")
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            bad = "NaN" if np.isnan(array).any() else "infinite"
            raise InputError(f"The image contains {bad} values ({int(array.size - finite.sum())} pixels); "
                             "replace them before reconstructing.")
    largest = float(np.abs(array).max()) if array.size else 0.0
    if largest > MAX_INPUT_MAGNITUDE:  # squares of such values overflow float32 in the variance
        raise InputError(f"The image holds values up to {largest:.3g}; intensities beyond "
                         f"{MAX_INPUT_MAGNITUDE:.0e} cannot be reconstructed in float32: rescale it first.")


def available_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    try:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(output_values: int) -> None:
    """InputError before any computing when the float32 outputs alone would not fit in memory."""
    needed, available = 4 * int(output_values), available_memory_bytes()
    if available is not None and needed > MEMORY_FRACTION * available:
        raise InputError(f"The result would need {needed / 2**30:.1f} GiB for its output images alone, but this "
                         f"machine has {available / 2**30:.1f} GiB; crop the image, reconstruct fewer planes, "
                         "or do not keep the samples.")


def check_pixel_size(info: ModelInfo, input_pixel_size_um: float | None) -> str | None:
    """A warning sentence if the input's pixel size differs from the model's training data, else None."""
    trained = info.input_pixel_size_um
    if trained is None or input_pixel_size_um is None:
        return None
    if abs(input_pixel_size_um / trained - 1.0) <= PIXEL_SIZE_TOLERANCE:
        return None
    return (f"The input pixel size ({input_pixel_size_um:.4g} µm) differs from the model's training data "
            f"({trained:.4g} µm); structures will not have the sizes the model learned.")


# ----------------------------------------------------------------------------- tiling


def tile_spans(length: int, tile: int | None, overlap: int, align: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``[0, length)`` with as few tiles of at most ``tile`` pixels
    as overlap by ``overlap``, spread evenly and each as small as that allows.

    Starts are multiples of ``align``; neighbours overlap by at least ``overlap``; the
    last tile ends at ``length`` (it may be up to ``align − 1`` pixels longer than the others).
    Spreading the tiles evenly keeps the pixels run through the network close to the
    image's (a 512² plane: 2 × 2 tiles of 272 px instead of 3 × 3 of 256 px, 1.13× its pixels
    instead of 2.25×).
    """
    if tile is None or length <= tile:
        return [(0, length)]
    tile = -(-tile // align) * align
    for count in range(2, length // align + 2):
        smallest = -(-(length + (count - 1) * overlap) // count)
        # the last tile takes up to align − 1 extra pixels, so the others may be that much smaller
        for size in range(max(align, -(-(smallest - align + 1) // align) * align), min(tile, length) + 1, align):
            starts = [i * (length - size) // (count - 1) // align * align for i in range(count)]
            ends = [start + size for start in starts[:-1]] + [length]
            if all(a < b and end - b >= overlap for a, b, end in zip(starts, starts[1:], ends)):
                return list(zip(starts, ends))
    raise ValueError(f"no tiling of {length} px with tiles of {tile} px overlapping by {overlap}")


def _raised_cosine(n: int) -> np.ndarray:
    """``n`` strictly increasing values in (0, 1)."""
    return 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)


def tile_weights(span: tuple[int, int], length: int, overlap: int) -> np.ndarray:
    """Blending profile of one tile along one axis, float64 (see the module docstring).

    From an inner tile edge inward: ``overlap // 4`` zeros, a raised cosine rising over
    the next ``overlap − 2·(overlap // 4)`` pixels, then ones; image borders get no
    ramp. Two neighbours overlapping by ``overlap`` thus cross-fade over the middle
    half of their overlap, and neither uses its outer quarter (its least reliable pixels).
    """
    start, stop = span
    margin = overlap // 4
    edge = np.concatenate([np.zeros(margin), _raised_cosine(overlap - 2 * margin)])
    weights = np.ones(stop - start)
    n = min(len(edge), len(weights))
    if start > 0:
        weights[:n] = np.minimum(weights[:n], edge[:n])
    if stop < length and n:
        weights[-n:] = np.minimum(weights[-n:], edge[:n][::-1])
    return weights


def network_stride(model: CVDM) -> int:
    """Down-sampling factor of the model's networks: tile starts must be multiples of it."""
    networks = [model.denoiser, model.schedule.spatial_net, getattr(model, "base_net", None)]
    return max(int(getattr(net, "stride", 1)) for net in networks if net is not None)


# ----------------------------------------------------------------------------- position-keyed noise


class NoiseField:
    """Standard normal noise that is a function of (seed, plane, stage, sample, channel, y, x).

    ``stage`` 0 is the initial x₁, stage k the fresh noise of sampling step k. Drawn on
    the CPU in ``NOISE_BLOCK``² blocks on the global grid, so any window reads the same
    values as the full image would, and a seed gives the same noise on every device.
    """

    def __init__(self, seed: int, plane: int, n_samples: int, channels: int):
        self.seed, self.plane, self.n_samples, self.channels = int(seed), int(plane), n_samples, channels

    def _block(self, stage: int, sample: int, by: int, bx: int) -> torch.Tensor:
        key = np.random.SeedSequence([self.seed, self.plane, stage, sample, by, bx]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(key[0]) << 32 | int(key[1]))
        return torch.randn(self.channels, NOISE_BLOCK, NOISE_BLOCK, generator=generator)

    def window(self, stage: int, ys: tuple[int, int], xs: tuple[int, int], first: int = 0,
               stop: int | None = None) -> torch.Tensor:
        """Noise of samples ``first … stop − 1`` (default all) ``(n, C, y1 − y0, x1 − x0)`` at global
        rows ``ys`` and columns ``xs``; each sample's noise is its own, whichever others are drawn."""
        (y0, y1), (x0, x1) = ys, xs
        stop = self.n_samples if stop is None else stop
        out = torch.empty(stop - first, self.channels, y1 - y0, x1 - x0)
        for by in range(y0 // NOISE_BLOCK, (y1 - 1) // NOISE_BLOCK + 1):
            for bx in range(x0 // NOISE_BLOCK, (x1 - 1) // NOISE_BLOCK + 1):
                top, left = by * NOISE_BLOCK, bx * NOISE_BLOCK
                sy = slice(max(y0, top), min(y1, top + NOISE_BLOCK))
                sx = slice(max(x0, left), min(x1, left + NOISE_BLOCK))
                for n in range(first, stop):
                    block = self._block(stage, n, by, bx)
                    out[n - first, :, sy.start - y0:sy.stop - y0, sx.start - x0:sx.stop - x0] = \
                        block[:, sy.start - top:sy.stop - top, sx.start - left:sx.stop - left]
        return out


# ----------------------------------------------------------------------------- normalisation


def _normalizer(data: dict):
    """The data module's Normalizer for a ModelInfo entry; None (identity) when the entry is empty."""
    from .data import Normalizer

    return Normalizer.from_dict(data) if data else None


def _target_denormalizer(info: ModelInfo, condition: np.ndarray):
    """Fixed normaliser mapping model outputs back to target units for one plane.

    A fixed target range (QPI phase) is used as is; a per-image recipe (SR percentiles)
    is fitted on the condition plane, so the output comes back in the input's units.
    """
    recipe = _normalizer(info.target_normalization)
    if recipe is None or recipe.is_fixed:
        return recipe
    x_channels = int(info.config.x_channels)
    source = condition if condition.shape[0] == x_channels else condition.mean(axis=0, keepdims=True)
    return recipe.fit(source)


def _scale_and_offset(normalizer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` per channel ``(C, 1, 1)`` with ``value = scale · normalised + offset``."""
    if normalizer is None:
        return np.ones((channels, 1, 1)), np.zeros((channels, 1, 1))
    low = np.broadcast_to(np.asarray(normalizer.low, dtype=np.float64), (channels,))
    high = np.broadcast_to(np.asarray(normalizer.high, dtype=np.float64), (channels,))
    scale = (high - low) / 2.0
    return scale[:, None, None], (low + scale)[:, None, None]


# ----------------------------------------------------------------------------- reconstruction


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


def _planes(info: ModelInfo, image: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(P, Cy, h, w)`` view of the input and its leading shape."""
    channels = int(info.config.y_channels)
    if channels == 1:
        lead = image.shape[:-2]
        return image.reshape(-1, 1, *image.shape[-2:]), lead
    lead = image.shape[:-3]
    return image.reshape(-1, channels, *image.shape[-2:]), lead


def plane_count(info: ModelInfo, image: np.ndarray) -> int:
    """How many planes ``image`` holds for ``info``'s model (leading axes flattened)."""
    return int(_planes(info, np.asarray(image))[0].shape[0])


class _Plane(NamedTuple):
    """One input plane ready for sampling: condition c ``(1, Cc, H, W)`` (CPU), base b ``(Cx, H, W)``
    in normalised target units (None for the paper's formulation), and ``value = scale·x + offset``."""

    condition: torch.Tensor
    base: np.ndarray | None
    scale: np.ndarray
    offset: np.ndarray

    def base_in_target_units(self) -> np.ndarray:
        """The base ``(H, W)`` (one target channel) or ``(Cx, H, W)``, float32, in the target unit."""
        value = (self.scale * self.base + self.offset).astype(np.float32)
        return value[0] if value.shape[0] == 1 else value


@torch.no_grad()
def _prepare_plane(model: CVDM, info: ModelInfo, raw: np.ndarray, factor: int, device: torch.device,
                   optics: dict, tick: Callable[[], None] | None = None,
                   beat: Callable[[], None] | None = None) -> _Plane:
    """Upsample, normalise and compute the base of one raw plane ``(Cy, h, w)``, on the whole plane.

    Before any tiling, the model's base (:mod:`napari_cvdm.residual.bases`) builds the condition:
    a TIE phase from the stack with the input's optics (``optics``: ``wavelength_um``, ``dz_um``,
    ``pixel_um``, each None for the model's), a predictor's b on the whole normalised plane
    (:func:`_predictor_base`; ``tick`` after each of its tiles), or both. ``beat()`` is called
    between the stages of an iterative TIE base (no step done).
    """
    from .physics import upsample

    condition = upsample(raw.astype(np.float32), factor) if factor > 1 else raw.astype(np.float32)
    scale, offset = _scale_and_offset(_target_denormalizer(info, condition), int(info.config.x_channels))
    input_normalizer = _normalizer(info.input_normalization)
    normalised = input_normalizer.normalize(condition) if input_normalizer is not None else condition
    y = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32))[None]
    target_normalizer = _normalizer(info.target_normalization)
    plane = WholePlane(condition, y, lambda values: target_normalizer.normalize(values),
                       lambda model_input: _predictor_base(model, model_input, device, tick), tick, beat)
    c, base = base_for(model.config).plane_condition(info, plane, optics)
    return _Plane(c, base, scale, offset)


#: Networks that see a whole plane (the direct predictor's base, a smooth schedule's λ) run
#: on planes up to this side (output px) whole, on larger ones in blended tiles of it: memory
#: (their bottleneck attention grows with the square of the pixels) and the silence between
#: progress reports stay bounded, and the result depends on the image size alone. On 512² SR
#: outputs 256-px base tiles score as the whole plane (ΔMS-SSIM −0.0004 ± 0.0004) in 0.7× the
#: time (benchmarks/base_tiles.py); λ is smooth and computed at ¼ resolution, so it takes
#: 1024-px tiles (a 4096² plane whole needed over 20 GB).
BASE_TILE = 256
BASE_TILE_OVERLAP = 64
SCHEDULE_TILE = 1024
SCHEDULE_TILE_OVERLAP = 128


def base_tiling(model: CVDM, height: int, width: int) -> _TileGrid:
    """The tiles :func:`_predictor_base` runs the predictor on for an output plane of ``height × width``."""
    return _plane_tiling(height, width, BASE_TILE, BASE_TILE_OVERLAP, network_stride(model))


def _plane_tiling(height: int, width: int, tile: int, overlap: int, align: int) -> _TileGrid:
    return _TileGrid.build(height, width, None if max(height, width) <= tile else tile, overlap, align)


@torch.no_grad()
def _on_blended_tiles(function, y: torch.Tensor, channels: int, tiling: _TileGrid, device: torch.device,
                      tick: Callable[[], None] | None = None) -> torch.Tensor:
    """``function(y tile) → (1, channels, h, w)`` over ``tiling``'s tiles of ``y`` ``(1, C, H, W)``,
    blended like the samples; float32 ``(1, channels, H, W)`` on the CPU."""
    out = np.zeros((channels, *y.shape[-2:]), np.float32)
    for (r0, r1), wy in zip(tiling.rows, tiling.row_weights):
        for (c0, c1), wx in zip(tiling.cols, tiling.col_weights):
            tile = function(y[..., r0:r1, c0:c1].to(device))[0].float().cpu().numpy()
            out[:, r0:r1, c0:c1] += (wy[:, None] * wx[None, :]).astype(np.float32) * tile
            if tick is not None:
                tick()
    tiling.normalise(out)
    return torch.from_numpy(out)[None]


def _predictor_base(model: CVDM, y: torch.Tensor, device: torch.device,
                    tick: Callable[[], None] | None) -> np.ndarray:
    """The predictor's base b(y) ``(Cx, H, W)`` (float32, CPU) of a normalised plane ``y`` ``(1, Cy, H, W)``."""
    return _on_blended_tiles(lambda tile: model.condition(tile)[1], y, model.config.x_channels,
                             base_tiling(model, *y.shape[-2:]), device, tick)[0].numpy()


@torch.no_grad()
def _schedule_tiling(model: CVDM, height: int, width: int) -> _TileGrid:
    """The tiles a smooth schedule's λ is computed on for a plane of ``height × width``."""
    # tile starts on the schedule network's own grid: its stride at ¼ (or so) resolution
    align = model.schedule.spatial_net.stride * model.config.schedule_downsample
    return _plane_tiling(height, width, SCHEDULE_TILE, SCHEDULE_TILE_OVERLAP, align)


def _tile_schedule_maps(model: CVDM, condition: torch.Tensor, device: torch.device, tiling: _TileGrid,
                        tick: Callable[[], None] | None = None) -> list:
    """``[(rows, cols, wy, wx, λ (1, Cx, h, w) on the device), ...]`` for every tile.

    A smooth schedule network (``schedule_downsample > 1``) runs once on the whole plane and
    is cut into tiles, so λ does not depend on the tiling; the paper's per-pixel network
    runs per tile, as the model files written for it expect.
    """
    plane_lambda = None
    if model.config.schedule_downsample > 1:
        plane_lambda = _on_blended_tiles(model.schedule.schedule_map, condition, model.config.x_channels,
                                         _schedule_tiling(model, *condition.shape[-2:]), device, tick).to(device)
    tiles = []
    for (r0, r1), wy in zip(tiling.rows, tiling.row_weights):
        for (c0, c1), wx in zip(tiling.cols, tiling.col_weights):
            if plane_lambda is not None:
                lam = plane_lambda[..., r0:r1, c0:c1]
            else:
                lam = model.schedule.schedule_map(condition[..., r0:r1, c0:c1].to(device)).float()
            tiles.append(((r0, r1), (c0, c1), wy, wx, lam))
    return tiles


@dataclass(frozen=True)
class _TileGrid:
    """The tiles of one output plane: spans, separable blend profiles and their summed weight."""

    rows: list
    cols: list
    row_weights: list
    col_weights: list
    row_total: np.ndarray
    col_total: np.ndarray

    @classmethod
    def build(cls, height: int, width: int, tile: int | None, overlap: int, align: int) -> _TileGrid:
        rows, cols = tile_spans(height, tile, overlap, align), tile_spans(width, tile, overlap, align)
        row_weights = [tile_weights(span, height, overlap) for span in rows]
        col_weights = [tile_weights(span, width, overlap) for span in cols]
        # the profiles are separable and the tiles a product grid, so the summed weight is an outer product
        row_total, col_total = np.zeros(height), np.zeros(width)
        for (r0, r1), w in zip(rows, row_weights):
            row_total[r0:r1] += w
        for (c0, c1), w in zip(cols, col_weights):
            col_total[c0:c1] += w
        return cls(rows, cols, row_weights, col_weights, row_total, col_total)

    def normalise(self, array: np.ndarray) -> None:
        """Divide blended sums by the summed weight, one axis at a time (no full-size temporary)."""
        array *= (1.0 / self.row_total).astype(np.float32)[:, None]
        array *= (1.0 / self.col_total).astype(np.float32)

    def median_lambda(self, tiles: list) -> float:
        """Median of the blended λ map of ``tiles`` (:class:`_Tile`): the plane's ``log_snr`` reference."""
        plane = np.zeros((tiles[0].schedule_map.shape[1], len(self.row_total), len(self.col_total)), np.float32)
        for tile in tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            plane[:, r0:r1, c0:c1] += tile.weight * tile.schedule_map[0].cpu().numpy()
        self.normalise(plane)
        return float(np.median(plane))


@dataclass(frozen=True)
class _Sampling:
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
    each plane (:meth:`_Plane.base_in_target_units`) as soon as it exists, before that plane's
    λ and samples. ``input_pixel_size_um``: None = the model's. ``upsampled``:
    an SR input already on the output grid. ``wavelength_um``/``dz_um``: QPI optics (None: the model's).
    """
    settings, optics = _checked(model, info, image, settings, input_pixel_size_um, wavelength_um, dz_um)
    device = resolve_device(settings.device)
    model = model.to(device).eval()
    factor = 1 if upsampled else int(info.upsampling_factor)
    planes, lead = _planes(info, np.asarray(image))
    outputs = _Outputs.allocate(info, lead, len(planes), planes.shape[-2] * factor, planes.shape[-1] * factor,
                                int(settings.n_samples) if settings.keep_samples else 0)
    tiling = _TileGrid.build(*outputs.mean.shape[-2:], settings.tile_size, int(settings.tile_overlap),
                             network_stride(model))
    run = _sampling(info, settings, device, tiling)
    pixel_size = input_pixel_size_um if input_pixel_size_um is not None else info.input_pixel_size_um
    metadata = _metadata(settings, run, model, device, tiling, input_pixel_size_um)

    def result(samples_done: int, plane: int, final: bool) -> Reconstruction:
        per_plane = {key: list(metadata[key]) for key in ("grid_reference_lambda", "refinement_weight")}
        return outputs.result(info, pixel_size, {**metadata, **per_plane, "samples_done": samples_done,
                                                 "plane": plane, "planes": len(planes)}, final)

    counter = _StepCounter(len(planes) * _steps_per_plane(model, tiling, run), progress, should_stop)
    finished = [0, 0, 0]  # rounds finished, plane, its samples
    try:
        for p, raw in enumerate(planes):
            plane_run = _PlaneRun.start(model, info, raw, p, factor, optics, device, run, tiling, counter,
                                        on_base)
            metadata["grid_reference_lambda"].append(plane_run.lam_ref)
            metadata["refinement_weight"].append(None)
            plane_run.blend_gamma_into(model, outputs, p, tiling)
            for first in range(0, run.n_samples, run.chunk):
                plane_run.draw_round(model, first, min(run.chunk, run.n_samples - first), run, counter.tick,
                                     should_stop)
                metadata["refinement_weight"][p] = plane_run.blend_into(outputs, p, tiling,
                                                                        settings.shrink_refinement)
                finished = [finished[0] + 1, p, plane_run.count]
                if on_partial is not None and (p < len(planes) - 1 or plane_run.count < run.n_samples):
                    on_partial(result(plane_run.count, p, final=False))
    except Cancelled as stopped:
        partial = result(finished[2], finished[1], final=False) if finished[0] else None
        raise Cancelled(str(stopped), partial=partial) from None
    return result(run.n_samples, len(planes) - 1, final=True)


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


def _metadata(settings: ReconstructionSettings, run: _Sampling, model: CVDM, device: torch.device,
              tiling: _TileGrid, input_pixel_size_um: float | None) -> dict:
    """The resolved settings a Reconstruction records (``grid_reference_lambda`` filled per plane)."""
    return {
        **asdict(settings), **asdict(run.options), "grid_reference_lambda": [], "refinement_weight": [],
        "formulation": model.config.formulation, "device": str(device),
        "precision": "bf16" if run.runtime.autocast_dtype is not None else "fp32",
        "tiles": [len(tiling.rows), len(tiling.cols)], "network_stride": network_stride(model),
        "input_pixel_size_um": input_pixel_size_um, "noise_block": NOISE_BLOCK,
    }


def _steps_per_plane(model: CVDM, tiling: _TileGrid, run: _Sampling) -> int:
    """Progress steps of one plane: the base (one TIE solve, or the predictor's tiles), a smooth
    schedule's λ tiles, then every tile's denoising steps."""
    height, width = len(tiling.row_total), len(tiling.col_total)
    steps = len(tiling.rows) * len(tiling.cols) * run.rounds * run.options.steps
    base_tiles = base_tiling(model, height, width)
    steps += base_for(model.config).plane_steps(len(base_tiles.rows) * len(base_tiles.cols))
    if model.config.schedule_downsample > 1:
        lambda_tiles = _schedule_tiling(model, height, width)
        steps += len(lambda_tiles.rows) * len(lambda_tiles.cols)
    return steps


class _StepCounter:
    """Counts denoising steps for ``progress(done, total)``."""

    def __init__(self, total: int, progress: ProgressCallback | None, should_stop: StopCheck | None = None):
        self.done, self.total, self.progress, self.should_stop = 0, total, progress, should_stop

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def beat(self) -> None:
        """Within a long step (an iterative TIE base): report the same count, and stop if asked."""
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("Reconstruction was stopped.")
        if self.progress is not None:
            self.progress(self.done, self.total)


@dataclass
class _Outputs:
    """The output arrays ``(P, Cx, H, W)`` (samples ``(P, N, Cx, H, W)``), filled plane by plane."""

    mean: np.ndarray
    variance: np.ndarray
    gamma: np.ndarray
    samples: np.ndarray | None
    lead: tuple[int, ...]
    x_channels: int

    @classmethod
    def allocate(cls, info: ModelInfo, lead: tuple[int, ...], planes: int, height: int, width: int,
                 kept_samples: int) -> _Outputs:
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


def _sampling(info: ModelInfo, settings: ReconstructionSettings, device: torch.device,
              tiling: _TileGrid) -> _Sampling:
    n_samples = int(settings.n_samples)
    largest_tile = max(r1 - r0 for r0, r1 in tiling.rows) * max(c1 - c0 for c0, c1 in tiling.cols)
    per_call = settings.max_batch if settings.max_batch is not None else PIXELS_PER_CALL // largest_tile
    chunk = max(1, min(n_samples, int(per_call)))
    runtime = RuntimeOptions(autocast_dtype(settings.precision, device), settings.channels_last, settings.compile)
    return _Sampling(_resolve_sampling(info, settings), runtime, n_samples, chunk, settings)


@dataclass
class _Tile:
    """One tile: its spans, blend profiles, λ map ``(1, Cx, h, w)`` on the device and moments.

    Only the 1-D profiles are kept, and γ(0.5) is derived from λ when the plane's γ map is
    blended: a tile's full-size arrays are then just its moments, which bounds a 4096² plane's memory.
    """

    rows: tuple[int, int]
    cols: tuple[int, int]
    row_weight: np.ndarray
    col_weight: np.ndarray
    schedule_map: torch.Tensor
    moments: RunningMoments
    kept: list

    @property
    def weight(self) -> np.ndarray:
        """The blend profile ``(h, w)``, float32."""
        return np.outer(self.row_weight, self.col_weight).astype(np.float32)


@dataclass
class _PlaneRun:
    """One plane while its samples are drawn: condition (on the device), base, tiles and their running moments."""

    plane: _Plane
    tiles: list[_Tile]
    lam_ref: float | None
    noise_field: NoiseField
    base: ResidualBase
    count: int = 0

    @classmethod
    @torch.no_grad()
    def start(cls, model: CVDM, info: ModelInfo, raw: np.ndarray, index: int, factor: int, optics: dict,
              device: torch.device, run: _Sampling, tiling: _TileGrid, counter: _StepCounter,
              on_base: Callable[[int, np.ndarray], None] | None = None) -> _PlaneRun:
        tick = counter.tick
        plane = _prepare_plane(model, info, raw, factor, device, optics, tick, counter.beat)
        if on_base is not None and plane.base is not None:
            on_base(index, plane.base_in_target_units())
        plane = plane._replace(condition=plane.condition.to(device))  # once, not per tile and round
        tiles = [_Tile(rows, cols, wy, wx, lam, RunningMoments(dim=0, dtype=torch.float32), [])
                 for rows, cols, wy, wx, lam in _tile_schedule_maps(model, plane.condition, device, tiling, tick)]
        # one time grid for the plane: every tile walks the grid the untiled image would
        lam_ref = tiling.median_lambda(tiles) if run.options.grid == "log_snr" else None
        return cls(plane, tiles, lam_ref, NoiseField(run.settings.seed, index, run.n_samples,
                                                     int(info.config.x_channels)), base_for(model.config))

    @torch.no_grad()
    def draw_round(self, model: CVDM, first: int, k: int, run: _Sampling, tick: Callable[[], None],
                   should_stop: StopCheck | None) -> None:
        """Samples ``first … first + k − 1`` of every tile, added to its moments."""
        for tile in self.tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            y = self.plane.condition[:, :, r0:r1, c0:c1]

            def noise(stage: int, tile=tile) -> torch.Tensor:
                return self.noise_field.window(stage, tile.rows, tile.cols, first, first + k)

            draws = sample(
                model, y.expand(k, *y.shape[1:]), run.options, run.runtime,
                schedule_map=tile.schedule_map.expand(k, *tile.schedule_map.shape[1:]), lam_ref=self.lam_ref,
                noise=noise, progress=lambda i, n: tick(), should_stop=should_stop,
            ).cpu()
            tile.moments.add(draws)
            if run.settings.keep_samples:
                tile.kept.append(draws)
        self.count += k

    @torch.no_grad()
    def blend_gamma_into(self, model: CVDM, outputs: _Outputs, index: int, tiling: _TileGrid) -> None:
        """Write this plane's blended γ(0.5) map into ``outputs`` (once: it does not change between rounds)."""
        gamma = outputs.gamma[index]
        gamma[...] = 0.0
        for tile in self.tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            tile_gamma = model.schedule.gamma(0.5, tile.schedule_map)[0].float().cpu().numpy()
            gamma[..., r0:r1, c0:c1] += tile.weight * tile_gamma
        tiling.normalise(gamma)

    def blend_into(self, outputs: _Outputs, index: int, tiling: _TileGrid, shrink: bool) -> float | None:
        """Write this plane's blended mean, variance (and kept samples) in target units into ``outputs``.

        A residual model's mean is then shrunk toward its base (``shrink``); returns the weight w
        of its refinement (None for the paper's formulation)."""
        scale, offset, s = self.plane.scale, self.plane.offset, self.base.scale
        targets = [outputs.mean[index], outputs.variance[index]]
        if outputs.samples is not None:
            targets.append(outputs.samples[index, :self.count])
        for array in targets:
            array[...] = 0.0
        for tile in self.tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            region = (..., slice(r0, r1), slice(c0, c1))
            base = None if self.plane.base is None else self.plane.base[region]
            mean, variance = tile.moments.mean.numpy(), tile.moments.variance().numpy()
            weight = tile.weight
            targets[0][region] += weight * (scale * self.base.compose(base, mean) + offset).astype(np.float32)
            targets[1][region] += weight * ((scale * s) ** 2 * variance).astype(np.float32)
            if outputs.samples is not None:
                draws = torch.cat(tile.kept).double().numpy()
                targets[2][region] += weight * (scale * self.base.compose(base, draws) + offset)
        for array in targets:
            tiling.normalise(array)
        if self.plane.base is None:
            return None
        base = (scale * self.plane.base + offset).astype(np.float32)
        refinement = targets[0] - base
        weight = refinement_weight(refinement, targets[1], self.count) if shrink else 1.0
        targets[0][...] = base + np.float32(weight) * refinement
        return weight


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
    planes, lead = _planes(info, np.asarray(image))
    out = [_prepare_plane(model, info, raw, int(info.upsampling_factor), torch_device, optics).base_in_target_units()
           for raw in planes]
    return np.stack(out).reshape(*lead, *out[0].shape)


def output_pixel_size(info: ModelInfo, input_pixel_size_um: float | None) -> float | None:
    """Output pixel size (µm) for an input of ``input_pixel_size_um`` (None: the model's)."""
    size = input_pixel_size_um if input_pixel_size_um is not None else info.input_pixel_size_um
    return None if size is None else size / int(info.upsampling_factor)
