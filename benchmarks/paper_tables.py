"""Reproduce the CVDM paper's comparisons on held-out simulated data.

Every learned method is trained by the project's own code on the same budget
(preset, steps, batch, patch, learning rate, seed, simulated training set):

(a) QPI: FFT-TIE, US-TIE, regression, CDDPM, CVDM-simple, CVDM — MS-SSIM, MAE
    (the paper's Table 2a and appendix K);
(b) SR per structure: Richardson–Lucy, regression, CDDPM, CVDM — MS-SSIM, MAE,
    resolution in nm by decorrelation analysis (Table 1);
(c) uncertainty: Spearman std-vs-|error|, uncertainty calibration error, 95 %
    coverage for CVDM and CDDPM, and the Spearman correlation of the γ map
    with the sample variance (appendix M).

Scores follow benchmarks/simulation_baselines.py: QPI phases are compared
after removing the free offset and divided by the 3.5 rad range; SR images are
mapped onto the [0, 1]-scaled target by a least-squares affine fit (CARE-style)
for every method. The regression baseline is the same U-Net as the denoiser
(without γ input) trained with an L1 loss to predict the target in one pass.

Usage: ``python benchmarks/paper_tables.py --steps 2000 --preset small`` (a GPU
run: add ``--device cuda``). Prints the device and Markdown tables. ``--steps 0
--extra NAME=model.safetensors`` scores given model files beside the classical methods only.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.uncertainty import metrics as uncertainty_metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.data import get_task, normalize_pair  # noqa: E402
from napari_cvdm.data.simulate import STRUCTURE_KINDS, QPISimulationConfig, simulate_qpi, simulate_sr  # noqa: E402
from napari_cvdm.model import DENOISER_PRESETS, SamplingOptions, UNet, sample_statistics  # noqa: E402
from napari_cvdm.physics.deconvolution import richardson_lucy_widefield  # noqa: E402
from napari_cvdm.physics.tie import fft_tie, us_tie  # noqa: E402
from napari_cvdm.engine import resolve_device  # noqa: E402
from napari_cvdm.train import TrainConfig, Trainer, _learning_rate_factor, train  # noqa: E402

TEST_SPLIT = 2
PHASE_RANGE_RAD = QPISimulationConfig().phase_max_rad
RL_ITERATIONS = 10  # chosen on a tuning set by benchmarks/simulation_baselines.py


def train_config(args, task: str, schedule: str, out_dir: Path) -> TrainConfig:
    return TrainConfig(
        task=task, preset=args.preset, schedule=schedule, patch_size=args.patch, batch_size=args.batch,
        steps=args.steps, learning_rate=args.lr, warmup_steps=min(100, args.steps // 10),
        validate_every=0, checkpoint_every=0, validation_fraction=0.05, seed=args.seed, device=args.device,
        simulated_images=args.train_images, simulated_size=args.train_size,
        output=str(out_dir / f"{task}-{schedule}.safetensors"),
    )


def train_diffusion(args, task: str, schedule: str, out_dir: Path):
    start = time.perf_counter()
    result = train(train_config(args, task, schedule, out_dir))
    model, _ = load_model(result.model_path, resolve_device(args.device))
    print(f"  trained {task} {schedule}: {result.steps_done} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def train_regression(args, task: str, out_dir: Path) -> UNet:
    """The regression baseline on exactly the diffusion models' batches (same Trainer data)."""
    start = time.perf_counter()
    trainer = Trainer(train_config(args, task, "cvdm", out_dir / "regression"))
    spec = trainer.data.spec
    torch.manual_seed(args.seed)
    net = UNet(spec.input_channels, spec.target_channels, DENOISER_PRESETS[args.preset]).to(trainer.device)
    optimiser = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=trainer.config.weight_decay)
    # the diffusion models' learning-rate schedule, so that only the objective differs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _learning_rate_factor(trainer.config))
    for step in range(args.steps):
        batch = trainer.draw(step)
        loss = (net(batch.y.to(trainer.device)) - batch.x0.to(trainer.device)).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
    trainer.close()
    print(f"  trained {task} regression: {args.steps} steps in {time.perf_counter() - start:.0f} s", flush=True)
    return net.eval()


