"""What a reconstruction can show before its first sample exists.

Order: a classical preview within a second, then the residual model's base
b(y) as the engine computes it (its first plane: the engine reports each plane's base
before sampling it; SR's predictor network takes seconds, QPI's TIE base 0.03 s for 512²),
then the refining mean of the samples. The classical previews:

- QPI: FFT-TIE phase of the defocus stack (:func:`napari_cvdm.physics.tie.fft_tie`,
  mirror boundaries), shifted to the middle of the model's fixed phase range;
- SR: the widefield image brought to the output grid by
  :func:`napari_cvdm.physics.upsample`, as training does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .checkpoint import ModelInfo
from .acquisition import Acquisition, input_optics
from .physics import upsample
from .physics.tie import fft_tie

BASE_KIND = "base b(y)"
TIE_KIND = "FFT-TIE phase"
UPSAMPLED_KIND = "upsampled input"


class Preview(NamedTuple):
    """An image shaped like the reconstruction's mean, and what it is (``kind``, e.g. "FFT-TIE phase")."""

    data: np.ndarray
    kind: str


def has_classical_preview(info: ModelInfo) -> bool:
    """Whether the task has a classical estimate to show first (SR and QPI; not generic models)."""
    return info.task in ("sr", "qpi")


def with_first_base(preview: Preview | None, base: np.ndarray, planes: int) -> Preview | None:
    """The preview with its first of ``planes`` planes replaced by the engine's ``base`` of that
    plane (the other planes keep the classical preview). Without a classical preview only a
    single-plane image has one (its base); None otherwise."""
    if preview is None:
        return Preview(base, BASE_KIND) if planes == 1 else None
    data = np.array(preview.data, np.float32)
    data.reshape(planes, *base.shape)[0] = base
    return Preview(data, BASE_KIND)


def classical_preview(info: ModelInfo, image: np.ndarray, *, pixel_um: float | None = None,
                      dz_um: float | None = None, wavelength_um: float | None = None) -> Preview:
    """The classical estimate of ``image`` (layout as for :func:`napari_cvdm.engine.reconstruct`).

    QPI optics: given, else the model's, else the training simulator's (:func:`input_optics`);
    the pixel size: given, else the model's.
    """
    image = np.asarray(image, dtype=np.float32)
    if info.task == "sr":
        return Preview(upsample(image, int(info.upsampling_factor)), UPSAMPLED_KIND)
    pixel = pixel_um or info.input_pixel_size_um or 1.0
    optics, _ = input_optics(info, Acquisition(wavelength_um=wavelength_um, dz_um=dz_um))
    planes = image.reshape(-1, 2, *image.shape[-2:])
    phases = [fft_tie(plane, optics["dz_um"], optics["wavelength_um"], pixel, boundary="mirror") for plane in planes]
    phase = np.stack(phases).reshape(*image.shape[:-3], *image.shape[-2:]) + _phase_offset(info)
    return Preview(phase.astype(np.float32), TIE_KIND)


def _phase_offset(info: ModelInfo) -> float:
    """The middle of a fixed target range (a TIE phase is known only up to a constant), else 0."""
    target = info.target_normalization or {}
    if target.get("mode") != "fixed":
        return 0.0
    return float(np.mean(target.get("low", [0.0]))) / 2 + float(np.mean(target.get("high", [0.0]))) / 2


def defocus_um(metadata: dict) -> float | None:
    """The defocus distance of a stack layer's ``defocus_um`` metadata (e.g. ``[-1, 1]``), if given."""
    planes = metadata.get("defocus_um")
    try:
        return float(abs(planes[-1])) or None
    except (TypeError, ValueError, IndexError, KeyError):
        return None
