"""Data consistency: does the reconstruction explain the measured input?

The forward model is applied to the model's mean and compared with the input, pixel by
pixel, in units of the input's noise std. Where the reconstruction is right the map is
unit-variance noise; hallucinated or missing structure shows as values of several units.
This holds whether or not the uncertainty calibration does.

- SR: the SR mean (on the fine grid) is blurred with the widefield OTF, integrated over
  the camera pixels and compared with the raw widefield image (camera grid). An intensity
  scale and offset are fitted (the model's output units are its own). The Poisson + read
  noise variance is estimated from the widefield image alone: the image is band-limited
  by the OTF (cut-off ``2NA/λ``), so everything beyond it is noise; its local power,
  regressed on the in-band intensity, gives ``variance = gain·intensity + constant``.
- QPI: the phase (unit amplitude, or the square root of the planes' mean intensity) is
  propagated to ``±dz`` and its intensity compared with the measured planes; the
  additive noise std is given or estimated from the residual's finest Haar detail.

Periodic boundaries throughout, as in :mod:`napari_cvdm.physics.optics`.
"""

from __future__ import annotations

import numpy as np

from .noise import finest_haar_noise_std, widefield_noise_variance
from .optics import apply_transfer, bin_pixels, incoherent_otf, propagate

__all__ = [
    "qpi_consistency",
    "qpi_forward",
    "qpi_residual_planes",
    "reconstruction_consistency",
    "sr_consistency",
    "sr_forward",
    "sr_transfer",
]

# ----------------------------------------------------------------------------- SR


def sr_forward(
    sr_mean: np.ndarray,
    camera_pixel_um: float,
    na: float,
    wavelength_um: float,
    factor: int = 2,
    target_cutoff_scale: float | None = 2.0,
) -> np.ndarray:
    """Widefield camera image ``(H/factor, W/factor)`` predicted from an SR image ``(H, W)``.

    ``target_cutoff_scale``: the SR image is the object seen through an OTF of that many
    times the widefield cut-off (2 for the SIM-like targets of the simulator); its
    transfer is divided out inside the widefield band, where it is ≥ 0.39 for 2. ``None``:
    the SR image is the object itself. Intensity units as the input.
    """
    sr_mean = np.asarray(sr_mean, dtype=np.float64)
    transfer = sr_transfer(sr_mean.shape[-2:], camera_pixel_um / factor, na, wavelength_um, target_cutoff_scale)
    return bin_pixels(apply_transfer(sr_mean, transfer), factor)


def sr_transfer(shape: tuple[int, int], fine_pixel_um: float, na: float, wavelength_um: float,
                target_cutoff_scale: float | None = 2.0) -> np.ndarray:
    """The widefield transfer ``(H, W)`` (FFT order, real) that blurs an SR image into the widefield one:
    the widefield OTF, divided inside its band by the SR target's own OTF (``target_cutoff_scale``
    times the widefield cut-off; None: the SR image is the object itself)."""
    transfer = incoherent_otf(shape, fine_pixel_um, na, wavelength_um)
    if target_cutoff_scale is None:
        return transfer
    if target_cutoff_scale < 1.0:
        raise ValueError(f"target_cutoff_scale must be at least 1 (widefield), got {target_cutoff_scale}")
    target = incoherent_otf(shape, fine_pixel_um, na, wavelength_um, target_cutoff_scale)
    return np.where(transfer > 0, transfer / np.maximum(target, 1e-3), 0.0)


def sr_consistency(
    sr_mean: np.ndarray,
    widefield: np.ndarray,
    camera_pixel_um: float,
    na: float,
    wavelength_um: float,
    factor: int = 2,
    target_cutoff_scale: float | None = 2.0,
    noise_variance: float | np.ndarray | None = None,
) -> np.ndarray:
    """Signed residual ``(widefield − forward(sr_mean)) / noise std`` on the camera grid ``(h, w)``.

    ``sr_mean`` is ``(factor·h, factor·w)``; ``forward`` is :func:`sr_forward` followed by a
    least-squares intensity scale and offset. ``noise_variance`` (scalar or ``(h, w)``, the
    widefield's squared units) defaults to :func:`~.noise.widefield_noise_variance`.
    """
    data = np.asarray(widefield, dtype=np.float64)
    sr_mean = np.asarray(sr_mean, dtype=np.float64)
    if sr_mean.shape != (factor * data.shape[0], factor * data.shape[1]):
        raise ValueError(f"SR image {sr_mean.shape} is not {factor}× the widefield image {data.shape}")
    predicted = sr_forward(sr_mean, camera_pixel_um, na, wavelength_um, factor, target_cutoff_scale).ravel()
    design = np.stack([predicted, np.ones_like(predicted)], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, data.ravel(), rcond=None)
    expected = (design @ coefficients).reshape(data.shape)
    if noise_variance is None:
        noise_variance = widefield_noise_variance(data, camera_pixel_um, na, wavelength_um)
    return (data - expected) / np.sqrt(_positive_variance(noise_variance))


def _positive_variance(variance) -> np.ndarray:
    variance = np.asarray(variance, dtype=np.float64)
    if not np.isfinite(variance).all() or (variance <= 0).any():
        raise ValueError("the noise variance must be positive and finite")
    return variance


# ----------------------------------------------------------------------------- QPI


