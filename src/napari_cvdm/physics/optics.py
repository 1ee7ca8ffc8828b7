"""Imaging optics on periodic grids: incoherent OTF/PSF and free-space propagation.

Units: lengths in micrometres (``*_um``), spatial frequencies in cycles/µm.
All transfer functions are returned in unshifted FFT order (DC at ``[0, 0]``),
ready to multiply ``numpy.fft.fft2`` of an image on the same grid.

Sign convention (pinned by tests): a field ``U(x, y)`` at ``z`` propagates to
``z + dz`` as ``IFFT(FFT(U) · H)`` with the Fresnel transfer function
``H = exp(i k dz) · exp(−i π λ dz (fx² + fy²))``, ``k = 2π/λ``. A positive phase
bump (a converging lens) therefore focuses at ``dz > 0`` and the intensity obeys
the transport-of-intensity equation ``∂I/∂z = −(1/k) ∇·(I ∇φ)``.
"""

from __future__ import annotations

import numpy as np

#: Optics assumed where neither the input nor the model file says: those of the training simulators.
#: QPI: illumination wavelength and defocus ±dz (µm); SR: objective NA, emission wavelength (µm) and
#: the SIM-like target's cut-off as a multiple of the widefield one (the middle of the SR simulator's ranges).
QPI_WAVELENGTH_UM = 0.521
QPI_DZ_UM = 1.0
SR_NA = 1.4
SR_EMISSION_UM = 0.575
SR_TARGET_CUTOFF_SCALE = 2.0

__all__ = [
    "angular_spectrum_transfer",
    "apply_transfer",
    "bin_pixels",
    "frequency_grid",
    "fresnel_transfer",
    "incoherent_otf",
    "incoherent_psf",
    "pixel_integration_mtf",
    "propagate",
    "psf_from_otf",
    "upsample",
]


