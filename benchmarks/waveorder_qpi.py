"""waveorder's thin-object phase reconstruction from the same two defocus planes, for the QPI comparison.

mehta-lab's ``waveorder`` (``waveorder.models.isotropic_thin_3d``: the weak-object transfer function
of a thin sample, inverted by Tikhonov) is the QPI tool napari users already have. It is an optional
benchmark extra, never a dependency of napari-cvdm::

    pip install --no-deps --target /some/folder waveorder PyWavelets   # keeps this torch
    PYTHONPATH=/some/folder python benchmarks/waveorder_qpi.py --images 12

Optics: the simulator's (λ, ±dz, pixel; coherent plane-wave illumination, so illumination NA 0.01,
and detection NA 0.999 in air, the widest waveorder allows). Tuned on *validation* photos (lowest MAE
after the phase offset is removed, as FFT-TIE and US-TIE are): the regularisation strength over
:data:`STRENGTHS` and the sign of the z axis (which plane waveorder takes as above focus).

The weak-object inversion is meant for weak phase. ``main`` scores it beside FFT-TIE (tuned the same
way) and the shipped residual QPI model on *test* photos at the test set's phase range (3.5 rad) and
at about 1 rad (the same objects scaled), each cell a mean over images with its 95 % interval;
``benchmarks/report.py`` adds it to the unseen test sets' tables when it can be imported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.data.simulate import QPISimulationConfig  # noqa: E402

NAME = "waveorder"
NOT_RUN = "not run: waveorder is not installed (see benchmarks/waveorder_qpi.py)"
STRENGTHS = np.logspace(-5, 0, 11)
NA_ILLUMINATION, NA_DETECTION, MEDIUM_INDEX = 0.01, 0.999, 1.0


def available() -> bool:
    try:
        import waveorder.models.isotropic_thin_3d  # noqa: F401
    except ImportError:
        return False
    return True


def _singular_system(shape: tuple[int, int], dz_um: float, wavelength_um: float, pixel_um: float, z_sign: int):
    from waveorder.models import isotropic_thin_3d as thin

    transfer = thin.calculate_transfer_function(shape, pixel_um, torch.tensor([-z_sign * dz_um, z_sign * dz_um]),
                                                wavelength_um, MEDIUM_INDEX, NA_ILLUMINATION, NA_DETECTION)
    return thin.calculate_singular_system(*transfer)


def phase(stack: np.ndarray, dz_um: float, wavelength_um: float, pixel_um: float, strength: float,
          z_sign: int = 1) -> np.ndarray:
    """Phase (rad) ``(H, W)`` of a stack ``(2, H, W)`` = ``[I(−dz), I(+dz)]`` by waveorder's Tikhonov inversion."""
    from waveorder.models import isotropic_thin_3d as thin

    system = _singular_system(tuple(stack.shape[-2:]), dz_um, wavelength_um, pixel_um, z_sign)
    _, estimate = thin.apply_inverse_transfer_function(torch.as_tensor(np.asarray(stack, np.float32)), system,
                                                       regularization_strength=float(strength))
    return estimate.numpy().astype(np.float64)


def tune(pairs: list[tuple[np.ndarray, np.ndarray]], optics: tuple[float, float, float]) -> dict:
    """``{"strength", "z_sign"}`` with the lowest MAE (offset removed) over validation ``pairs`` (stack, phase)."""
    def mae(strength, sign):
        return np.mean([np.abs(metrics.align_offset(phase(s, *optics, strength, sign), p) - p).mean() for s, p in pairs])

    best = min((mae(a, sign), float(a), sign) for a in STRENGTHS for sign in (1, -1))
    return {"strength": best[1], "z_sign": best[2]}


def tuned(cache: Path | None, key: str, make_pairs, optics) -> dict:
    """:func:`tune` of ``make_pairs()``, kept in the JSON ``cache`` under ``key``."""
    stored = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key not in stored:
        stored[key] = tune(make_pairs(), optics)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(stored, indent=1))
    return stored[key]


