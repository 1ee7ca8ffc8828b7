"""Seeded simulators of paired training data for the two tasks.

- **SR** (BioSR-like): fluorescent structures (CCPs, ER, microtubules, F-actin) are
  rendered as fluorophore densities on the fine target grid (31.3 nm pixels). The
  widefield image is that object through the incoherent OTF (cut-off ``2NA/λ_em``),
  integrated over 2×2 fine pixels by the camera (62.6 nm pixels), with Poisson photon
  noise, Gaussian read noise and an offset (ADU, gain 1). The target is the same object
  through an OTF with twice the cut-off, noise-free, on the fine grid.
- **QPI** (the CVDM paper's setup): a grayscale image ``g ∈ [0, 1]`` becomes the pure
  phase object ``exp(iφ)``, ``φ = 3.5·g`` rad, imaged at ``±dz = ±1 µm`` with
  ``λ = 0.521 µm`` and 0.21 µm pixels (Fresnel, periodic boundaries), plus additive
  Gaussian noise of std ``s ~ U(0, 0.2)`` per pair. Sources are photos under random
  crops, zooms and rotations, and procedural textures, so the stream never repeats. The
  photos are scikit-image's bundled images (no download; every split crops the same
  photos), or a folder of the user's split by file (:func:`split_source_files`), so
  that test objects come from photos no training crop came from.

Unseen test sets (``docs/data.md``): QPI from the test split of a photo folder; SR from
:data:`SR_UNSEEN_TEST`, settings outside :data:`SR_TRAIN`'s ranges plus the held-out
families :data:`UNSEEN_STRUCTURE_KINDS`.

Everything takes a ``numpy.random.Generator``; the same seed gives the same data.
Images are periodic (rendered with wrap-around), matching the FFT-based optics.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..physics.optics import (
    QPI_DZ_UM, QPI_WAVELENGTH_UM, apply_transfer, bin_pixels, frequency_grid, incoherent_otf, propagate, upsample,
)
from ..physics.consistency import qpi_forward as phase_object_stack  # noqa: F401 - the simulator's forward model
from .datasets import ImagePair, get_task

__all__ = [
    "ALL_STRUCTURE_KINDS",
    "IMAGE_SUFFIXES",
    "SOURCE_SPLITS",
    "SR_TRAIN",
    "SR_UNSEEN_TEST",
    "STRUCTURE_KINDS",
    "UNSEEN_STRUCTURE_KINDS",
    "PHOTO_KIND",
    "QPISample",
    "QPISimulationConfig",
    "SRSample",
    "SRSimulationConfig",
    "SimulatedPairs",
    "StructureSettings",
    "natural_image_names",
    "phase_object_stack",
    "qpi_source_image",
    "render_structure",
    "simulate_qpi",
    "simulate_sr",
    "split_source_files",
    "write_simulated_folders",
]

STRUCTURE_KINDS = ("ccp", "er", "microtubule", "actin")  # the training structures
UNSEEN_STRUCTURE_KINDS = ("nucleus", "mitochondria")  # families held out of training, for the unseen test
#: An SR family drawn from a folder of photos (``source_files``), added to training when one is given:
#: a crop of a photo as the fluorophore density, for the dense, continuous textures the four
#: filament and vesicle families lack.
PHOTO_KIND = "photo"

# Fluorophore cross-section (Gaussian sigma, µm) of each structure kind: FWHM ≈ 2.355·sigma.
_CROSS_SECTION_SIGMA_UM = {"ccp": 0.015, "er": 0.025, "microtubule": 0.011, "actin": 0.004,
                           "nucleus": 0.02, "mitochondria": 0.02}  # fmt: skip


@dataclass(frozen=True)
class StructureSettings:
    """Ranges the structure generators draw from (µm, per µm², rad); the defaults are the training ranges.

    A ``(low, high)`` pair is drawn uniformly per image (per object for sizes);
    ``actin_filaments_per_bundle`` is ``numpy``'s ``integers(low, high)`` (high excluded).
    ``width_scale`` multiplies every structure's cross-section sigma.
    """

    ccp_density_per_um2: tuple[float, float] = (0.6, 2.0)
    ccp_radius_um: tuple[float, float] = (0.05, 0.10)
    ccp_hollow_fraction: float = 0.7
    er_density_per_um2: tuple[float, float] = (1.5, 4.0)  # Voronoi seeds: the mesh size
    er_missing_edge_fraction: float = 0.12
    microtubule_density_per_um2: tuple[float, float] = (0.15, 0.4)
    microtubule_length_um: tuple[float, float] = (4.0, 15.0)
    microtubule_persistence_um: tuple[float, float] = (6.0, 20.0)  # curvature ~ 1/persistence
    actin_bundle_density_per_um2: tuple[float, float] = (0.2, 0.5)
    actin_filaments_per_bundle: tuple[int, int] = (2, 7)
    actin_persistence_um: tuple[float, float] = (30.0, 100.0)
    actin_mesh_density_per_um2: tuple[float, float] = (0.5, 1.5)
    actin_mesh_persistence_um: tuple[float, float] = (10.0, 30.0)
    width_scale: float = 1.0
    # Held-out families (not in SR_TRAIN's kinds).
    nucleus_radius_um: tuple[float, float] = (3.0, 5.0)
    nucleus_grain_um: tuple[float, float] = (0.04, 0.12)  # chromatin texture correlation length
    mitochondria_density_per_um2: tuple[float, float] = (0.15, 0.4)
    mitochondria_length_um: tuple[float, float] = (0.8, 4.0)
    mitochondria_persistence_um: tuple[float, float] = (1.5, 6.0)
    mitochondria_radius_um: tuple[float, float] = (0.1, 0.2)
    mitochondria_membrane_fraction: float = 0.5  # images labelled on the outer membrane (hollow tubes)
# Spacing of fluorophore samples along curves, well below the 31.3 nm pixel.
_STEP_UM = 0.008


# ----------------------------------------------------------------------------- rendering


def _splat(points_um: np.ndarray, weights: np.ndarray, shape: tuple[int, int], pixel_um: float) -> np.ndarray:
    """Bilinear, wrap-around deposit of weighted points ``(n, 2)`` [y, x] µm onto an ``(H, W)`` grid.

    Pixel ``j`` is centred at ``j·pixel_um``. Returns the density per pixel (float64).
    """
    height, width = shape
    pos = points_um / pixel_um
    base = np.floor(pos).astype(np.int64)
    frac = pos - base
    out = np.zeros(height * width)
    for dy in (0, 1):
        wy = frac[:, 0] if dy else 1.0 - frac[:, 0]
        iy = (base[:, 0] + dy) % height
        for dx in (0, 1):
            wx = frac[:, 1] if dx else 1.0 - frac[:, 1]
            ix = (base[:, 1] + dx) % width
            out += np.bincount(iy * width + ix, weights=weights * wy * wx, minlength=height * width)
    return out.reshape(shape)


def _chain_points(
    rng: np.random.Generator,
    n: int,
    field_um: np.ndarray,
    length_um: tuple[float, float],
    persistence_um: tuple[float, float],
    start: np.ndarray | None = None,
    heading: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` 2-D worm-like chains sampled every ``_STEP_UM``.

    Returns points ``(m, 2)`` [y, x] µm, per-point weights (arc length times a
    per-filament brightness, log-normal, 20 % spread) and the tangent angle (rad) at each point.
    """
    if n == 0:
        return np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    lengths = rng.uniform(*length_um, size=n)
    persistence = rng.uniform(*persistence_um, size=n)
    steps = int(np.ceil(lengths.max() / _STEP_UM))
    if start is None:
        start = rng.uniform(0, 1, size=(n, 2)) * field_um
    if heading is None:
        heading = rng.uniform(0, 2 * np.pi, size=n)
    # Tangent angle diffuses with variance ds/Lp per step (2-D worm-like chain).
    turns = rng.normal(size=(n, steps)) * np.sqrt(_STEP_UM / persistence)[:, None]
    angles = heading[:, None] + np.cumsum(turns, axis=1)
    offsets = np.cumsum(np.stack([np.sin(angles), np.cos(angles)], axis=-1) * _STEP_UM, axis=1)
    points = start[:, None, :] + offsets
    inside = np.arange(steps)[None, :] * _STEP_UM < lengths[:, None]
    brightness = np.broadcast_to(rng.lognormal(0.0, 0.2, size=(n, 1)), inside.shape)
    return points[inside], _STEP_UM * brightness[inside], angles[inside]


