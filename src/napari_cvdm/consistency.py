"""Does a reconstruction explain the measured input? The data-consistency map of a prediction.

One definition for every front end. The forward model (:mod:`napari_cvdm.physics.consistency`)
is applied to the mean and compared with the raw input in units of the input's noise std:
about 1 where the mean explains the data, several where it does not (hallucinated or
missing structure), whether or not the error bars are calibrated.

- QPI: the mean phase, with unit amplitude (a pure phase object, as the models are trained on),
  is propagated to ±dz. On simulated test stacks the true phase then reads 0.999 ± 0.004 at noise
  0.02–0.1, where the measured amplitude (the square root of the planes' mean) reads 1.16–2.2: its
  own noise and defocus contrast enter the forward model (docs/uncertainty.md). Map: RMS over the
  two planes, on the output grid.
- SR: the mean blurred by the widefield OTF and binned to the camera grid, against the raw
  widefield image. Map: the signed residual on the camera (input) grid.

Optics: :func:`~napari_cvdm.acquisition.input_optics` (the input's where known, else the model's,
else the training simulator's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .acquisition import Acquisition, input_optics
from .checkpoint import ModelInfo

#: A map value beyond this many noise stds counts as unexplained (0.3 % of pixels for Gaussian noise).
CONSISTENCY_THRESHOLD = 3.0
QPI_AMPLITUDE = "unit"


@dataclass
class ConsistencyOutput:
    """The data-consistency map (input-noise std units; None when it could not be computed) and its
    sidecar fields; ``on_input_grid``: the map lies on the raw input's grid (SR), not the output's."""

    map: np.ndarray | None
    summary: dict
    on_input_grid: bool = False


def summary_fields(info: ModelInfo, acquisition: Acquisition) -> dict:
    """The summary's fields that do not depend on the data: units, optics and their source, the map's kind."""
    optics, source = input_optics(info, acquisition)
    pixel = acquisition.pixel_size_um or info.input_pixel_size_um
    return {"units": "input noise std", "optics": optics, "optics_source": source, "input_pixel_size_um": pixel,
            "map": "signed residual, camera grid" if info.task == "sr" else "RMS over the two planes",
            **({"amplitude": QPI_AMPLITUDE} if info.task == "qpi" else {})}


def consistency_output(info: ModelInfo, mean: np.ndarray, image: np.ndarray,
                       acquisition: Acquisition) -> ConsistencyOutput:
    """The forward model of ``mean`` against the raw input ``image`` (module docstring), every plane.

    Never raises for data it cannot handle: the summary then says why there is no map.
    """
    from .physics.consistency import reconstruction_consistency

    optics, _ = input_optics(info, acquisition)
    pixel = acquisition.pixel_size_um or info.input_pixel_size_um
    summary = summary_fields(info, acquisition)
    on_input_grid = info.task == "sr"
    if info.task not in ("sr", "qpi") or pixel is None:
        why = "no pixel size" if pixel is None else f"no forward model for a {info.task} model"
        return ConsistencyOutput(None, {**summary, "not_computed": why}, on_input_grid)
    try:
        values = reconstruction_consistency(info.task, mean, image, pixel, optics, int(info.upsampling_factor),
                                            amplitude=QPI_AMPLITUDE)
    except ValueError as error:
        return ConsistencyOutput(None, {**summary, "not_computed": str(error)}, on_input_grid)
    summary["rms"] = float(np.sqrt(np.mean(values**2)))
    summary[f"fraction_above_{CONSISTENCY_THRESHOLD:g}"] = float(np.mean(np.abs(values) > CONSISTENCY_THRESHOLD))
    return ConsistencyOutput(values.astype(np.float32), summary, on_input_grid)