def main(argv=None) -> None:
    import unseen
    from napari_cvdm.checkpoint import load_model
    from napari_cvdm.engine import ReconstructionSettings, reconstruct
    from napari_cvdm.data.simulate import phase_object_stack, split_source_files
    from napari_cvdm.physics.tie import fft_tie

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="test photos per phase range")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--tune-images", type=int, default=4)
    parser.add_argument("--phase-max", type=float, nargs="+", default=[3.5, 1.0], help="rad")
    parser.add_argument("--noise", type=float, default=0.02)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "cvdm-qpi-residual.safetensors")
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared" / "data" / "natural-images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not available():
        sys.exit(f"waveorder_qpi: {NOT_RUN}")
    torch.set_num_threads(args.threads)
    config = QPISimulationConfig()
    optics = (config.dz_um, config.wavelength_um, config.pixel_um)
    split = split_source_files(args.source_images)
    model, info = load_model(args.model)
    print(f"device: {unseen.device_name('cpu')}, torch {torch.__version__}; {args.images} test photos of "
          f"{args.size}², noise {args.noise:g}; tuned on {args.tune_images} validation photos", flush=True)

    def scaled_pairs(files, count, stream, phase_max):
        """Phase objects of ``files`` scaled to ``phase_max`` rad at most, with their noisy stacks."""
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, stream]))
        out = []
        for _ in range(count):
            _, p = unseen._qpi_pair(rng, files, args.size, 0.0)
            p = p * (phase_max / config.phase_max_rad)
            s = phase_object_stack(p, *optics) + rng.normal(0.0, args.noise, (2, *p.shape))
            out.append((s.astype(np.float32), p))
        return out

    # Do the forward models agree? A weak (0.3 rad), noise-free object, inverted with a weak regulariser.
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 3]))
    weak = unseen._qpi_pair(rng, split["validation"], args.size, 0.0)[1] * (0.3 / config.phase_max_rad)
    clean = phase_object_stack(weak, *optics).astype(np.float32)
    corr = {name: float(np.corrcoef(estimate.ravel(), weak.ravel())[0, 1]) for name, estimate in (
        (NAME, phase(clean, *optics, 1e-6)), ("FFT-TIE", fft_tie(clean, *optics, 1e-6, "periodic")))}
    print("noise-free 0.3 rad validation object, regulariser 1e-6: correlation with the true phase "
          + ", ".join(f"{name} {value:.2f}" for name, value in corr.items()), flush=True)
    for phase_max in args.phase_max:
        pairs = lambda n, stream, m=phase_max: scaled_pairs(split["validation"] if stream == 1 else split["test"], n, stream, m)  # noqa: E731
        validation = pairs(args.tune_images, 1)
        wo = tune(validation, optics)
        fft = min(((np.mean([np.abs(metrics.align_offset(fft_tie(s, *optics, a, b), p) - p).mean()
                             for s, p in validation]), a, b) for a in unseen.REGULARISERS for b in unseen.BOUNDARIES))
        cvdm_name = args.model.stem
        rows = {cvdm_name: [], NAME: [], "FFT-TIE": []}
        for stack, p in pairs(args.images, 2):
            target = metrics.to_unit_range(p)
            rows[NAME].append(metrics.ms_ssim(unseen._phase_to_unit(phase(stack, *optics, **wo), p)[0], target, 1.0))
            rows["FFT-TIE"].append(metrics.ms_ssim(unseen._phase_to_unit(fft_tie(stack, *optics, fft[1], fft[2]), p)[0],
                                                   target, 1.0))
            mean = reconstruct(model, info, stack, ReconstructionSettings(n_samples=args.samples, seed=args.seed,
                                                                          device="cpu")).mean
            rows[cvdm_name].append(metrics.ms_ssim(unseen._phase_to_unit(mean, p)[0], target, 1.0))
        print(f"\nphase up to {phase_max:g} rad (waveorder strength {wo['strength']:.2g}, z sign {wo['z_sign']:+d}; "
              f"FFT-TIE a = {fft[1]:.2g}, {fft[2]})\n\n| method | n | MS-SSIM |\n|---|---|---|")
        for name, values in rows.items():
            print(f"| {name} | {len(values)} | {unseen.cell(values, 3)} |", flush=True)


if __name__ == "__main__":
    main()
