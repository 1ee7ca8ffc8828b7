"""Sampler benchmark: quality and uncertainty against the number of network evaluations.

For each task (QPI, SR) with a trained model file, on held-out simulated images
(``simulate_qpi`` / ``simulate_sr``, the test split of benchmarks/paper_tables.py,
normalised and scored the same way), every sampler × time grid × NFE draws N
samples per image and reports

- PSNR and MS-SSIM of the sample mean against the ground truth;
- the per-pixel sample std against that of the reference — by default the paper's
  200-step ancestral sampler on the uniform grid; ``--reference`` picks another,
  e.g. a converged ``ancestral/log_snr/1000`` — Pearson correlation over pixels and
  the ratio of mean std (1 = same spread).

Before that, an exact-denoiser check with the model's own schedule and λ map:
Gaussian data with a known variance, so each sampler's spread can be compared
with the truth rather than with the (itself approximate) reference.

N samples only estimate the std, so even a second reference run with other
seeds does not correlate perfectly with the first: its scores are printed as
the "ceiling" row. Seeds are fixed: on image i every configuration draws with seed
i (the same initial noise), the ceiling row and the reliability's second draws with
seed ``SECOND_DRAW + i`` (why per-image seeds: docs/benchmarks.md). With several images, the differences to
the reference (and to any ``--compare-to`` configuration) are paired by image
and given with their standard error over the images, which measures the same
scatter as the ceiling row without its extra reference run (``--no-ceiling``);
``--coupled`` runs every chain of an image on one shared Brownian path per sample
(:class:`CoupledNoise`), which takes most of the Monte-Carlo error out of those
differences; ``--save`` keeps the per-image rows.

Usage (about 5 min on 1 CPU thread for tiny 64² models with the defaults)::

    .venv/bin/python benchmarks/sampling.py --qpi-model models/cvdm-qpi-small.safetensors \\
        --sr-model models/cvdm-sr-small.safetensors
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
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm import metrics  # noqa: E402
from napari_cvdm.uncertainty import metrics as uncertainty_metrics  # noqa: E402
from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.data import get_task, normalize_pair  # noqa: E402
from napari_cvdm.data.simulate import STRUCTURE_KINDS, QPISimulationConfig, simulate_qpi, simulate_sr  # noqa: E402
from napari_cvdm.model import GRIDS, SAMPLERS, SamplingOptions, sample  # noqa: E402
from napari_cvdm.model.samplers import _gamma, _row_grids, half_log_snr  # noqa: E402

from experimental_samplers import EXPERIMENTAL_SAMPLERS  # noqa: E402  (registers them)

TEST_SPLIT = 2  # the held-out stream of benchmarks/paper_tables.py
PHASE_RANGE_RAD = QPISimulationConfig().phase_max_rad
PAPER_REFERENCE = ("ancestral", "uniform", 200)
#: Gaussian smoothing (px) of the std maps for the second correlation (averages the N-sample noise).
SMOOTH_PX = 2.0
#: Seed offset of the second, independent draws of an image (ceiling, reliability).
SECOND_DRAW = 10_000


def held_out(task: str, n: int, size: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(normalised condition (C, H, W), ground truth (H, W))`` pairs; SR cycles the structure kinds."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, TEST_SPLIT]))
    spec = get_task(task)
    pairs = []
    for i in range(n):
        s = simulate_qpi(rng, size) if task == "qpi" else simulate_sr(rng, size, kind=STRUCTURE_KINDS[i % 4])
        truth = s.phase if task == "qpi" else metrics.to_unit_range(s.target)
        pairs.append((normalize_pair(s.pair(), spec).input, truth))
    return pairs


def scores(task: str, mean: np.ndarray, std: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """PSNR (dB) and MS-SSIM of a normalised mean on the [0, 1] scale of the truth (as paper_tables),
    and the coverage of mean ± 1.96 std with the std scaled like the mean (as cvdm evaluate)."""
    if task == "qpi":
        estimate, scale = metrics.align_offset((mean + 1) * PHASE_RANGE_RAD / 2, truth), PHASE_RANGE_RAD / 2
        covered = uncertainty_metrics.coverage(estimate, std * scale, truth, (0.95,))[0.95]
        estimate, truth = metrics.to_unit_range(estimate, truth), metrics.to_unit_range(truth)
    else:
        estimate, spread = metrics.scale_to_reference(mean, truth), float(np.std(mean))
        stretch = float(np.std(estimate)) / spread if spread > 0 else 1.0
        covered = uncertainty_metrics.coverage(estimate, std * stretch, truth, (0.95,))[0.95]
    return metrics.psnr(estimate, truth, data_range=1.0), metrics.ms_ssim(estimate, truth, data_range=1.0), covered


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def reliability_terms(std_a, std_a_again, std_ref, std_ref_again) -> tuple[float, float, float]:
    """Cross-correlation and reliabilities of two samplers' std maps, two independent draws each.

    Cross: the mean correlation of the pairs drawn from different seeds (pairs with the same
    seed share the initial noise, so their Monte-Carlo errors are not independent);
    reliabilities: each sampler's correlation with itself. See :func:`disattenuated`.
    """
    cross = 0.5 * (pearson(std_a, std_ref_again) + pearson(std_a_again, std_ref))
    return cross, pearson(std_a, std_a_again), pearson(std_ref, std_ref_again)


def disattenuated(terms: np.ndarray) -> float:
    """Spearman's correction for attenuation over images: mean cross / sqrt(mean rel_a · mean rel_ref).

    ``terms`` ``(images, 3)`` from :func:`reliability_terms`. 1 = the two samplers have the same
    std map up to the N-sample noise of both estimates. NaN when a reliability is not positive.
    """
    cross, reliability_a, reliability_ref = np.mean(terms, 0)
    if reliability_a <= 0 or reliability_ref <= 0:
        return float("nan")
    return float(cross / np.sqrt(reliability_a * reliability_ref))


def paired_difference(rows, reference_rows) -> str:
    """Mean ΔPSNR / ΔMS-SSIM over images, with the standard error of each when there are ≥ 2 images."""
    difference = np.array(rows)[:, :2] - np.array(reference_rows)[:, :2]
    mean = difference.mean(0)
    if len(difference) < 2:
        return f"{mean[0]:+.2f} / {mean[1]:+.4f}"
    error = difference.std(0, ddof=1) / np.sqrt(len(difference))
    return f"{mean[0]:+.2f} ± {error[0]:.2f} / {mean[1]:+.4f} ± {error[1]:.4f}"


class CoupledNoise:
    """One Brownian path per sample shared by every configuration's chain (``--coupled``).

    The union of all the configurations' time grids splits (0, 1] into intervals, each
    with its own standard normal ξ_u per pixel. A step from t to s of any grid gets
    ``Σ w_u ξ_u / sqrt(Σ w_u²)`` over the union intervals u between t and s, with
    ``w_u = e^{−(λ_s − λ_u)} sqrt(1 − e^{−2(λ_u − λ_{u−1})})`` per pixel (λ the half log-SNR
    at the interval's ends): the weight with which that interval's noise reaches s under
    the linear part of the reverse SDE, so a coarse step gets the noise a fine chain
    through the same interval would have accumulated. All chains start from the same x₁.
    Each chain's step noises remain independent standard normals, so every chain samples
    exactly as with fresh noise; only their Monte-Carlo errors are shared, and a paired
    difference of two chains' means cancels most of them.
    """

    def __init__(self, model, condition: torch.Tensor, n: int, configs, seed: int):
        with torch.no_grad():
            schedule_map = model.schedule.schedule_map(condition)
            self.grids = {config: _row_grids(config[2], config[1], model.schedule, schedule_map, None)
                          .double().numpy() for config in configs}
            points = np.unique(np.concatenate(list(self.grids.values())))[::-1]  # 1 … > 0, then 0
            self.points = points[points > 0]
            self.half_log_snr = torch.stack([
                half_log_snr(_gamma(model, torch.tensor([t], dtype=torch.float32), schedule_map))[0]
                for t in self.points])  # (U, C, H, W)
        shape = (len(self.points), n, model.config.x_channels, *condition.shape[-2:])
        self.draws = torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # [0]: x₁

    def source(self, config):
        """The :data:`NoiseSource` of ``config``'s chain."""
        index = {t: u for u, t in enumerate(self.points)}
        grid = self.grids[config]

        def noise(stage: int) -> torch.Tensor:
            if stage == 0:
                return self.draws[0]
            start, end = index[grid[stage - 1]], index[grid[stage]]
            lam = self.half_log_snr
            weights = torch.exp(-(lam[end] - lam[start + 1:end + 1])) * \
                (-torch.expm1(-2 * (lam[start + 1:end + 1] - lam[start:end]))).clamp_min(0).sqrt()
            combined = (weights[:, None] * self.draws[start + 1:end + 1]).sum(0)
            return combined / weights.pow(2).sum(0).sqrt().clamp_min(1e-30)

        return noise


def draw(model, condition: torch.Tensor, config: tuple[str, str, int], args, seed: int,
         coupled: CoupledNoise | None = None) -> torch.Tensor:
    """``args.samples`` samples ``(N, H, W)`` (float64) of ``condition``: fresh noise from ``seed``,
    or ``coupled``'s path for ``config``."""
    sampler, grid, nfe = config
    noise = coupled.source(config) if coupled is not None else None
    with torch.no_grad():
        draws = sample(model, condition.expand(args.samples, -1, -1, -1),
                       SamplingOptions(sampler, nfe, clip=args.clip, grid=grid), noise=noise,
                       generator=torch.Generator().manual_seed(seed))
    return draws.double()[:, 0]


def mean_and_std(draws: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and unbiased std ``(H, W)`` of samples ``(N, H, W)``."""
    std = draws.var(0) if len(draws) > 1 else torch.zeros_like(draws[0])
    return draws.mean(0).float().numpy(), std.sqrt().float().numpy()


def gaussian_check(model, condition: torch.Tensor, configs, args) -> None:
    """Sampler check with the model's own schedule and λ map but an exact denoiser.

    Data ``x0 ~ N(0, s²)`` per pixel (s = 0.5) has the exact ``ε̂ = σ x_t / (γ s² + 1 − γ)``;
    a sampler that is right reproduces the variance s² (ratio 1). 64 samples per pixel.
    """
    s2 = 0.25
    reference = args.reference
    with torch.no_grad():
        lam = model.schedule.schedule_map(condition).repeat(64, 1, 1, 1)
    original = model.predict_noise
    model.predict_noise = lambda x_t, y, gamma: ((1 - gamma).sqrt() * x_t / (gamma * s2 + 1 - gamma))
    try:
        ratios = {}
        for config in [*configs, reference]:
            sampler, grid, nfe = config
            out = sample(model, condition.expand(64, -1, -1, -1), SamplingOptions(sampler, nfe, clip=None, grid=grid),
                         schedule_map=lam, generator=torch.Generator().manual_seed(0))
            ratios[config] = float(out.var(0).mean()) / s2
    finally:
        model.predict_noise = original
    nfes = sorted({n for _, _, n in configs})
    print(f"Exact-denoiser check (Gaussian data, this model's schedule, λ median {float(lam.median()):.3g}): "
          f"sample variance / true variance; reference {'/'.join(map(str, reference))}: "
          f"{ratios[reference]:.3f}\n")
    print("| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|---|" + "---|" * len(nfes))
    for sampler, grid, _ in dict.fromkeys((s, g, None) for s, g, _ in configs):
        cells = [f"{ratios[(sampler, grid, n)]:.3f}" if (sampler, grid, n) in ratios else "–" for n in nfes]
        print(f"| {sampler} | {grid} | " + " | ".join(cells) + " |")
    print()


def tiling_check(model, condition: torch.Tensor, args, sampler: str = "dpm_solver_2m", nfe: int = 20) -> None:
    """Overlap of two tiles: do tiles draw the same samples, and what does each variance rule give?

    ``condition`` ``(1, C, ≥ 64, ≥ 160)`` is cut to 64 × 160 and sampled whole and as two
    96-px tiles overlapping by 32, with the engine's weights and position-keyed noise. A
    second untiled run with other noise shows how much an N-sample variance itself scatters.
    """
    from napari_cvdm.engine import NoiseField, tile_weights

    y = condition[..., :64, :160]
    n, width, overlap, spans = args.samples, 160, 32, [(0, 96), (64, 160)]

    def draws(c0, c1, seed=0):
        field = NoiseField(seed, 0, n, model.config.x_channels)
        return sample(model, y[..., c0:c1].expand(n, -1, -1, -1), SamplingOptions(sampler, nfe),
                      noise=lambda stage: field.window(stage, (0, 64), (c0, c1))).double()[:, 0]

    whole, other_seed, tiles = draws(0, width), draws(0, width, seed=1), [draws(*span) for span in spans]
    total = torch.zeros(width, dtype=torch.float64)
    averaged, mean, second = (torch.zeros(64, width, dtype=torch.float64) for _ in range(3))
    blended = torch.zeros(n, 64, width, dtype=torch.float64)
    for (c0, c1), t in zip(spans, tiles):
        w = torch.from_numpy(tile_weights((c0, c1), width, overlap))
        total[c0:c1] += w
        averaged[:, c0:c1] += w * t.var(0)
        mean[:, c0:c1] += w * t.mean(0)
        second[:, c0:c1] += w * (t.var(0) + t.mean(0) ** 2)
        blended[:, :, c0:c1] += w * t
    rules = {"w·V_a + (1−w)·V_b (used)": averaged / total,
             "mixture (second moments)": second / total - (mean / total) ** 2,
             "variance of the blended samples": (blended / total).var(0),
             "untiled, other noise seed (scatter of the estimate)": other_seed.var(0)}
    inside = slice(64 + overlap // 4, 96 - overlap // 4)  # both tiles have weight here
    truth = whole.var(0)[:, inside]
    a, b = tiles[0][:, :, inside], tiles[1][:, :, inside.start - 64:inside.stop - 64]
    da, db = a - a.mean(0), b - b.mean(0)
    corr = float((da * db).sum() / (da.pow(2).sum() * db.pow(2).sum()).sqrt())
    print(f"Tiling check ({sampler}, {nfe} NFE, N = {n}, 64 × 160 px, tiles 96 px, overlap 32): "
          f"correlation over samples of a tile's sample n with its neighbour's sample n in the overlap: "
          f"{corr:.3f} (1 = the same draw).\n")
    print("| variance in the overlap | mean ratio to untiled |\n|---|---|")
    for name, estimate in rules.items():
        print(f"| {name} | {float(estimate[:, inside].mean() / truth.mean()):.3f} |")
    print()


def run_task(task: str, path: str, args) -> None:
    model, info = load_model(path, torch.device("cpu"))
    print(f"\n## {task.upper()}: {path} (preset {info.config.preset}, schedule {info.config.schedule}, "
          f"trained {info.training.get('steps', '?')} steps; default sampler {info.sampler})\n", flush=True)
    pairs = held_out(task, args.images, args.size, args.seed)
    configs = [(s, g, n) for s, g, nfes in args.plan for n in nfes]
    if not args.skip_checks:
        gaussian_check(model, torch.from_numpy(pairs[0][0][None]), configs, args)
        tiling_check(model, torch.from_numpy(held_out(task, 1, 160, args.seed + 1)[0][0][None]), args)
    if args.check_only:
        return
    reference_config = args.reference
    rows: dict = {config: [] for config in [*configs, reference_config, "ceiling"]}
    coupling: dict = {config: [] for config in configs}
    if not args.ceiling:
        del rows["ceiling"]
    start = time.perf_counter()
    for index, (condition, truth) in enumerate(pairs):
        y = torch.from_numpy(condition[None])
        shared = CoupledNoise(model, y, args.samples, [reference_config, *configs], seed=index) \
            if args.coupled else None
        reference_draws = draw(model, y, reference_config, args, seed=index, coupled=shared)
        ref_mean, ref_std = mean_and_std(reference_draws)
        entries = {}
        for config in configs:
            if config == reference_config:
                continue
            draws = draw(model, y, config, args, seed=index, coupled=shared)
            entries[config] = mean_and_std(draws)
            if shared:
                coupling[config].append(pearson(draws - draws.mean(0), reference_draws - reference_draws.mean(0)))
        entries[reference_config] = (ref_mean, ref_std)
        if args.ceiling:
            entries["ceiling"] = ceiling_mean, ceiling_std = mean_and_std(
                draw(model, y, reference_config, args, seed=SECOND_DRAW + index))
        for key, (mean, std) in entries.items():
            psnr, msssim, covered = scores(task, mean, std, truth)
            corr = pearson(std, ref_std)
            smooth = pearson(gaussian_filter(std, SMOOTH_PX), gaussian_filter(ref_std, SMOOTH_PX))
            terms = (float("nan"),) * 3
            if args.reliability and key not in (reference_config, "ceiling"):
                terms = reliability_terms(std, mean_and_std(draw(model, y, key, args, seed=SECOND_DRAW + index))[1],
                                          ref_std, ceiling_std)
            rows[key].append((psnr, msssim, corr, float(std.mean() / ref_std.mean()), smooth, *terms, covered))
    print(f"{len(pairs)} held-out images of {args.size}² px, N = {args.samples} samples each, "
          f"{time.perf_counter() - start:.0f} s. Cells: PSNR (dB) / MS-SSIM of the mean; "
          f"std vs the reference: Pearson r (r of the maps smoothed by {SMOOTH_PX:g} px) "
          "/ mean ratio.\n")
    if args.coupled:
        print("Coupled (--coupled): every chain ran on one shared Brownian path per sample. Correlation "
              "of sample n with the reference's sample n (deviations from the per-pixel means, mean over "
              "images; 1 = the same draw): "
              + ", ".join(f"{'/'.join(map(str, key))} {np.mean(value):.2f}" for key, value in coupling.items()
                          if value)
              + ". The std r columns are inflated by the shared noise: take r from an uncoupled run.\n")
    reference = np.mean(rows[reference_config], 0)
    print(f"reference {'/'.join(map(str, reference_config))}: PSNR {reference[0]:.2f} dB, "
          f"MS-SSIM {reference[1]:.4f}, coverage of mean ± 1.96 std {reference[8]:.3f}")
    if args.ceiling:
        ceiling = np.mean(rows["ceiling"], 0)
        print(f"ceiling (reference, other seed): PSNR {ceiling[0]:.2f} dB, MS-SSIM {ceiling[1]:.4f}, "
              f"std r {ceiling[2]:.3f} (smoothed {ceiling[4]:.3f}), std ratio {ceiling[3]:.3f}")
    print()
    nfes = sorted({n for _, _, n in configs})
    header = "| sampler | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |\n|---|---|" + "---|" * len(nfes)
    print(header)
    for sampler, grid, _ in dict.fromkeys((s, g, None) for s, g, _ in configs):
        cells = []
        for n in nfes:
            v = np.mean(rows[(sampler, grid, n)], 0) if rows.get((sampler, grid, n)) else None
            cells.append("–" if v is None else f"{v[0]:.2f} / {v[1]:.4f} / {v[2]:.2f} ({v[4]:.2f}) / {v[3]:.2f}")
        print(f"| {sampler} | {grid} | " + " | ".join(cells) + " |")
    print("\nCoverage: fraction of pixels with the truth inside mean ± 1.96 std (0.95 = calibrated):\n")
    print(header)
    for sampler, grid, _ in dict.fromkeys((s, g, None) for s, g, _ in configs):
        cells = [f"{np.mean(rows[(sampler, grid, n)], 0)[8]:.3f}" if rows.get((sampler, grid, n)) else "–"
                 for n in nfes]
        print(f"| {sampler} | {grid} | " + " | ".join(cells) + " |")
    for baseline in [reference_config, *args.compare_to]:
        print(f"\nDifference to {'the reference' if baseline == reference_config else '/'.join(map(str, baseline))}, "
              "paired by image (ΔPSNR dB / ΔMS-SSIM"
              + (", each ± its standard error over the images" if len(pairs) > 1 else "") + "):\n")
        print(header)
        for sampler, grid, _ in dict.fromkeys((s, g, None) for s, g, _ in configs):
            cells = []
            for n in nfes:
                if not rows.get((sampler, grid, n)) or (sampler, grid, n) == baseline:
                    cells.append("–")
                    continue
                cells.append(paired_difference(rows[(sampler, grid, n)], rows[baseline]))
            print(f"| {sampler} | {grid} | " + " | ".join(cells) + " |")
        if args.ceiling and baseline == reference_config:
            print(f"| ceiling (reference, other seeds) | {reference_config[1]} | "
                  f"{paired_difference(rows['ceiling'], rows[reference_config])} at NFE {reference_config[2]} |")
    if args.save:
        columns = ["psnr_db", "ms_ssim", "std_pearson", "std_ratio", "std_pearson_smoothed",
                   "reliability_cross", "reliability_self", "reliability_reference", "coverage_95"]
        per_image = {"/".join(map(str, key)) if isinstance(key, tuple) else key:
                     [{c: (v if np.isfinite(v) else None) for c, v in zip(columns, row)} for row in values]
                     for key, values in rows.items()}
        out = Path(args.save).with_suffix(f".{task}.json")
        out.write_text(json.dumps({"task": task, "model": str(path), "images": len(pairs), "size": args.size,
                                   "samples": args.samples, "reference": "/".join(map(str, reference_config)),
                                   "per_image": per_image}, indent=1, default=float))
        print(f"\nper-image rows written to {out}")
    if args.reliability:
        print("\nStd map vs the reference's, corrected for the N-sample noise of both (Spearman's "
              "disattenuation over the images; every sampler drawn again with other seeds, cross-seed pairs only):\n")
        print(header)
        for sampler, grid, _ in dict.fromkeys((s, g, None) for s, g, _ in configs):
            cells = []
            for n in nfes:
                value = disattenuated(np.array(rows[(sampler, grid, n)])[:, 5:8]) \
                    if rows.get((sampler, grid, n)) else float("nan")
                cells.append("–" if not np.isfinite(value) else f"{value:.2f}")
            print(f"| {sampler} | {grid} | " + " | ".join(cells) + " |")


def clip_bound(text: str) -> float | None:
    """``--clip`` value: a number, or ``none`` for no clipping."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qpi-model", help="QPI model file (.safetensors)")
    parser.add_argument("--sr-model", help="SR model file (.safetensors)")
    parser.add_argument("--images", type=int, default=1, help="held-out images per task")
    parser.add_argument("--size", type=int, default=64, help="image side (px, output grid)")
    parser.add_argument("--samples", type=int, default=8, help="samples per image (N)")
    parser.add_argument("--nfe", default="5,10,20,50,100,200", help="NFEs of every sampler × grid")
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--grids", default=",".join(GRIDS))
    parser.add_argument("--plan", default=None,
                        help="instead of samplers × grids × nfe: 'sampler/grid=n,n;sampler/grid=n,...'")
    parser.add_argument("--reference", default="/".join(map(str, PAPER_REFERENCE)),
                        help="sampler/grid/NFE the others are compared with (default: the paper's)")
    parser.add_argument("--compare-to", action="append", default=[], metavar="SAMPLER/GRID/NFE",
                        help="also tabulate the paired differences to this configuration of the plan (repeatable)")
    parser.add_argument("--save", metavar="FILE", help="write the per-image rows to FILE.<task>.json")
    parser.add_argument("--reliability", action="store_true",
                        help="draw every sampler twice and report its std correlation corrected for N-sample noise")
    parser.add_argument("--ceiling", action=argparse.BooleanOptionalAction, default=True,
                        help="also draw the reference with other noise (the 'ceiling' row; --no-ceiling "
                             "saves one reference run per image when the standard errors suffice)")
    parser.add_argument("--coupled", action="store_true",
                        help="run every configuration on one shared Brownian path per sample (CoupledNoise), "
                             "so that paired differences of the means lose most of their Monte-Carlo error")
    parser.add_argument("--check-only", action="store_true", help="only the exact-denoiser and tiling checks")
    parser.add_argument("--skip-checks", action="store_true", help="only the trained-model scores")
    parser.add_argument("--clip", type=clip_bound, default=1.0,
                        help="x̂0 clipping bound of every sampler on the trained models, or 'none' (default: 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="held-out data seed (as paper_tables)")
    args = parser.parse_args()
    if args.plan:
        args.plan = [(*key.split("/"), [int(n) for n in nfes.split(",")])
                     for key, nfes in (part.split("=") for part in args.plan.split(";"))]
    else:
        nfes = [int(n) for n in args.nfe.split(",")]
        args.plan = [(s, g, nfes) for s in args.samplers.split(",") for g in args.grids.split(",")]

    def configuration(text: str, flag: str) -> tuple[str, str, int]:
        try:
            sampler, grid, nfe = text.split("/")
            return sampler, grid, int(nfe)
        except ValueError:
            parser.error(f"{flag} must be sampler/grid/NFE, e.g. ancestral/log_snr/1000 (got {text})")

    args.reference = configuration(args.reference, "--reference")
    args.compare_to = [configuration(text, "--compare-to") for text in args.compare_to]
    planned = {(s, g, n) for s, g, nfes in args.plan for n in nfes}
    for config in args.compare_to:
        if config not in planned:
            parser.error(f"--compare-to {'/'.join(map(str, config))} is not in the plan")
    for sampler, grid, _ in [*args.plan, args.reference]:
        if sampler not in SAMPLERS + EXPERIMENTAL_SAMPLERS or grid not in GRIDS:
            parser.error(f"unknown sampler/grid {sampler}/{grid}")
    if args.coupled and args.reliability:
        parser.error("--coupled and --reliability exclude each other (the reliability needs independent draws)")
    if args.reliability and not args.ceiling:
        parser.error("--reliability needs the reference's second draw: drop --no-ceiling")
    if not (args.qpi_model or args.sr_model):
        parser.error("give --qpi-model and/or --sr-model")
    torch.set_num_threads(args.threads)
    print(f"device: cpu ({platform.processor() or platform.machine()}, {args.threads} thread(s)), "
          f"torch {torch.__version__}")
    for task, path in (("qpi", args.qpi_model), ("sr", args.sr_model)):
        if path:
            run_task(task, path, args)


if __name__ == "__main__":
    main()
