"""Output-layer geometry and add-or-replace of the CVDM result layers (no model logic).

A reconstruction of an input layer with scale ``s`` and translate ``t`` (per
axis, last two axes spatial) by a model with upsampling factor ``f`` has pixels
``f`` times smaller. Input pixel ``i`` covers output pixels ``[f·i, f·i + f)``
(the convention of :func:`napari_cvdm.physics.upsample`), so the output layer
gets ``scale = s/f`` and ``translate = t − (1 − 1/f)·s/2`` on the spatial axes:
the centres of the ``f × f`` output pixels then surround the input pixel's centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from napari.layers import Image

#: Suffixes of the result layers; the full name is ``f"{input name} {suffix}"``.
MEAN_SUFFIX = "CVDM mean"
VARIANCE_SUFFIX = "CVDM variance"
GAMMA_SUFFIX = "CVDM γ map"
SAMPLES_SUFFIX = "CVDM samples"
ERROR_SUFFIX = "CVDM ± error (95 %)"
CALIBRATED_STD_SUFFIX = "CVDM calibrated std"
CONSISTENCY_SUFFIX = "CVDM data consistency"
#: Every layer name ending this plugin writes (never offered as an input).
OUTPUT_SUFFIXES = (MEAN_SUFFIX, VARIANCE_SUFFIX, ERROR_SUFFIX, CALIBRATED_STD_SUFFIX, GAMMA_SUFFIX, SAMPLES_SUFFIX,
                   CONSISTENCY_SUFFIX)


def output_geometry(scale: Sequence[float], translate: Sequence[float], factor: int,
                    ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate of an output layer from its input's, same length.

    Leading (non-spatial) axes are kept; the last two are divided by ``factor``
    and shifted so that output pixel centres line up with the input pixel's.
    """
    scale = [float(v) for v in scale]
    translate = [float(v) for v in translate]
    if len(scale) != len(translate) or len(scale) < 2:
        raise ValueError("scale and translate need the same length, at least 2")
    for axis in (-2, -1):
        translate[axis] -= (1.0 - 1.0 / factor) * scale[axis] / 2.0
        scale[axis] /= factor
    return tuple(scale), tuple(translate)


#: Values a display's contrast limits are estimated from: percentiles of a strided subsample of
#: this many pixels differ from the full image's by far less than a display can show, at ~1 ms.
LIMIT_SAMPLE_SIZE = 1 << 16


def robust_limits(data: np.ndarray, low: float = 0.5, high: float = 99.5,
                  from_zero: bool = False) -> tuple[float, float]:
    """Contrast limits from percentiles of the finite values of a strided subsample (never an empty range)."""
    flat = np.asarray(data).reshape(-1)
    values = flat[:: max(1, flat.size // LIMIT_SAMPLE_SIZE)].astype(np.float32)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lower, upper = np.percentile(values, [low, high])
    if from_zero:
        lower = min(0.0, float(values.min()))
    if not upper > lower:
        upper = lower + (abs(lower) * 1e-3 or 1.0)
    return float(lower), float(upper)


def remove_layer(viewer, name: str) -> None:
    """Remove the layer called ``name`` if there is one (a result that the new run does not give)."""
    if name in viewer.layers:
        viewer.layers.remove(viewer.layers[name])


def add_or_replace_image(viewer, name: str, data: np.ndarray, existing=None, visible_if_new: bool = True,
                         **properties):
    """Show ``data`` in the Image layer called ``name`` (or in ``existing``), replacing its data if it exists.

    ``properties``: scale, translate, colormap, contrast_limits, metadata, ...
    An existing layer keeps its place, visibility and user settings other than
    those given, and is renamed to ``name``; if its dimensionality differs it is
    replaced at the same index. A new layer is visible only if ``visible_if_new``.
    Returns the layer.
    """
    if existing is None and name in viewer.layers:
        existing = viewer.layers[name]
    if existing is not None and getattr(existing, "ndim", None) == data.ndim and isinstance(existing, Image):
        limits = properties.pop("contrast_limits", None)
        colormap = properties.pop("colormap", None)
        metadata = properties.pop("metadata", None)
        existing.scale = properties.pop("scale", existing.scale)
        existing.translate = properties.pop("translate", existing.translate)
        existing.data = data
        if limits is not None:
            existing.contrast_limits_range = limits
            existing.contrast_limits = limits
        else:
            existing.reset_contrast_limits()
        if colormap is not None and existing.metadata.get("cvdm_default_colormap") == existing.colormap.name:
            existing.colormap = colormap  # only if the user has not chosen another one
        if metadata is not None:
            existing.metadata = {**metadata, "cvdm_default_colormap": existing.colormap.name}
        for key, value in properties.items():
            setattr(existing, key, value)
        if existing.name != name:
            existing.name = name
        existing.refresh()
        return existing
    index, visible = None, visible_if_new
    if existing is not None:
        index, visible = viewer.layers.index(existing), existing.visible
        viewer.layers.remove(existing)
    metadata = properties.pop("metadata", {}) or {}
    layer = viewer.add_image(data, name=name, metadata=metadata, visible=visible, **properties)
    layer.metadata["cvdm_default_colormap"] = layer.colormap.name
    if index is not None:
        viewer.layers.move(viewer.layers.index(layer), index)
    return layer


def fill_layer_combo(combo, layers: list, prefer_index: int = 0) -> None:
    """Refill a layer combo box, keeping the current choice when it is still there."""
    current = combo.currentData()
    combo.blockSignals(True)
    combo.clear()
    for layer in layers:
        combo.addItem(layer.name, layer)
    index = next((i for i, layer in enumerate(layers) if layer is current), -1)
    if index < 0 and layers:
        index = min(prefer_index, len(layers) - 1)
    combo.setCurrentIndex(index)
    combo.blockSignals(False)
