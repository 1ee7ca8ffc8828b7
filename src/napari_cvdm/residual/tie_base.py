"""The physics base b(y) of residual QPI models: a TIE phase of the whole plane, in target units.

The residual formulation (:mod:`napari_cvdm.model.cvdm`) refines a base estimate
(:mod:`napari_cvdm.residual.bases` builds it per base kind). For
QPI the base comes from the physics: a TIE solve (``kind``: ``us_tie``, the universal-solution
TIE, which corrects the linear TIE's error on strong phase objects by propagating its own
estimate back to ±dz; or the single ``fft_tie`` solve, which older models all use; new
models take whichever fits their training pairs better) with periodic or mirror boundaries (whichever
fits the training data: mirror keeps one edge of a real stack from wrapping into the
opposite one, periodic is exact for periodic simulations), with a Wiener-like Tikhonov regulariser
``a = strength · (σ̂² + floor²)`` that follows each input's estimated noise std σ̂
(:func:`~napari_cvdm.physics.tie.noise_adaptive_regularization`); ``strength`` and
``exponent`` are fitted on the model's training pairs and stored in the model file (``ModelInfo.base``). It is computed
on the *whole* image plane before any tiling, so the largest scales, where a defocus
pair's phase lives and a network on small patches is blind, come from a global solve
at every image size.

A TIE fixes the phase only up to a constant; the base is given the mean
``offset_rad`` (the middle of the target range) and training targets are shifted to
the base's mean per whole image, so the residual carries no arbitrary offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np

from ..physics.phase_prior import PhasePrior, fit_phase_prior, pixel_variance, tie_filter_error_spectrum
from ..physics.tie import (
    BOUNDARIES,
    NOISE_FLOOR,
    fft_tie,
    fit_regularization,
    noise_adaptive_regularization,
    us_tie,
)

#: The TIE solvers a base may use, by ``TIEBase.kind``: ``(stack, dz, λ, pixel, a, boundary) → φ``.
#: ``heartbeat()`` is called between US-TIE's stages (FFT-TIE is one short solve).
SOLVERS = {
    "fft_tie": lambda stack, dz, wavelength, pixel, a, boundary, heartbeat=None:
        fft_tie(stack, dz, wavelength, pixel, a, boundary),
    "us_tie": lambda stack, dz, wavelength, pixel, a, boundary, heartbeat=None:
        us_tie(stack, dz, wavelength, pixel, a, boundary=boundary, heartbeat=heartbeat),
}
KINDS = tuple(SOLVERS)
#: Images used to fit the regulariser (the fit is cheap, but a few images already pin it).
FIT_IMAGES = 16
#: US-TIE keeps the FFT-TIE fit's exponent and boundary and rescales its strength by the best of these.
US_TIE_STRENGTH_FACTORS = tuple(np.logspace(-2, 2, 9))


@dataclass(frozen=True)
class TIEBase:
    """TIE base: the solver ``kind`` (one of :data:`KINDS`; files before US-TIE bases name none:
    ``fft_tie``), regulariser ``strength`` (µm⁻⁴ per unit noise variance), the training optics (µm),
    the mean phase (rad) and the ``prior`` power spectrum of the training phases
    (:class:`~napari_cvdm.physics.phase_prior.PhasePrior` as a dict; None: unknown)."""

    strength: float
    wavelength_um: float
    dz_um: float
    pixel_um: float
    offset_rad: float
    boundary: str = "mirror"
    exponent: float = 2.0
    kind: str = "fft_tie"
    prior: dict | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown base kind {self.kind!r}; this version knows {', '.join(KINDS)}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"unknown TIE boundary {self.boundary!r}; expected one of {BOUNDARIES}")
        for name in ("strength", "wavelength_um", "dz_um", "pixel_um", "exponent"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"base {name} must be a positive number (got {value!r})")
        if not (isinstance(self.offset_rad, int | float) and math.isfinite(self.offset_rad)):
            raise ValueError(f"base offset_rad must be a finite number (got {self.offset_rad!r})")
        if self.prior is not None:
            PhasePrior.from_dict(self.prior)  # ValueError naming the bad field

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TIEBase:
        if not isinstance(data, dict):
            raise ValueError("the base settings must be a mapping")
        return cls(**data)

    def phase(self, stack: np.ndarray, wavelength_um: float | None = None, dz_um: float | None = None,
              pixel_um: float | None = None, heartbeat: Callable[[], None] | None = None,
              noise_std: float | None = None) -> np.ndarray:
        """Base phase ``(H, W)`` float32 in rad (mean ``offset_rad``) of one stack ``(2, H, W)``.

        The optics default to the model's training optics; pass the input's own where known.
        ``heartbeat()`` is called between the stages of an iterative solver; ``noise_std``: the
        stack's σ̂ when the caller has it (a corrected base needs it for ν too), else estimated.
        """
        regularization = noise_adaptive_regularization(stack, self.strength, self.exponent, noise_std)
        phase = SOLVERS[self.kind](stack, dz_um or self.dz_um, wavelength_um or self.wavelength_um,
                                   pixel_um or self.pixel_um, regularization, self.boundary, heartbeat)
        return (phase + self.offset_rad).astype(np.float32)

    def error_variance(self, stack: np.ndarray, wavelength_um: float | None = None, dz_um: float | None = None,
                       pixel_um: float | None = None, noise_std: float | None = None) -> float | None:
        """Expected squared error (rad², per pixel, offset removed) of this base's phase of ``stack``
        ``(2, H, W)``: the Tikhonov TIE's closed-form error under the ``prior`` and the stack's noise
        (:func:`~napari_cvdm.physics.phase_prior.tie_filter_error_spectrum`); None without a prior.

        Linear in the phase: on strong phase objects the real error is larger (docs/uncertainty.md)."""
        if self.prior is None:
            return None
        from ..physics.noise import defocus_relative_noise_std

        noise = defocus_relative_noise_std(stack) if noise_std is None else noise_std
        regularization = noise_adaptive_regularization(stack, self.strength, self.exponent, noise)
        pixel, dz, wavelength = pixel_um or self.pixel_um, dz_um or self.dz_um, wavelength_um or self.wavelength_um
        spectrum = tie_filter_error_spectrum(stack.shape[-2:], pixel, dz, wavelength, noise,
                                             PhasePrior.from_dict(self.prior), regularization)
        return pixel_variance(spectrum, pixel)

    def with_optics(self, wavelength_um: float, dz_um: float, pixel_um: float) -> TIEBase:
        return replace(self, wavelength_um=float(wavelength_um), dz_um=float(dz_um), pixel_um=float(pixel_um))

    @classmethod
    def fit(cls, stacks: list[np.ndarray], phases: list[np.ndarray], wavelength_um: float, dz_um: float,
            pixel_um: float, offset_rad: float, kind: str | None = None) -> tuple[TIEBase, float]:
        """The ``kind`` base whose regulariser has the lowest mean log MAE on up to :data:`FIT_IMAGES`
        training pairs: FFT-TIE's strength, exponent and boundary by :func:`fit_regularization`; US-TIE
        then rescales that strength by the best of :data:`US_TIE_STRENGTH_FACTORS` (its iterations cost
        tens of FFT-TIE solves, too many for the full search). ``kind=None``: both, and the one with
        the lower mean log MAE (US-TIE gains where strong, sharp phase breaks the linear TIE and
        loses on smooth objects, so the data decide, as they do the boundary).

        The base also keeps the power spectrum of the phases (:meth:`with_prior`). Returns the base and
        its MAE (rad)."""
        base, errors = cls._fit_with_errors(stacks, phases, wavelength_um, dz_um, pixel_um, offset_rad, kind)
        return base.with_prior(phases), float(np.mean(errors))

    def with_prior(self, phases: list[np.ndarray]) -> TIEBase:
        """This base with the ``prior`` fitted on up to :data:`FIT_IMAGES` phases ``(H, W)`` (rad; Hann
        window, as a real image's edges need) at its pixel size."""
        phases = [np.asarray(p, np.float64).reshape(p.shape[-2:]) for p in phases[:FIT_IMAGES]]
        prior = fit_phase_prior(phases, self.pixel_um, window=True)
        return replace(self, prior=prior.to_dict())

    @classmethod
    def _fit_with_errors(cls, stacks, phases, wavelength_um, dz_um, pixel_um, offset_rad,
                         kind) -> tuple[TIEBase, list[float]]:
        """:meth:`fit`'s base and its MAE (rad) on each of the fitted pairs."""
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown base kind {kind!r}; choose one of {', '.join(KINDS)}")
        stacks, phases = _fit_pairs(stacks, phases)
        strength, exponent, boundary, _ = fit_regularization(stacks, phases, dz_um, wavelength_um, pixel_um)
        fft_base = cls(strength, float(wavelength_um), float(dz_um), float(pixel_um), float(offset_rad), boundary,
                       exponent)
        candidates = []  # (base, its MAE per pair)
        if kind in (None, "fft_tie"):
            candidates.append((fft_base, fft_base.errors(stacks, phases)))
        if kind in (None, "us_tie"):
            candidates += [(base, base.errors(stacks, phases)) for base in
                           (replace(fft_base, strength=strength * f, kind="us_tie") for f in US_TIE_STRENGTH_FACTORS)]
        return min(candidates, key=lambda candidate: _mean_log(candidate[1]))

    def refit(self, stacks: list[np.ndarray], phases: list[np.ndarray],
              pixel_um: float | None = None) -> tuple[TIEBase, float, float]:
        """This base with its regulariser (strength, exponent, boundary) refitted by :meth:`fit` on
        ``(stack, phase)`` pairs at ``pixel_um`` (None: the base's); the solver ``kind``, the optics
        and the offset stay, since the refinement was trained on this solver's output. The refit is
        kept only if it lowers the mean log MAE on the pairs. Returns ``(base, MAE before, MAE after)``
        in rad (after = before when ``self`` is kept)."""
        at_pixel = self.with_optics(self.wavelength_um, self.dz_um, pixel_um or self.pixel_um)
        fitted, after = TIEBase._fit_with_errors(stacks, phases, at_pixel.wavelength_um, at_pixel.dz_um,
                                                 at_pixel.pixel_um, self.offset_rad, self.kind)
        before = at_pixel.errors(*_fit_pairs(stacks, phases))
        kept = self if self.prior is not None else self.with_prior(phases)
        if _mean_log(after) >= _mean_log(before):
            return kept, float(np.mean(before)), float(np.mean(before))
        refitted = replace(kept, strength=float(fitted.strength), exponent=float(fitted.exponent),
                           boundary=fitted.boundary)
        return refitted, float(np.mean(before)), float(np.mean(after))

    def errors(self, stacks: list[np.ndarray], phases: list[np.ndarray]) -> list[float]:
        """Phase MAE (rad, free offset removed) of this base on each ``(stack, phase)`` pair."""
        maes = []
        for stack, phase in zip(stacks, phases):
            estimate = self.phase(stack).astype(np.float64)
            maes.append(float(np.abs(estimate - estimate.mean() - (phase - phase.mean())).mean()))
        return maes

    def mean_log_error(self, stacks: list[np.ndarray], phases: list[np.ndarray]) -> float:
        """The mean log MAE, what :meth:`fit` minimises (a clean image counts as much as a noisy one)."""
        return _mean_log(self.errors(stacks, phases))


def noise_level_map(noise_std: float, shape: tuple[int, ...]) -> np.ndarray:
    """The noise-level input ν ``(1, H, W)`` float32 of a corrected base's P, ``log10 √(σ̂² + floor²) + 2``
    everywhere (0 at σ̂ = 0.01, 1 at 0.1), for a stack of ``shape`` ``(2, H, W)`` whose noise std,
    relative to its mean intensity, is ``noise_std``
    (:func:`~napari_cvdm.physics.noise.defocus_relative_noise_std` of the whole stack, the σ̂ its
    TIE regulariser uses).

    The TIE regulariser follows σ̂, so how much of the low frequencies the base lost does too;
    without ν a P trained mostly on noisy stacks restores, on a clean stack, scales its base
    never lost.
    """
    level = math.log10(math.sqrt(noise_std**2 + NOISE_FLOOR**2)) + 2.0
    return np.full((1, *shape[-2:]), level, np.float32)


def _mean_log(errors: list[float]) -> float:
    return float(np.mean(np.log(errors)))


def _fit_pairs(stacks, phases) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first :data:`FIT_IMAGES` pairs as float64 stacks ``(2, H, W)`` and phases ``(H, W)``."""
    return ([np.asarray(s, np.float64) for s in stacks[:FIT_IMAGES]],
            [np.asarray(p, np.float64).reshape(p.shape[-2:]) for p in phases[:FIT_IMAGES]])


def optics_mismatch(base: TIEBase, wavelength_um: float | None, dz_um: float | None) -> str | None:
    """A warning sentence when the input's optics differ from the model's training optics by > 10 %."""
    differ = [f"{name} {given:g} µm (model: {trained:g} µm)"
              for name, given, trained in (("wavelength", wavelength_um, base.wavelength_um),
                                           ("defocus", dz_um, base.dz_um))
              if given is not None and abs(given / trained - 1.0) > 0.1]
    if not differ:
        return None
    return ("The input's " + " and ".join(differ) + " differ from the model's training optics; the TIE base "
            "uses the input's, but the refinement was trained on the model's.")
