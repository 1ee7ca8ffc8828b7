"""Offline sample data for napari (npe2 ``sample_data``): nothing is downloaded.

- ``simulated_sr_pair``: a simulated widefield image of microtubules (62.6 nm
  camera pixels, Poisson and read noise) and its SIM-like target (31.3 nm),
  from :func:`napari_cvdm.data.simulate.simulate_sr`.
- ``simulated_defocus_stack``: a two-plane defocus stack ``[I(−1 µm), I(+1 µm)]``
  of a simulated phase object and its phase, from
  :func:`napari_cvdm.data.simulate.simulate_qpi` (the CVDM paper's setup).
- ``cell_defocus_stack``: a real quantitative phase image — scikit-image's
  bundled ``cell`` (a cell in saline measured by digital holography, 0.107 µm
  pixels) — binned 2×2 to 0.214 µm, scaled so that its 0.1–99.9 % percentile range spans the paper's 3.5 rad
  (saline at 0 rad) and
  propagated to ±1 µm at λ = 0.521 µm with :func:`napari_cvdm.physics.propagate`.

Each returns napari ``LayerData`` tuples with the physical pixel size (µm) as
the layer scale, so reconstructions get the right output pixel size.
"""

from __future__ import annotations

import numpy as np

from .physics.optics import QPI_DZ_UM, QPI_WAVELENGTH_UM

#: Geometry shared by the QPI samples (the CVDM paper's optics).
QPI_DEFOCUS_UM = QPI_DZ_UM
QPI_PHASE_MAX_RAD = 3.5
#: Camera noise added to the cell's defocus images (std, relative to unit illumination).
CELL_NOISE_STD = 0.02


def _stack_geometry(pixel_um: float) -> dict:
    """Scale/translate of a ``(2, H, W)`` stack so that the slider reads −1 and +1 µm."""
    return {"scale": (2 * QPI_DEFOCUS_UM, pixel_um, pixel_um), "translate": (-QPI_DEFOCUS_UM, 0.0, 0.0),
            "axis_labels": ("z", "y", "x")}


def simulated_sr_pair(seed: int = 3) -> list[tuple]:
    """Widefield input and SIM-like target of simulated microtubules (raw camera ADU / photons)."""
    from .data.simulate import simulate_sr

    sample = simulate_sr(np.random.default_rng(seed), size=512, kind="microtubule", peak_photons=150.0)
    camera, fine = sample.camera_pixel_um, sample.target_pixel_um
    factor = int(round(camera / fine))
    # Fine pixel i·f … i·f + f − 1 lies inside camera pixel i: shift by half a camera pixel less half a fine one.
    target_translate = -(1.0 - 1.0 / factor) * camera / 2.0
    return [
        (sample.widefield, {"name": "widefield (simulated microtubules)", "scale": (camera, camera),
                            "colormap": "gray", "metadata": {"pixel_size_um": camera, "unit": "ADU", "na": sample.na,
                                                             "wavelength_um": sample.wavelength_um}}, "image"),
        (sample.target, {"name": "SIM-like target (simulated microtubules)", "scale": (fine, fine),
                         "translate": (target_translate, target_translate), "colormap": "gray",
                         "visible": False, "metadata": {"pixel_size_um": fine, "unit": "photons"}}, "image"),
    ]


def simulated_defocus_stack(seed: int = 0) -> list[tuple]:
    """A simulated ±1 µm defocus stack ``(2, 256, 256)`` and its ground-truth phase (rad)."""
    from .data.simulate import QPISimulationConfig, simulate_qpi

    config = QPISimulationConfig()
    sample = simulate_qpi(np.random.default_rng(seed), size=256, config=config, noise_std=0.03)
    pixel = config.pixel_um
    return [
        (sample.stack, {"name": "defocus stack (simulated)", "colormap": "gray", **_stack_geometry(pixel),
                        "metadata": {"pixel_size_um": pixel, "defocus_um": [-config.dz_um, config.dz_um],
                                     "wavelength_um": config.wavelength_um}}, "image"),
        (sample.phase, {"name": "phase ground truth (simulated, rad)", "scale": (pixel, pixel),
                        "colormap": "viridis", "visible": False, "metadata": {"unit": "rad"}}, "image"),
    ]


def cell_phase() -> tuple[np.ndarray, float]:
    """The real phase of scikit-image's ``cell`` as ``(330, 275)`` radians and its pixel size (µm)."""
    import skimage.data

    from .physics.optics import bin_pixels

    raw = skimage.data.cell().astype(np.float64)  # bundled with scikit-image: no download
    binned = bin_pixels(raw, 2)  # 0.107 µm → 0.214 µm, close to the paper's 0.21 µm
    low, high = np.percentile(binned, [0.1, 99.9])
    phase = (binned - low) / (high - low) * QPI_PHASE_MAX_RAD  # the paper's 3.5 rad span
    phase -= np.median(phase)  # the saline around the cell (most of the field) reads 0 rad
    return phase, 2 * 0.107


def cell_defocus_stack() -> list[tuple]:
    """Real cell phase propagated to ±1 µm: a ``(2, 330, 275)`` defocus stack and the phase (rad)."""
    from .physics.optics import propagate

    phase, pixel = cell_phase()
    field = np.exp(1j * phase)
    planes = [np.abs(propagate(field, dz, QPI_WAVELENGTH_UM, pixel)) ** 2 for dz in (-QPI_DEFOCUS_UM, QPI_DEFOCUS_UM)]
    noise = np.random.default_rng(0).normal(0.0, CELL_NOISE_STD, size=(2, *phase.shape))
    stack = (np.stack(planes) + noise).astype(np.float32)
    return [
        (stack, {"name": "cell defocus stack (±1 µm)", "colormap": "gray", **_stack_geometry(pixel),
                 "metadata": {"pixel_size_um": pixel, "defocus_um": [-QPI_DEFOCUS_UM, QPI_DEFOCUS_UM],
                              "wavelength_um": QPI_WAVELENGTH_UM,
                              "source": "skimage.data.cell (Müller et al., Opt. Express 2018), CC0"}}, "image"),
        (phase.astype(np.float32), {"name": "cell phase (rad)", "scale": (pixel, pixel), "colormap": "viridis",
                                    "visible": False, "metadata": {"unit": "rad"}}, "image"),
    ]
