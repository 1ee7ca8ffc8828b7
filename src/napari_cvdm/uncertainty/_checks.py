"""Checks shared by the stored calibration fields and the image lists of a fit (numpy in, plain values out).

Each raises ValueError with one sentence naming the field.
"""

from __future__ import annotations

import math

import numpy as np


def as_images(name: str, images) -> list[np.ndarray]:
    """``images`` as a list of float64 arrays; one array is one image if ≤ 2-D, else a stack on axis 0."""
    if isinstance(images, np.ndarray):
        images = [images] if images.ndim <= 2 else list(images)
    arrays = [np.asarray(image, dtype=np.float64) for image in images]
    if not arrays:
        raise ValueError(f"{name} is empty: give at least one image")
    return arrays



def is_number(value) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def float_list(
    data: dict, key: str, length: int | None = None, positive: bool = False, unit: bool = False
) -> list[float]:
    """``data[key]`` as a list of finite floats (of ``length``; ``positive``: > 0; ``unit``: in [0, 1])."""
    values = data.get(key)
    if not isinstance(values, list) or not all(is_number(x) for x in values):
        raise ValueError(f"calibration {key} must be a list of numbers, got {values!r}")
    values = [float(x) for x in values]
    if length is not None and len(values) != length:
        raise ValueError(f"calibration {key} must have {length} values, got {len(values)}")
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"calibration {key} must be finite, got {values}")
    if positive and any(x <= 0 for x in values):
        raise ValueError(f"calibration {key} must be positive, got {values}")
    if unit and any(not 0.0 <= x <= 1.0 for x in values):
        raise ValueError(f"calibration {key} must lie in [0, 1], got {values}")
    return values


def positive_int(data: dict, key: str) -> int:
    """``data[key]``, an int ≥ 1 (not a bool)."""
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"calibration {key} must be a positive integer, got {value!r}")
    return value
