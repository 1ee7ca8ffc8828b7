"""One plane's run: its condition and base on the whole plane, its tiles' samples in rounds, their blend.

A residual model's base b(y) and a smooth schedule's λ are computed once per plane before any
tiling; tiles are cut from the condition ``[y, b]`` and from λ, so both are the same whatever the
tiling. Each tile's samples go into running moments; the plane's mean, variance and γ(0.5) are the
tiles' blended with :func:`~napari_cvdm.engine.tiling.tile_weights` (docs/engine.md, "Variance in
overlaps", says why variances are blended like means).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..checkpoint import ModelInfo
from ..errors import Cancelled
from ..model import CVDM, refinement_weight
from ..model.samplers import RunningMoments, sample
from ..residual import ResidualBase, WholePlane, base_for
from .data_step import PlaneData
from .outputs import Outputs, Sampling
from .tiling import NoiseField, TileGrid, base_tiling, on_blended_tiles, schedule_tiling

ProgressCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]

def normalizer(data: dict):
    """The data module's Normalizer for a ModelInfo entry; None (identity) when the entry is empty."""
    from ..data import Normalizer

    return Normalizer.from_dict(data) if data else None


def target_denormalizer(info: ModelInfo, condition: np.ndarray):
    """Fixed normaliser mapping model outputs back to target units for one plane.

    A fixed target range (QPI phase) is used as is; a per-image recipe (SR percentiles)
    is fitted on the condition plane, so the output comes back in the input's units.
    """
    recipe = normalizer(info.target_normalization)
    if recipe is None or recipe.is_fixed:
        return recipe
    x_channels = int(info.config.x_channels)
    source = condition if condition.shape[0] == x_channels else condition.mean(axis=0, keepdims=True)
    return recipe.fit(source)


def scale_and_offset(normalizer, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, offset)`` per channel ``(C, 1, 1)`` with ``value = scale · normalised + offset``."""
    if normalizer is None:
        return np.ones((channels, 1, 1)), np.zeros((channels, 1, 1))
    low = np.broadcast_to(np.asarray(normalizer.low, dtype=np.float64), (channels,))
    high = np.broadcast_to(np.asarray(normalizer.high, dtype=np.float64), (channels,))
    scale = (high - low) / 2.0
    return scale[:, None, None], (low + scale)[:, None, None]


class Plane(NamedTuple):
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
def prepare_plane(model: CVDM, info: ModelInfo, raw: np.ndarray, factor: int, device: torch.device,
                   optics: dict, tick: Callable[[], None] | None = None,
                   beat: Callable[[], None] | None = None) -> Plane:
    """Upsample, normalise and compute the base of one raw plane ``(Cy, h, w)``, on the whole plane.

    Before any tiling, the model's base (:mod:`napari_cvdm.residual.bases`) builds the condition:
    a TIE phase from the stack with the input's optics (``optics``: ``wavelength_um``, ``dz_um``,
    ``pixel_um``, each None for the model's), a predictor's b on the whole normalised plane
    (:func:`predictor_base`; ``tick`` after each of its tiles), or both. ``beat()`` is called
    between the stages of an iterative TIE base (no step done).
    """
    from ..physics import upsample

    condition = upsample(raw.astype(np.float32), factor) if factor > 1 else raw.astype(np.float32)
    scale, offset = scale_and_offset(target_denormalizer(info, condition), int(info.config.x_channels))
    input_normalizer = normalizer(info.input_normalization)
    normalised = input_normalizer.normalize(condition) if input_normalizer is not None else condition
    y = torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32))[None]
    target_normalizer = normalizer(info.target_normalization)
    plane = WholePlane(condition, y, lambda values: target_normalizer.normalize(values),
                       lambda model_input: predictor_base(model, model_input, device, tick), tick, beat)
    c, base = base_for(model.config).plane_condition(info, plane, optics)
    return Plane(c, base, scale, offset)


def predictor_base(model: CVDM, y: torch.Tensor, device: torch.device,
                    tick: Callable[[], None] | None) -> np.ndarray:
    """The predictor's base b(y) ``(Cx, H, W)`` (float32, CPU) of a normalised plane ``y`` ``(1, Cy, H, W)``."""
    return on_blended_tiles(lambda tile: model.condition(tile)[1], y, model.config.x_channels,
                             base_tiling(model, *y.shape[-2:]), device, tick)[0].numpy()


def tile_schedule_maps(model: CVDM, condition: torch.Tensor, device: torch.device, tiling: TileGrid,
                        tick: Callable[[], None] | None = None) -> list:
    """``[(rows, cols, wy, wx, λ (1, Cx, h, w) on the device), ...]`` for every tile.

    A smooth schedule network (``schedule_downsample > 1``) runs once on the whole plane and
    is cut into tiles, so λ does not depend on the tiling; the paper's per-pixel network
    runs per tile, as the model files written for it expect.
    """
    plane_lambda = None
    if model.config.schedule_downsample > 1:
        plane_lambda = on_blended_tiles(model.schedule.schedule_map, condition, model.config.x_channels,
                                         schedule_tiling(model, *condition.shape[-2:]), device, tick).to(device)
    tiles = []
    for (r0, r1), wy in zip(tiling.rows, tiling.row_weights):
        for (c0, c1), wx in zip(tiling.cols, tiling.col_weights):
            if plane_lambda is not None:
                lam = plane_lambda[..., r0:r1, c0:c1]
            else:
                lam = model.schedule.schedule_map(condition[..., r0:r1, c0:c1].to(device)).float()
            tiles.append(((r0, r1), (c0, c1), wy, wx, lam))
    return tiles


