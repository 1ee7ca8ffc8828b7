"""Simulation throughput and classical baselines on held-out simulated data.

Run (about a minute on one core)::

    PYTHONPATH=src python benchmarks/simulation_baselines.py

Prints the machine, the simulators' throughput (256² pairs per second, each task),
and MS-SSIM / MAE / decorrelation resolution of the classical baselines:

- QPI: FFT-TIE and US-TIE on the paper's setup (λ = 0.521 µm, 0.21 µm pixels,
  dz = ±1 µm, φ = 3.5·g rad, noise std ~ U(0, 0.2)). Phases are compared after
  removing the free offset (mean alignment) and scaled by the true phase range
  (3.5 rad) to [0, 1].
- SR: the widefield image upsampled ×2 (Fourier/DCT) and Richardson–Lucy with the known
  PSF on the upsampled grid, per structure kind, photon levels drawn from the simulator's
  default range (15–1500 peak photons). Images are in different units from the SIM-like
  target, so the target is scaled to [0, 1] by its min/max and each prediction is mapped
  onto it by a least-squares affine fit (CARE-style) before MS-SSIM and MAE.

Free parameters (Tikhonov a, RL iterations) are chosen on a tuning set drawn from the
simulators' "validation" split; the scores come from the disjoint "test" split.
"""

from __future__ import annotations

import os

# One thread everywhere: the numbers are per core and reproducible on shared machines.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm import metrics
from napari_cvdm.data.simulate import (
    STRUCTURE_KINDS,
    QPISimulationConfig,
    SimulatedPairs,
    simulate_qpi,
    simulate_sr,
)
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield
from napari_cvdm.physics.optics import upsample
from napari_cvdm.physics.tie import DEFAULT_REGULARIZATION, fft_tie, us_tie

TUNING, TEST = 1, 2  # the "validation" and "test" split codes of SimulatedPairs


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import scipy

    return (
        f"CPU: {cpu} ({os.cpu_count()} logical cores, benchmark uses 1 thread); "
        f"Python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}; "
        f"{platform.system()} {platform.release()}"
    )


def rng_for(seed: int, split: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, split]))


def throughput(task: str, size: int, seconds: float) -> tuple[float, int]:
    """Pairs per second of SimulatedPairs (including the SR upsampling), run for about ``seconds``."""
    stream = SimulatedPairs(task, size=size, seed=123)
    next(stream)  # warm-up: imports and the bundled-image cache
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next(stream)
        count += 1
    return count / (time.perf_counter() - start), count


def qpi_scores(estimate: np.ndarray, phase: np.ndarray, pixel_nm: float) -> tuple[float, float, float]:
    aligned = metrics.align_offset(estimate, phase)
    reference = metrics.to_unit_range(phase)
    scaled = metrics.to_unit_range(aligned, phase)
    return (
        metrics.ms_ssim(scaled, reference, data_range=1.0),
        metrics.mae(aligned, phase),
        metrics.decorrelation_resolution(estimate, pixel_nm),
    )


def sr_scores(image: np.ndarray, target: np.ndarray, pixel_nm: float, resolution_image=None, resolution_pixel_nm=None):
    reference = metrics.to_unit_range(target)
    fitted = metrics.scale_to_reference(image, reference)
    resolution = metrics.decorrelation_resolution(
        image if resolution_image is None else resolution_image,
        pixel_nm if resolution_pixel_nm is None else resolution_pixel_nm,
    )
    return metrics.ms_ssim(fitted, reference, data_range=1.0), metrics.mae(fitted, reference), resolution


def summarise(values: list[tuple[float, float, float]]) -> str:
    array = np.array(values, dtype=np.float64)
    ms, mae_, res = array[:, 0], array[:, 1], array[:, 2]
    found = np.isfinite(res)
    res_text = f"{np.median(res[found]):6.0f}" if found.any() else "   n/a"
    missing = "" if found.all() else f" ({int((~found).sum())} without a cut-off)"
    return f"{ms.mean():.3f} ± {ms.std():.3f}   {mae_.mean():.3f} ± {mae_.std():.3f}   {res_text}{missing}"


