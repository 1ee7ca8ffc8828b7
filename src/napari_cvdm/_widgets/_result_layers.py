"""The output layers of one reconstruction, shown as its results arrive without stalling the GUI.

A run shows a preview, then the mean and variance after every round of samples, then the
final result (:mod:`napari_cvdm.predict`: its previews, ``on_partial`` and the finished prediction).
Adding a napari layer costs ~0.2 s of GUI time whatever its size (its controls and its
vispy visual); adding four in one go stalled the viewer for 0.55 s. So every layer change
is one piece of :class:`StagedUpdates`, run one per event-loop turn, and a newer change
of a layer replaces a pending older one (the latest round supersedes the previous).

Layout: the mean is the one visible new layer and stays on top; the variance, γ, ± error
and samples layers are added hidden just below it (a grid would shrink the mean to a
quarter of the canvas, and the variance is read against the mean by toggling it). The
view is fitted once, when the mean layer is first added. Layers that exist already keep
their place, visibility and the user's colormap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from qtpy.QtCore import QObject, QTimer

from ..predict import Prediction
from ..preview import Preview
from ._layers import (
    CALIBRATED_STD_SUFFIX,
    CONSISTENCY_SUFFIX,
    ERROR_SUFFIX,
    GAMMA_SUFFIX,
    MEAN_SUFFIX,
    SAMPLES_SUFFIX,
    VARIANCE_SUFFIX,
    add_or_replace_image,
    remove_layer,
    robust_limits,
)


VARIANCE_ROLE = "per-pixel sample variance (the model's own, not calibrated)"
GAMMA_ROLE = "learned schedule γ(t = 0.5, y)"
CONSISTENCY_ROLE = "data consistency: (measured − forward(mean)) / input noise std (QPI: RMS over ±dz); " \
                   "≈ 1 where the mean explains the data (docs/uncertainty.md)"


class StagedUpdates:
    """Pieces of GUI work keyed by name, run one per event-loop turn, in the order first put.

    ``on_error(exc)``: called (and the rest dropped) when a piece raises, so that a display
    problem never escapes into the event loop.
    """

    def __init__(self, parent: QObject, on_error: Callable[[Exception], None]):
        self._pending: dict[str, Callable[[], None]] = {}
        self._on_error = on_error
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._run_next)

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    def put(self, key: str, piece: Callable[[], None]) -> None:
        """Run ``piece()`` in a later turn; replaces a pending piece of the same ``key`` in its place."""
        self._pending[key] = piece
        if not self._timer.isActive():
            self._timer.start()

    def _run_next(self) -> None:
        if not self._pending:
            return
        key = next(iter(self._pending))
        piece = self._pending.pop(key)
        try:
            piece()
        except Exception as exc:  # noqa: BLE001 - reported as one notification by the owner
            self._pending.clear()
            self._on_error(exc)
        if self._pending:
            self._timer.start()


class ResultLayers:
    """The layers ``f"{input_name} {suffix}"`` of one run on output geometry ``scale``/``translate``.

    ``metadata``: what every layer's ``metadata["cvdm"]`` holds (model, settings, ...);
    ``n_samples``: the N the run will draw; ``input_geometry``: ``(scale, translate)`` of the input
    grid, for a map that lies on it (SR's data consistency).
    """

    def __init__(self, viewer, staged: StagedUpdates, input_name: str, scale, translate, metadata: dict,
                 n_samples: int, input_geometry: tuple | None = None):
        self.viewer, self.staged, self.input_name = viewer, staged, input_name
        self.scale, self.translate, self.metadata, self.n_samples = scale, translate, metadata, n_samples
        self.input_geometry = input_geometry or (scale, translate)
        self.preview_kind: str | None = None
        self.samples_done = 0
        self.plane, self.planes = 0, 1  # the plane being sampled (of several: "all planes")
        self._removed: set[str] = set()

    def name(self, suffix: str) -> str:
        return f"{self.input_name} {suffix}"

    def find(self, suffix: str):
        """The layer of ``suffix`` (also under its preview name, e.g. "… CVDM mean (preview: …)"), or None."""
        name = self.name(suffix)
        return next((layer for layer in self.viewer.layers
                     if layer.name == name or layer.name.startswith(f"{name} (")), None)

    def show_preview(self, preview: Preview) -> None:
        """The preview in the mean layer, named and marked (``metadata["cvdm"]["preview"]``) as one."""
        self.preview_kind = preview.kind
        extra = {"role": f"preview ({preview.kind}), not a CVDM sample", "preview": preview.kind, "samples_done": 0}
        self._show(MEAN_SUFFIX, preview.data, "gray", robust_limits, extra,
                   name=f"{self.name(MEAN_SUFFIX)} (preview: {preview.kind})")

    def show_samples(self, result, samples_done: int) -> None:
        """The mean, variance (N > 1), γ map of ``result`` after ``samples_done`` samples (of its plane
        ``result.metadata["plane"]``; the planes before it have all N, those after none)."""
        extra = self._progress_extra(result, samples_done)
        self._show(MEAN_SUFFIX, result.mean, "gray", robust_limits, {**extra, "role": "mean of the samples"})
        spread_known = self.n_samples > 1 and (samples_done > 1 or self.plane > 0)
        self._show_or_drop(VARIANCE_SUFFIX, result.variance if spread_known else None, "magma", _from_zero,
                           {**extra, "role": VARIANCE_ROLE})
        self._show(GAMMA_SUFFIX, result.gamma_map, "viridis", _central, {**extra, "role": GAMMA_ROLE})

    def show_prediction(self, prediction: Prediction, arrays: dict[str, np.ndarray]) -> None:
        """Every output of a finished job (``arrays`` by :data:`napari_cvdm.predict.OUTPUTS` name) as a
        layer; layers of an earlier run that this one does not give are removed."""
        result, uncertainty = prediction.reconstruction, prediction.uncertainty
        extra = self._progress_extra(result, self.n_samples)
        spread = {**extra, **uncertainty.summary()}
        calibrated = f"(calibrated), {result.unit}"
        roles = {
            MEAN_SUFFIX: ("mean", "gray", robust_limits, {**extra, "role": "mean of the samples"}),
            VARIANCE_SUFFIX: ("variance", "magma", _from_zero, {**spread, "role": VARIANCE_ROLE}),
            CALIBRATED_STD_SUFFIX: ("std_calibrated", "magma", _from_zero,
                                    {**spread, "role": f"std whose square matches the squared error {calibrated}"}),
            ERROR_SUFFIX: ("error95", "magma", _from_zero,
                           {**spread, "role": f"half-width of mean ± error at {uncertainty.level:.0%} {calibrated}"}),
            GAMMA_SUFFIX: ("gamma", "viridis", _central, {**extra, "role": GAMMA_ROLE}),
            CONSISTENCY_SUFFIX: ("consistency", "magma", _from_zero,
                                 {**extra, "role": CONSISTENCY_ROLE, **prediction.consistency.summary}),
        }
        for suffix, (name, colormap, limits, metadata) in roles.items():
            grid = self.input_geometry if name == "consistency" and prediction.consistency.on_input_grid else None
            self._show_or_drop(suffix, arrays.get(name), colormap, limits, metadata, grid=grid)
        samples = arrays.get("samples")
        # Sample axis first, so that T/Z axes stay aligned with the input layer's (napari aligns the last axes).
        self._show_or_drop(SAMPLES_SUFFIX, None if samples is None else np.moveaxis(samples, -3, 0), "gray",
                           robust_limits, {**extra, "role": "individual samples (axis 0)"}, leading=1)

    def _progress_extra(self, result, samples_done: int) -> dict:
        """The metadata every layer of ``result`` carries, after ``samples_done`` samples of its plane."""
        self.preview_kind, self.samples_done = None, samples_done
        self.plane, self.planes = int(result.metadata.get("plane", 0)), int(result.metadata.get("planes", 1))
        extra = {"preview": None, "samples_done": samples_done, "unit": result.unit, "engine": result.metadata}
        if self.planes > 1:
            extra["samples_done_plane"] = self.plane
        return extra

    def progress_words(self) -> str:
        """E.g. "3 / 8 samples", "3 / 8 samples of plane 2 / 5", with the preview shown, if any."""
        words = f"{self.samples_done} / {self.n_samples} samples"
        if self.planes > 1:
            words += f" of plane {self.plane + 1} / {self.planes}"
        if self.preview_kind:
            words += f" (showing a preview: {self.preview_kind})"
        return words

    def shown_names(self) -> list[str]:
        """Names of this run's layers present now, mean first."""
        suffixes = (MEAN_SUFFIX, VARIANCE_SUFFIX, CALIBRATED_STD_SUFFIX, ERROR_SUFFIX, GAMMA_SUFFIX,
                    CONSISTENCY_SUFFIX, SAMPLES_SUFFIX)
        return [layer.name for layer in map(self.find, suffixes) if layer is not None]

    def _show_or_drop(self, suffix: str, data, colormap: str, limits, extra: dict, leading: int = 0,
                      grid: tuple | None = None) -> None:
        if data is None:
            self._drop(suffix)
        else:
            self._show(suffix, data, colormap, limits, extra, leading=leading, grid=grid)

    def _drop(self, suffix: str) -> None:
        """Remove (once per run) a layer of ``suffix`` left by an earlier run: it describes another result."""
        if suffix not in self._removed:
            self._removed.add(suffix)
            self.staged.put(suffix, lambda: remove_layer(self.viewer, self.name(suffix)))

    def _show(self, suffix: str, data, colormap: str, limits, extra: dict, name: str | None = None,
              leading: int = 0, grid: tuple | None = None) -> None:
        """Put the layer change in the queue; ``grid``: ``(scale, translate)`` other than the output's."""
        self._removed.discard(suffix)
        scale, translate = grid or (self.scale, self.translate)
        self.staged.put(suffix, lambda: self._apply(suffix, np.asarray(data), colormap, limits, extra,
                                                    name or self.name(suffix), leading, scale, translate))

    def _apply(self, suffix, data, colormap, limits, extra, name, leading, scale, translate) -> None:
        """Add or update one layer (on the GUI thread, in its own event-loop turn)."""
        existing = self.find(suffix)
        metadata = {"cvdm": {**self.metadata, "n_samples": self.n_samples, **extra}}
        layer = add_or_replace_image(
            self.viewer, name, data, existing=existing, visible_if_new=False,
            scale=(1.0,) * leading + tuple(scale), translate=(0.0,) * leading + tuple(translate),
            colormap=colormap, contrast_limits=limits(data), metadata=metadata,
        )
        if existing is not None:
            return
        mean = self.find(MEAN_SUFFIX)
        if suffix == MEAN_SUFFIX:  # shown in a turn of its own: drawing it costs as much as adding it
            self.staged.put(f"{name}: show", lambda: self._reveal(layer))
        elif mean is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), self.viewer.layers.index(mean))


    def _reveal(self, layer) -> None:
        """Show a newly added mean layer and fit the view to it (once per new layer)."""
        layer.visible = True
        self.viewer.reset_view()


def _from_zero(data: np.ndarray) -> tuple[float, float]:
    return robust_limits(data, from_zero=True)


def _central(data: np.ndarray) -> tuple[float, float]:
    return robust_limits(data, 1, 99)
