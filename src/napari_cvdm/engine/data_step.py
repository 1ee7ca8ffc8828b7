"""The sampler's data-consistency step for one plane, in the model's units and per tile.

The physics (:mod:`napari_cvdm.physics.data_step`) works on the reconstruction in the target's
unit (QPI: rad; SR: the input's intensity units). The sampler works on the normalised residual
r of ``value = scale·(b + s·r) + offset``; this module maps x̂0 there and back at every step,
with x̂0's error variance ``τ² = (1 − γ_t)·(scale·s)²`` (γ_t the tile's median: the error of the
best estimate of a unit-variance signal at that noise level; r is about unit size).

Across tiles: each tile takes the step on its own region with mirror boundaries (a per-tile
operator); the tiles overlap and are blended as ever, so a tile's edge, where its operator is
least right, carries little weight (docs/uncertainty.md, "Consistent sampling").

Per plane, once: QPI the mean intensity I₀ and relative noise std σ̂ of the whole stack; SR the
noise variance map of the raw widefield image and the intensity scale a and offset c that map the
SR image's units to the camera's (least squares of the forward model of the base, or of the
upsampled input for a model without one, against the raw image).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.consistency import sr_forward
from ..physics.data_step import SRStep
from ..physics.noise import defocus_relative_noise_std, widefield_noise_variance
from ..physics.tie import NOISE_FLOOR

#: ``step(x̂0, γ_t) → x̂0'``, both ``(B, Cx, h, w)`` on the device (what :func:`~napari_cvdm.model.samplers.sample` takes).
DataStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A QPI step class (``(stack, I₀, σ, dz, λ, pixel)``, called like :class:`SRStep`); None: QPI has none
#: (physics/data_step.py says why). benchmarks/consistent_sampling.py sets one to measure it.
QPI_STEP: type | None = None


@dataclass
class PlaneData:
    """One plane's data for the step: ``task``, the data on the device (QPI the stack ``(2, H, W)``; SR the
    camera image ``(h, w)`` in SR units and its weights), the optics, the output pixel (µm) and ``factor``."""

    task: str
    data: torch.Tensor
    weight: torch.Tensor | float
    optics: dict
    pixel_um: float
    factor: int

    @classmethod
    def build(cls, task: str, raw: np.ndarray, reference: np.ndarray, optics: dict, input_pixel_um: float,
              factor: int, device: torch.device) -> PlaneData:
        """From the raw plane ``(Cy, h, w)``; ``reference``: the SR image ``(H, W)`` the intensity fit uses."""
        if task == "qpi":
            stack = np.asarray(raw, np.float64)
            mean = float(stack.mean())
            noise = float(np.hypot(defocus_relative_noise_std(stack), NOISE_FLOOR))
            optics = {**optics, "mean_intensity": mean, "noise_std": noise}
            return cls(task, torch.from_numpy(stack).to(device), 1.0, optics, input_pixel_um, 1)
        widefield = np.asarray(raw, np.float64)[0]
        na, wavelength = optics["na"], optics["wavelength_um"]
        variance = widefield_noise_variance(widefield, input_pixel_um, na, wavelength)
        predicted = sr_forward(reference, input_pixel_um, na, wavelength, factor, optics["target_cutoff_scale"])
        design = np.stack([predicted.ravel(), np.ones(predicted.size)], axis=1)
        (gain, offset), *_ = np.linalg.lstsq(design, widefield.ravel(), rcond=None)
        gain = gain if abs(gain) > 1e-12 else 1.0
        data = torch.from_numpy((widefield - offset) / gain).to(device)
        weight = torch.from_numpy(gain**2 / variance).to(device)
        return cls(task, data, weight, optics, input_pixel_um / factor, factor)

    def physics_step(self, rows: tuple[int, int], cols: tuple[int, int]):
        """The physics step of the tile covering output ``rows`` × ``cols``."""
        (r0, r1), (c0, c1) = rows, cols
        if self.task == "qpi":
            o = self.optics
            return QPI_STEP(self.data[:, r0:r1, c0:c1], o["mean_intensity"], o["noise_std"], o["dz_um"],
                            o["wavelength_um"], self.pixel_um)
        f = self.factor
        region = (slice(r0 // f, r1 // f), slice(c0 // f, c1 // f))
        o = self.optics
        return SRStep(self.data[region], self.weight[region], f, self.pixel_um, o["na"], o["wavelength_um"],
                      o["target_cutoff_scale"])

    def tile_step(self, rows: tuple[int, int], cols: tuple[int, int], strength: float, scale: float,
                  offset: float, residual_scale: float, base: torch.Tensor | None) -> DataStep:
        """The sampler's step on the tile: x̂0 (normalised residual) → target units → physics → back.

        ``scale``/``offset``: ``value = scale·normalised + offset``; ``base``: b of the tile ``(1, h, w)``
        normalised, on the device (None: the model samples x0 itself)."""
        physics = self.physics_step(rows, cols)
        s = residual_scale
        b = 0.0 if base is None else base

        def step(x0_hat: torch.Tensor, gamma_t: torch.Tensor) -> torch.Tensor:
            gamma = gamma_t.flatten(1).median(dim=1).values
            tau2 = (1.0 - gamma.double()) * (scale * s) ** 2
            value = scale * (b + s * x0_hat[:, 0]) + offset
            corrected = physics(value, tau2, strength)
            return (((corrected - offset) / scale - b) / s)[:, None].to(x0_hat.dtype)

        return step
