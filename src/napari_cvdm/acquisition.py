"""What is known about an input (pixel size, optics, axes), and the optics the physics uses for it.

One rule for every front end (:func:`input_optics`): the input's own optics where given, else
the model's (a QPI model's TIE base records the optics it was trained with), else the training
simulator's defaults (:mod:`napari_cvdm.physics.optics`). The data-consistency map and the
sampler's data-consistency step both read them here.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import ModelInfo
from .physics.optics import QPI_DZ_UM, QPI_WAVELENGTH_UM, SR_EMISSION_UM, SR_NA, SR_TARGET_CUTOFF_SCALE


@dataclass(frozen=True)
class Acquisition:
    """What is known about an input: its name (file or layer), ``pixel_size_um`` (raw input grid, µm),
    ``wavelength_um`` (µm; QPI: the illumination's, SR: the emission's), the QPI defocus ``dz_um``
    (µm), the SR objective's ``na`` and the ``axes`` (e.g. ``"TCYX"``). None: unknown (module rule)."""

    name: str = "image"
    pixel_size_um: float | None = None
    wavelength_um: float | None = None
    dz_um: float | None = None
    axes: str | None = None
    na: float | None = None


def input_optics(info: ModelInfo, acquisition: Acquisition | None = None) -> tuple[dict, str]:
    """``(optics, where they come from)`` for ``info``'s task.

    QPI: ``wavelength_um`` and ``dz_um`` (µm); SR: ``na``, ``wavelength_um`` (emission, µm) and
    ``target_cutoff_scale`` (the SR target's OTF cut-off in widefield cut-offs). Given values win,
    then the model's TIE base, then the training simulator's defaults.
    """
    given = acquisition or Acquisition()
    if info.task == "sr":
        optics = {"na": given.na or SR_NA, "wavelength_um": given.wavelength_um or SR_EMISSION_UM,
                  "target_cutoff_scale": SR_TARGET_CUTOFF_SCALE}
        known = [value for value in (given.na, given.wavelength_um) if value]
        source = {2: "given", 1: "given in part, the rest the SR training simulator's (the middle of its ranges)",
                  0: "defaults (the middle of the SR training simulator's NA and λ ranges)"}[len(known)]
        return optics, source
    trained = info.base.get("wavelength_um"), info.base.get("dz_um")
    optics = {"wavelength_um": given.wavelength_um or trained[0] or QPI_WAVELENGTH_UM,
              "dz_um": given.dz_um or trained[1] or QPI_DZ_UM}
    source = ("given" if (given.wavelength_um or given.dz_um) else
              "the model's" if info.base else "the simulator's defaults")
    return optics, source
