"""Image-quality and resolution metrics (numpy in, float out).

The uncertainty metrics (coverage, UCE/ENCE, AUSE, Spearman) live in
:mod:`napari_cvdm.uncertainty.metrics`.

Conventions: ``prediction`` and ``reference`` are 2-D arrays of the same shape;
``data_range`` defaults to the reference's ``max − min``. For images in different
units (e.g. a deconvolution and a SIM image) scale them first, e.g. with
:func:`scale_to_reference`; for phase maps remove the free offset with :func:`align_offset`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "MS_SSIM_WEIGHTS",
    "DecorrelationResult",
    "align_offset",
    "decorrelation_analysis",
    "decorrelation_resolution",
    "mae",
    "ms_ssim",
    "psnr",
    "scale_to_reference",
    "ssim",
    "to_unit_range",
]

# Wang, Simoncelli & Bovik 2003, finest to coarsest scale.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    prediction = np.asarray(prediction, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    return prediction, reference


def _range(reference: np.ndarray, data_range: float | None) -> float:
    value = float(np.ptp(reference)) if data_range is None else float(data_range)
    if value <= 0:
        raise ValueError("data_range must be positive (is the reference constant?)")
    return value


# ----------------------------------------------------------------------------- fidelity


def psnr(prediction, reference, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10·log10(data_range² / MSE)`` (scikit-image's)."""
    from skimage.metrics import peak_signal_noise_ratio

    prediction, reference = _pair(prediction, reference)
    data_range = _range(reference, data_range)
    if np.array_equal(prediction, reference):
        return float("inf")  # scikit-image gets there too, through a division-by-zero warning
    return float(peak_signal_noise_ratio(reference, prediction, data_range=data_range))


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2.0
    window = np.exp(-(x**2) / (2 * sigma**2))
    return window / window.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation keeping only positions where the window fits inside (``valid``)."""
    from scipy.ndimage import correlate1d

    half = len(window) // 2
    out = correlate1d(correlate1d(image, window, axis=0, mode="reflect"), window, axis=1, mode="reflect")
    return out[half : image.shape[0] - half, half : image.shape[1] - half]


def _ssim_and_cs(x, y, data_range, win_size, sigma, k1=0.01, k2=0.03) -> tuple[float, float]:
    window = _gaussian_window(win_size, sigma)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, window), _filter_valid(y, window)
    var_x = _filter_valid(x * x, window) - mu_x**2
    var_y = _filter_valid(y * y, window) - mu_y**2
    cov = _filter_valid(x * y, window) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)) * cs_map
    return float(ssim_map.mean()), float(cs_map.mean())


def _window_for(shape, win_size: int) -> int:
    """The SSIM window, shrunk to the largest odd size that fits a small image."""
    smallest = min(shape)
    if smallest >= win_size:
        return win_size
    return max(1, smallest - 1 + smallest % 2)


def ssim(prediction, reference, data_range: float | None = None, win_size: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004): Gaussian window 11, σ = 1.5, K1 = 0.01, K2 = 0.03.

    ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``: population (1/N) local statistics,
    the map averaged over the positions where the window fits in the image. Images
    smaller than the window use the largest odd window that fits.
    """
    from skimage.metrics import structural_similarity

    prediction, reference = _pair(prediction, reference)
    return float(structural_similarity(
        reference, prediction, data_range=_range(reference, data_range),
        win_size=_window_for(prediction.shape, win_size), gaussian_weights=True, sigma=sigma,
        use_sample_covariance=False))


def _downsample2(image: np.ndarray) -> np.ndarray:
    """2×2 average pooling; an odd last row/column is dropped."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    image = image[:h, :w]
    return 0.25 * (image[0::2, 0::2] + image[1::2, 0::2] + image[0::2, 1::2] + image[1::2, 1::2])


def ms_ssim(
    prediction,
    reference,
    data_range: float | None = None,
    win_size: int = 11,
    sigma: float = 1.5,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
) -> float:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003), as in pytorch-msssim.

    ``Π_{j<M} relu(cs_j)^{w_j} · relu(ssim_M)^{w_M}`` over ``M`` scales separated by 2×2
    average pooling. All 5 scales need the coarsest one (``min side / 16``) to hold the
    11-pixel window, i.e. ≥ 176 px. Smaller images use fewer scales — the most for which
    ``min side / 2^(M−1) ≥ win_size`` (128 px: 4, 64 px: 3, 32 px: 2) — with the first
    ``M`` weights renormalised to sum to 1; below ``win_size`` px, one scale with the
    largest odd window that fits.
    """
    prediction, reference = _pair(prediction, reference)
    data_range = _range(reference, data_range)
    scales = len(weights)
    while scales > 1 and min(prediction.shape) / 2 ** (scales - 1) < win_size:
        scales -= 1
    used = np.asarray(weights[:scales], dtype=np.float64)
    used = used / used.sum()
    size = _window_for(prediction.shape, win_size)
    value = 1.0
    x, y = prediction, reference
    for level in range(scales):
        s, cs = _ssim_and_cs(x, y, data_range, size, sigma)
        if level == scales - 1:
            value *= max(s, 0.0) ** used[level]
        else:
            value *= max(cs, 0.0) ** used[level]
            x, y = _downsample2(x), _downsample2(y)
    return float(value)


