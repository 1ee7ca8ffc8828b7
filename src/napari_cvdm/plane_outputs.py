"""A job's outputs one plane at a time: their layout before computing, each plane's derived maps, the summaries.

:func:`output_layout` says, before any computing, every output's full shape and pixel size, so a
file sink can create its files. :class:`PlaneOutputs` turns one finished plane of the engine into
every output's plane (the calibrated std and ± error, the consistency map) and keeps the small
per-plane numbers (λ reference, refinement weight, consistency RMS) from which the run's summaries
are made; those numbers are JSON-safe, so a resumed run takes them from the planes already written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .acquisition import Acquisition
from .checkpoint import ModelInfo
from .consistency import CONSISTENCY_THRESHOLD, ConsistencyOutput, consistency_output, summary_fields
from .engine.checks import lead_shape, plane_count
from .engine.outputs import PER_PLANE
from .engine.settings import ReconstructionSettings
from .uncertainty.apply import UncertaintyOutputs, model_calibration, uncertainty_outputs

FRACTION = f"fraction_above_{CONSISTENCY_THRESHOLD:g}"
#: Every output a job can give, in the order front ends show and write them.
OUTPUTS = ("mean", "variance", "std_calibrated", "error95", "gamma", "consistency", "samples")


def output_names(info: ModelInfo, settings: ReconstructionSettings) -> list[str]:
    """The outputs a job of ``info``'s model with ``settings`` gives (:data:`OUTPUTS` order); the
    consistency map may still be missing where the input's pixel size is unknown."""
    spread = settings.n_samples > 1
    given = {"mean": True, "variance": spread, "std_calibrated": spread and bool(info.calibration),
             "error95": spread and bool(info.calibration), "gamma": True,
             "consistency": info.task in ("sr", "qpi"), "samples": settings.keep_samples}
    return [name for name in OUTPUTS if given[name]]


@dataclass(frozen=True)
class OutputPlan:
    """One output of a streamed job: its full ``shape`` (``n_lead`` leading axes, [N,] [C,] H, W), pixel
    size (µm; None: unknown) and ``on_input_grid`` (SR's consistency map lies on the raw camera grid)."""

    shape: tuple[int, ...]
    pixel_size_um: float | None
    on_input_grid: bool = False
    n_lead: int = 0

    @property
    def planes(self) -> int:
        """2-D planes of this output (all axes but the last two)."""
        return int(np.prod(self.shape[:-2], dtype=np.int64))


def output_layout(info: ModelInfo, image, settings: ReconstructionSettings,
                  pixel_size_um: float | None) -> dict[str, OutputPlan]:
    """Every output a streamed job of ``image`` gives, by name, before computing (``pixel_size_um``: the
    input's, None = the model's)."""
    factor, x_channels = int(info.upsampling_factor), int(info.config.x_channels)
    lead, (h, w) = lead_shape(info, image), tuple(image.shape[-2:])
    spatial = (h * factor, w * factor) if x_channels == 1 else (x_channels, h * factor, w * factor)
    pixel = pixel_size_um if pixel_size_um is not None else info.input_pixel_size_um
    out_pixel = None if pixel is None else pixel / factor
    layout = {}
    for name in output_names(info, settings):
        if name in ("std_calibrated", "error95") and not _calibration_readable(info):
            continue
        if name == "consistency":
            if pixel is None or x_channels != 1:
                continue
            on_input = info.task == "sr"
            layout[name] = OutputPlan((*lead, *((h, w) if on_input else spatial)), pixel if on_input else out_pixel,
                                      on_input, len(lead))
            continue
        extra = (int(settings.n_samples),) if name == "samples" else ()
        layout[name] = OutputPlan((*lead, *extra, *spatial), out_pixel, n_lead=len(lead))
    return layout


def _calibration_readable(info: ModelInfo) -> bool:
    try:
        return model_calibration(info) is not None
    except ValueError:
        return False


@dataclass
class PlaneOutputs:
    """Derives each finished plane's outputs and keeps the per-plane numbers (``records[p]``, JSON-safe)."""

    info: ModelInfo
    settings: ReconstructionSettings
    acquisition: Acquisition
    records: dict[int, dict] = field(default_factory=dict)

    def plane(self, p: int, result, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Every output's plane ``p`` (shaped as the output without its leading axes) from the engine's
        ``result`` of that plane and its raw input ``raw`` ``(Cy, h, w)``; records the plane's numbers."""
        image = raw[0] if int(self.info.config.y_channels) == 1 else raw
        uncertainty = uncertainty_outputs(self.info, result.variance, image, self.settings.n_samples,
                                          self.acquisition.pixel_size_um, sampling=result.metadata)
        consistency = consistency_output(self.info, result.mean, image, self.acquisition)
        values = consistency.map
        self.records[p] = {
            **{key: result.metadata[key][p] for key in PER_PLANE},
            "out_of_distribution": uncertainty.warning,
            "consistency_sum_squares": None if values is None else consistency.summary["rms"] ** 2 * values.size,
            "consistency_above": None if values is None else int(np.sum(np.abs(values) > CONSISTENCY_THRESHOLD)),
            "consistency_pixels": None if values is None else int(values.size),
            "consistency_not_computed": consistency.summary.get("not_computed"),
        }
        arrays = {"mean": result.mean, "variance": result.variance, "std_calibrated": uncertainty.calibrated_std,
                  "error95": uncertainty.error, "gamma": result.gamma_map, "consistency": values,
                  "samples": result.samples}
        return {name: array for name, array in arrays.items() if array is not None}

    def metadata(self, metadata: dict) -> dict:
        """The engine's final metadata with every plane's λ reference and refinement weight filled in."""
        keys = PER_PLANE
        filled = {key: [self.records.get(p, {}).get(key) for p in range(len(metadata[key]))] for key in keys}
        return {**metadata, **filled}

    def uncertainty(self, metadata: dict) -> UncertaintyOutputs:
        """The run's uncertainty fields without arrays; its warning: the first plane's that had one."""
        fields = uncertainty_outputs(self.info, np.ones((8, 8), np.float32), None, self.settings.n_samples,
                                     self.acquisition.pixel_size_um, sampling=metadata)
        warnings = [self.records[p]["out_of_distribution"] for p in sorted(self.records)]
        warning = next((w for w in warnings if w), None) if fields.calibrated else fields.warning
        return replace(fields, calibrated_std=None, error=None, warning=warning)

    def consistency(self, image) -> ConsistencyOutput:
        """The run's consistency summary (RMS and fraction above threshold over every plane), no map."""
        summary = summary_fields(self.info, self.acquisition)
        pixel = summary["input_pixel_size_um"]
        if self.info.task not in ("sr", "qpi") or pixel is None:
            summary["not_computed"] = "no pixel size" if pixel is None else f"no forward model for a {self.info.task} model"
        records = [self.records[p] for p in sorted(self.records)]
        missing = next((r["consistency_not_computed"] for r in records if r["consistency_not_computed"]), None)
        if missing or not records or summary.get("not_computed"):
            why = summary.get("not_computed") or missing or "no plane computed"
            return ConsistencyOutput(None, {**summary, "not_computed": why}, self.info.task == "sr")
        pixels = sum(r["consistency_pixels"] for r in records)
        summary["rms"] = math.sqrt(sum(r["consistency_sum_squares"] for r in records) / pixels)
        summary[FRACTION] = sum(r["consistency_above"] for r in records) / pixels
        summary["planes"] = plane_count(self.info, image)
        return ConsistencyOutput(None, summary, self.info.task == "sr")