def _worm_like_chains(rng, n, field_um, length_um, persistence_um, start=None, heading=None):
    """Points ``(m, 2)`` µm and weights of :func:`_chain_points` (without the tangents)."""
    points, weights, _ = _chain_points(rng, n, field_um, length_um, persistence_um, start, heading)
    return points, weights


def _render_ccp(rng, field_um, s):
    """Clathrin-coated pits: hollow rings or filled discs (radius ``s.ccp_radius_um``)."""
    area = field_um[0] * field_um[1]
    n = rng.poisson(rng.uniform(*s.ccp_density_per_um2) * area)
    per_pit = 48
    centres = rng.uniform(0, 1, size=(n, 2)) * field_um
    radius = rng.uniform(*s.ccp_radius_um, size=n)
    hollow = rng.random(n) < s.ccp_hollow_fraction
    angle = rng.uniform(0, 2 * np.pi, size=(n, per_pit))
    # Rings sit on their radius (coat thickness from the cross-section); discs fill uniformly.
    r = np.where(hollow[:, None], radius[:, None], radius[:, None] * np.sqrt(rng.random((n, per_pit))))
    points = centres[:, None, :] + r[..., None] * np.stack([np.sin(angle), np.cos(angle)], axis=-1)
    brightness = rng.lognormal(0.0, 0.4, size=n) * (radius / 0.075) ** 2  # coat area grows with radius²
    weights = np.repeat(brightness / per_pit, per_pit)
    return points.reshape(-1, 2), weights


def _render_microtubule(rng, field_um, s):
    """Microtubules: long, smooth, persistent filaments (~25 nm)."""
    area = field_um[0] * field_um[1]
    n = max(1, rng.poisson(rng.uniform(*s.microtubule_density_per_um2) * area))
    return _worm_like_chains(rng, n, field_um, s.microtubule_length_um, s.microtubule_persistence_um)


def _render_actin(rng, field_um, s):
    """F-actin: dense, straight filaments, partly bundled along a preferred orientation, over a thin mesh."""
    area = field_um[0] * field_um[1]
    orientation = rng.uniform(0, np.pi)
    n_bundles = max(1, rng.poisson(rng.uniform(*s.actin_bundle_density_per_um2) * area))
    per_bundle = rng.integers(*s.actin_filaments_per_bundle, size=n_bundles)
    n_fil = int(per_bundle.sum())
    bundle_of = np.repeat(np.arange(n_bundles), per_bundle)
    centre = rng.uniform(0, 1, size=(n_bundles, 2)) * field_um
    bundle_heading = orientation + rng.normal(0, 0.35, size=n_bundles)
    heading = bundle_heading[bundle_of] + rng.normal(0, 0.02, size=n_fil)
    # Filaments of a bundle are laterally offset by tens of nm and staggered along it.
    normal = np.stack([np.cos(bundle_heading), -np.sin(bundle_heading)], axis=-1)[bundle_of]
    along = np.stack([np.sin(bundle_heading), np.cos(bundle_heading)], axis=-1)[bundle_of]
    start = (
        centre[bundle_of]
        + normal * rng.normal(0, 0.04, size=(n_fil, 1))
        + along * rng.uniform(-1.0, 1.0, size=(n_fil, 1))
    )
    bundled, w_bundled = _worm_like_chains(rng, n_fil, field_um, (2.0, 10.0), s.actin_persistence_um, start, heading)
    n_mesh = rng.poisson(rng.uniform(*s.actin_mesh_density_per_um2) * area)
    mesh, w_mesh = _worm_like_chains(rng, n_mesh, field_um, (0.5, 3.0), s.actin_mesh_persistence_um)
    return np.concatenate([bundled, mesh]), np.concatenate([w_bundled, 0.6 * w_mesh])


