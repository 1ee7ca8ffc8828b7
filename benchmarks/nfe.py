"""Few network evaluations: the residual models' samplers at 2–20 NFE against a converged reference.

    PYTHONPATH=src nice .venv/bin/python benchmarks/nfe.py --save runs/nfe.json   # ~30 min on 1 loaded core

On the unseen test sets of ``benchmarks/unseen.py`` (QPI: phase objects from the test
photos of ``--source-images`` at ``--noise``; SR: ``SR_UNSEEN_TEST``, its kinds in turn),
``--size``² outputs, the shipped residual models, N = ``--samples`` per image, image i drawn
with seed i by every configuration. Each configuration goes through
:func:`napari_cvdm.engine.reconstruct` as ``cvdm predict`` would. The reference is the
deterministic ``dpm_solver_2m`` at ``--reference-nfe`` steps: with the same seed its chains start
from the same x₁ as every other configuration's, so the ODE rows differ from it by their
discretisation error alone (the SDE rows also by their own noise, which the paired standard
error over images includes). Reported per configuration, paired by image against the
reference: ΔPSNR and ΔMS-SSIM of the mean against the truth (mean ± standard error over
images), the ratio of the mean std to the reference's, coverage of ±1.96 std, and the time per
image relative to the earlier default (``dpm_solver_2m_sde``/20 on the full grid) measured in
the same run. Every row names its grid end (ℓ 13.3 unless said), since the models default to 8.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from unseen import _phase_to_unit, _qpi_pair  # noqa: E402

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.data.simulate import SR_UNSEEN_TEST, simulate_sr, split_source_files  # noqa: E402
from napari_cvdm.model.samplers import LOG_SNR_MAX  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct, reconstruct_base  # noqa: E402

MODELS = {"qpi": ROOT / "models" / "cvdm-qpi-residual.safetensors",
          "sr": ROOT / "models" / "cvdm-sr-residual.safetensors"}
#: (sampler, NFE, last log-SNR of the grid). Every row names its grid: the models' own default
#: (8 NFE to ℓ = 8 since stop 20) would otherwise apply to all of them. The time column divides
#: by the earlier default, 20 NFE of the SDE solver on the full grid.
DEFAULT = ("dpm_solver_2m_sde", 20, LOG_SNR_MAX)
CONFIGS = [("dpm_solver_2m", n, LOG_SNR_MAX) for n in (2, 3, 4, 6, 8, 10)] + \
          [("dpm_solver_2m_sde", n, LOG_SNR_MAX) for n in (4, 6, 8, 10)] + [DEFAULT] + \
          [("dpm_solver_2m_sde", n, 8.0) for n in (4, 6, 8)] + [("dpm_solver_2m", 8, 8.0)]


def config_name(sampler: str, nfe: int, high: float) -> str:
    return f"{sampler}/{nfe}" + ("" if high == LOG_SNR_MAX else f" to ℓ {high:g}")


def inputs(task: str, args) -> list[tuple[np.ndarray, np.ndarray, dict, callable]]:
    """``(input, target on [0, 1], reconstruct kwargs, to_unit)`` of the unseen test images."""
    out = []
    if task == "qpi":
        files = split_source_files(args.source_images)["test"]
        rng = np.random.default_rng(np.random.SeedSequence([args.seed, 3]))
        for i in range(args.images):
            stack, phase = _qpi_pair(rng, files, args.size, args.noise[i % len(args.noise)])
            out.append((stack, metrics.to_unit_range(phase), {}, lambda e, p=phase: _phase_to_unit(e, p)))
        return out
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, 3]))
    for i in range(args.images):
        sample = simulate_sr(rng, args.size, kind=SR_UNSEEN_TEST.kinds[i % len(SR_UNSEEN_TEST.kinds)],
                             config=SR_UNSEEN_TEST)
        target = metrics.to_unit_range(sample.target)

        def to_unit(estimate, target=target):
            slope = np.polyfit(np.ravel(estimate), target.ravel(), 1)[0]
            return metrics.scale_to_reference(estimate, target), slope

        out.append((sample.widefield, target, {"input_pixel_size_um": sample.camera_pixel_um}, to_unit))
    return out


def score(result, target, to_unit) -> dict:
    mean, slope = to_unit(result.mean)
    std = np.sqrt(result.variance) * abs(slope)
    return {"psnr": metrics.psnr(mean, target, data_range=1.0), "ms_ssim": metrics.ms_ssim(mean, target, data_range=1.0),
            "std": float(std.mean()), "coverage95": float(np.mean(np.abs(mean - target) <= 1.96 * std))}


def run(task: str, args) -> dict:
    model, info = load_model(MODELS[task])
    reference = ("dpm_solver_2m", args.reference_nfe, LOG_SNR_MAX)
    configs = list(dict.fromkeys([*CONFIGS, reference]))
    rows = {config_name(*c): [] for c in configs} | {"base alone": []}
    seconds = {name: 0.0 for name in rows}
    for i, (image, target, kwargs, to_unit) in enumerate(inputs(task, args)):
        start = time.perf_counter()
        base = reconstruct_base(model, info, image, device="cpu", **kwargs)
        seconds["base alone"] += time.perf_counter() - start
        mean, _ = to_unit(base)
        rows["base alone"].append({"psnr": metrics.psnr(mean, target, data_range=1.0),
                                   "ms_ssim": metrics.ms_ssim(mean, target, data_range=1.0)})
        for sampler, nfe, high in configs:
            settings = ReconstructionSettings(n_samples=args.samples, sampler=sampler, steps=nfe, tile_size=None,
                                              device="cpu", seed=i, log_snr_max=high)
            start = time.perf_counter()
            result = reconstruct(model, info, image, settings, **kwargs)
            seconds[config_name(sampler, nfe, high)] += time.perf_counter() - start
            rows[config_name(sampler, nfe, high)].append(score(result, target, to_unit))
        print(f"{task} image {i + 1}/{args.images} done", flush=True)
    return {"rows": rows, "seconds": seconds, "reference": config_name(*reference)}


def paired(rows, reference, key) -> tuple[float, float]:
    d = np.array([r[key] - q[key] for r, q in zip(rows, reference)])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def print_table(task: str, result: dict) -> None:
    rows, seconds, reference = result["rows"], result["seconds"], result["rows"][result["reference"]]
    default = seconds[config_name(*DEFAULT)]
    print(f"\n### {task}: against {result['reference']} (paired over {len(reference)} images)\n")
    print("| configuration | PSNR (dB) | ΔPSNR (dB) | ΔMS-SSIM | std ÷ reference | coverage 95 | time ÷ SDE/20 |")
    print("|---|---|---|---|---|---|---|")
    ref_std = np.mean([r["std"] for r in reference])
    for name, values in rows.items():
        dp, dm = paired(values, reference, "psnr"), paired(values, reference, "ms_ssim")
        std = f"{np.mean([r['std'] for r in values]) / ref_std:.2f}" if "std" in values[0] else "–"
        cover = f"{np.mean([r['coverage95'] for r in values]):.3f}" if "coverage95" in values[0] else "–"
        print(f"| {name} | {np.mean([r['psnr'] for r in values]):.2f} | {dp[0]:+.3f} ± {dp[1]:.3f} | "
              f"{dm[0]:+.4f} ± {dm[1]:.4f} | {std} | {cover} | {seconds[name] / default:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["qpi", "sr"], choices=["qpi", "sr"])
    parser.add_argument("--source-images", type=Path, default=ROOT.parent / "shared" / "data" / "natural-images")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--size", type=int, default=128, help="output side (px)")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05], help="QPI noise std, in turn")
    parser.add_argument("--samples", type=int, default=4, help="N")
    parser.add_argument("--reference-nfe", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device: CPU {platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}")
    results = {}
    for task in args.tasks:
        results[task] = run(task, args)
        print_table(task, results[task])
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
