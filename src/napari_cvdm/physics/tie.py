"""Classical phase retrieval from a two-plane defocus stack (transport of intensity).

The transport-of-intensity equation (TIE), with the sign convention of
:mod:`napari_cvdm.physics.optics`, is ``∂I/∂z = −(1/k) ∇·(I ∇φ)``, ``k = 2π/λ``.
Both solvers take the stack ``[I(−dz), I(+dz)]`` shaped ``(2, H, W)`` (the model's
input layout) and return the phase in radians with zero mean (a TIE fixes the
phase only up to a constant). ``boundary="periodic"`` treats the image as one
period (exact for simulated periodic objects); ``"mirror"`` solves on the even
(mirror) extension to ``(2H, 2W)`` and crops it back, which is the DCT-based
Neumann solve: a real stack, whose opposite edges do not match, then does not
ring in from the image borders.

Tikhonov ``regularization`` ``a`` is in µm⁻⁴ (the Laplacian symbol ``L`` is in µm⁻²):
the inverse Laplacian ``1/L`` is replaced by ``L/(L² + a)``, which damps the lowest
frequencies, where noise in ``∂I/∂z`` would otherwise be amplified without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .noise import defocus_relative_noise_std
from .optics import angular_spectrum_transfer, frequency_grid, fresnel_transfer

__all__ = ["BOUNDARIES", "USTIEInfo", "axial_derivative", "fft_tie", "fit_regularization",
           "inverse_laplacian", "laplacian_symbol", "noise_adaptive_regularization", "us_tie"]

BOUNDARIES = ("periodic", "mirror")

# Tikhonov a (µm⁻⁴) with the lowest phase MAE on simulated pairs of the paper's QPI setup
# (256², 0.21 µm pixels, noise std ~ U(0, 0.2)) for both solvers; the MAE changes by < 5 %
# between 6e-4 and 2e-3. benchmarks/simulation_baselines.py re-tunes it on its own tuning
# set (disjoint from the held-out set) and prints the value it picks.
DEFAULT_REGULARIZATION = 1e-3


def laplacian_symbol(shape: tuple[int, int], pixel_um: float, half_spectrum: bool = False) -> np.ndarray:
    """Fourier symbol of the Laplacian, ``L = −4π²(fx² + fy²)`` in µm⁻², FFT order ``(H, W)``
    (``half_spectrum``: the ``(H, W//2 + 1)`` columns of ``rfft2``)."""
    fy, fx = frequency_grid(shape, pixel_um)
    if half_spectrum:
        fx = np.fft.rfftfreq(shape[1], d=pixel_um)[None, :]
    return -4.0 * np.pi**2 * (fx**2 + fy**2)


def inverse_laplacian(rhs: np.ndarray, pixel_um: float, regularization: float) -> np.ndarray:
    """Solve ``∇²φ = rhs`` (rhs in µm⁻² per unit of φ) with the Tikhonov filter ``L/(L² + a)``, DC = 0."""
    height, width = rhs.shape[-2:]
    # a real rhs has a Hermitian spectrum: the half-spectrum transform gives the same φ in half the work
    symbol = laplacian_symbol((height, width), pixel_um, half_spectrum=True)
    filt = (symbol / (symbol**2 + regularization)).astype(np.result_type(rhs.dtype, np.float32))
    filt[0, 0] = 0.0  # the mean of φ is not determined by the TIE
    return np.fft.irfft2(np.fft.rfft2(rhs) * filt, s=(height, width))


def _check_stack(stack: np.ndarray) -> np.ndarray:
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] != 2:
        raise ValueError(f"expected a defocus stack [I(-dz), I(+dz)] shaped (2, H, W), got {stack.shape}")
    return stack


def axial_derivative(stack: np.ndarray, dz_um: float) -> np.ndarray:
    """Central difference ``∂I/∂z ≈ (I(+dz) − I(−dz)) / (2 dz)`` in intensity units per µm."""
    stack = _check_stack(stack)
    return (stack[1] - stack[0]) / (2.0 * dz_um)


def _mirrored(stack: np.ndarray) -> np.ndarray:
    """The even extension ``(2, 2H, 2W)`` of a stack: a periodic image with no jumps at its edges."""
    return np.concatenate([np.concatenate([stack, stack[..., ::-1]], -1),
                           np.concatenate([stack[..., ::-1, :], stack[..., ::-1, ::-1]], -1)], -2)


def _on_boundary(solver, stack: np.ndarray, boundary: str, **kwargs) -> np.ndarray:
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; use one of {BOUNDARIES}")
    if boundary == "periodic":
        return solver(stack, **kwargs)
    height, width = stack.shape[-2:]
    phase = solver(_mirrored(stack), **kwargs)[:height, :width]
    return phase - phase.mean()


def fft_tie(
    stack: np.ndarray,
    dz_um: float,
    wavelength_um: float,
    pixel_um: float,
    regularization: float = DEFAULT_REGULARIZATION,
    boundary: str = "periodic",
) -> np.ndarray:
    """FFT-TIE: ``∇²φ = −(k/I0)·∂I/∂z`` with ``I0`` the mean intensity of the two planes.

    ``stack`` is ``(2, H, W)`` = ``[I(−dz), I(+dz)]``; returns φ ``(H, W)`` float64 in
    radians, zero mean. Valid for weak intensity variations (``I ≈ I0``).
    ``boundary``: one of :data:`BOUNDARIES` (module docstring).
    """
    stack = _check_stack(stack)
    return _on_boundary(_fft_tie_periodic, stack, boundary, dz_um=dz_um, wavelength_um=wavelength_um,
                        pixel_um=pixel_um, regularization=regularization)


def _fft_tie_periodic(stack, dz_um, wavelength_um, pixel_um, regularization):
    k = 2.0 * np.pi / wavelength_um
    mean_intensity = stack.mean()
    rhs = -(k / mean_intensity) * axial_derivative(stack, dz_um)
    return inverse_laplacian(rhs, pixel_um, regularization)


@dataclass
class USTIEInfo:
    """Convergence record of :func:`us_tie`: relative residual (max|r|/max|∂I/∂z|) per iteration."""

    iterations: int
    residuals: list[float]
    stopped_because: str


def _defocus_transfers(shape, dz_um, wavelength_um, pixel_um, method):
    """The transfer functions to −dz and +dz, complex64 (what :func:`us_tie` computes in)."""
    if method == "fresnel":
        make = fresnel_transfer
    elif method == "angular":
        make = angular_spectrum_transfer
    else:
        raise ValueError(f"unknown propagation method {method!r}; use 'fresnel' or 'angular'")
    return tuple(make(shape, z, wavelength_um, pixel_um).astype(np.complex64) for z in (-dz_um, dz_um))


def _predicted_derivative(amplitude, phase, dz_um, transfers):
    """``(I(+dz) − I(−dz)) / (2dz)`` of the field ``amplitude·exp(iφ)``, by numerical propagation."""
    spectrum = np.fft.fft2(amplitude * np.exp(1j * phase))
    minus, plus = (np.abs(np.fft.ifft2(spectrum * transfer)) ** 2 for transfer in transfers)
    return (plus - minus) / (2.0 * dz_um)


def us_tie(
    stack: np.ndarray,
    dz_um: float,
    wavelength_um: float,
    pixel_um: float,
    regularization: float = DEFAULT_REGULARIZATION,
    in_focus_intensity: np.ndarray | None = None,
    max_iterations: int = 50,
    tolerance: float = 1e-3,
    method: str = "fresnel",
    return_info: bool = False,
    boundary: str = "periodic",
    heartbeat: Callable[[], None] | None = None,
):
    """Universal-solution TIE (Zhang et al., Opt. Lett. 45, 3649, 2020).

    Iterates: solve the uniform-intensity TIE ``∇²Δφ = −(k/max I0)·r`` for the residual
    ``r`` (initially the measured ``∂I/∂z``), accumulate ``φ += Δφ``, predict the
    ``∂I/∂z`` that ``sqrt(I0)·exp(iφ)`` produces by numerical propagation to ``±dz``
    (the same central difference as the measurement, so its truncation error cancels),
    and set ``r`` = measured − predicted. Stops when ``max|r| < tolerance·max|∂I/∂z|``,
    when ``‖r‖`` grows (that step is undone) or after ``max_iterations``.

    ``stack`` is ``(2, H, W)`` = ``[I(−dz), I(+dz)]``; ``in_focus_intensity`` ``(H, W)``
    defaults to the mean of the two planes (no in-focus image in a 2-shot stack).
    ``boundary``: one of :data:`BOUNDARIES`, as in :func:`fft_tie` (mirror solves on the even
    extension). ``heartbeat()`` is called between the stages (after the set-up, after each
    step's solve and after its check: a few seconds apart on a 4096² plane); it may raise to
    stop. Returns φ ``(H, W)`` in radians with zero mean, and a :class:`USTIEInfo` if
    ``return_info``.
    """
    stack = _check_stack(stack)
    if boundary not in BOUNDARIES:
        raise ValueError(f"unknown boundary {boundary!r}; use one of {BOUNDARIES}")
    height, width = stack.shape[-2:]
    if boundary == "mirror":
        stack = _mirrored(stack)
        if in_focus_intensity is not None:
            in_focus_intensity = _mirrored(np.asarray(in_focus_intensity, float)[None])[0]
    k = 2.0 * np.pi / wavelength_um
    # single precision throughout: ample for a phase in radians, and half the memory of the
    # complex fields of a large plane (a 4096² stack peaked at 2.4 GB above its input in double)
    measured = axial_derivative(stack, dz_um).astype(np.float32)
    intensity = stack.mean(axis=0) if in_focus_intensity is None else np.asarray(in_focus_intensity, float)
    amplitude = np.sqrt(np.clip(intensity, 0.0, None)).astype(np.float32)
    max_intensity = float(intensity.max())
    del intensity

    transfers = _defocus_transfers(measured.shape, dz_um, wavelength_um, pixel_um, method)
    beat = heartbeat or (lambda: None)
    beat()
    solve = _LinearTIE(k / max_intensity, pixel_um, regularization)
    phase, history, reason = _iterate(measured, amplitude, dz_um, transfers, solve, max_iterations, tolerance, beat)
    phase = phase[:height, :width].astype(np.float64)
    phase = phase - phase.mean()
    if return_info:
        return phase, USTIEInfo(iterations=len(history), residuals=history, stopped_because=reason)
    return phase


class _LinearTIE(NamedTuple):
    """The uniform-intensity TIE step ``Δφ = ∇⁻²(−gain·r)`` (``gain`` = k / max I0, 1/(µm·intensity))."""

    gain: float
    pixel_um: float
    regularization: float

    def __call__(self, residual: np.ndarray) -> np.ndarray:
        return inverse_laplacian(-self.gain * residual, self.pixel_um, self.regularization)


def _iterate(measured, amplitude, dz_um, transfers, solve: _LinearTIE, max_iterations: int, tolerance: float,
             beat: Callable[[], None]) -> tuple[np.ndarray, list[float], str]:
    """US-TIE's loop (:func:`us_tie`): ``(φ, max|r| / max|∂I/∂z| per step, why it stopped)``."""
    scale = float(np.abs(measured).max()) or 1.0
    phase = np.zeros_like(measured)
    residual = measured
    residual_norm = float(np.sqrt(np.mean(residual**2)))
    history: list[float] = []
    reason = "max_iterations"
    for _ in range(max_iterations):
        candidate = phase + solve(residual)
        beat()
        new_residual = measured - _predicted_derivative(amplitude, candidate, dz_um, transfers)
        new_norm = float(np.sqrt(np.mean(new_residual**2)))
        beat()
        if new_norm > residual_norm:
            reason = "residual_grew"
            break
        phase, residual, residual_norm = candidate, new_residual, new_norm
        history.append(float(np.abs(residual).max()) / scale)
        if history[-1] < tolerance:
            reason = "converged"
            break
    return phase, history, reason


#: Noise std (relative to the mean intensity) below which the Wiener-like regulariser stops shrinking.
NOISE_FLOOR = 0.005


def noise_adaptive_regularization(stack: np.ndarray, strength: float, exponent: float = 2.0,
                                  noise_std: float | None = None) -> float:
    """Tikhonov ``a = strength · (σ̂² + NOISE_FLOOR²)^(exponent/2)`` (µm⁻⁴) from the stack's noise std σ̂
    (:func:`~.noise.defocus_relative_noise_std`, unless the caller already has it as ``noise_std``).

    ``exponent = 2`` is a white-spectrum Wiener filter (``a ∝`` noise power). Natural
    objects have far less power at high frequencies than at low ones, so the best constant
    Tikhonov ``a`` grows faster than σ² (on the QPI simulator's photos about 400× from
    σ = 0.05 to 0.2, an exponent near 4); :func:`fit_regularization` fits both numbers.
    """
    sigma = defocus_relative_noise_std(stack) if noise_std is None else noise_std
    return float(strength * (sigma**2 + NOISE_FLOOR**2) ** (exponent / 2))


def fit_regularization(
    stacks: list[np.ndarray],
    phases: list[np.ndarray],
    dz_um: float,
    wavelength_um: float,
    pixel_um: float,
    exponents: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0),
) -> tuple[float, float, str, float]:
    """The :func:`noise_adaptive_regularization` strength, exponent and boundary with the lowest phase MAE.

    On ``(stack, phase)`` pairs; each MAE is taken after removing the free offset, and the
    fit minimises the mean *log* MAE, so that a clean image counts as much as a noisy one
    (the mean MAE is dominated by the noisiest images and over-regularises clean ones). The
    boundary matters: mirror (Neumann) is right for objects inside the field and for edges
    that must not wrap, periodic for periodic scenes (simulations), and either costs
    ~0.1 rad where its assumption fails, so the data decide. The regulariser actually
    applied, ``a``, is searched over 1e-7 … 10 µm⁻⁴ for every exponent.
    Returns ``(strength, exponent, boundary, mean MAE in rad)``.
    """
    noise = [defocus_relative_noise_std(st) ** 2 + NOISE_FLOOR**2 for st in stacks]
    reference = float(np.median(noise))  # strengths are searched so that a(median noise) spans the range
    results = []
    for exponent in exponents:
        for target_a in np.logspace(-7, 1, 17):
            strength = target_a / reference ** (exponent / 2)
            for boundary in BOUNDARIES:
                maes = [np.abs(fft_tie(st, dz_um, wavelength_um, pixel_um, strength * n ** (exponent / 2), boundary)
                               - (ph - ph.mean())).mean() for st, ph, n in zip(stacks, phases, noise)]
                results.append((float(np.mean(np.log(maes))), float(np.mean(maes)), float(strength),
                                float(exponent), boundary))
    _, error, strength, exponent, boundary = min(results)
    return strength, exponent, boundary, error