def learned_methods(args, task: str, schedules: dict[str, str], out_dir: Path, device: torch.device) -> dict:
    """Regression and the diffusion ``schedules`` ({kind: name}) trained on one budget, then the extras.

    ``--steps 0`` trains nothing: only the ``--extra`` model files are scored beside the classical methods.
    """
    learned = {}
    if args.steps > 0:
        learned["regression"] = train_regression(args, task, out_dir)
        for schedule, name in schedules.items():
            learned[name] = train_diffusion(args, task, schedule, out_dir)
    learned.update(extra_models(args, task, device))
    return learned


def extra_models(args, task: str, device: torch.device) -> dict:
    """Trained model files given with ``--extra NAME=PATH`` (e.g. the shipped ones), for ``task``."""
    models = {}
    for entry in args.extra:
        name, _, path = entry.partition("=")
        model, info = load_model(path, device)
        if info.task == task:
            models[name] = model
    return models


def predict(method, condition: torch.Tensor, args) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Normalised mean, variance and γ map ``(H, W)`` of one method on ``condition`` ``(1, C, H, W)``."""
    with torch.no_grad():
        if isinstance(method, UNet):
            return method(condition)[0, 0].cpu().numpy(), None, None
        stats = sample_statistics(method, condition, args.samples,
                                  SamplingOptions("dpm_solver_2m_sde", args.sample_steps), generator=torch.Generator(condition.device).manual_seed(0))
    return (stats.mean[0, 0].cpu().numpy(), stats.variance[0, 0].cpu().numpy(),
            stats.gamma_map[0, 0].cpu().numpy())


def uncertainty_row(prediction, reference, variance, gamma_map) -> dict[str, float]:
    std = np.sqrt(variance)
    from scipy.stats import spearmanr

    gamma_tracks = (float(spearmanr(gamma_map.ravel(), variance.ravel()).statistic)
                    if np.ptp(gamma_map) > 1e-6 * np.abs(gamma_map).max() else float("nan"))  # CDDPM: constant
    return {
        "spearman": uncertainty_metrics.spearman(prediction, std, reference),
        "uce": uncertainty_metrics.uce(prediction, std, reference, n_bins=20),
        "coverage95": uncertainty_metrics.coverage(prediction, std, reference, (0.95,))[0.95],
        "gamma_vs_variance": gamma_tracks,
    }


def run_qpi(args, out_dir: Path, device: torch.device) -> None:
    print("\n## (a) QPI", flush=True)
    learned = learned_methods(args, "qpi", {"cddpm": "CDDPM", "cvdm_simple": "CVDM-simple", "cvdm": "CVDM"},
                              out_dir, device)
    config = QPISimulationConfig()
    geometry = (config.dz_um, config.wavelength_um, config.pixel_um)
    spec = get_task("qpi")
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, TEST_SPLIT]))
    scores = {name: [] for name in ("FFT-TIE", "US-TIE", *learned)}
    uncertainty = {name: [] for name in learned if name not in ("regression", "CVDM-simple")}
    for _ in range(args.test_images):
        sample = simulate_qpi(rng, args.test_size)
        condition = torch.from_numpy(normalize_pair(sample.pair(), spec).input[None]).to(device)
        estimates = {"FFT-TIE": fft_tie(sample.stack, *geometry), "US-TIE": us_tie(sample.stack, *geometry)}
        for name, method in learned.items():
            mean, variance, gamma_map = predict(method, condition, args)
            half_range = PHASE_RANGE_RAD / 2  # target normalisation maps [0, 3.5] rad to [−1, 1]
            estimates[name] = (mean + 1) * half_range
            if name in uncertainty:
                aligned = metrics.align_offset(estimates[name], sample.phase)
                uncertainty[name].append(uncertainty_row(aligned, sample.phase, variance * half_range**2, gamma_map))
        for name, estimate in estimates.items():
            aligned = metrics.align_offset(estimate, sample.phase)
            scores[name].append((
                metrics.ms_ssim(metrics.to_unit_range(aligned, sample.phase), metrics.to_unit_range(sample.phase),
                                data_range=1.0),
                metrics.mae(aligned, sample.phase) / PHASE_RANGE_RAD,
            ))
    print(f"\n{args.test_images} held-out pairs of {args.test_size}² px; MAE on the [0, 1] phase scale\n")
    print("| method | MS-SSIM | MAE |\n|---|---|---|")
    for name, values in scores.items():
        v = np.array(values)
        print(f"| {name} | {v[:, 0].mean():.3f} ± {v[:, 0].std():.3f} | {v[:, 1].mean():.3f} ± {v[:, 1].std():.3f} |")
    print_uncertainty("QPI (rad)", uncertainty)


def run_sr(args, out_dir: Path, device: torch.device) -> None:
    print("\n## (b) SR", flush=True)
    learned = learned_methods(args, "sr", {"cddpm": "CDDPM", "cvdm": "CVDM"}, out_dir, device)
    spec = get_task("sr")
    rng = np.random.default_rng(np.random.SeedSequence([args.seed, TEST_SPLIT]))
    rows = []
    uncertainty = {name: [] for name in learned if name != "regression"}
    for kind in STRUCTURE_KINDS:
        scores = {name: [] for name in ("Richardson–Lucy", *learned)}
        for _ in range(args.test_images):
            sample = simulate_sr(rng, args.test_size, kind=kind)
            condition = torch.from_numpy(normalize_pair(sample.pair(), spec).input[None]).to(device)
            reference = metrics.to_unit_range(sample.target)
            pixel_nm = 1000 * sample.target_pixel_um
            estimates = {"Richardson–Lucy": richardson_lucy_widefield(
                sample.widefield, sample.camera_pixel_um, sample.na, sample.wavelength_um,
                iterations=RL_ITERATIONS, offset=sample.offset_adu)}
            for name, method in learned.items():
                mean, variance, gamma_map = predict(method, condition, args)
                estimates[name] = mean
                if name in uncertainty:
                    slope = np.polyfit(mean.ravel(), reference.ravel(), 1)[0]
                    fitted = metrics.scale_to_reference(mean, reference)
                    uncertainty[name].append(uncertainty_row(fitted, reference, variance * slope**2, gamma_map))
            for name, estimate in estimates.items():
                fitted = metrics.scale_to_reference(estimate, reference)
                scores[name].append((metrics.ms_ssim(fitted, reference, data_range=1.0),
                                     metrics.mae(fitted, reference),
                                     metrics.decorrelation_resolution(estimate, pixel_nm)))
        rows.append((kind, scores))
    print(f"\n{args.test_images} held-out images per structure, {args.test_size}² px on the 31.3 nm grid; "
          "resolution = median over images (nm)\n")
    print("| structure | method | MS-SSIM | MAE | resolution (nm) |\n|---|---|---|---|---|")
    for kind, scores in rows:
        for name, values in scores.items():
            v = np.array(values)
            found = np.isfinite(v[:, 2])
            resolution = f"{np.median(v[found, 2]):.0f}" if found.any() else "n/a"
            print(f"| {kind} | {name} | {v[:, 0].mean():.3f} | {v[:, 1].mean():.3f} | {resolution} |")
    print_uncertainty("SR ([0, 1] target scale)", uncertainty)


def _mean_of_finite(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def print_uncertainty(title: str, uncertainty: dict[str, list[dict]]) -> None:
    print(f"\n(c) uncertainty, {title}: mean over images\n")
    print("| model | Spearman(std, abs error) | UCE | coverage of ±1.96 std (nominal 0.95) | Spearman(γ map, variance) |")
    print("|---|---|---|---|---|")
    for name, rows in uncertainty.items():
        if not rows:
            continue
        mean = {key: _mean_of_finite([r[key] for r in rows]) for key in rows[0]}
        print(f"| {name} | {mean['spearman']:.3f} | {mean['uce']:.4f} | {mean['coverage95']:.3f} | "
              f"{mean['gamma_vs_variance']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("qpi", "sr", "both"), default="both")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=2000,
                        help="training steps of every learned method (0: train none, score only --extra files)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=128)
    parser.add_argument("--test-images", type=int, default=8, help="per task (SR: per structure kind)")
    parser.add_argument("--test-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=8, help="diffusion samples per image")
    parser.add_argument("--sample-steps", type=int, default=20, help="DPM-Solver++ 2M SDE steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                        help="also score this trained model file (its task's table only)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the trained models in this folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device: {device} ({name}), torch {torch.__version__}, {args.threads} CPU threads")
    if args.steps > 0:
        print(f"budget per learned method: preset {args.preset}, {args.steps} steps × batch {args.batch} of "
              f"{args.patch}² patches, lr {args.lr}, {args.train_images} simulated training images, seed {args.seed}")
    else:
        print("no method trained (--steps 0): the classical methods and the --extra model files only")
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.keep or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.task in ("qpi", "both"):
            run_qpi(args, out_dir, device)
        if args.task in ("sr", "both"):
            run_sr(args, out_dir, device)


if __name__ == "__main__":
    main()
