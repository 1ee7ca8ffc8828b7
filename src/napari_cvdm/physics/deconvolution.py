"""Richardson–Lucy deconvolution with a known (computed) PSF.

The widefield baseline works on the target grid: the raw camera image is first
brought to the fine grid with :func:`~napari_cvdm.physics.optics.upsample`, and the
forward model on that grid is the incoherent OTF times the camera's pixel-integration
transfer, which is exactly what the simulator applies.
"""

from __future__ import annotations

import numpy as np

from .optics import incoherent_otf, pixel_integration_mtf, upsample

__all__ = ["richardson_lucy", "richardson_lucy_widefield", "widefield_transfer"]


def richardson_lucy(
    image: np.ndarray,
    transfer: np.ndarray,
    iterations: int = 30,
    background: float = 0.0,
    eps: float = 1e-12,
) -> np.ndarray:
    """Richardson–Lucy iterations with periodic FFT convolution.

    ``image`` ``(H, W)`` is non-negative data (photons or offset-free ADU), ``transfer``
    the FFT-order transfer function of the blur on the same grid (``transfer[0, 0] = 1``),
    ``background`` a known flat background added by the forward model. Update:
    ``x ← x · Hᵀ(d / (Hx + b)) / Hᵀ1`` (here ``Hᵀ1 = 1``). Starts from the flat image of
    the data's mean, so the estimate keeps the data's flux. Returns float64 ``(H, W)``.
    """
    data = np.clip(np.asarray(image, dtype=np.float64), 0.0, None)
    transfer_adjoint = np.conj(transfer)
    estimate = np.full_like(data, max(data.mean() - background, eps))
    for _ in range(iterations):
        blurred = np.real(np.fft.ifft2(np.fft.fft2(estimate) * transfer)) + background
        ratio = data / np.maximum(blurred, eps)
        correction = np.real(np.fft.ifft2(np.fft.fft2(ratio) * transfer_adjoint))
        estimate = estimate * np.maximum(correction, 0.0)
    return estimate


def widefield_transfer(
    shape: tuple[int, int], fine_pixel_um: float, na: float, wavelength_um: float, bin_factor: int = 2
) -> np.ndarray:
    """Forward transfer on the fine (target) grid of a widefield camera with pixel ``bin_factor·fine_pixel_um``.

    Incoherent OTF (cut-off ``2NA/λ``) times the pixel-integration transfer. ``(H, W)``, FFT order.
    """
    return incoherent_otf(shape, fine_pixel_um, na, wavelength_um) * pixel_integration_mtf(shape, bin_factor)


def richardson_lucy_widefield(
    widefield: np.ndarray,
    camera_pixel_um: float,
    na: float,
    wavelength_um: float,
    factor: int = 2,
    iterations: int = 30,
    offset: float = 0.0,
    background: float = 0.0,
) -> np.ndarray:
    """Deconvolve a raw widefield image ``(h, w)`` onto the ``factor``× finer grid ``(factor·h, factor·w)``.

    Subtracts the camera ``offset`` (ADU), upsamples with
    :func:`~napari_cvdm.physics.optics.upsample`, clips negative read noise to 0 and runs
    :func:`richardson_lucy` with :func:`widefield_transfer` (pixel ``camera_pixel_um/factor``).
    Returns float32, in the data's units per fine pixel area scaled like the input.
    """
    fine = upsample(np.asarray(widefield, dtype=np.float64) - offset, factor).astype(np.float64)
    transfer = widefield_transfer(fine.shape, camera_pixel_um / factor, na, wavelength_um, factor)
    return richardson_lucy(fine, transfer, iterations=iterations, background=background).astype(np.float32)
