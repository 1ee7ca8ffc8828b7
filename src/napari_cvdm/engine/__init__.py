"""The reconstruction engine, one concern per module.

- :mod:`.settings`: every setting's type, bound and default; devices.
- :mod:`.checks`: the input against the model, memory, pixel size, plane layout.
- :mod:`.tiling`: tile spans and blend weights, the noise field, blended-tile runs.
- :mod:`.plane`: one plane's condition, base, tiles, rounds of samples and their blend.
- :mod:`.run`: :func:`reconstruct` over every plane, and :class:`Reconstruction`.

Front ends do not call the engine directly: they go through :func:`napari_cvdm.predict.predict`.
"""

from .checks import check_call, check_layout, check_pixel_size, check_values, plane_count, validate_input
from .run import Reconstruction, consistency_strength, output_pixel_size, reconstruct, reconstruct_base
from .settings import (
    MAX_SAMPLER_STEPS, MAX_SAMPLES, ReconstructionSettings, available_devices, resolve_device,
)
from .tiling import NOISE_BLOCK, NoiseField, network_stride, tile_spans, tile_weights

__all__ = [
    "MAX_SAMPLER_STEPS", "MAX_SAMPLES", "NOISE_BLOCK", "NoiseField", "Reconstruction", "ReconstructionSettings",
    "available_devices", "check_call", "consistency_strength", "check_layout", "check_pixel_size", "check_values", "network_stride",
    "output_pixel_size", "plane_count", "reconstruct", "reconstruct_base", "resolve_device", "tile_spans",
    "tile_weights", "validate_input",
]
