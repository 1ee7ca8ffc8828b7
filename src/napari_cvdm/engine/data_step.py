"""The sampler's data-consistency step (SR): the image nearest to x̂0 that explains the measured data.

At every step the sampler's data prediction x̂0 ``(B, H, W)``, whose error has variance τ² per pixel,
is replaced by

    x' = argmin_x  ζ/2 · Σ w·(A x − d)²  +  1/(2τ²) · ‖x − x̂0‖²

with A the forward model (:class:`SRStep`: the widefield transfer of
:func:`~napari_cvdm.physics.consistency.sr_transfer`, then the camera's pixel average), d the raw
image mapped to the SR image's units, w = 1 / its noise variance and ζ ≥ 0 the strength. At ζ = 1
this is the Gaussian posterior mean if x̂0's error were white with variance τ²; the noise weight keeps
the step from fitting the noise, and beyond the widefield band x' keeps x̂0. No gradient goes
through the network. torch, on the sampler's device; the physics (transfers, noise) is numpy.

Units: the sampler works on the normalised residual r of ``value = scale·(b + s·r) + offset``; the
step maps x̂0 there and back, with ``τ² = (1 − γ_t)·(scale·s)²`` (γ_t the tile's median: the error of
the best estimate of a unit-variance signal at that noise level; r is about unit size).

Across tiles: each tile takes the step on its own region, extended evenly to twice its size (mirror
edges, as the TIE base's) so its edges do not wrap; the tiles overlap and are blended as ever, so a
tile's edge, where its operator is least right, carries little weight.

Per plane, once (:class:`PlaneData`): the noise variance map of the raw widefield image and the
intensity scale a and offset c that map the SR image's units to the camera's (least squares of the
forward model of the base, or of the upsampled input for a model without one, against the raw image).

QPI has no step: on the strong phase objects of the training data (up to 3.5 rad) neither the
linearised TIE nor a few preconditioned steps of the exact Fresnel model move a sample toward the
truth reliably (docs/uncertainty.md; benchmarks/qpi_data_steps.py holds both and sets :data:`QPI_STEP`
to measure them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..physics.consistency import sr_forward, sr_transfer
from ..physics.noise import defocus_relative_noise_std, widefield_noise_variance
from ..physics.optics import pixel_integration_mtf
from ..physics.tie import NOISE_FLOOR

#: ``step(x̂0, γ_t) → x̂0'``, both ``(B, Cx, h, w)`` on the device (what :func:`~napari_cvdm.model.samplers.sample` takes).
DataStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: A QPI step class (``(stack, I₀, σ, dz, λ, pixel)``, called like :class:`SRStep`); None: QPI has none
#: (the module docstring says why). benchmarks/consistent_sampling.py sets one to measure it.
QPI_STEP: type | None = None


#: Conjugate-gradient iterations of the SR step (fixed, so a run is reproducible).
SR_CG_ITERATIONS = 8


def mirror(x: torch.Tensor) -> torch.Tensor:
    """The even extension ``(..., 2H, 2W)`` of ``(..., H, W)``."""
    x = torch.cat([x, x.flip(-1)], dim=-1)
    return torch.cat([x, x.flip(-2)], dim=-2)


class SRStep:
    """The widefield forward model's consistency step for SR estimates of one region.

    ``A x = bin_f(h ⊛ x)``: h the widefield OTF divided by the SR target's own OTF (``target_cutoff_scale``
    times the widefield cut-off; the SR image is the object seen through it) inside the widefield band,
    then the camera's ``f × f`` pixel average. Solved by :data:`SR_CG_ITERATIONS` conjugate-gradient
    iterations on ``(ζ AᵀwA + 1/τ²) x = ζ Aᵀw d + x̂/τ²``, started at x̂ and preconditioned by that
    operator's Fourier symbol without aliasing, at the mean weight.

    ``widefield``: ``(h, w)`` camera-grid data of the region, already mapped to the SR image's units
    (``(raw − c)/a``); ``weight``: ``(h, w)`` 1 / its noise variance in those units; ``pixel_um``: the
    SR (fine) pixel; ``factor`` f.
    """

    def __init__(self, widefield: torch.Tensor, weight: torch.Tensor, factor: int, pixel_um: float, na: float,
                 wavelength_um: float, target_cutoff_scale: float):
        self.factor = int(factor)
        self.data, self.weight = mirror(widefield.float()), mirror(weight.float())
        fine = (self.data.shape[-2] * self.factor, self.data.shape[-1] * self.factor)
        transfer = sr_transfer(fine, pixel_um, na, wavelength_um, target_cutoff_scale)
        half = slice(0, fine[1] // 2 + 1)
        self.transfer = torch.from_numpy(np.ascontiguousarray(transfer[:, half], np.float32)).to(widefield.device)
        # AᵀwA's symbol if binning kept only its box blur (no aliasing), with w at its mean: the preconditioner
        box = pixel_integration_mtf(fine, self.factor)[:, half]
        curvature = transfer[:, half] ** 2 * box**2 / self.factor**2 * float(self.weight.mean())
        self.curvature = torch.from_numpy(np.ascontiguousarray(curvature, np.float32)).to(widefield.device)
        self.shape = (fine[0] // 2, fine[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A on the extended fine grid ``(B, 2H, 2W)`` → extended camera grid."""
        blurred = torch.fft.irfft2(torch.fft.rfft2(x) * self.transfer, s=x.shape[-2:])
        f = self.factor
        return blurred.unflatten(-1, (-1, f)).unflatten(-3, (-1, f)).mean(dim=(-3, -1))

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Aᵀ: replicate each camera pixel over its f × f fine pixels (÷ f²), then the same transfer."""
        f = self.factor
        spread = r.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2
        return torch.fft.irfft2(torch.fft.rfft2(spread) * self.transfer, s=spread.shape[-2:])

    def __call__(self, estimate: torch.Tensor, tau2: torch.Tensor, strength: float) -> torch.Tensor:
        """x' ``(B, H, W)`` for x̂ ``(B, H, W)`` with error variance ``tau2`` ``(B,)`` (SR units²)."""
        prior = 1.0 / tau2.float()[:, None, None]
        start = mirror(estimate.float())

        def normal(x):
            return strength * self.adjoint(self.weight * self.forward(x)) + prior * x

        def precondition(r):
            spectrum = torch.fft.rfft2(r) / (strength * self.curvature + prior)
            return torch.fft.irfft2(spectrum, s=r.shape[-2:])

        rhs = strength * self.adjoint(self.weight * self.data) + prior * start
        x = _conjugate_gradients(normal, precondition, rhs, start, SR_CG_ITERATIONS)
        height, width = self.shape
        return x[..., :height, :width].to(estimate.dtype)


def _conjugate_gradients(normal, precondition, rhs: torch.Tensor, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` preconditioned CG steps on ``normal(x) = rhs`` (both operators symmetric positive
    definite; ``precondition`` ≈ normal⁻¹), per batch row."""
    residual = rhs - normal(x)
    z = precondition(residual)
    direction = z
    power = (residual * z).sum(dim=(-2, -1), keepdim=True)
    for _ in range(iterations):
        image = normal(direction)
        step = power / (direction * image).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        x = x + step * direction
        residual = residual - step * image
        z = precondition(residual)
        new_power = (residual * z).sum(dim=(-2, -1), keepdim=True)
        direction = z + (new_power / power.clamp_min(1e-30)) * direction
        power = new_power
    return x


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
