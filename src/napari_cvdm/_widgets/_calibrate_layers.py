"""A calibration pair from two napari layers, for "Calibrate on layers…" (no Qt).

The pair is what :func:`napari_cvdm.uncertainty.calibrate.calibrate_model` (the function behind
``cvdm calibrate``) takes: the input on the target grid (an SR widefield image is
upsampled with :func:`napari_cvdm.physics.upsample`, as in training) and the target.
"""

from __future__ import annotations

import numpy as np

from .. import engine
from ..checkpoint import ModelInfo
from ..data import ImagePair
from ..errors import InputError
from ..physics import upsample


def layer_pair(info: ModelInfo, input_layer, target_layer) -> ImagePair:
    """``ImagePair`` of one input plane (a 2-D image, or a ``(2, H, W)`` stack for QPI) and its 2-D target.

    InputError with one sentence when the layers cannot be a pair of this model.
    """
    channels = int(info.config.y_channels)
    raw = np.asarray(input_layer.data, dtype=np.float32)
    if raw.ndim != (2 if channels == 1 else 3) or (channels > 1 and raw.shape[0] != channels):
        layout = "a 2-D image" if channels == 1 else f"one stack shaped ({channels}, H, W)"
        raise InputError(f"Layer '{input_layer.name}' has shape {raw.shape}; calibrating this model needs "
                         f"{layout} as the input.")
    engine.validate_input(info, raw)
    factor = int(info.upsampling_factor)
    condition = upsample(raw, factor)[None] if channels == 1 else raw
    target = np.asarray(target_layer.data, dtype=np.float32)
    if target.shape != condition.shape[-2:]:
        grid = f"the input's grid ×{factor}" if factor > 1 else "the input's grid"
        raise InputError(f"Target layer '{target_layer.name}' has shape {target.shape}; it must be 2-D on "
                         f"{grid}, {condition.shape[-2:]}.")
    if not np.isfinite(target).all():
        raise InputError(f"Target layer '{target_layer.name}' contains NaN or infinite values.")
    return ImagePair(f"{input_layer.name} / {target_layer.name}", condition, target[None])
