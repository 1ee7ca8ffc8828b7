"""Intensity normalisation: each channel's ``[low, high]`` maps affinely onto ``[−1, 1]``.

A :class:`Normalizer` is either *fixed* (its ``low``/``high`` are numbers, e.g. the QPI
phase 0..3.5 rad) or a per-image recipe that refits ``low``/``high`` on every image:

- ``"percentile"``: per channel, the ``low_pct``/``high_pct`` percentiles
  (fluorescence, whose brightness changes from image to image);
- ``"mean"``: ``low = 0``, ``high = 2 × mean`` over *all* channels together
  (brightfield defocus stacks: keeps the contrast relative to the illumination, which
  encodes the phase, and the same scale for both planes, whose difference is ∂I/∂z).

It is JSON-serialisable (:meth:`Normalizer.to_dict`) and travels in the model file.
Channel axis: ``-3`` for arrays ``(C, H, W)`` or ``(N, C, H, W)``; a 2-D image is one channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

__all__ = ["Normalizer"]

_MODES = ("fixed", "percentile", "mean")


def _as_channels(array) -> np.ndarray:
    array = np.asarray(array)
    return array[None] if array.ndim == 2 else array


def _per_channel(values: Sequence[float] | float) -> tuple[float, ...]:
    return tuple(float(v) for v in np.atleast_1d(np.asarray(values, dtype=np.float64)))


@dataclass(frozen=True)
class Normalizer:
    """Affine map of ``[low, high]`` (per channel) onto ``[−1, 1]``: ``y = 2(x − low)/(high − low) − 1``.

    Build it with :meth:`fixed`, :meth:`fit_percentile`, :meth:`per_image_percentile`
    or :meth:`per_image_mean`. For a per-image recipe, :meth:`normalize` fits on the
    image it is given; :meth:`fit` returns the fixed normaliser of one image, which is
    what :meth:`denormalize` needs (e.g. fitted on the raw input to map an output back).
    """

    mode: str = "fixed"
    low: tuple[float, ...] = (0.0,)
    high: tuple[float, ...] = (1.0,)
    low_pct: float = 0.1
    high_pct: float = 99.9

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"normaliser mode must be one of {_MODES}, got {self.mode!r}")
        if self.mode == "fixed":
            if len(self.low) != len(self.high):
                raise ValueError(f"low {self.low} and high {self.high} need one value per channel each")
            if any(h <= lo for lo, h in zip(self.low, self.high)):
                raise InputError(
                    f"normalisation range is empty (low {self.low}, high {self.high}): the image is constant"
                )

    # --------------------------------------------------------------- constructors
    @classmethod
    def fixed(cls, low: float | Sequence[float], high: float | Sequence[float]) -> Normalizer:
        """Fixed range, e.g. ``Normalizer.fixed(0.0, 3.5)`` for the QPI phase in radians."""
        low, high = _per_channel(low), _per_channel(high)
        if len(low) != len(high):
            low, high = np.broadcast_arrays(np.array(low), np.array(high))
            low, high = tuple(map(float, low)), tuple(map(float, high))
        return cls("fixed", low, high)

    @classmethod
    def fit_percentile(cls, array, low_pct: float = 0.1, high_pct: float = 99.9) -> Normalizer:
        """Fixed normaliser from the per-channel percentiles of ``array`` ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``."""
        data = _as_channels(array)
        channels = np.moveaxis(data, -3, 0).reshape(data.shape[-3], -1)
        low, high = np.percentile(channels, [low_pct, high_pct], axis=1)
        return cls("fixed", _per_channel(low), _per_channel(high), low_pct, high_pct)

    @classmethod
    def per_image_percentile(cls, low_pct: float = 0.1, high_pct: float = 99.9) -> Normalizer:
        """Recipe: refit per-channel percentiles on every image (fluorescence)."""
        return cls("percentile", low_pct=low_pct, high_pct=high_pct)

    @classmethod
    def per_image_mean(cls) -> Normalizer:
        """Recipe: ``[0, 2·mean]`` over all channels of every image (brightfield defocus stacks)."""
        return cls("mean")

    # --------------------------------------------------------------- use
    @property
    def is_fixed(self) -> bool:
        return self.mode == "fixed"

    def fit(self, image) -> Normalizer:
        """The fixed normaliser for ``image`` ``(C, H, W)`` or ``(H, W)`` (itself if already fixed)."""
        if self.mode == "fixed":
            return self
        data = _as_channels(image)
        if self.mode == "percentile":
            return Normalizer.fit_percentile(data, self.low_pct, self.high_pct)
        mean = float(np.mean(data, dtype=np.float64))
        channels = data.shape[-3]
        return Normalizer("fixed", (0.0,) * channels, (2.0 * mean,) * channels)

    def _coefficients(self, array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        channels = array.shape[-3]
        if len(self.low) not in (1, channels):
            raise ValueError(f"normaliser has {len(self.low)} channels, the array has {channels}")
        low = np.asarray(self.low, dtype=np.float64)[:, None, None]
        high = np.asarray(self.high, dtype=np.float64)[:, None, None]
        return low, high

    def normalize(self, array) -> np.ndarray:
        """Map ``[low, high]`` to ``[−1, 1]``; keeps the shape, float32 out (per-image modes fit first)."""
        data = _as_channels(array)
        fitted = self.fit(data)
        low, high = fitted._coefficients(data)
        out = (2.0 * (data - low) / (high - low) - 1.0).astype(np.float32)
        return out[0] if np.ndim(array) == 2 else out

    def denormalize(self, array) -> np.ndarray:
        """Inverse of :meth:`normalize` for a fixed normaliser; float32 out."""
        if self.mode != "fixed":
            raise ValueError(
                f"a per-image {self.mode!r} normaliser has no fixed range: use normalizer.fit(image).denormalize(...)"
            )
        data = _as_channels(array)
        low, high = self._coefficients(data)
        out = ((np.asarray(data, dtype=np.float64) + 1.0) * 0.5 * (high - low) + low).astype(np.float32)
        return out[0] if np.ndim(array) == 2 else out

    # --------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """JSON-serialisable description (plain floats, lists and strings)."""
        return {
            "mode": self.mode,
            "low": list(self.low),
            "high": list(self.high),
            "low_pct": self.low_pct,
            "high_pct": self.high_pct,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Normalizer:
        """Inverse of :meth:`to_dict`; unknown keys are ignored so that newer files stay readable."""
        return cls(
            mode=str(data.get("mode", "fixed")),
            low=_per_channel(data.get("low", (0.0,))),
            high=_per_channel(data.get("high", (1.0,))),
            low_pct=float(data.get("low_pct", 0.1)),
            high_pct=float(data.get("high_pct", 99.9)),
        )
