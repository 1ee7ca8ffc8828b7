"""Microscopy physics in numpy: optics (OTF/PSF, propagation), TIE phase retrieval, deconvolution,
data-consistency maps, noise estimators.

Lengths are in µm (``*_um`` arguments), spatial frequencies in cycles/µm, phases in
radians. No torch, Qt or napari imports.
"""

from .consistency import (
    qpi_consistency,
    qpi_forward,
    qpi_residual_planes,
    sr_consistency,
    sr_forward,
)
from .deconvolution import richardson_lucy, richardson_lucy_widefield, widefield_transfer
from .noise import defocus_relative_noise_std, finest_haar_noise_std, widefield_noise_variance
from .optics import (
    angular_spectrum_transfer,
    apply_transfer,
    bin_pixels,
    frequency_grid,
    fresnel_transfer,
    incoherent_otf,
    incoherent_psf,
    pixel_integration_mtf,
    propagate,
    psf_from_otf,
    upsample,
)
from .tie import axial_derivative, fft_tie, inverse_laplacian, laplacian_symbol, us_tie

__all__ = [
    "angular_spectrum_transfer",
    "apply_transfer",
    "axial_derivative",
    "bin_pixels",
    "defocus_relative_noise_std",
    "fft_tie",
    "finest_haar_noise_std",
    "frequency_grid",
    "fresnel_transfer",
    "incoherent_otf",
    "incoherent_psf",
    "inverse_laplacian",
    "laplacian_symbol",
    "pixel_integration_mtf",
    "propagate",
    "psf_from_otf",
    "qpi_consistency",
    "qpi_forward",
    "qpi_residual_planes",
    "richardson_lucy",
    "richardson_lucy_widefield",
    "sr_consistency",
    "sr_forward",
    "upsample",
    "us_tie",
    "widefield_noise_variance",
    "widefield_transfer",
]
