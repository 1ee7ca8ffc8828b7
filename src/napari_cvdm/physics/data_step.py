"""Data-consistency steps: the image nearest to an estimate x̂ that explains the measured data.

Each step solves, for an estimate x̂ ``(B, H, W)`` whose error has variance τ² per pixel,

    x' = argmin_x  ζ/2 · Σ w·(A x − d)²  +  1/(2τ²) · ‖x − x̂‖²

with A the task's linear forward model, d the data, w = 1 / (the data's noise variance) and ζ ≥ 0
the strength. At ζ = 1 this is the Gaussian posterior mean if x̂'s error were white with variance
τ²; the noise weight keeps the step from fitting the noise, and where A is blind (the TIE's lowest
frequencies, the SR image beyond the widefield band) x' keeps x̂. No gradient goes through a network.

The region is extended evenly to twice its size (mirror boundaries, as the TIE base's), so its edges
do not wrap into each other; the solution of the extended problem is itself even, and cropped back.
torch throughout, on the tensors' device.

- :class:`SRStep`: the widefield OTF (relative to the SR target's own OTF) then binning to the camera
  grid, ``d = (widefield − c)/a``; conjugate gradients.

QPI has no step here: on the phase objects of the training data (up to 3.5 rad) neither the
linearised TIE nor a few preconditioned steps of the exact Fresnel model move a sample toward the
truth reliably (docs/uncertainty.md, "Consistent sampling"; benchmarks/qpi_data_steps.py holds both).
"""

from __future__ import annotations


import numpy as np
import torch

from .optics import incoherent_otf, pixel_integration_mtf

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
        widefield_otf = incoherent_otf(fine, pixel_um, na, wavelength_um)
        target_otf = incoherent_otf(fine, pixel_um, na, wavelength_um, target_cutoff_scale)
        transfer = np.where(widefield_otf > 0, widefield_otf / np.maximum(target_otf, 1e-3), 0.0)
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
