"""The data-consistency output of a reconstruction against its input. No Qt here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checkpoint import ModelInfo


# ----------------------------------------------------------------------------- data consistency

#: SR optics when nothing else is known: the middle of the training simulator's ranges (NA 1.3–1.49, λ 0.5–0.65 µm).
DEFAULT_SR_OPTICS = {"na": 1.4, "wavelength_um": 0.575, "target_cutoff_scale": 2.0}
#: A map value beyond this many noise stds counts as unexplained (0.3 % of pixels for Gaussian noise).
CONSISTENCY_THRESHOLD = 3.0


@dataclass
class ConsistencyOutput:
    """The data-consistency map (input-noise std units; None when it could not be computed) and its sidecar fields."""

    map: np.ndarray | None
    summary: dict


def _consistency_optics(info: ModelInfo, wavelength_um: float | None, dz_um: float | None) -> tuple[dict, str]:
    if info.task == "sr":
        return dict(DEFAULT_SR_OPTICS), "defaults (the middle of the SR training simulator's NA and λ ranges)"
    from .base_estimate import TIEBase
    from .data.simulate import QPISimulationConfig

    trained = TIEBase.from_dict(info.base) if info.base else QPISimulationConfig()
    optics = {"dz_um": dz_um or trained.dz_um, "wavelength_um": wavelength_um or trained.wavelength_um}
    given = "given" if (wavelength_um or dz_um) else ("the model's" if info.base else "the simulator's defaults")
    return optics, given


def consistency_output(info: ModelInfo, mean: np.ndarray, image: np.ndarray, input_pixel_size_um: float | None,
                       wavelength_um: float | None = None, dz_um: float | None = None) -> ConsistencyOutput:
    """The forward model of ``mean`` against the raw input ``image``, in units of the input's noise std.

    SR: signed residual on the camera grid; QPI: RMS over the two planes (see
    :func:`napari_cvdm.physics.consistency.reconstruction_consistency`). About 1 where the
    mean explains the data; several units flag structure the data do not support. Never
    raises for data it cannot handle: the summary then says why there is no map.
    """
    from .physics.consistency import reconstruction_consistency

    optics, source = _consistency_optics(info, wavelength_um, dz_um)
    pixel = input_pixel_size_um or info.input_pixel_size_um
    summary = {"units": "input noise std", "optics": optics, "optics_source": source, "input_pixel_size_um": pixel,
               "map": "signed residual, camera grid" if info.task == "sr" else "RMS over the two planes"}
    if info.task not in ("sr", "qpi") or pixel is None:
        why = "no pixel size" if pixel is None else f"no forward model for a {info.task} model"
        return ConsistencyOutput(None, {**summary, "not_computed": why})
    try:
        values = reconstruction_consistency(info.task, mean, image, pixel, optics, int(info.upsampling_factor))
    except ValueError as error:
        return ConsistencyOutput(None, {**summary, "not_computed": str(error)})
    summary["rms"] = float(np.sqrt(np.mean(values**2)))
    summary[f"fraction_above_{CONSISTENCY_THRESHOLD:g}"] = float(np.mean(np.abs(values) > CONSISTENCY_THRESHOLD))
    return ConsistencyOutput(values.astype(np.float32), summary)
