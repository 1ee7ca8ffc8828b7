"""A stationary power-spectrum prior of phase objects and the closed-form error of a TIE phase.

Spectra are *continuous* power spectral densities in rad²·µm² on an FFT grid (FFT order,
``(H, W)``), spatial frequencies ``f`` in cycles/µm: a field of pixel ``p`` µm on ``N = H·W``
pixels has ``E|FFT(φ)_k|² = N·S(f_k)/p²`` (numpy's unnormalised ``fft2``), so its per-pixel
variance is ``Σ_k S(f_k) / (N p²)`` (:func:`pixel_variance`). The DC term is always left out:
a TIE fixes the phase only up to a constant, and scores remove the offset.

Linearised two-plane model (unit amplitude, mean intensity ``I0``, ``k = 2π/λ``)::

    (I₊ − I₋)/I0 = −(λ·dz/π)·∇²φ + n,   n white, variance 2σ² per pixel (σ per plane)

so the TIE right-hand side ``rhs = −(k/I0)(I₊ − I₋)/(2dz) = ∇²φ + g·n`` with
``g = −π/(λ·dz)`` µm⁻², and, per frequency, ``RHS = L·Φ + noise`` with ``L = −4π²|f|²`` µm⁻²
and the noise PSD ``N = g²·2σ²·p²`` (rad²·µm⁻²). A linear solve ``Φ̂ = F·RHS`` has the
error PSD ``(1 − F·L)²·S + F²·N`` (:func:`tie_filter_error_spectrum`); the Wiener solve,
the posterior mean of the linear-Gaussian problem, has ``1/(1/S + L²/N)``
(:func:`tie_posterior_spectrum`). numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from .optics import frequency_grid
from .tie import axial_derivative, laplacian_symbol

__all__ = ["PhasePrior", "draw_phase", "fit_phase_prior", "periodogram", "pixel_variance",
           "tie_filter_error_spectrum", "tie_posterior_spectrum", "tie_transfer", "wiener_tie"]

#: Radial bins per octave of the periodogram that :func:`fit_phase_prior` fits.
BINS_PER_OCTAVE = 4


@dataclass(frozen=True)
class PhasePrior:
    """Power spectrum ``S(f) = amplitude · (|f|² + corner²)^(−exponent/2)`` in rad²·µm².

    ``amplitude`` in rad²·µm^(2−exponent), ``exponent`` ≥ 0 (dimensionless), ``corner`` ≥ 0 in
    cycles/µm (below it the spectrum flattens)."""

    amplitude: float
    exponent: float
    corner: float

    def __post_init__(self):
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"phase prior {field.name} must be a finite number (got {value!r})")
        if self.amplitude <= 0:
            raise ValueError(f"phase prior amplitude must be positive (got {self.amplitude!r})")
        for name in ("exponent", "corner"):
            if getattr(self, name) < 0:
                raise ValueError(f"phase prior {name} must not be negative (got {getattr(self, name)!r})")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PhasePrior:
        """The prior of a :meth:`to_dict` mapping; ValueError naming a missing or unknown field."""
        if not isinstance(data, dict):
            raise ValueError("the phase prior must be a mapping")
        names = [field.name for field in fields(cls)]
        for name in names:
            if name not in data:
                raise ValueError(f"phase prior {name} is missing")
        for name in data:
            if name not in names:
                raise ValueError(f"phase prior has an unknown field {name!r}")
        return cls(**data)

    def spectrum(self, frequency: np.ndarray) -> np.ndarray:
        """``S`` (rad²·µm²) at radial frequencies ``frequency`` (cycles/µm), any shape."""
        radius2 = np.asarray(frequency, np.float64) ** 2 + self.corner**2
        with np.errstate(divide="ignore"):
            return self.amplitude * radius2 ** (-self.exponent / 2)

    def on_grid(self, shape: tuple[int, int], pixel_um: float) -> np.ndarray:
        """``S`` ``(H, W)`` in rad²·µm² on the FFT grid of ``shape`` at ``pixel_um``; DC set to 0."""
        fy, fx = frequency_grid(shape, pixel_um)
        spectrum = self.spectrum(np.sqrt(fy**2 + fx**2))
        spectrum[0, 0] = 0.0
        return spectrum

    def pixel_variance(self, shape: tuple[int, int], pixel_um: float) -> float:
        """The per-pixel variance (rad², offset removed) of a field of this prior on that grid."""
        return pixel_variance(self.on_grid(shape, pixel_um), pixel_um)


def pixel_variance(spectrum: np.ndarray, pixel_um: float) -> float:
    """Per-pixel variance (rad²) of a field of PSD ``spectrum`` ``(H, W)`` (rad²·µm², FFT order),
    ``Σ_{k≠0} S_k / (N p²)`` (Parseval; DC left out)."""
    spectrum = np.asarray(spectrum, np.float64)
    return float((spectrum.sum() - spectrum[0, 0]) / (spectrum.size * pixel_um**2))


def draw_phase(prior: PhasePrior, shape: tuple[int, int], pixel_um: float,
               rng: np.random.Generator) -> np.ndarray:
    """A periodic Gaussian phase ``(H, W)`` in rad with PSD ``prior`` and zero mean."""
    white = np.fft.fft2(rng.normal(size=shape))  # E|W_k|² = N
    return np.real(np.fft.ifft2(white * np.sqrt(prior.on_grid(shape, pixel_um)) / pixel_um))


def periodogram(phase: np.ndarray, pixel_um: float, window: bool = True) -> np.ndarray:
    """PSD estimate ``(H, W)`` in rad²·µm² of one phase image ``(H, W)`` in rad, FFT order, DC 0.

    The mean is removed; ``window``: a 2-D Hann taper (for non-periodic images, whose edge
    jump would otherwise leak a ``|f|⁻²`` tail), normalised by its mean square so that
    :func:`pixel_variance` of a stationary field's periodogram estimates its variance."""
    phase = np.asarray(phase, np.float64)
    phase = phase - phase.mean()
    taper = np.ones(phase.shape)
    if window:
        taper = np.outer(np.hanning(phase.shape[0]), np.hanning(phase.shape[1]))
    spectrum = np.abs(np.fft.fft2(phase * taper)) ** 2 * pixel_um**2 / (phase.size * np.mean(taper**2))
    spectrum[0, 0] = 0.0
    return spectrum


