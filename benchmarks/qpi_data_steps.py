"""QPI data-consistency steps measured for the sampler, and not shipped: the linearised TIE and the exact Fresnel model.

Same objective as :mod:`napari_cvdm.engine.data_step` (ζ/2·Σ w (A x − d)² + ‖x − x̂‖²/2τ², mirror
boundaries). ``python benchmarks/consistent_sampling.py --task qpi --qpi-step fresnel|tie`` plugs one
into the sampler (``napari_cvdm.engine.data_step.QPI_STEP``) to score it against plain sampling.
On the simulator's phase objects (up to 3.5 rad) the linearised TIE leaves 20–60 % of the measured
defocus signal unexplained even at low frequencies, and the weak-object curvature that preconditions
the Fresnel steps is far from the true one, so neither moves a sample toward the truth reliably;
the Fresnel step also depends on the tiling.
"""

from __future__ import annotations

import math

import torch

from napari_cvdm.engine.data_step import mirror

#: Gauss–Newton iterations of the Fresnel step, and the most step halvings in each.
QPI_NEWTON_ITERATIONS = 3
QPI_HALVINGS = 6


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


STEPS = {"tie": QPITIEStep, "fresnel": QPIFresnelStep}
