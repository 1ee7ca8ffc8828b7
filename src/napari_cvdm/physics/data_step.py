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

- :class:`QPITIEStep`: the linearised TIE, ``d = (I₊ − I₋)/I₀ = −(λ dz/π) ∇²φ``; closed form per frequency.
- :class:`SRStep`: the widefield OTF (relative to the SR target's own OTF) then binning to the camera
  grid, ``d = (widefield − c)/a``; conjugate gradients.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .optics import incoherent_otf

#: Conjugate-gradient iterations of the SR step (fixed, so a run is reproducible).
SR_CG_ITERATIONS = 8
#: Gauss–Newton iterations of the QPI Fresnel step, and the most step halvings in each.
QPI_NEWTON_ITERATIONS = 3
QPI_HALVINGS = 6


def mirror(x: torch.Tensor) -> torch.Tensor:
    """The even extension ``(..., 2H, 2W)`` of ``(..., H, W)``."""
    x = torch.cat([x, x.flip(-1)], dim=-1)
    return torch.cat([x, x.flip(-2)], dim=-2)


def _frequency_squared(shape: tuple[int, int], pixel_um: float, device) -> torch.Tensor:
    """|f|² ``(H, W//2 + 1)`` in µm⁻² on the ``rfft2`` grid."""
    fy = torch.fft.fftfreq(shape[0], d=pixel_um, device=device, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(shape[1], d=pixel_um, device=device, dtype=torch.float64)[None, :]
    return fy**2 + fx**2


class QPITIEStep:
    """The linearised TIE's consistency step for phase estimates of one region.

    With unit amplitude, ``d = (I₊ − I₋)/I₀ = K φ`` per frequency, ``K = 4π λ dz |f|²``; each plane's
    relative noise std σ gives d the variance 2σ². Per frequency (mirrored region):
    ``Φ' = (ζ K D / 2σ² + Φ̂/τ²) / (ζ K² / 2σ² + 1/τ²)``; the mean (K = 0) stays x̂'s.

    ``stack``: ``(2, H, W)`` intensities [I(−dz), I(+dz)] of the region; ``mean_intensity`` I₀ and
    ``noise_std`` σ (relative to I₀) of the whole plane; optics in µm.
    """

    def __init__(self, stack: torch.Tensor, mean_intensity: float, noise_std: float, dz_um: float,
                 wavelength_um: float, pixel_um: float):
        difference = (stack[1] - stack[0]).double() / mean_intensity
        extended = mirror(difference)
        self.shape = tuple(difference.shape)
        self.data = torch.fft.rfft2(extended)
        angle = math.pi * wavelength_um * dz_um * _frequency_squared(extended.shape, pixel_um, stack.device)
        self.symbol = 4 * torch.sin(angle)
        self.weight = 1.0 / (2.0 * noise_std**2)

    def __call__(self, estimate: torch.Tensor, tau2: torch.Tensor, strength: float) -> torch.Tensor:
        """x' ``(B, H, W)`` for x̂ ``(B, H, W)`` (rad) with error variance ``tau2`` ``(B,)`` (rad²)."""
        spectrum = torch.fft.rfft2(mirror(estimate.double()))
        prior = 1.0 / tau2.double()[:, None, None]
        data = strength * self.weight
        solved = (data * self.symbol * self.data + prior * spectrum) / (data * self.symbol**2 + prior)
        height, width = self.shape
        return torch.fft.irfft2(solved, s=(2 * height, 2 * width))[..., :height, :width].to(estimate.dtype)


class QPIFresnelStep:
    """The exact Fresnel model's consistency step for phase estimates of one region.

    ``I±(φ) = |P±(e^{iφ})|²`` (unit amplitude, relative to I₀; P± the paraxial propagators to ±dz),
    weight 1/σ² per plane. :data:`QPI_NEWTON_ITERATIONS` Gauss–Newton iterations, each
    ``x ← x − α (ζ·8 sin²(πλdz|f|²)/σ² + 1/τ²)⁻¹ ∇E(x)`` per frequency: the weak-object transfer
    ``2 sin(πλdz|f|²)`` of each plane stands in for the Jacobian (exact at φ = 0), and the gradient
    ``∇E = ζ/σ² Σ± −2 Im(e^{iφ}·conj(P±*(u± r±))) + (x − x̂)/τ²`` (u± = P±(e^{iφ}), r± = I± − measured)
    is exact. Arguments as :class:`QPITIEStep`.
    """

    def __init__(self, stack: torch.Tensor, mean_intensity: float, noise_std: float, dz_um: float,
                 wavelength_um: float, pixel_um: float):
        self.shape = tuple(stack.shape[-2:])
        self.measured = mirror(stack.double() / mean_intensity)  # (2, 2H, 2W): I(−dz), I(+dz)
        extended = self.measured.shape[-2:]
        fy = torch.fft.fftfreq(extended[0], d=pixel_um, device=stack.device, dtype=torch.float64)[:, None]
        fx = torch.fft.fftfreq(extended[1], d=pixel_um, device=stack.device, dtype=torch.float64)[None, :]
        angle = math.pi * wavelength_um * dz_um * (fy**2 + fx**2)
        self.propagators = torch.stack([torch.exp(1j * angle), torch.exp(-1j * angle)])  # to −dz, to +dz
        half = angle[:, : extended[1] // 2 + 1]
        self.curvature = 8 * torch.sin(half) ** 2
        self.weight = 1.0 / noise_std**2

    def misfit(self, phase: torch.Tensor, with_gradient: bool = False):
        """``(E, ∇E)``: E ``(B,)`` = ½ Σ± (I±(φ) − measured±)² of φ ``(B, 2H, 2W)`` and its gradient (or None)."""
        field = torch.exp(1j * phase)
        spectrum = torch.fft.fft2(field)
        energy, gradient = 0.0, torch.zeros_like(phase) if with_gradient else None
        for propagator, measured in zip(self.propagators, self.measured):
            wave = torch.fft.ifft2(spectrum * propagator)
            residual = wave.abs() ** 2 - measured
            energy = energy + 0.5 * (residual**2).sum(dim=(-2, -1))
            if with_gradient:
                back = torch.fft.ifft2(torch.fft.fft2(wave * residual) * propagator.conj())
                gradient = gradient - 2 * (field * back.conj()).imag
        return energy, gradient

    def __call__(self, estimate: torch.Tensor, tau2: torch.Tensor, strength: float) -> torch.Tensor:
        """x' ``(B, H, W)`` for x̂ ``(B, H, W)`` (rad) with error variance ``tau2`` ``(B,)`` (rad²).

        Each iteration halves its step (per row, at most :data:`QPI_HALVINGS` times) until the
        objective falls (Armijo), so a strong phase object, where the weak-object curvature is
        wrong, never makes it worse."""
        prior = 1.0 / tau2.double()
        start = mirror(estimate.double())
        data = strength * self.weight

        def objective(x, with_gradient=False):
            energy, gradient = self.misfit(x, with_gradient)
            total = data * energy + 0.5 * prior * ((x - start) ** 2).sum(dim=(-2, -1))
            if with_gradient:
                gradient = data * gradient + prior[:, None, None] * (x - start)
            return total, gradient

        x = start
        precondition = data * self.curvature + prior[:, None, None]
        for _ in range(QPI_NEWTON_ITERATIONS):
            value, gradient = objective(x, with_gradient=True)
            direction = -torch.fft.irfft2(torch.fft.rfft2(gradient) / precondition, s=x.shape[-2:])
            slope = (gradient * direction).sum(dim=(-2, -1))
            x = _backtracked(objective, x, direction, value, slope)
        height, width = self.shape
        return x[..., :height, :width].to(estimate.dtype)


def _backtracked(objective, x: torch.Tensor, direction: torch.Tensor, value: torch.Tensor,
                 slope: torch.Tensor) -> torch.Tensor:
    """x + α·direction per row, α the first of 1, ½, ¼, … that lowers ``objective`` by Armijo's rule (else 0)."""
    step = torch.ones_like(value)
    accepted = torch.zeros_like(value, dtype=torch.bool)
    for _ in range(QPI_HALVINGS + 1):
        trial = x + step[:, None, None] * direction
        good = objective(trial)[0] <= value + 1e-4 * step * slope
        accepted = accepted | good
        step = torch.where(accepted, step, step / 2)
        if bool(accepted.all()):
            break
    step = torch.where(accepted, step, torch.zeros_like(step))
    return x + step[:, None, None] * direction


class SRStep:
    """The widefield forward model's consistency step for SR estimates of one region.

    ``A x = bin_f(h ⊛ x)``: h the widefield OTF divided by the SR target's own OTF (``target_cutoff_scale``
    times the widefield cut-off; the SR image is the object seen through it) inside the widefield band,
    then the camera's ``f × f`` pixel average. Solved by :data:`SR_CG_ITERATIONS` conjugate-gradient
    iterations on ``(ζ AᵀwA + 1/τ²) x = ζ Aᵀw d + x̂/τ²``, started at x̂.

    ``widefield``: ``(h, w)`` camera-grid data of the region, already mapped to the SR image's units
    (``(raw − c)/a``); ``weight``: ``(h, w)`` 1 / its noise variance in those units; ``pixel_um``: the
    SR (fine) pixel; ``factor`` f.
    """

    def __init__(self, widefield: torch.Tensor, weight: torch.Tensor, factor: int, pixel_um: float, na: float,
                 wavelength_um: float, target_cutoff_scale: float):
        self.factor = int(factor)
        self.data, self.weight = mirror(widefield.double()), mirror(weight.double())
        fine = (self.data.shape[-2] * self.factor, self.data.shape[-1] * self.factor)
        widefield_otf = incoherent_otf(fine, pixel_um, na, wavelength_um)
        target_otf = incoherent_otf(fine, pixel_um, na, wavelength_um, target_cutoff_scale)
        transfer = np.where(widefield_otf > 0, widefield_otf / np.maximum(target_otf, 1e-3), 0.0)
        self.transfer = torch.from_numpy(np.ascontiguousarray(transfer[:, : fine[1] // 2 + 1])).to(widefield.device)
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
        prior = 1.0 / tau2.double()[:, None, None]
        start = mirror(estimate.double())

        def normal(x):
            return strength * self.adjoint(self.weight * self.forward(x)) + prior * x

        rhs = strength * self.adjoint(self.weight * self.data) + prior * start
        x = _conjugate_gradients(normal, rhs, start, SR_CG_ITERATIONS)
        height, width = self.shape
        return x[..., :height, :width].to(estimate.dtype)


def _conjugate_gradients(normal, rhs: torch.Tensor, x: torch.Tensor, iterations: int) -> torch.Tensor:
    """``iterations`` CG steps on ``normal(x) = rhs`` (symmetric positive definite), per batch row."""
    residual = rhs - normal(x)
    direction = residual
    power = (residual * residual).sum(dim=(-2, -1), keepdim=True)
    for _ in range(iterations):
        image = normal(direction)
        step = power / (direction * image).sum(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
        x = x + step * direction
        residual = residual - step * image
        new_power = (residual * residual).sum(dim=(-2, -1), keepdim=True)
        direction = residual + (new_power / power.clamp_min(1e-300)) * direction
        power = new_power
    return x