def _radial_bins(spectra: Sequence[np.ndarray], pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean frequency (cycles/µm) and mean PSD of log-spaced radial bins (:data:`BINS_PER_OCTAVE`)
    up to the Nyquist frequency, over the non-DC frequencies of all ``spectra``."""
    radii, values = [], []
    for spectrum in spectra:
        fy, fx = frequency_grid(spectrum.shape, pixel_um)
        radius = np.broadcast_to(np.sqrt(fy**2 + fx**2), spectrum.shape).ravel()
        keep = (radius > 0) & (radius <= 0.5 / pixel_um)
        radii.append(radius[keep])
        values.append(spectrum.ravel()[keep])
    radius, value = np.concatenate(radii), np.concatenate(values)
    which = np.floor(np.log2(radius / radius.min()) * BINS_PER_OCTAVE + 1e-9).astype(int)
    counts = np.bincount(which)
    used = counts > 0
    mean_radius = np.bincount(which, radius)[used] / counts[used]
    return mean_radius, np.bincount(which, value)[used] / counts[used]


def _fit_power_law(frequency: np.ndarray, log_power: np.ndarray, corner: float) -> tuple[float, float, float]:
    """Least squares of ``log S = log A − (e/2)·log(f² + c²)`` at a fixed corner ``c``:
    ``(sum of squares, log A, e)``, ``e`` held ≥ 0."""
    x = -0.5 * np.log(frequency**2 + corner**2)
    design = np.stack([np.ones_like(x), x], axis=1)
    (log_a, exponent), *_ = np.linalg.lstsq(design, log_power, rcond=None)
    if exponent < 0:
        log_a, exponent = float(np.mean(log_power)), 0.0
    residual = log_power - log_a - exponent * x
    return float(residual @ residual), float(log_a), float(exponent)


def fit_phase_prior(phases: Sequence[np.ndarray], pixel_um: float, window: bool = True) -> PhasePrior:
    """The :class:`PhasePrior` fitted to phase images ``(H, W)`` (rad) at ``pixel_um``.

    Each image's :func:`periodogram` (mean removed, Hann ``window`` unless False), radially
    averaged over all images in log-spaced bins (frequencies above 0 up to Nyquist), fitted
    by least squares in log space (each bin counts the same, so every octave does): the
    amplitude and exponent by linear least squares at each corner of a log-spaced search,
    refined once on a finer grid around the best corner."""
    spectra = [periodogram(phase, pixel_um, window) for phase in phases]
    if not spectra:
        raise ValueError("fit_phase_prior needs at least one phase image")
    frequency, power = _radial_bins(spectra, pixel_um)
    log_power = np.log(np.maximum(power, np.finfo(float).tiny))
    lowest, highest = frequency.min(), frequency.max()
    candidates = np.concatenate([[0.0], np.geomspace(lowest / 30, highest, 120)])
    best = min((_fit_power_law(frequency, log_power, c), c) for c in candidates)
    if best[1] > 0:
        fine = np.geomspace(best[1] / 1.2, best[1] * 1.2, 41)
        best = min([best] + [(_fit_power_law(frequency, log_power, c), c) for c in fine])
    (_, log_a, exponent), corner = best
    return PhasePrior(float(np.exp(log_a)), exponent, float(corner))


def _prior_on_grid(prior: PhasePrior | np.ndarray, shape: tuple[int, int], pixel_um: float) -> np.ndarray:
    """``S`` ``(H, W)`` (rad²·µm²) of a :class:`PhasePrior`, or a PSD already on that grid (e.g. one
    image's :func:`periodogram`)."""
    if isinstance(prior, PhasePrior):
        return prior.on_grid(shape, pixel_um)
    spectrum = np.asarray(prior, np.float64)
    if spectrum.shape != tuple(shape):
        raise ValueError(f"the prior spectrum is shaped {spectrum.shape}, the grid {tuple(shape)}")
    return spectrum


def _noise_spectrum(pixel_um: float, dz_um: float, wavelength_um: float, noise_std: float) -> float:
    """PSD (rad²·µm⁻²) of the noise in the TIE right-hand side: ``(π/(λ·dz))²·2σ²·p²``."""
    return (np.pi / (wavelength_um * dz_um)) ** 2 * 2.0 * noise_std**2 * pixel_um**2


def tie_transfer(shape: tuple[int, int], pixel_um: float, regularization: float, iterations: int = 1,
                 gain: float = 1.0) -> np.ndarray:
    """Filter ``F`` ``(H, W)`` in µm² with ``Φ̂ = F·RHS`` of the Tikhonov TIE, DC 0.

    One solve (``iterations = 1``, ``gain = 1``: :func:`~.tie.fft_tie`) is ``h = L/(L² + a)``.
    ``n`` residual steps ``φ += gain·h·(rhs − ∇²φ)`` from 0 (US-TIE's loop, linearised: its
    ``gain`` is the mean over the maximum intensity) give ``(1 − (1 − gain·h·L)ⁿ)/L``."""
    return _tie_filters(shape, pixel_um, regularization, iterations, gain)[0]


def _tie_filters(shape, pixel_um, regularization, iterations, gain) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tie_transfer`'s ``F`` and the part of the phase it misses, ``1 − F·L = (1 − gain·h·L)ⁿ``
    (computed as ``((a + (1 − gain)·L²)/(L² + a))ⁿ``, exact where it is tiny)."""
    symbol = laplacian_symbol(shape, pixel_um)
    missed = ((regularization + (1.0 - gain) * symbol**2) / (symbol**2 + regularization)) ** iterations
    with np.errstate(divide="ignore", invalid="ignore"):
        transfer = (1.0 - missed) / symbol
    transfer[0, 0] = 0.0
    return transfer, missed


def tie_filter_error_spectrum(shape: tuple[int, int], pixel_um: float, dz_um: float, wavelength_um: float,
                              noise_std: float, prior: PhasePrior | np.ndarray, regularization: float,
                              iterations: int = 1, gain: float = 1.0) -> np.ndarray:
    """Expected ``|Φ̂ − Φ|²`` as a PSD ``(H, W)`` (rad²·µm², DC 0) of the Tikhonov TIE
    (:func:`tie_transfer`) on a linearised stack with per-plane relative noise std ``noise_std``:
    ``(1 − F·L)²·S + F²·N`` (module docstring). ``prior``: a :class:`PhasePrior` or a PSD ``(H, W)``."""
    transfer, missed = _tie_filters(shape, pixel_um, regularization, iterations, gain)
    noise = _noise_spectrum(pixel_um, dz_um, wavelength_um, noise_std)
    spectrum = missed**2 * _prior_on_grid(prior, shape, pixel_um) + transfer**2 * noise
    spectrum[0, 0] = 0.0
    return spectrum


def tie_posterior_spectrum(shape: tuple[int, int], pixel_um: float, dz_um: float, wavelength_um: float,
                           noise_std: float, prior: PhasePrior | np.ndarray) -> np.ndarray:
    """Wiener posterior variance ``1/(1/S + L²/N)`` as a PSD ``(H, W)`` (rad²·µm², DC 0): the error
    of :func:`wiener_tie`, the least any linear solve can reach under the prior (a
    :class:`PhasePrior` or a PSD ``(H, W)``)."""
    prior_spectrum = _prior_on_grid(prior, shape, pixel_um)
    symbol = laplacian_symbol(shape, pixel_um)
    noise = _noise_spectrum(pixel_um, dz_um, wavelength_um, noise_std)
    with np.errstate(divide="ignore", invalid="ignore"):
        spectrum = prior_spectrum * noise / (noise + symbol**2 * prior_spectrum)
    spectrum[0, 0] = 0.0
    return spectrum


def wiener_tie(stack: np.ndarray, dz_um: float, wavelength_um: float, pixel_um: float, noise_std: float,
               prior: PhasePrior | np.ndarray) -> np.ndarray:
    """Posterior-mean phase ``(H, W)`` (rad, zero mean, periodic) of a stack ``(2, H, W)`` =
    ``[I(−dz), I(+dz)]``: the TIE with the Wiener filter ``S·L/(L²·S + N)`` (``prior``: a
    :class:`PhasePrior` or a PSD ``(H, W)``)."""
    rhs = -(2.0 * np.pi / wavelength_um) / np.mean(stack) * axial_derivative(stack, dz_um)
    prior_spectrum = _prior_on_grid(prior, rhs.shape, pixel_um)
    symbol = laplacian_symbol(rhs.shape, pixel_um)
    noise = _noise_spectrum(pixel_um, dz_um, wavelength_um, noise_std)
    with np.errstate(divide="ignore", invalid="ignore"):
        transfer = prior_spectrum * symbol / (symbol**2 * prior_spectrum + noise)
    transfer[0, 0] = 0.0
    return np.real(np.fft.ifft2(np.fft.fft2(rhs) * transfer))

