"""What a reconstruction run holds: its resolved sampling, its output arrays and its result record."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import ModelInfo
from ..model.samplers import RuntimeOptions, SamplingOptions
from .checks import check_memory
from .settings import ReconstructionSettings


@dataclass
class Reconstruction:
    """Result on the output grid, float32.

    ``mean`` ``(..., H_out, W_out)`` in the target unit (``rad`` for QPI): the mean of the N
    samples, for a residual model with its refinement shrunk toward the base
    (``metadata["refinement_weight"]``, one w per plane); ``variance``
    the unbiased variance of the N samples in unit², ``gamma_map`` γ(t = 0.5, y)
    (unitless, low = noise injected early = harder pixel); ``samples``
    ``(..., N, H_out, W_out)`` when kept. A model with several target channels adds a
    channel axis before ``H_out``. ``pixel_size_um`` is the output pixel size.
    ``metadata``: the resolved settings (sampler, steps, η, device, precision, tiles).
    """

    mean: np.ndarray
    variance: np.ndarray
    gamma_map: np.ndarray
    samples: np.ndarray | None
    upsampling_factor: int
    pixel_size_um: float | None
    unit: str = "a.u."
    metadata: dict = field(default_factory=dict)


#: Metadata keys holding one value per plane (None for a plane not computed): the log-SNR grid's
#: reference λ, the refinement weight w and the base's closed-form error variance (target unit²).
PER_PLANE = ("grid_reference_lambda", "refinement_weight", "base_error_variance")


@dataclass(frozen=True)
class Sampling:
    """Everything resolved once per call that every tile's sampling needs; ``consistency_strength``
    ζ of the data-consistency step (0: off) and the ``optics`` it uses (µm; ``input_pixel_um``)."""

    options: SamplingOptions
    runtime: RuntimeOptions
    n_samples: int
    chunk: int
    settings: ReconstructionSettings
    consistency_strength: float = 0.0
    optics: dict = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """Rounds of ``chunk`` samples per plane."""
        return -(-self.n_samples // self.chunk)


@dataclass
class Outputs:
    """The output arrays ``(P, Cx, H, W)`` (samples ``(P, N, Cx, H, W)``), filled plane by plane."""

    mean: np.ndarray
    variance: np.ndarray
    gamma: np.ndarray
    samples: np.ndarray | None
    lead: tuple[int, ...]
    x_channels: int

    @classmethod
    def allocate(cls, info: ModelInfo, lead: tuple[int, ...], planes: int, height: int, width: int,
                 kept_samples: int) -> Outputs:
        x_channels = int(info.config.x_channels)
        check_memory(planes * x_channels * height * width * (3 + kept_samples))
        shape = (planes, x_channels, height, width)
        samples = np.zeros((planes, kept_samples, *shape[1:]), np.float32) if kept_samples else None
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                   samples, lead, x_channels)

    def _shaped(self, array: np.ndarray, extra: tuple[int, ...] = ()) -> np.ndarray:
        spatial = array.shape[-2:] if self.x_channels == 1 else array.shape[-3:]
        return array.reshape(*self.lead, *extra, *spatial)

    def result(self, info: ModelInfo, pixel_size: float | None, metadata: dict, final: bool,
               with_samples: bool = False) -> Reconstruction:
        """The arrays as a :class:`Reconstruction` (copies unless ``final``; no samples unless ``final``
        or ``with_samples``)."""
        own = (lambda a: a) if final else np.copy
        samples = self.samples if final or with_samples else None
        return Reconstruction(
            mean=self._shaped(own(self.mean)), variance=self._shaped(own(self.variance)),
            gamma_map=self._shaped(own(self.gamma)),
            samples=None if samples is None else self._shaped(own(samples), (samples.shape[1],)),
            upsampling_factor=int(info.upsampling_factor),
            pixel_size_um=None if pixel_size is None else pixel_size / int(info.upsampling_factor),
            unit=info.target_unit, metadata=metadata,
        )
