"""The data-consistency map of a QPI reconstruction, for a layer (no Qt, no layers).

The forward model (:func:`napari_cvdm.physics.consistency.qpi_consistency`) propagates the
mean phase to ±dz and compares its intensities with the measured stack, in units of the
stack's noise std: about 1 where the phase explains the data, several where it does not
(hallucinated or missing structure), whether or not the error bars are calibrated. SR has
no such layer: its widefield optics (NA, emission wavelength) are not in the model file.
"""

from __future__ import annotations

import numpy as np

from ..residual import TIEBase
from ..checkpoint import ModelInfo
from ..config import TrainConfig
from ..physics.consistency import qpi_consistency

ROLE = "data consistency: RMS over ±dz of (measured − forward(mean)) / noise std; ≈ 1 where the phase explains " \
       "the stack"


def has_forward_model(info: ModelInfo) -> bool:
    """Whether the model's task has a forward model with known optics (QPI)."""
    return info.task == "qpi"


def consistency_map(info: ModelInfo, stack: np.ndarray, mean: np.ndarray, *, pixel_um: float | None = None,
                    dz_um: float | None = None) -> np.ndarray:
    """``(…, H, W)`` map for a stack ``(…, 2, H, W)`` and its mean phase ``(…, H, W)`` (rad), float32.

    Optics: the model's TIE base where it has one, else the training defaults; ``pixel_um`` and
    ``dz_um`` (the input's, where known) take precedence. The amplitude is the measured one
    (the square root of the planes' mean intensity).
    """
    base = TIEBase.from_dict(info.base) if info.base else None
    wavelength = base.wavelength_um if base else TrainConfig.wavelength_um
    dz = dz_um or (base.dz_um if base else TrainConfig.dz_um)
    pixel = pixel_um or info.input_pixel_size_um or (base.pixel_um if base else 1.0)
    stacks = np.asarray(stack, dtype=np.float64).reshape(-1, 2, *stack.shape[-2:])
    phases = np.asarray(mean, dtype=np.float64).reshape(-1, *stack.shape[-2:])
    maps = [qpi_consistency(phase, planes, dz, wavelength, pixel, amplitude="measured")
            for phase, planes in zip(phases, stacks)]
    return np.stack(maps).reshape(np.shape(mean)).astype(np.float32)
