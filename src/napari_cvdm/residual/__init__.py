"""The bases of the residual formulation: one class per ``ModelConfig.base`` kind (:mod:`.bases`)
and the TIE phase base of QPI models (:mod:`.tie_base`). Numpy physics and the torch model meet
here; :mod:`napari_cvdm.model` does not import it."""

from .bases import (
    BASE_CLASSES, CorrectedTIEBase, NoBase, PredictorBase, ResidualBase, TIEPhaseBase, WholePlane, base_for,
    formulation_words, tie_of, training_base,
)
from .tie_base import FIT_IMAGES, TIEBase, noise_level_map, optics_mismatch

__all__ = [
    "BASE_CLASSES", "FIT_IMAGES", "CorrectedTIEBase", "NoBase", "PredictorBase", "ResidualBase", "TIEBase",
    "TIEPhaseBase", "WholePlane", "base_for", "formulation_words", "noise_level_map", "optics_mismatch",
    "tie_of", "training_base",
]