def run_qpi(args) -> None:
    config = QPISimulationConfig()
    geometry = (config.dz_um, config.wavelength_um, config.pixel_um)
    pixel_nm = 1000 * config.pixel_um

    rng = rng_for(args.seed, TUNING)
    tuning = [simulate_qpi(rng, args.size) for _ in range(args.n_tune)]
    candidates = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    best = {}
    for name, solver in (("FFT-TIE", fft_tie), ("US-TIE", us_tie)):
        maes = [np.mean([metrics.mae(metrics.align_offset(solver(s.stack, *geometry, regularization=a), s.phase), s.phase)
                         for s in tuning]) for a in candidates]  # fmt: skip
        best[name] = candidates[int(np.argmin(maes))]
        print(f"  tuning {name}: Tikhonov a (µm⁻⁴) -> mean MAE " + ", ".join(f"{a:g}: {m:.4f}" for a, m in zip(candidates, maes)))
    print(f"  chosen a: FFT-TIE {best['FFT-TIE']:g}, US-TIE {best['US-TIE']:g} (library default {DEFAULT_REGULARIZATION:g})")

    rng = rng_for(args.seed, TEST)
    results = {"FFT-TIE": [], "US-TIE": [], "true phase (reference)": []}
    iterations = []
    seconds = {"FFT-TIE": 0.0, "US-TIE": 0.0}
    for _ in range(args.n_qpi):
        sample = simulate_qpi(rng, args.size)
        start = time.perf_counter()
        estimate = fft_tie(sample.stack, *geometry, regularization=best["FFT-TIE"])
        seconds["FFT-TIE"] += time.perf_counter() - start
        results["FFT-TIE"].append(qpi_scores(estimate, sample.phase, pixel_nm))
        start = time.perf_counter()
        estimate, info = us_tie(sample.stack, *geometry, regularization=best["US-TIE"], return_info=True)
        seconds["US-TIE"] += time.perf_counter() - start
        iterations.append(info.iterations)
        results["US-TIE"].append(qpi_scores(estimate, sample.phase, pixel_nm))
        results["true phase (reference)"].append((1.0, 0.0, metrics.decorrelation_resolution(sample.phase, pixel_nm)))
    print(f"\n  QPI held-out set: {args.n_qpi} pairs of {args.size}², pixel {pixel_nm:.0f} nm")
    print(f"  {'method':24s} {'MS-SSIM':15s} {'MAE':15s} {'res. nm (median)'}")
    for name, values in results.items():
        print(f"  {name:24s} {summarise(values)}")
    print(
        f"  time per image: FFT-TIE {1000 * seconds['FFT-TIE'] / args.n_qpi:.1f} ms, "
        f"US-TIE {1000 * seconds['US-TIE'] / args.n_qpi:.1f} ms "
        f"(median {np.median(iterations):.0f} iterations)"
    )


def run_sr(args) -> None:
    def restore(sample, iterations):
        return richardson_lucy_widefield(
            sample.widefield, sample.camera_pixel_um, sample.na, sample.wavelength_um,
            iterations=iterations, offset=sample.offset_adu,
        )  # fmt: skip

    rng = rng_for(args.seed, TUNING)
    tuning = [simulate_sr(rng, args.size, kind=STRUCTURE_KINDS[i % 4]) for i in range(args.n_tune)]
    candidates = [5, 10, 20, 40, 80]
    scores = []
    for iterations in candidates:
        values = []
        for sample in tuning:
            reference = metrics.to_unit_range(sample.target)
            fitted = metrics.scale_to_reference(restore(sample, iterations), reference)
            values.append(metrics.ms_ssim(fitted, reference, data_range=1.0))
        scores.append(np.mean(values))
    rl_iterations = candidates[int(np.argmax(scores))]
    print("  tuning Richardson–Lucy: iterations -> mean MS-SSIM " + ", ".join(f"{n}: {s:.4f}" for n, s in zip(candidates, scores)))
    print(f"  chosen: {rl_iterations} iterations")

    rng = rng_for(args.seed, TEST)
    print(f"\n  SR held-out set: {args.n_sr} images of {args.size}² per kind (target pixel 31.3 nm, camera 62.6 nm)")
    print("  widefield resolution is measured on the raw camera image (upsampling adds no frequencies)")
    print(f"  {'kind / method':30s} {'MS-SSIM':15s} {'MAE':15s} {'res. nm (median)'}")
    rl_seconds, rl_count = 0.0, 0
    for kind in STRUCTURE_KINDS:
        results = {"widefield upsampled": [], "Richardson-Lucy": [], "SIM-like target": []}
        diffraction = []
        for _ in range(args.n_sr):
            sample = simulate_sr(rng, args.size, kind=kind)
            fine_nm, camera_nm = 1000 * sample.target_pixel_um, 1000 * sample.camera_pixel_um
            diffraction.append(1000 * sample.wavelength_um / (2 * sample.na))
            widefield_up = upsample(sample.widefield - sample.offset_adu, 2)
            results["widefield upsampled"].append(sr_scores(widefield_up, sample.target, fine_nm, sample.widefield, camera_nm))
            start = time.perf_counter()
            restored = restore(sample, rl_iterations)
            rl_seconds += time.perf_counter() - start
            rl_count += 1
            results["Richardson-Lucy"].append(sr_scores(restored, sample.target, fine_nm))
            results["SIM-like target"].append((1.0, 0.0, metrics.decorrelation_resolution(sample.target, fine_nm)))
        print(f"  {kind} (λ/2NA = {np.mean(diffraction):.0f} nm on average)")
        for name, values in results.items():
            print(f"    {name:28s} {summarise(values)}")
    print(f"  Richardson–Lucy time per image: {1000 * rl_seconds / rl_count:.0f} ms ({rl_iterations} iterations)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image size on the target grid (px)")
    parser.add_argument("--n-qpi", type=int, default=48, help="held-out QPI pairs")
    parser.add_argument("--n-sr", type=int, default=16, help="held-out SR images per structure kind")
    parser.add_argument("--n-tune", type=int, default=12, help="tuning images per task")
    parser.add_argument("--throughput-seconds", type=float, default=5.0, help="time spent measuring each simulator")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    print(machine_description())
    print(f"command: python {' '.join(sys.argv)}\n")
    print(f"Simulation throughput ({args.size}² pairs on the target grid, 1 thread):")
    for task in ("sr", "qpi"):
        rate, count = throughput(task, args.size, args.throughput_seconds)
        print(f"  {task:4s} {rate:7.1f} pairs/s  ({count} pairs)")
    print("\nQPI baselines (paper setup):")
    run_qpi(args)
    print("\nSR baselines (BioSR-like):")
    run_sr(args)
    print(f"\ntotal time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