def _render_er(rng, field_um, s):
    """Endoplasmic reticulum: a polygonal network of ~60 nm tubules (periodic Voronoi edges)."""
    from scipy.spatial import Voronoi

    area = field_um[0] * field_um[1]
    n = max(4, rng.poisson(rng.uniform(*s.er_density_per_um2) * area))
    seeds = rng.uniform(0, 1, size=(n, 2)) * field_um
    tiles = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]) * field_um
    vor = Voronoi((seeds[None, :, :] + tiles[:, None, :]).reshape(-1, 2))
    ridges = np.asarray(vor.ridge_vertices)  # 2-D: every ridge has two vertices, -1 = at infinity
    ridges = ridges[(ridges >= 0).all(axis=1)]
    a, b = vor.vertices[ridges[:, 0]], vor.vertices[ridges[:, 1]]
    mid = (a + b) / 2
    # Each edge of the periodic network appears once with its midpoint in the central tile.
    keep = np.all((mid >= 0) & (mid < field_um), axis=1) & (rng.random(len(mid)) > s.er_missing_edge_fraction)
    a, b = a[keep], b[keep]
    lengths = np.linalg.norm(b - a, axis=1)
    counts = np.maximum(1, np.ceil(lengths / _STEP_UM).astype(int))
    edge = np.repeat(np.arange(len(a)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + 0.5) / counts[edge]
    points = a[edge] + t[:, None] * (b - a)[edge]
    weights = (lengths / counts)[edge]
    return points, weights


def _render_mitochondria(rng, field_um, s):
    """Mitochondria: short, curved tubes of 100–200 nm radius, labelled on the outer membrane or in the matrix.

    Each centreline point spreads its weight over the tube's width: the projection of a
    hollow cylinder (membrane label, bright edges) or of a filled one (matrix label).
    """
    area = field_um[0] * field_um[1]
    n = max(1, rng.poisson(rng.uniform(*s.mitochondria_density_per_um2) * area))
    centre, weights, angles = _chain_points(rng, n, field_um, s.mitochondria_length_um, s.mitochondria_persistence_um)
    radius = rng.uniform(*s.mitochondria_radius_um)
    membrane = rng.random() < s.mitochondria_membrane_fraction
    k = 12
    theta = (np.arange(k) + 0.5) * np.pi / k
    across = radius * np.cos(theta)  # offsets across the tube, µm
    # Uniform θ = surface density of a hollow cylinder; sin²θ = chord length of a filled one.
    profile = np.full(k, 1.0 / k) if membrane else np.sin(theta) ** 2 / np.sum(np.sin(theta) ** 2)
    normal = np.stack([np.cos(angles), -np.sin(angles)], axis=-1)
    points = centre[:, None, :] + across[None, :, None] * normal[:, None, :]
    return points.reshape(-1, 2), (weights[:, None] * profile[None, :]).ravel()


_RENDERERS = {
    "ccp": _render_ccp,
    "er": _render_er,
    "microtubule": _render_microtubule,
    "actin": _render_actin,
    "mitochondria": _render_mitochondria,
}


def _periodic_offsets(shape: tuple[int, int], pixel_um: float, centre_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Wrapped distances ``(dy, dx)`` µm of every pixel centre from ``centre_um`` on a periodic field."""
    field_um = np.array(shape) * pixel_um
    dy = (np.arange(shape[0]) * pixel_um - centre_um[0] + field_um[0] / 2) % field_um[0] - field_um[0] / 2
    dx = (np.arange(shape[1]) * pixel_um - centre_um[1] + field_um[1] / 2) % field_um[1] - field_um[1] / 2
    return dy[:, None], dx[None, :]


def _render_nucleus(rng, shape, pixel_um, s):
    """Nuclei: dense, irregular blobs (radius ``s.nucleus_radius_um``) of granular chromatin with dark nucleoli.

    Returns a density grid ``(H, W)`` directly (not points): the object fills much of the field.
    """
    field_um = np.array(shape) * pixel_um
    fy, fx = frequency_grid(shape, pixel_um)
    grain = rng.uniform(*s.nucleus_grain_um)
    chromatin = np.exp(0.6 * _unit_field(rng, shape, np.exp(-2 * np.pi**2 * grain**2 * (fx**2 + fy**2))))
    density = np.zeros(shape)
    for _ in range(1 + rng.poisson(field_um.prod() / 200.0)):
        centre = rng.uniform(0, 1, size=2) * field_um
        radius = min(rng.uniform(*s.nucleus_radius_um), 0.45 * field_um.min())
        aspect, tilt = rng.uniform(0.7, 1.0), rng.uniform(0, np.pi)
        dy, dx = _periodic_offsets(shape, pixel_um, centre)
        u = (np.cos(tilt) * dy + np.sin(tilt) * dx) / aspect
        v = -np.sin(tilt) * dy + np.cos(tilt) * dx
        phi = np.arctan2(u, v)
        modes = np.arange(2, 6)[:, None, None]  # an irregular outline: angular modes 2–5, 4 % each
        amplitudes, phases = rng.normal(0, 0.04, size=(4, 1, 1)), rng.uniform(0, 2 * np.pi, (4, 1, 1))
        outline = 1 + np.sum(amplitudes * np.cos(modes * phi + phases), axis=0)
        rho = np.sqrt(u**2 + v**2) / (radius * outline)
        inside = np.clip((1 - rho) * radius / 0.05, 0.0, 1.0)  # a 50 nm soft edge
        rim = np.exp(-(((rho - 1) * radius / 0.06) ** 2))  # the nuclear lamina, slightly brighter
        dark = np.ones(shape)
        for _ in range(rng.integers(1, 4)):  # nucleoli: chromatin-poor ellipses inside
            spot = centre + rng.uniform(-0.5, 0.5, size=2) * radius
            ody, odx = _periodic_offsets(shape, pixel_um, spot)
            r_nucleolus = rng.uniform(0.1, 0.25) * radius
            dark -= 0.75 * np.exp(-((ody**2 + odx**2) / r_nucleolus**2) ** 2)
        density += rng.lognormal(0.0, 0.3) * (inside * chromatin * dark + 0.5 * rim)
    return density


def _unit_field(rng, shape, transfer):
    """A zero-mean, unit-variance periodic Gaussian random field with the given transfer function."""
    field_ = apply_transfer(rng.normal(size=shape), transfer)
    return (field_ - field_.mean()) / max(field_.std(), 1e-12)


_DENSITY_RENDERERS = {"nucleus": _render_nucleus}
ALL_STRUCTURE_KINDS = STRUCTURE_KINDS + UNSEEN_STRUCTURE_KINDS


def render_structure(
    kind: str,
    shape: tuple[int, int],
    pixel_um: float,
    rng: np.random.Generator,
    settings: StructureSettings | None = None,
) -> np.ndarray:
    """Fluorophore density of one structure kind on an ``(H, W)`` grid of ``pixel_um`` pixels.

    ``kind`` is one of :data:`ALL_STRUCTURE_KINDS` (the training kinds
    :data:`STRUCTURE_KINDS` and the held-out :data:`UNSEEN_STRUCTURE_KINDS`); ``settings``
    (default :class:`StructureSettings`, the training ranges) sets densities, sizes,
    curvature and widths. The structure's cross-section (e.g. 25 nm microtubules, 60 nm
    ER tubules) is included; the result is periodic, non-negative float64 in arbitrary
    units (scaled to photons by :func:`simulate_sr`).
    """
    if kind not in ALL_STRUCTURE_KINDS:
        raise ValueError(f"unknown structure kind {kind!r}; choose from {ALL_STRUCTURE_KINDS}")
    settings = settings if settings is not None else StructureSettings()
    if kind in _DENSITY_RENDERERS:
        density = _DENSITY_RENDERERS[kind](rng, shape, pixel_um, settings)
    else:
        field_um = np.array(shape, dtype=float) * pixel_um
        points, weights = _RENDERERS[kind](rng, field_um, settings)
        density = _splat(points, weights, shape, pixel_um)
    fy, fx = frequency_grid(shape, pixel_um)
    sigma = _CROSS_SECTION_SIGMA_UM[kind] * settings.width_scale
    return np.clip(apply_transfer(density, np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2))), 0.0, None)


# ----------------------------------------------------------------------------- SR


@dataclass(frozen=True)
class SRSimulationConfig:
    """Widefield → SIM-like simulation settings (lengths in µm, intensities in photons/ADU, gain 1)."""

    target_pixel_um: float = 0.0313
    factor: int = 2  # camera pixel = factor · target pixel (62.6 nm)
    na_range: tuple[float, float] = (1.3, 1.49)
    emission_wavelength_um_range: tuple[float, float] = (0.5, 0.65)
    target_cutoff_scale: float = 2.0  # the SIM-like OTF reaches this multiple of 2NA/λ
    # Expected signal photons at the brightest camera pixel, drawn log-uniformly: the
    # SNR setting (BioSR spans roughly this range over its levels).
    peak_photons_range: tuple[float, float] = (15.0, 1500.0)
    background_photons_range: tuple[float, float] = (1.0, 20.0)
    read_noise_electrons: float = 1.5
    offset_adu: float = 100.0
    kinds: tuple[str, ...] = STRUCTURE_KINDS
    structures: StructureSettings = StructureSettings()


# The training distribution (the simulator's defaults) and a test distribution outside it.
#
# | setting                              | SR_TRAIN          | SR_UNSEEN_TEST            |
# |--------------------------------------|-------------------|---------------------------|
# | structure kinds                      | ccp, er, microtubule, actin | those + nucleus, mitochondria |
# | NA                                   | 1.30–1.49 (oil)   | 1.15–1.28 (water/silicone) |
# | emission wavelength (µm)             | 0.50–0.65         | 0.44–0.495                |
# | OTF cut-off 2NA/λ (cycles/µm)        | 4.0–6.0           | 4.6–5.8 (same band, other optics) |
# | peak photons (SNR)                   | 15–1500           | 1500–6000                 |
# | background photons                   | 1–20              | 20–60                     |
# | cross-section width scale            | 1.0               | 1.8                       |
# | CCP density (/µm²), radius (µm), hollow | 0.6–2, 0.05–0.10, 70 % | 2.5–5, 0.10–0.15, 30 % |
# | ER seeds (/µm²), missing edges       | 1.5–4, 12 %       | 5–9, 30 %                 |
# | microtubule density, length, persistence | 0.15–0.4, 4–15, 6–20 | 0.6–1.2, 1.5–4, 1.5–5 |
# | actin bundles (/µm²), per bundle, persistence | 0.2–0.5, 2–6, 30–100 | 0.6–1.0, 7–11, 8–25 |
# | actin mesh density, persistence      | 0.5–1.5, 10–30    | 1.6–3.0, 3–9              |
SR_TRAIN = SRSimulationConfig()
SR_UNSEEN_TEST = SRSimulationConfig(
    na_range=(1.15, 1.28),
    emission_wavelength_um_range=(0.44, 0.495),
    peak_photons_range=(1500.0, 6000.0),
    background_photons_range=(20.0, 60.0),
    kinds=STRUCTURE_KINDS + UNSEEN_STRUCTURE_KINDS,
    structures=StructureSettings(
        ccp_density_per_um2=(2.5, 5.0), ccp_radius_um=(0.10, 0.15), ccp_hollow_fraction=0.3,
        er_density_per_um2=(5.0, 9.0), er_missing_edge_fraction=0.3,
        microtubule_density_per_um2=(0.6, 1.2), microtubule_length_um=(1.5, 4.0),
        microtubule_persistence_um=(1.5, 5.0),
        actin_bundle_density_per_um2=(0.6, 1.0), actin_filaments_per_bundle=(7, 12),
        actin_persistence_um=(8.0, 25.0), actin_mesh_density_per_um2=(1.6, 3.0), actin_mesh_persistence_um=(3.0, 9.0),
        width_scale=1.8,
    ),
)  # fmt: skip


@dataclass
class SRSample:
    """One simulated SR acquisition.

    ``widefield`` ``(h, w)`` raw camera ADU (pixel ``camera_pixel_um``); ``target``
    ``(factor·h, factor·w)`` noise-free SIM-like image and ``object`` the fluorophore
    density, both on the fine grid (``target_pixel_um``) and on the widefield's photon
    scale (one scaling of the object for all three).
    """

    widefield: np.ndarray
    target: np.ndarray
    object: np.ndarray
    kind: str
    na: float
    wavelength_um: float
    peak_photons: float
    background_photons: float
    target_pixel_um: float
    camera_pixel_um: float
    offset_adu: float
    source: str = ""  # the photo's file name of a photo object

    def pair(self, name: str = "simulated") -> ImagePair:
        """The training pair: widefield upsampled to the target grid ``(1, H, W)``, target ``(1, H, W)``."""
        factor = round(self.camera_pixel_um / self.target_pixel_um)
        return ImagePair(name, upsample(self.widefield, factor)[None], self.target[None].astype(np.float32))


def sr_kinds(config: SRSimulationConfig, with_photos: bool) -> tuple[str, ...]:
    """The structure families an SR draw chooses from: ``config.kinds``, and photos if there are any."""
    return tuple(config.kinds) + ((PHOTO_KIND,) if with_photos else ())


def simulate_sr(
    rng: np.random.Generator,
    size: int = 256,
    kind: str | None = None,
    config: SRSimulationConfig = SRSimulationConfig(),
    peak_photons: float | None = None,
    source_files: Sequence[Path] | None = None,
) -> SRSample:
    """Simulate one widefield/SIM-like pair on a ``size × size`` target grid (``size`` divisible by ``factor``).

    ``kind`` (default: drawn from ``config.kinds``, plus :data:`PHOTO_KIND` when
    ``source_files`` are given) and ``peak_photons`` (default: drawn log-uniformly from
    ``config.peak_photons_range``) fix the structure and the SNR. A ``photo`` object is a
    random crop of one of ``source_files`` in [0, 1] as the density.
    """
    if size % config.factor:
        raise ValueError(f"size {size} must be a multiple of the camera factor {config.factor}")
    kind = kind if kind is not None else str(rng.choice(sr_kinds(config, bool(source_files))))
    if kind == PHOTO_KIND and not source_files:
        raise ValueError("the photo structure kind needs source_files (a folder of photos)")
    na = rng.uniform(*config.na_range)
    wavelength = rng.uniform(*config.emission_wavelength_um_range)
    if peak_photons is None:
        peak_photons = float(np.exp(rng.uniform(*np.log(config.peak_photons_range))))
    background = rng.uniform(*config.background_photons_range)
    shape = (size, size)
    pixel = config.target_pixel_um

    source = ""
    if kind == PHOTO_KIND:
        obj, source = _crop_natural(rng, size, source_files)
    else:
        obj = render_structure(kind, shape, pixel, rng, config.structures)
    spectrum = np.fft.fft2(obj)
    widefield_fine = np.real(np.fft.ifft2(spectrum * incoherent_otf(shape, pixel, na, wavelength)))
    target = np.real(np.fft.ifft2(spectrum * incoherent_otf(shape, pixel, na, wavelength, config.target_cutoff_scale)))
    camera = bin_pixels(np.clip(widefield_fine, 0.0, None), config.factor)
    # One scale for object, widefield and target, so that all are in photons.
    photons_per_unit = peak_photons / max(camera.max(), 1e-12)
    expected = camera * photons_per_unit + background
    raw = rng.poisson(expected) + rng.normal(0.0, config.read_noise_electrons, size=expected.shape)
    return SRSample(
        widefield=(raw + config.offset_adu).astype(np.float32),
        target=np.clip(target * photons_per_unit, 0.0, None).astype(np.float32),
        object=(obj * photons_per_unit).astype(np.float32),
        kind=kind,
        na=float(na),
        wavelength_um=float(wavelength),
        peak_photons=float(peak_photons),
        background_photons=float(background),
        target_pixel_um=pixel,
        camera_pixel_um=pixel * config.factor,
        offset_adu=config.offset_adu,
        source=source,
    )


# ----------------------------------------------------------------------------- QPI


@dataclass(frozen=True)
class QPISimulationConfig:
    """Two-shot defocus QPI settings of the CVDM paper (µm, radians, unit illumination)."""

    wavelength_um: float = QPI_WAVELENGTH_UM
    pixel_um: float = 0.21
    dz_um: float = QPI_DZ_UM
    phase_max_rad: float = 3.5
    noise_std_range: tuple[float, float] = (0.0, 0.2)
    # The reference code also adds the noise std as an offset to both planes; off by default.
    noise_offset: bool = False
    natural_image_fraction: float = 0.5
    method: str = "fresnel"


@dataclass
class QPISample:
    """One QPI pair: ``stack`` ``(2, H, W)`` = ``[I(−dz), I(+dz)]`` (unit illumination), ``phase`` ``(H, W)`` rad."""

    stack: np.ndarray
    phase: np.ndarray
    noise_std: float
    source: str

    def pair(self, name: str = "simulated") -> ImagePair:
        """The training pair: input ``(2, H, W)``, target ``(1, H, W)`` phase in radians."""
        return ImagePair(name, self.stack.astype(np.float32), self.phase[None].astype(np.float32))


# scikit-image's images shipped inside the package (no pooch download needed).
_NATURAL_IMAGE_FILES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
    "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip


def natural_image_names() -> tuple[str, ...]:
    """Names of the bundled scikit-image images available offline as QPI sources."""
    return tuple(name for name, _ in _natural_images())


@functools.lru_cache(maxsize=1)
def _natural_images() -> tuple[tuple[str, np.ndarray], ...]:
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.io import imread

    folder = Path(os.path.dirname(skimage.data.__file__))
    images = []
    for filename in _NATURAL_IMAGE_FILES:
        path = folder / filename
        if not path.exists():
            continue
        image = imread(path)
        if image.ndim == 3 and image.shape[-1] == 4:
            image = rgba2rgb(image)
        if image.ndim == 3:
            image = rgb2gray(image)
        image = image.astype(np.float64)
        images.append((path.stem, (image - image.min()) / max(np.ptp(image), 1e-12)))
    return tuple(images)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SOURCE_SPLITS = ("train", "validation", "test")


def split_source_files(
    folder: str | os.PathLike, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[Path]]:
    """Split the image files of ``folder`` by file into ``{"train", "validation", "test"}`` (sorted lists).

    Each file's split depends only on its name and ``seed``: a hash of both gives
    ``u ∈ [0, 1)``, and ``u`` below ``fractions[0]`` is training, below
    ``fractions[0] + fractions[1]`` validation, otherwise test. So the split is
    deterministic, the three lists are disjoint and cover every image, and adding files
    to the folder never moves a file already there to another split (the counts follow
    the fractions only on average). Only in a folder so small that a split with a positive
    fraction would be empty, that split takes the file whose hash is nearest to its
    interval. Image files: :data:`IMAGE_SUFFIXES`, not recursive.
    """
    import hashlib

    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"source image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    u = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{p.name}".encode()).digest()[:8], "big") / 2.0**64
                  for p in files])  # fmt: skip
    edges = np.concatenate([[0.0], np.cumsum(fractions)])
    which = np.searchsorted(edges[1:3], u, side="right")
    # A folder too small for the fractions may leave a split empty: it takes the file whose
    # hash lies nearest to its interval (from a split with files to spare).
    for k in np.flatnonzero(np.asarray(fractions) > 0):
        counts = np.bincount(which, minlength=3)
        if counts[k] == 0 and len(files) >= np.count_nonzero(fractions):
            distance = np.maximum(edges[k] - u, u - edges[k + 1])
            distance[counts[which] < 2] = np.inf
            which[int(np.argmin(distance))] = k
    return {name: [p for p, w in zip(files, which) if w == k] for k, name in enumerate(SOURCE_SPLITS)}


@functools.lru_cache(maxsize=None)
def _load_photo(path: Path) -> np.ndarray:
    """A photo as grayscale float32 in [0, 1] (cached: each file is read once per process)."""
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.io import imread

    try:
        image = imread(path)
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad source file
        raise ValueError(f"cannot read source image {path}: {error}") from error
    if image.ndim == 3 and image.shape[-1] == 4:
        image = rgba2rgb(image)
    if image.ndim == 3 and image.shape[-1] == 3:
        image = rgb2gray(image)
    if image.ndim != 2 or min(image.shape) < 8:
        raise ValueError(f"source image {path} is not a 2-D grayscale or RGB image of at least 8×8 ({image.shape})")
    image = image.astype(np.float64)
    return ((image - image.min()) / max(np.ptp(image), 1e-12)).astype(np.float32)


def _crop_image(rng: np.random.Generator, image: np.ndarray, size: int, fit: bool = False) -> np.ndarray:
    """A randomly zoomed (×0.5–2), rotated and flipped ``size × size`` crop of ``image``, bilinear.

    ``fit``: raise the zoom where needed so that the rotated crop lies inside the image
    (a photo smaller than the crop is upsampled rather than mirrored at its edges).
    """
    from scipy.ndimage import map_coordinates

    zoom = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    if fit:  # the rotated square needs a circle of radius 0.71·extent inside the image
        zoom = max(zoom, 0.71 * size / (min(image.shape) / 2 - 1))
    angle = rng.uniform(0, 2 * np.pi)
    extent = size / zoom  # source pixels spanned by the crop
    # Centre the crop so that its rotated square stays inside the image where possible.
    margin = min(extent * 0.71, min(image.shape) / 2 - 1)
    centre = [rng.uniform(margin, n - 1 - margin) for n in image.shape]
    grid = (np.arange(size) - (size - 1) / 2) / zoom
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    cos, sin = np.cos(angle), np.sin(angle)
    coords = np.stack([centre[0] + cos * yy - sin * xx, centre[1] + sin * yy + cos * xx])
    crop = map_coordinates(image, coords, order=1, mode="mirror")
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return crop


def _crop_natural(
    rng: np.random.Generator, size: int, files: Sequence[Path] | None = None
) -> tuple[np.ndarray, str]:
    """A random crop (:func:`_crop_image`) of a bundled image (stem as name) or of one of ``files`` (file name)."""
    if files:
        path = Path(files[rng.integers(len(files))])
        return _crop_image(rng, _load_photo(path).astype(np.float64), size, fit=True), path.name
    name, image = _natural_images()[rng.integers(len(_natural_images()))]
    return _crop_image(rng, image, size), name


def _gaussian_random_field(rng, size):
    fy, fx = frequency_grid((size, size), 1.0)
    radius = np.sqrt(fx**2 + fy**2)
    radius[0, 0] = 1.0
    exponent = rng.uniform(1.5, 4.0)
    spectrum = radius ** (-exponent / 2) * np.exp(-((radius / rng.uniform(0.05, 0.5)) ** 2))
    spectrum[0, 0] = 0.0
    return apply_transfer(rng.normal(size=(size, size)), spectrum)


def _random_blobs(rng, size):
    """Ellipses (cell- or vesicle-like) of random size, orientation and sign, some sharp, some soft.

    Each ellipse is drawn only inside its bounding box (indices wrap, so the texture is
    periodic like the optics); the sharp and the soft group are then blurred by their own
    random Gaussian.
    """
    n = int(rng.integers(5, 60))
    cy, cx = rng.uniform(0, size, size=(2, n))
    ry, rx = np.exp(rng.uniform(np.log(2), np.log(size / 4), size=(2, n)))
    theta = rng.uniform(0, np.pi, size=n)
    amplitude = rng.uniform(-0.5, 1.0, size=n)
    soft = rng.random(n) < 0.5
    layers = np.zeros((2, size, size))
    for i in range(n):
        half = int(np.ceil(max(ry[i], rx[i]))) + 1
        iy = int(cy[i]) + np.arange(-half, half + 1)
        ix = int(cx[i]) + np.arange(-half, half + 1)
        dy, dx = (iy - cy[i])[:, None], (ix - cx[i])[None, :]
        u = (np.cos(theta[i]) * dy + np.sin(theta[i]) * dx) / ry[i]
        v = (-np.sin(theta[i]) * dy + np.cos(theta[i]) * dx) / rx[i]
        layers[int(soft[i])][np.ix_(iy % size, ix % size)] += amplitude[i] * (u * u + v * v < 1.0)
    fy, fx = frequency_grid((size, size), 1.0)
    sigmas = [rng.uniform(0.3, 1.0), rng.uniform(2.0, 8.0)]  # px: sharp and soft edges
    blurs = np.stack([np.exp(-2 * np.pi**2 * s**2 * (fx**2 + fy**2)) for s in sigmas])
    return apply_transfer(layers, blurs).sum(axis=0)


def _voronoi_cells(rng, size):
    """Piecewise-constant cells (tissue-like), softened by a random Gaussian blur."""
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    n = int(rng.integers(8, 120))
    seeds = rng.uniform(0, size, size=(n, 2))
    yy, xx = np.mgrid[:size, :size]
    _, label = cKDTree(seeds, boxsize=size).query(np.stack([yy.ravel(), xx.ravel()], axis=1) % size)
    cells = rng.random(n)[label].reshape(size, size)
    return gaussian_filter(cells, rng.uniform(0.0, 3.0), mode="wrap")


_TEXTURES = {"gaussian_field": _gaussian_random_field, "blobs": _random_blobs, "cells": _voronoi_cells}


def qpi_source_image(
    rng: np.random.Generator, size: int, natural_fraction: float = 0.5, files: Sequence[Path] | None = None
) -> tuple[np.ndarray, str]:
    """A grayscale image ``g`` ``(size, size)`` scaled to [0, 1] and the name of its source.

    With probability ``natural_fraction`` a random crop of a photo: one of ``files``
    (named by file name) when given, else a bundled scikit-image image (named by stem);
    otherwise a procedural texture (random field, blobs or cells).
    """
    for _ in range(20):
        if rng.random() < natural_fraction and (files or _natural_images()):
            image, name = _crop_natural(rng, size, files)
        else:
            name = str(rng.choice(list(_TEXTURES)))
            image = _TEXTURES[name](rng, size)
        span = np.ptp(image)
        if span > 1e-6:  # a flat crop (e.g. page margin) has no phase to recover: draw again
            return (image - image.min()) / span, name
    raise RuntimeError("could not draw a non-constant source image")


def simulate_qpi(
    rng: np.random.Generator,
    size: int = 256,
    config: QPISimulationConfig = QPISimulationConfig(),
    source: np.ndarray | None = None,
    noise_std: float | None = None,
    source_files: Sequence[Path] | None = None,
    natural_fraction: float | None = None,
) -> QPISample:
    """Simulate one QPI pair ``(2, size, size)`` / ``(size, size)`` as in the CVDM paper.

    ``source`` (a grayscale image, scaled to [0, 1] here) defaults to
    :func:`qpi_source_image` drawing photos from ``source_files`` (default: the bundled
    images) with probability ``natural_fraction`` (default
    ``config.natural_image_fraction``); ``noise_std`` defaults to ``U(noise_std_range)``.
    """
    if source is None:
        fraction = config.natural_image_fraction if natural_fraction is None else natural_fraction
        g, name = qpi_source_image(rng, size, fraction, source_files)
    else:
        source = np.asarray(source, dtype=np.float64)
        g, name = (source - source.min()) / max(np.ptp(source), 1e-12), "given"
    phase = config.phase_max_rad * g
    stack = phase_object_stack(phase, config.dz_um, config.wavelength_um, config.pixel_um, method=config.method)
    if noise_std is None:
        noise_std = float(rng.uniform(*config.noise_std_range))
    stack = stack + rng.normal(0.0, noise_std, size=stack.shape)
    if config.noise_offset:
        stack = stack + noise_std
    return QPISample(stack.astype(np.float32), phase.astype(np.float32), noise_std, name)


# ----------------------------------------------------------------------------- streams and files

_SPLITS = {"train": 0, "validation": 1, "test": 2}


@dataclass
class SimulatedPairs:
    """Endless, seeded stream of simulated :class:`~napari_cvdm.data.datasets.ImagePair` for a task.

    ``task`` is ``"sr"`` or ``"qpi"``; each pair is ``size × size`` on the target grid
    (SR input already upsampled). ``split`` is mixed into the seed, so the training,
    validation and test streams of one ``seed`` never share a pair.
    ``for pair in SimulatedPairs("qpi", 128, seed=0): ...`` or ``.take(16)`` for a fixed set.

    QPI photos from a folder: with ``source_dir`` the photos are that folder's files of
    this ``split`` only (:func:`split_source_files` with ``source_fractions`` and
    ``source_seed``, which are independent of ``seed``), so no test phase object comes
    from a photo that a training crop came from. ``source_split`` overrides which files'
    split to draw from (e.g. ``"train"`` with ``split="test"``: new crops of the training
    photos, the "seen" figure). ``natural_fraction`` is the share of
    photo objects (the rest procedural textures); ``None`` means
    ``qpi_config.natural_image_fraction``, except 1.0 (photos only) for the validation and
    test splits of a ``source_dir``. Without ``source_dir`` the bundled scikit-image
    photos serve every split (other crops of the same photos: not an unseen test).
    Validation and test pairs of a ``source_dir`` take its photos in a seeded order
    (all different until the split's files are used up); training pairs draw them at random.
    ``balanced_kinds``: SR structure kinds in turn (``sr_config.kinds[i % n]``) instead of drawn.
    SR with ``source_dir``: the split's photos are one more structure family (:data:`PHOTO_KIND`).
    Pair names end with the object's source (photo file name or texture) or SR kind.
    """

    task: str
    size: int = 128
    seed: int = 0
    split: str = "train"
    sr_config: SRSimulationConfig = field(default_factory=SRSimulationConfig)
    qpi_config: QPISimulationConfig = field(default_factory=QPISimulationConfig)
    source_dir: str | os.PathLike | None = None
    natural_fraction: float | None = None
    source_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    source_seed: int = 0
    source_split: str | None = None
    balanced_kinds: bool = False

    def __post_init__(self):
        self.task = get_task(self.task).name
        if self.split not in _SPLITS:
            raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {self.split!r}")
        self.source_files: tuple[Path, ...] | None = None
        file_split = self.source_split or self.split
        if file_split not in SOURCE_SPLITS:
            raise ValueError(f"source_split must be one of {SOURCE_SPLITS}, got {file_split!r}")
        if self.source_dir is not None:
            files = split_source_files(self.source_dir, self.source_fractions, self.source_seed)[file_split]
            self.source_files = tuple(files)
            if not self.source_files:
                raise ValueError(f"the {file_split} split of {self.source_dir} has no images; add images "
                                 f"or change the split fractions {self.source_fractions}")  # fmt: skip
        fraction = self.natural_fraction
        if fraction is None:
            unseen = self.source_files is not None and file_split != "train"
            fraction = 1.0 if unseen else self.qpi_config.natural_image_fraction
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"natural_fraction must be in [0, 1], got {fraction}")
        self._natural_fraction = fraction
        self._rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SPLITS[self.split]]))
        self._count = 0
        # Validation and test pairs go through the split's photos in a seeded order, so a
        # small evaluation set has as many different photos as it can.
        self._photo_order = None
        if self.source_files is not None and file_split != "train":
            order_rng = np.random.default_rng(np.random.SeedSequence([self.seed, _SPLITS[self.split], 1]))
            self._photo_order = order_rng.permutation(len(self.source_files))

    def __iter__(self) -> Iterator[ImagePair]:
        return self

    def draw_sample(self) -> tuple[str, SRSample | QPISample]:
        """The next simulated sample (with its raw data and settings) and its pair name."""
        index = self._count
        self._count += 1
        if self.task == "sr":
            kinds = sr_kinds(self.sr_config, bool(self.source_files))
            kind = kinds[index % len(kinds)] if self.balanced_kinds else None
            files = self.source_files
            if self._photo_order is not None and kind == PHOTO_KIND:
                files = (files[self._photo_order[index % len(files)]],)
            sample = simulate_sr(self._rng, self.size, kind=kind, config=self.sr_config, source_files=files)
            label = sample.source or sample.kind
        else:
            files = self.source_files
            if self._photo_order is not None:
                files = (files[self._photo_order[index % len(files)]],)
            sample = simulate_qpi(self._rng, self.size, config=self.qpi_config, source_files=files,
                                  natural_fraction=self._natural_fraction)  # fmt: skip
            label = sample.source
        return f"{self.task}-{self.split}-{self.seed}-{index:06d}-{label}", sample

    def __next__(self) -> ImagePair:
        name, sample = self.draw_sample()
        return sample.pair(name)

    def take(self, n: int) -> list[ImagePair]:
        """The next ``n`` pairs as a list (e.g. a fixed validation set)."""
        return [next(self) for _ in range(n)]

    def with_split(self, split: str) -> SimulatedPairs:
        """The same settings with another split (a fresh, independent stream)."""
        return replace(self, split=split)


def write_simulated_folders(
    out_dir: str | os.PathLike,
    task: str,
    n_images: int,
    size: int = 256,
    seed: int = 0,
    sr_config: SRSimulationConfig = SRSimulationConfig(),
    qpi_config: QPISimulationConfig = QPISimulationConfig(),
    split: str = "train",
    source_dir: str | os.PathLike | None = None,
    natural_fraction: float | None = None,
) -> tuple[Path, Path]:
    """Write ``n_images`` simulated pairs as TIFF folders ``out_dir/inputs`` and ``out_dir/targets``.

    The pairs are those of ``SimulatedPairs(task, size, seed, split, ..., source_dir=...)``.
    Files are matched by name (``<task>_<index>[_<kind or photo>].tif``), laid out like real
    data: SR inputs are the raw widefield camera images ``(size/2, size/2)`` (ADU, 62.6 nm
    pixels), SR targets ``(size, size)``; QPI inputs are 2-plane stacks ``(2, size, size)``
    ``[I(−dz), I(+dz)]``, QPI targets the phase in radians. Pixel sizes are stored as
    ImageJ resolution in µm. Returns ``(inputs_dir, targets_dir)``.
    """
    import tifffile

    stream = SimulatedPairs(task, size, seed, split, sr_config, qpi_config, source_dir=source_dir,
                            natural_fraction=natural_fraction)  # fmt: skip
    out = Path(out_dir)
    inputs_dir, targets_dir = out / "inputs", out / "targets"
    inputs_dir.mkdir(parents=True, exist_ok=True)
    targets_dir.mkdir(parents=True, exist_ok=True)

    def write(path, array, pixel_um):
        tifffile.imwrite(
            path, np.ascontiguousarray(array, dtype=np.float32), imagej=True,
            resolution=(1.0 / pixel_um, 1.0 / pixel_um), metadata={"unit": "um"},
        )  # fmt: skip

    for index in range(n_images):
        _, sample = stream.draw_sample()
        if stream.task == "sr":
            name = f"sr_{index:04d}_{sample.kind}.tif"
            write(inputs_dir / name, sample.widefield, sample.camera_pixel_um)
            write(targets_dir / name, sample.target, sample.target_pixel_um)
        else:
            name = f"qpi_{index:04d}_{Path(sample.source).stem}.tif" if source_dir is not None else f"qpi_{index:04d}.tif"
            write(inputs_dir / name, sample.stack, qpi_config.pixel_um)
            write(targets_dir / name, sample.phase, qpi_config.pixel_um)
    return inputs_dir, targets_dir
