"""The CVDM method in PyTorch: schedule, denoiser, loss and samplers (no Qt, no napari)."""

from .cvdm import (
    BASE_LAYOUTS, BASES, CVDM, BaseLayout, LossTerms, ModelConfig, compose_residual, low_discrepancy_times,
    refinement_weight,
)
from .samplers import (
    GRIDS, SAMPLERS, RuntimeOptions, SampleStatistics, SamplingOptions, sample, sample_statistics,
)
from .schedule import SCHEDULE_KINDS, Schedule
from .unet import DENOISER_PRESETS, UNet, UNetSize

__all__ = [
    "BASES", "BASE_LAYOUTS", "BaseLayout", "CVDM", "DENOISER_PRESETS", "GRIDS", "LossTerms", "ModelConfig",
    "RuntimeOptions", "SAMPLERS", "SCHEDULE_KINDS", "SampleStatistics", "SamplingOptions", "Schedule", "UNet",
    "UNetSize", "compose_residual", "low_discrepancy_times", "refinement_weight", "sample",
    "sample_statistics",
]
