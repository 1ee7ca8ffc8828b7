"""napari dock widgets (the only part of napari-cvdm that imports Qt).

- :class:`ReconstructWidget`: model picker, input picker, sampling options; adds
  ``<input> CVDM mean``, ``… variance`` and ``… γ map`` layers.
- :class:`TrainWidget`: trains a model from layer or folder pairs with a live loss curve.

Both share :data:`MODEL_REGISTRY`, so a freshly trained model can be picked at once.
"""

from ._registry import MODEL_REGISTRY, ModelEntry, ModelRegistry
from ._reconstruct import ReconstructWidget


def __getattr__(name: str):
    # The Train widget imports the training engine; load it only when asked for.
    if name == "TrainWidget":
        from ._train import TrainWidget

        return TrainWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODEL_REGISTRY", "ModelEntry", "ModelRegistry", "ReconstructWidget", "TrainWidget"]
