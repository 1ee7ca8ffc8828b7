"""Tiles, their blend, and the noise keyed to global pixel positions (docs/engine.md, "Tiling").

Tiles start at multiples of the network stride, so a tile sees the pixel grid phase of the whole
image. Each tile's result is weighted by a separable raised-cosine profile (:func:`tile_weights`)
and the weighted sums divided by the summed weight. The noise of every sampling step is a function
of (seed, plane, step, sample, global pixel block), so a tile sees exactly the noise the untiled
run would see there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..model import CVDM

#: Side of the global noise blocks (output pixels); changing it changes the noise for a seed.
NOISE_BLOCK = 64


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


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one output plane: spans, separable blend profiles and their summed weight."""

    rows: list
    cols: list
    row_weights: list
    col_weights: list
    row_total: np.ndarray
    col_total: np.ndarray

    @classmethod
    def build(cls, height: int, width: int, tile: int | None, overlap: int, align: int) -> TileGrid:
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
        """Median of the blended λ map of ``tiles`` (:class:`Tile`): the plane's ``log_snr`` reference."""
        plane = np.zeros((tiles[0].schedule_map.shape[1], len(self.row_total), len(self.col_total)), np.float32)
        for tile in tiles:
            (r0, r1), (c0, c1) = tile.rows, tile.cols
            plane[:, r0:r1, c0:c1] += tile.weight * tile.schedule_map[0].cpu().numpy()
        self.normalise(plane)
        return float(np.median(plane))


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


#: Networks that see a whole plane (the direct predictor's base, a smooth schedule's λ) run
#: on planes up to this side (output px) whole, on larger ones in blended tiles of it: memory
#: (their bottleneck attention grows with the square of the pixels) and the silence between
#: progress reports stay bounded, and the result depends on the image size alone. λ is smooth
#: and computed at ¼ resolution, so it takes larger tiles (docs/engine.md).
BASE_TILE = 256


BASE_TILE_OVERLAP = 64


SCHEDULE_TILE = 1024


SCHEDULE_TILE_OVERLAP = 128


def base_tiling(model: CVDM, height: int, width: int) -> TileGrid:
    """The tiles :func:`predictor_base` runs the predictor on for an output plane of ``height × width``."""
    return plane_tiling(height, width, BASE_TILE, BASE_TILE_OVERLAP, network_stride(model))


def plane_tiling(height: int, width: int, tile: int, overlap: int, align: int) -> TileGrid:
    return TileGrid.build(height, width, None if max(height, width) <= tile else tile, overlap, align)


@torch.no_grad()
def schedule_tiling(model: CVDM, height: int, width: int) -> TileGrid:
    """The tiles a smooth schedule's λ is computed on for a plane of ``height × width``."""
    # tile starts on the schedule network's own grid: its stride at ¼ (or so) resolution
    align = model.schedule.spatial_net.stride * model.config.schedule_downsample
    return plane_tiling(height, width, SCHEDULE_TILE, SCHEDULE_TILE_OVERLAP, align)


@torch.no_grad()
def on_blended_tiles(function, y: torch.Tensor, channels: int, tiling: TileGrid, device: torch.device,
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