def steps_per_plane(model: CVDM, tiling: TileGrid, run: Sampling) -> int:
    """Progress steps of one plane: the base (one TIE solve, or the predictor's tiles), a smooth
    schedule's λ tiles, then every tile's denoising steps."""
    height, width = len(tiling.row_total), len(tiling.col_total)
    steps = len(tiling.rows) * len(tiling.cols) * run.rounds * run.options.steps
    base_tiles = base_tiling(model, height, width)
    steps += base_for(model.config).plane_steps(len(base_tiles.rows) * len(base_tiles.cols))
    if model.config.schedule_downsample > 1:
        lambda_tiles = schedule_tiling(model, height, width)
        steps += len(lambda_tiles.rows) * len(lambda_tiles.cols)
    return steps


class StepCounter:
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
class Tile:
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
class PlaneRun:
    """One plane while its samples are drawn: condition (on the device), base, tiles and their running moments."""

    plane: Plane
    tiles: list[Tile]
    lam_ref: float | None
    noise_field: NoiseField
    base: ResidualBase
    data: PlaneData | None = None
    base_variance: float | None = None
    count: int = 0

    @classmethod
    @torch.no_grad()
    def start(cls, model: CVDM, info: ModelInfo, raw: np.ndarray, index: int, factor: int, optics: dict,
              device: torch.device, run: Sampling, tiling: TileGrid, counter: StepCounter,
              on_base: Callable[[int, np.ndarray], None] | None = None) -> PlaneRun:
        tick = counter.tick
        plane = prepare_plane(model, info, raw, factor, device, optics, tick, counter.beat)
        if on_base is not None and plane.base is not None:
            on_base(index, plane.base_in_target_units())
        plane = plane._replace(condition=plane.condition.to(device))  # once, not per tile and round
        tiles = [Tile(rows, cols, wy, wx, lam, RunningMoments(dim=0, dtype=torch.float32), [])
                 for rows, cols, wy, wx, lam in tile_schedule_maps(model, plane.condition, device, tiling, tick)]
        # one time grid for the plane: every tile walks the grid the untiled image would
        lam_ref = tiling.median_lambda(tiles) if run.options.grid == "log_snr" else None
        base = base_for(model.config)
        variance = base.error_variance(info, raw, optics) if run.settings.base_variance else None
        return cls(plane, tiles, lam_ref, NoiseField(run.settings.seed, index, run.n_samples,
                                                     int(info.config.x_channels)), base,
                   _plane_data(info, plane, raw, factor, run, device), variance)

    @torch.no_grad()
    def draw_round(self, model: CVDM, first: int, k: int, run: Sampling, tick: Callable[[], None],
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
                data_step=self._data_step(tile, run),
            ).cpu()
            tile.moments.add(draws)
            if run.settings.keep_samples:
                tile.kept.append(draws)
        self.count += k

    def _data_step(self, tile: Tile, run: Sampling):
        """The data-consistency step on ``tile`` (None when off)."""
        if self.data is None:
            return None
        (r0, r1), (c0, c1) = tile.rows, tile.cols
        base = None
        if self.plane.base is not None:
            base = torch.from_numpy(self.plane.base[:1, r0:r1, c0:c1]).to(self.plane.condition.device)
        return self.data.tile_step(tile.rows, tile.cols, run.consistency_strength, float(self.plane.scale.flat[0]),
                                   float(self.plane.offset.flat[0]), self.base.scale, base)

    @torch.no_grad()
    def blend_gamma_into(self, model: CVDM, outputs: Outputs, index: int, tiling: TileGrid) -> None:
        """Write this plane's blended γ(0.5) map into ``outputs`` (once: it does not change between rounds)."""
        gamma = outputs.gamma[index]
        gamma[...] = 0.0
        for tile in self.tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            tile_gamma = model.schedule.gamma(0.5, tile.schedule_map)[0].float().cpu().numpy()
            gamma[..., r0:r1, c0:c1] += tile.weight * tile_gamma
        tiling.normalise(gamma)

    def blend_into(self, outputs: Outputs, index: int, tiling: TileGrid, shrink: bool) -> float | None:
        """Write this plane's blended mean, variance (and kept samples) in target units into ``outputs``.

        The variance gains the base's closed-form error variance where there is one. A residual model's mean is then shrunk toward its base (``shrink``); returns the weight w
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
        weight = None
        if self.plane.base is not None:
            base = (scale * self.plane.base + offset).astype(np.float32)
            refinement = targets[0] - base
            weight = refinement_weight(refinement, targets[1], self.count) if shrink else 1.0
            targets[0][...] = base + np.float32(weight) * refinement
        if self.base_variance is not None:  # after w: w weighs the samples' own spread
            targets[1] += np.float32(self.base_variance)
        return weight


def _plane_data(info: ModelInfo, plane: Plane, raw: np.ndarray, factor: int, run: Sampling,
                device: torch.device) -> PlaneData | None:
    """The plane's data for the data-consistency step (None when the step is off). SR's intensity fit
    uses the base, or the upsampled input for a model without one."""
    if run.consistency_strength == 0:
        return None
    from ..physics import upsample

    if plane.base is not None:
        reference = plane.base_in_target_units()
    else:
        reference = upsample(raw.astype(np.float32), factor)[0] if factor > 1 else raw[0]
    return PlaneData.build(info.task, raw, np.asarray(reference, np.float64).reshape(reference.shape[-2:]),
                           run.optics, run.optics["input_pixel_um"], factor, device)