def frequency_grid(shape: tuple[int, int], pixel_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial frequencies (cycles/µm) of an ``(H, W)`` grid, FFT order.

    Returns ``fy`` shaped ``(H, 1)`` and ``fx`` shaped ``(1, W)`` (broadcastable).
    """
    height, width = shape
    fy = np.fft.fftfreq(height, d=pixel_um)[:, None]
    fx = np.fft.fftfreq(width, d=pixel_um)[None, :]
    return fy, fx


def incoherent_otf(
    shape: tuple[int, int],
    pixel_um: float,
    na: float,
    wavelength_um: float,
    cutoff_scale: float = 1.0,
) -> np.ndarray:
    """Incoherent (in-focus, aberration-free) OTF of a circular pupil, ``(H, W)`` float64.

    ``OTF(ρ) = (2/π)(acos ρ − ρ·sqrt(1 − ρ²))`` for ``ρ = f / f_c ≤ 1`` and 0 beyond, with
    the cut-off ``f_c = cutoff_scale · 2·NA/λ`` (cycles/µm). ``cutoff_scale = 2`` gives
    the SIM-like target transfer function with twice the widefield bandwidth.
    ``OTF(0) = 1``, so filtering preserves the total flux.
    """
    fy, fx = frequency_grid(shape, pixel_um)
    cutoff = cutoff_scale * 2.0 * na / wavelength_um
    rho = np.sqrt(fx**2 + fy**2) / cutoff
    inside = rho < 1.0
    rho_in = np.where(inside, rho, 1.0)
    otf = (2.0 / np.pi) * (np.arccos(rho_in) - rho_in * np.sqrt(1.0 - rho_in**2))
    return np.where(inside, otf, 0.0)


def pixel_integration_mtf(shape: tuple[int, int], bin_factor: int) -> np.ndarray:
    """Transfer function, on the fine grid, of averaging ``bin_factor²`` fine pixels into one camera pixel.

    A camera pixel is a box ``bin_factor`` fine pixels wide, centred on the fine grid at
    ``bin_factor·i + (bin_factor − 1)/2`` (pixel-area alignment, the convention of
    :func:`bin_pixels` and :func:`upsample`). The box is symmetric about that centre, so
    the transfer is real: ``Π_axes mean_j cos(2π ν o_j)`` with ``o_j = j − (bin_factor−1)/2``
    and ``ν`` in cycles per fine pixel. 1 at DC.
    """
    transfer = np.ones(shape)
    offsets = np.arange(bin_factor) - (bin_factor - 1) / 2.0
    for axis, n in enumerate(shape):
        nu = np.fft.fftfreq(n)
        kernel = np.cos(2.0 * np.pi * nu[:, None] * offsets[None, :]).mean(axis=1)
        transfer = transfer * (kernel[:, None] if axis == 0 else kernel[None, :])
    return transfer


def bin_pixels(image: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor × factor`` blocks of ``(..., H, W)`` (a camera integrating over its pixel).

    ``H`` and ``W`` must be multiples of ``factor``. Coarse pixel ``i`` covers fine pixels
    ``[factor·i, factor·i + factor)``.
    """
    *lead, height, width = image.shape
    if height % factor or width % factor:
        raise ValueError(f"image shape {(height, width)} is not a multiple of the bin factor {factor}")
    blocks = image.reshape(*lead, height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(-3, -1))


def upsample(image: np.ndarray, factor: int = 2) -> np.ndarray:
    """Band-limited (Fourier, DCT-II) upsampling of ``(..., H, W)`` to ``(..., factor·H, factor·W)``, float32.

    This is how a raw widefield image (camera pixel ``p``) is brought to the target grid
    (pixel ``p/factor``), both for training pairs and at reconstruction time.

    - Interpolation: zero-padding of the DCT-II spectrum, i.e. exact sinc interpolation
      of the image's mirror-symmetric extension. A widefield image is band-limited below
      its Nyquist frequency, so this adds no blur (bicubic would attenuate the top of the
      band) and, unlike a periodic FFT, it does not ring at the image borders.
    - Alignment (pixel-area convention, as ``skimage.transform.resize``): input pixel
      ``i`` covers output pixels ``[factor·i, factor·i + factor)``. In napari the output
      layer has ``scale = s/factor`` and ``translate = t − s/2 + s/(2·factor)`` for an
      input layer with scale ``s`` and translate ``t``.
    - The mean is preserved; ``upsample(bin_pixels(x))`` equals ``x`` filtered by
      :func:`pixel_integration_mtf` for content below the coarse Nyquist frequency.
    """
    from scipy import fft as sfft

    image = np.asarray(image, dtype=np.float64)
    if factor == 1:
        return image.astype(np.float32)
    *lead, height, width = image.shape
    spectrum = sfft.dctn(image, type=2, norm="ortho", axes=(-2, -1))
    padded = np.zeros((*lead, factor * height, factor * width))
    padded[..., :height, :width] = spectrum
    # Orthonormal DCTs of different lengths differ by sqrt(factor) per axis.
    out = sfft.idctn(padded, type=2, norm="ortho", axes=(-2, -1)) * factor
    return out.astype(np.float32)


def downsample(image: np.ndarray, upsampled_from: int = 2) -> np.ndarray:
    """The exact inverse of :func:`upsample` ``(..., factor·H, factor·W)`` → ``(..., H, W)``, float64:
    the DCT-II spectrum cut back to its first ``H × W`` coefficients."""
    from scipy import fft as sfft

    image = np.asarray(image, dtype=np.float64)
    factor = int(upsampled_from)
    if factor == 1:
        return image
    *lead, height, width = image.shape
    spectrum = sfft.dctn(image, type=2, norm="ortho", axes=(-2, -1))[..., : height // factor, : width // factor]
    return sfft.idctn(spectrum, type=2, norm="ortho", axes=(-2, -1)) / factor


def psf_from_otf(otf: np.ndarray) -> np.ndarray:
    """Point-spread function (centred at ``(H//2, W//2)``, sums to 1) of an FFT-order OTF."""
    psf = np.fft.fftshift(np.real(np.fft.ifft2(otf)))
    return psf / psf.sum()


def incoherent_psf(
    shape: tuple[int, int], pixel_um: float, na: float, wavelength_um: float, cutoff_scale: float = 1.0
) -> np.ndarray:
    """Centred PSF ``(H, W)`` (sums to 1) of :func:`incoherent_otf`.

    ``cutoff_scale = 1``: the widefield (Airy²) PSF; ``2``: the SIM-like target's PSF.
    """
    return psf_from_otf(incoherent_otf(shape, pixel_um, na, wavelength_um, cutoff_scale))


def apply_transfer(image: np.ndarray, transfer: np.ndarray) -> np.ndarray:
    """Filter a real ``(..., H, W)`` image with an FFT-order transfer function (periodic).

    Returns the real part (float64); the imaginary part of a Hermitian transfer is zero.
    """
    return np.real(np.fft.ifft2(np.fft.fft2(image) * transfer))


def fresnel_transfer(shape: tuple[int, int], dz_um: float, wavelength_um: float, pixel_um: float) -> np.ndarray:
    """Paraxial (Fresnel) transfer function ``exp(ikz)·exp(−iπλz(fx²+fy²))``, complex128 ``(H, W)``."""
    fy, fx = frequency_grid(shape, pixel_um)
    k = 2.0 * np.pi / wavelength_um
    return np.exp(1j * k * dz_um) * np.exp(-1j * np.pi * wavelength_um * dz_um * (fx**2 + fy**2))


def angular_spectrum_transfer(
    shape: tuple[int, int], dz_um: float, wavelength_um: float, pixel_um: float
) -> np.ndarray:
    """Non-paraxial angular-spectrum transfer ``exp(i k z sqrt(1 − (λfx)² − (λfy)²))``.

    Evanescent frequencies (``λ|f| > 1``) decay as ``exp(−k |z| sqrt((λf)² − 1))`` in both
    directions (they are never amplified), so ``z = 0`` is the identity for any field,
    energy and ``+z``/``−z`` round trips are exact for fields without evanescent content.
    """
    fy, fx = frequency_grid(shape, pixel_um)
    k = 2.0 * np.pi / wavelength_um
    argument = 1.0 - (wavelength_um * fx) ** 2 - (wavelength_um * fy) ** 2
    propagating = argument >= 0
    root = np.sqrt(np.abs(argument))
    return np.where(propagating, np.exp(1j * k * dz_um * root), np.exp(-k * abs(dz_um) * root))


def propagate(
    field: np.ndarray,
    dz_um: float,
    wavelength_um: float,
    pixel_um: float,
    method: str = "fresnel",
) -> np.ndarray:
    """Propagate a complex field ``(..., H, W)`` by ``dz_um`` with periodic boundaries.

    ``method`` is ``"fresnel"`` (paraxial, the paper's model) or ``"angular"``
    (angular spectrum). Returns complex128 of the same shape; ``dz_um = 0`` is the identity.
    """
    field = np.asarray(field)
    shape = field.shape[-2:]
    if method == "fresnel":
        transfer = fresnel_transfer(shape, dz_um, wavelength_um, pixel_um)
    elif method == "angular":
        transfer = angular_spectrum_transfer(shape, dz_um, wavelength_um, pixel_um)
    else:
        raise ValueError(f"unknown propagation method {method!r}; use 'fresnel' or 'angular'")
    return np.fft.ifft2(np.fft.fft2(field) * transfer)