def qpi_forward(
    phase_rad: np.ndarray,
    dz_um: float,
    wavelength_um: float,
    pixel_um: float,
    amplitude: np.ndarray | None = None,
    method: str = "fresnel",
) -> np.ndarray:
    """Intensities ``[I(−dz), I(+dz)]`` ``(2, H, W)`` of ``amplitude·exp(iφ)`` (unit amplitude if None)."""
    field = np.exp(1j * np.asarray(phase_rad, dtype=np.float64))
    if amplitude is not None:
        field = field * amplitude
    planes = [propagate(field, dz, wavelength_um, pixel_um, method) for dz in (-dz_um, dz_um)]
    return np.abs(np.stack(planes)) ** 2


def qpi_residual_planes(
    phase_rad: np.ndarray,
    stack: np.ndarray,
    dz_um: float,
    wavelength_um: float,
    pixel_um: float,
    amplitude: str | np.ndarray = "unit",
    noise_std: float | None = None,
    method: str = "fresnel",
) -> np.ndarray:
    """Signed residuals ``(measured − predicted) / noise std`` per plane, ``(2, H, W)``.

    ``amplitude``: ``"unit"`` (a pure phase object), ``"measured"`` (the square root of the
    mean of the two planes, a first-order in-focus intensity) or an ``(H, W)`` array. One
    least-squares intensity scale is fitted (the illumination level). ``noise_std``
    (intensity units) defaults to the finest-Haar-detail MAD of the residual, which is
    robust to errors that cover a minority of pixels; give it when known.
    """
    stack = np.asarray(stack, dtype=np.float64)
    phase_rad = np.asarray(phase_rad, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[0] != 2 or stack.shape[1:] != phase_rad.shape:
        shapes = f"{stack.shape} and {phase_rad.shape}"
        raise ValueError(f"expected a stack (2, H, W) and a phase (H, W), got {shapes}")
    if isinstance(amplitude, str):
        if amplitude not in ("unit", "measured"):
            raise ValueError(f"amplitude must be 'unit', 'measured' or an array, got {amplitude!r}")
        amplitude = None if amplitude == "unit" else np.sqrt(np.clip(stack.mean(axis=0), 0.0, None))
    predicted = qpi_forward(phase_rad, dz_um, wavelength_um, pixel_um, amplitude, method)
    scale = float((predicted * stack).sum() / max((predicted**2).sum(), 1e-300))
    residual = stack - scale * predicted
    if noise_std is None:
        noise_std = finest_haar_noise_std(residual)
    if not noise_std > 0:
        raise ValueError("the noise std must be positive (a noise-free stack has no noise units)")
    return residual / noise_std


def qpi_consistency(phase_rad: np.ndarray, stack: np.ndarray, *optics, **options) -> np.ndarray:
    """Root mean square over the two planes of :func:`qpi_residual_planes` (same arguments),
    ``(H, W)``, ≥ 0.

    Under the noise model its square has mean 1 (``sqrt(χ²₂/2)``: median 0.83, above 2.5
    for 0.2 % of pixels).
    """
    planes = qpi_residual_planes(phase_rad, stack, *optics, **options)
    return np.sqrt(np.mean(planes**2, axis=0))


# ----------------------------------------------------------------------------- a whole reconstruction


def _planes(array: np.ndarray, trailing: int) -> np.ndarray:
    return np.asarray(array, dtype=np.float64).reshape(-1, *np.shape(array)[-trailing:])


def reconstruction_consistency(task: str, mean: np.ndarray, image: np.ndarray, pixel_um: float,
                               optics: dict, factor: int = 1, amplitude: str = "unit") -> np.ndarray:
    """Data-consistency map of every plane of a reconstruction, in units of the input's noise std.

    - SR: ``mean`` ``(..., factor·h, factor·w)``, ``image`` the raw widefield ``(..., h, w)``
      (``pixel_um`` its camera pixel); map ``(..., h, w)`` of :func:`sr_consistency`, signed.
      ``optics``: ``na``, ``wavelength_um``, ``target_cutoff_scale``.
    - QPI: ``mean`` the phase ``(..., H, W)`` in rad, ``image`` the defocus stacks
      ``(..., 2, H, W)``; map ``(..., H, W)`` of :func:`qpi_consistency`, ≥ 0. ``optics``:
      ``dz_um``, ``wavelength_um``; ``amplitude`` as in :func:`qpi_residual_planes`.

    ValueError when the shapes do not pair up or the noise cannot be estimated.
    """
    if task == "sr":
        means, inputs = _planes(mean, 2), _planes(image, 2)
        cutoff_scale = optics.get("target_cutoff_scale", 2.0)

        def compute(plane_mean, plane_input):
            return sr_consistency(plane_mean, plane_input, pixel_um, optics["na"], optics["wavelength_um"],
                                  factor, cutoff_scale)

        grid = inputs.shape[-2:]
    elif task == "qpi":
        means, inputs = _planes(mean, 2), _planes(image, 3)

        def compute(plane_mean, plane_input):
            return qpi_consistency(plane_mean, plane_input, optics["dz_um"], optics["wavelength_um"], pixel_um,
                                   amplitude=amplitude)

        grid = means.shape[-2:]
    else:
        raise ValueError(f"no forward model for task {task!r}")
    if len(means) != len(inputs):
        raise ValueError(f"{len(means)} output plane(s) for {len(inputs)} input plane(s): one channel per plane only")
    maps = np.stack([compute(m, x) for m, x in zip(means, inputs)])
    return maps.reshape(*np.shape(mean)[:-2], *grid)