def to_unit_range(image, reference=None) -> np.ndarray:
    """Scale ``image`` by the ``reference``'s (default: its own) min/max so that the reference spans [0, 1]."""
    image = np.asarray(image, dtype=np.float64)
    ref = image if reference is None else np.asarray(reference, dtype=np.float64)
    return (image - ref.min()) / _range(ref, None)


def mae(prediction, reference, data_range: float | None = None) -> float:
    """Mean absolute error on [0, 1]-scaled images: both scaled by the reference's min/max,
    or divided by a fixed ``data_range`` (which also works for a flat reference)."""
    prediction, reference = _pair(prediction, reference)
    if data_range is not None:
        return float(np.mean(np.abs(prediction - reference))) / _range(reference, data_range)
    return float(np.mean(np.abs(to_unit_range(prediction, reference) - to_unit_range(reference))))


def align_offset(prediction, reference) -> np.ndarray:
    """``prediction`` shifted to the reference's mean (phase maps are defined up to a constant)."""
    prediction, reference = _pair(prediction, reference)
    return prediction - prediction.mean() + reference.mean()


def scale_to_reference(prediction, reference) -> np.ndarray:
    """``a·prediction + b`` with ``a, b`` the least-squares fit to ``reference``.

    For comparing images in different intensity units (CARE-style evaluation); it can
    only improve MSE-based scores, so use it for every method being compared.
    """
    prediction, reference = _pair(prediction, reference)
    design = np.stack([prediction.ravel(), np.ones(prediction.size)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, reference.ravel(), rcond=None)
    return a * prediction + b


# ----------------------------------------------------------------------------- resolution


@dataclass
class DecorrelationResult:
    """Decorrelation analysis of one image.

    ``cutoff``: highest significant frequency ``k_c`` normalised to Nyquist (1 = 0.5
    cycles/pixel), 0 if none; ``resolution_px`` = ``2/k_c`` pixels (inf if none);
    ``amplitude``: the peak height ``A0`` of the unfiltered curve (an SNR indicator).
    """

    cutoff: float
    resolution_px: float
    amplitude: float


def _apodize_edges(image: np.ndarray, width: int) -> np.ndarray:
    """Cosine roll-off of the outer ``width`` pixels towards the image mean (limits edge leakage)."""
    mean = image.mean()
    mask = np.ones(image.shape)
    for axis, n in enumerate(image.shape):
        w = min(width, n // 2)
        ramp = np.ones(n)
        if w > 0:
            edge = 0.5 * (1 - np.cos(np.pi * (np.arange(w) + 0.5) / w))
            ramp[:w] = edge
            ramp[n - w :] = edge[::-1]
        mask = mask * (ramp[:, None] if axis == 0 else ramp[None, :])
    return (image - mean) * mask + mean


def _peak_index(d: np.ndarray) -> int:
    """Index of the maximum of a decorrelation curve, ignoring a tail that rises to the last radius.

    A curve still rising at the end has no peak there (noise-free content or pure noise
    up to that radius); strip such end points until the maximum is interior. 0 if none.
    """
    end = len(d)
    while end > 1:
        index = int(np.argmax(d[:end]))
        if index < end - 1:
            return index
        end -= 1
    return 0


class _DecorrelationCurves:
    """The apodised spectrum sorted by radius, and the decorrelation curve ``d(r)`` of any filter of it.

    Radial sums use cumulative sums over pixels sorted by radius (one sort instead of a mask per radius).
    """

    def __init__(self, image: np.ndarray):
        height, width = image.shape
        fy = np.fft.fftfreq(height)[:, None] / 0.5
        fx = np.fft.fftfreq(width)[None, :] / 0.5
        radius = np.sqrt(fx**2 + fy**2)
        inside = radius < 1.0
        spectrum, radius = np.fft.fft2(image)[inside], radius[inside]
        order = np.argsort(radius, kind="stable")
        self.radius, self.spectrum = radius[order], spectrum[order]
        magnitude = np.abs(self.spectrum)
        self.phase_only = np.divide(self.spectrum, magnitude, out=np.zeros_like(self.spectrum), where=magnitude > 0)
        # Cumulative ‖Iₙ·1_{|k|<r}‖² (|Iₙ| is 1 or 0).
        self.phase_energy = np.cumsum(np.abs(self.phase_only) ** 2)

    def curve(self, filtered: np.ndarray, radii: np.ndarray) -> np.ndarray:
        norm = np.sqrt(np.sum(np.abs(filtered) ** 2))
        numerator = np.cumsum(np.real(filtered * np.conj(self.phase_only)))
        count = np.searchsorted(self.radius, radii, side="left")  # pixels with |k| < r
        out = np.zeros(len(radii))
        ok = (count > 0) & (norm > 0)
        out[ok] = numerator[count[ok] - 1] / (norm * np.sqrt(self.phase_energy[count[ok] - 1]))
        return np.nan_to_num(out)

    def peak(self, radii: np.ndarray, g: float | None = None) -> tuple[float, float]:
        """``(radius, height)`` of the peak of the curve of the spectrum high-passed with ``g`` (None: unfiltered)."""
        filtered = self.spectrum if g is None else self.spectrum * (1.0 - np.exp(-2.0 * g * g * self.radius**2))
        d = self.curve(filtered, radii)
        index = _peak_index(d)
        return float(radii[index]), float(d[index])


def _refined_search(first_pass: np.ndarray, sigmas: np.ndarray, radii: np.ndarray, height: int, n_highpass: int,
                    n_radii: int) -> tuple[np.ndarray, np.ndarray]:
    """High-pass widths and radii around the highest cut-off of the first pass (``first_pass[0]``:
    the unfiltered curve; the last such curve if several tie)."""
    best = int(np.flatnonzero(first_pass == first_pass.max())[-1])
    if best == 0:
        g1, g2 = float(height), sigmas[0]
    elif best < len(sigmas):
        g1, g2 = sigmas[best - 1], sigmas[best]
    else:
        g1, g2 = sigmas[best - 2], sigmas[best - 1]
    centre = first_pass[best]
    refined_radii = np.linspace(max(centre - (radii[1] - radii[0]), 0.0), min(centre + 0.3, 1.0), n_radii)
    return np.exp(np.linspace(np.log(g1), np.log(g2), n_highpass)), refined_radii


def decorrelation_analysis(
    image,
    n_radii: int = 50,
    n_highpass: int = 10,
    apodization_px: int = 20,
    min_amplitude: float = 0.05,
) -> DecorrelationResult:
    """Image resolution by decorrelation analysis (Descloux, Grußmayer & Radenovic, Nat. Methods 2019).

    The image's spectrum ``I(k)`` (edges apodised) is correlated with its phase-only
    version ``I(k)/|I(k)|`` restricted to a disc of radius ``r``:
    ``d(r) = Σ_{|k|<r} Re(I·conj(Iₙ)) / (‖I‖·‖Iₙ·1_{|k|<r}‖)``. Noise makes ``d`` peak
    at the radius where signal stops dominating. The same curve is computed for
    ``n_highpass`` Gaussian high-pass filtered spectra ``I·(1 − exp(−2g²k²))`` (``g``
    geometrically from ``2/r₀`` to 0.15, then refined once around the best), and ``k_c``
    is the highest peak position among curves with peak height ≥ ``min_amplitude``
    (a curve's peak is its maximum once a tail rising to the last radius is ignored).
    Radii are normalised to Nyquist per axis.
    """
    image = _apodize_edges(np.asarray(image, dtype=np.float64), apodization_px)
    height, width = image.shape
    curves = _DecorrelationCurves(image)
    radii = np.linspace(0.0, 1.0, n_radii)
    cutoff0, amplitude0 = curves.peak(radii)
    g_max = 2.0 / cutoff0 if cutoff0 > 0 else max(height, width) / 2.0
    sigmas = np.concatenate([[height / 4.0], np.exp(np.linspace(np.log(g_max), np.log(0.15), n_highpass))])
    cutoffs, amplitudes = [cutoff0], [amplitude0]
    for refinement in range(2):
        found = [curves.peak(radii, g) for g in sigmas]
        cutoffs += [c for c, _ in found]
        amplitudes += [a for _, a in found]
        if refinement == 0:
            first_pass = np.array([cutoff0] + [c for c, _ in found])
            sigmas, radii = _refined_search(first_pass, sigmas, radii, height, n_highpass, n_radii)
    cutoffs, amplitudes = np.array(cutoffs), np.array(amplitudes)
    valid = amplitudes >= min_amplitude
    cutoff = float(cutoffs[valid].max()) if valid.any() else 0.0
    return DecorrelationResult(
        cutoff=cutoff,
        resolution_px=2.0 / cutoff if cutoff > 0 else float("inf"),
        amplitude=amplitude0,
    )


def decorrelation_resolution(image, pixel_size: float, **kwargs) -> float:
    """Resolution ``2·pixel_size/k_c`` in the units of ``pixel_size`` (e.g. nm); nan if no cut-off is found.

    See :func:`decorrelation_analysis` for the method and keyword arguments.
    """
    result = decorrelation_analysis(image, **kwargs)
    return float(result.resolution_px * pixel_size) if result.cutoff > 0 else float("nan")


# ----------------------------------------------------------------------------- resolution against a reference


def fourier_ring_correlation(image, reference) -> tuple[np.ndarray, np.ndarray]:
    """FRC of two images ``(H, W)`` in rings one frequency bin wide: ``(frequency in cycles/pixel, frc)``.

    Both images are apodised at their edges (Hann over 1/8 of the side) so that the
    edge jump of a non-periodic image does not add a cross of fake high frequencies.
    """
    a, b = (_apodize_edges(np.asarray(x, np.float64) - np.mean(x), max(1, min(np.shape(x)) // 8))
            for x in (image, reference))
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    fy, fx = np.meshgrid(np.fft.fftfreq(a.shape[0]), np.fft.fftfreq(a.shape[1]), indexing="ij")
    ring = np.round(np.hypot(fy, fx) * min(a.shape)).astype(int)
    n_rings = min(a.shape) // 2
    cross = np.bincount(ring.ravel(), (fa * np.conj(fb)).real.ravel(), minlength=n_rings + 1)[:n_rings]
    power_a = np.bincount(ring.ravel(), (np.abs(fa) ** 2).ravel(), minlength=n_rings + 1)[:n_rings]
    power_b = np.bincount(ring.ravel(), (np.abs(fb) ** 2).ravel(), minlength=n_rings + 1)[:n_rings]
    frc = cross / np.sqrt(np.maximum(power_a * power_b, 1e-300))
    return np.arange(n_rings) / min(a.shape), frc


def frc_resolution(image, reference, pixel_size: float, threshold: float = 1 / 7) -> float:
    """Resolution (unit of ``pixel_size``) where the FRC against ``reference`` first falls below
    ``threshold`` (the usual 1/7) after having been above it: ``pixel_size / f_c``, with ``f_c``
    in cycles per pixel. The lowest rings (< 4 cycles per image) hold too few frequencies to
    decide; NaN if the FRC is never above the threshold."""
    frequency, frc = fourier_ring_correlation(image, reference)
    above = np.nonzero(frc[4:] >= threshold)[0]
    if not above.size:
        return float("nan")
    first = 4 + above[0]
    below = np.nonzero(frc[first:] < threshold)[0]
    cut = frequency[first + below[0]] if below.size else frequency[-1]
    return float(pixel_size / cut)


def octave_error_power(prediction, reference) -> list[float]:
    """Error power per octave band of spatial frequency, from 1 cycle per image to Nyquist.

    Band k holds frequencies in ``[2^k, 2^(k+1))`` cycles per image (the last band ends at
    Nyquist); each value is that band's contribution to the mean squared error (the error's
    mean removed), so the bands sum to the MSE less the DC term. One value per band.
    """
    error = np.asarray(prediction, np.float64) - np.asarray(reference, np.float64)
    error = error - error.mean()
    power = np.abs(np.fft.fft2(error)) ** 2 / error.size
    fy, fx = np.meshgrid(np.fft.fftfreq(error.shape[0]) * error.shape[0],
                         np.fft.fftfreq(error.shape[1]) * error.shape[1], indexing="ij")
    radius = np.hypot(fy, fx)
    bands, low = [], 1.0
    nyquist = min(error.shape) / 2
    while low < nyquist:
        inside = (radius >= low) & (radius < min(2 * low, nyquist + 1e-9))
        bands.append(float(power[inside].sum() / error.size))
        low *= 2
    return bands
