"""Throughput benchmark: network evaluations and a 1024² reconstruction, fp32 vs bf16 vs compiled.

    .venv/bin/python benchmarks/throughput.py                 # CPU (~4 min), plus the GPU if present
    .venv/bin/python benchmarks/throughput.py --model models/cvdm-qpi-small.safetensors

For every device (the CPU always, CUDA when available; the device is printed):

1. milliseconds per network evaluation (NFE) of the denoiser on one tile
   (default 256², the reconstruction default) with the N samples of one input as
   one batch, for the variants fp32, bf16 (autocast; schedule arithmetic stays
   fp32), channels_last and torch.compile (fp32 on the CPU, bf16 on the GPU);
   ratios are against fp32 in the same run;
2. achieved TFLOP/s: FLOPs of one evaluation counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add) divided by
   its time, against the device's peak — on the GPU the vendor's dense peak when
   the device is known, and always a large-matmul measurement from this run
   (the CPU's vendor peak is not known here, so only the matmul figure is given);
3. seconds for one 1024² reconstruction with N = 8 at the model's default NFE
   through ``reconstruct`` (tiles, noise, blending included). On the GPU this is
   measured. On the CPU it would take hours, so it is **extrapolated** as
   tiles × NFE × (N / batch) × time per evaluation, with the extrapolation
   checked against a measured single-tile ``reconstruct`` of 2 NFE.

Timings do not depend on the weights: without ``--model`` a randomly initialised
model of ``--preset`` is used.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_cvdm.checkpoint import ModelInfo, load_model  # noqa: E402
from napari_cvdm.model import CVDM, ModelConfig  # noqa: E402
from napari_cvdm.model.samplers import RuntimeOptions, _noise_predictor  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, network_stride, reconstruct, tile_spans  # noqa: E402

#: Dense (no sparsity) vendor peaks in TFLOP/s: (fp32 without tensor cores, bf16 tensor cores).
KNOWN_PEAKS = {"H100 80GB HBM3": (67.0, 989.0), "H100 PCIe": (51.0, 756.0), "H200": (67.0, 989.0),
               "A100-SXM4-80GB": (19.5, 312.0), "A100-SXM4-40GB": (19.5, 312.0)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variants(device: torch.device) -> list[tuple[str, dict]]:
    """(label, options of the noise predictor) in the order they are reported."""
    compiled_dtype = torch.bfloat16 if device.type == "cuda" else None
    return [
        ("fp32", dict(autocast_dtype=None, channels_last=False, compile=False)),
        ("bf16", dict(autocast_dtype=torch.bfloat16, channels_last=False, compile=False)),
        ("fp32 channels_last", dict(autocast_dtype=None, channels_last=True, compile=False)),
        (f"{'bf16' if compiled_dtype else 'fp32'} compiled",
         dict(autocast_dtype=compiled_dtype, channels_last=False, compile=True)),
    ]


def time_nfe(model: CVDM, inputs, options: dict, repeats: int, device: torch.device) -> tuple[float, float]:
    """(seconds per evaluation, seconds of the first call incl. compiling)."""
    predict = _noise_predictor(model, RuntimeOptions(**options))
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        predict(*inputs)
        sync(device)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict(*inputs)
            sync(device)
            times.append(time.perf_counter() - start)
    return float(np.median(times)), first


def count_flops(model: CVDM, inputs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.predict_noise(*inputs)
    return int(counter.get_total_flops())


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best of ``repeats`` timed ``n × n`` matmuls, TFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def tiles_for(size: int, tile: int, overlap: int, align: int) -> int:
    return len(tile_spans(size, tile, overlap, align)) ** 2


def run_device(device: torch.device, model: CVDM, info: ModelInfo, args) -> None:
    model = model.to(device).eval()
    gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if gpu else (platform.processor() or platform.machine())
    print(f"\n## {device.type.upper()}: {name}" + ("" if gpu else f", {torch.get_num_threads()} thread(s)"))
    nfe = int(args.nfe or info.sampler.get("steps", 20))
    batch = args.samples if gpu else args.cpu_batch
    repeats = args.gpu_repeats if gpu else args.cpu_repeats
    g = torch.Generator().manual_seed(0)
    tile = args.tile
    inputs = tuple(t.to(device) for t in (
        torch.randn(batch, info.config.x_channels, tile, tile, generator=g),
        torch.randn(batch, info.config.y_channels, tile, tile, generator=g),
        torch.rand(batch, info.config.x_channels, tile, tile, generator=g)))
    flops = count_flops(model, tuple(t[:1].cpu() for t in inputs)) * batch if not gpu else count_flops(model, inputs)
    print(f"\none evaluation = batch {batch} × {tile}² tile: {flops / 1e9:.1f} GFLOP "
          f"(FlopCounterMode; {flops / batch / tile**2 / 1e3:.0f} kFLOP per pixel)\n")
    peak32 = matmul_tflops(device, torch.float32, 8192 if gpu else 1024, 20 if gpu else 5)
    peak16 = matmul_tflops(device, torch.bfloat16, 8192 if gpu else 256, 20 if gpu else 3)
    vendor = next((v for k, v in KNOWN_PEAKS.items() if k in name), None) if gpu else None
    print(f"matmul measured in this run: fp32 {peak32:.3g} TFLOP/s, bf16 {peak16:.3g} TFLOP/s"
          + (f"; vendor dense peak fp32 {vendor[0]:.0f}, bf16 {vendor[1]:.0f} TFLOP/s" if vendor
             else "; vendor peak: unknown for this device") + "\n")

    tiles = tiles_for(args.size, tile, args.overlap, network_stride(model))
    batches = -(-args.samples // batch)
    print(f"{args.size}² reconstruction = {tiles} tiles of {tile}² (overlap {args.overlap}) × {nfe} NFE × "
          f"{batches} batch(es) of {batch} = {tiles * nfe * batches} evaluations\n")
    print(f"| variant | ms / NFE | × vs fp32 | first call (s) | TFLOP/s | % of measured matmul rate "
          f"| % of vendor peak | {args.size}², N = {args.samples} (s) |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for label, options in variants(device):
        probe_inputs, probe_flops = inputs, flops
        slow_bf16 = not gpu and options["autocast_dtype"] is not None and peak16 < 0.5 * peak32
        if slow_bf16:  # no native bf16 on this CPU: time it on a small tile, against fp32 on the same
            probe_inputs = tuple(t[..., :args.cpu_probe, :args.cpu_probe] for t in inputs)
            probe_flops = flops * args.cpu_probe**2 // tile**2
            fp32_small, _ = time_nfe(model, probe_inputs, variants(device)[0][1], repeats, device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seconds, first = time_nfe(model, probe_inputs, options, repeats, device)
        fell_back = any("torch.compile failed" in str(w.message) for w in caught)
        achieved = probe_flops / seconds / 1e12
        peak = peak16 if options["autocast_dtype"] is not None else peak32
        if slow_bf16:
            ratio = fp32_small / seconds
            seconds = base / ratio
            label += f" (timed on {args.cpu_probe}² and scaled by its ratio to fp32 there)"
        base = base or seconds
        whole = tiles * nfe * batches * seconds
        if gpu:
            whole_text = f"{time_reconstruct(model, info, device, nfe, options, args):.1f}"
        else:
            whole_text = f"≈ {whole:,.0f} (extrapolated)"
        of_vendor = "–" if vendor is None else f"{100 * achieved / vendor[options['autocast_dtype'] is not None]:.1f} %"
        print(f"| {label}{' (fell back to eager)' if fell_back else ''} | {seconds * 1e3:.1f} | "
              f"{base / seconds:.2f} | {first:.1f} | {achieved:.3g} | {100 * achieved / peak:.0f} % | "
              f"{of_vendor} | {whole_text} |", flush=True)
    if not gpu:
        check_extrapolation(model, info, device, tile, min(args.overlap, tile // 2), batch, base)


def time_reconstruct(model, info, device, nfe: int, options: dict, args) -> float:
    image = np.random.default_rng(0).random(
        (info.config.y_channels, args.size, args.size) if info.config.y_channels > 1 else
        (args.size // info.upsampling_factor,) * 2).astype(np.float32) + 1.0
    settings = ReconstructionSettings(
        n_samples=args.samples, steps=nfe, tile_size=args.tile, tile_overlap=args.overlap, device=str(device),
        precision="bf16" if options["autocast_dtype"] is not None else "fp32",
        channels_last=options["channels_last"], compile=options["compile"])
    tile_in = args.tile // info.upsampling_factor  # one tile of the same shape: warm-up (and compile)
    reconstruct(model, info, image[..., :tile_in, :tile_in], ReconstructionSettings(**{**settings.__dict__, "steps": 1}))
    sync(device)
    start = time.perf_counter()
    reconstruct(model, info, image, settings)
    sync(device)
    return time.perf_counter() - start


def check_extrapolation(model, info, device, tile: int, overlap: int, batch: int, seconds_per_nfe: float) -> None:
    """A measured single-tile reconstruct of 2 NFE against tiles × NFE × time per NFE."""
    factor = info.upsampling_factor
    shape = (info.config.y_channels, tile, tile) if info.config.y_channels > 1 else (tile // factor,) * 2
    image = np.random.default_rng(0).random(shape).astype(np.float32) + 1.0
    settings = ReconstructionSettings(n_samples=batch, steps=2, tile_size=tile, tile_overlap=overlap, device=str(device),
                                      precision="fp32")
    start = time.perf_counter()
    reconstruct(model, info, image, settings)
    measured = time.perf_counter() - start
    print(f"\nextrapolation check: one {tile}² tile, N = {batch}, 2 NFE through reconstruct: measured "
          f"{measured:.1f} s, predicted {2 * seconds_per_nfe:.1f} s (network only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: random weights of --preset)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--task", default="qpi", choices=("qpi", "sr"), help="input layout without --model")
    parser.add_argument("--nfe", type=int, default=None, help="default: the model's default steps")
    parser.add_argument("--samples", type=int, default=8, help="N")
    parser.add_argument("--size", type=int, default=1024, help="reconstructed image side (output px)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--cpu-batch", type=int, default=2, help="samples per evaluation timed on the CPU")
    parser.add_argument("--cpu-repeats", type=int, default=2)
    parser.add_argument("--cpu-probe", type=int, default=64, help="tile side for bf16 on a CPU without bf16")
    parser.add_argument("--gpu-repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-cpu", action="store_true", help="only the GPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        model, info = load_model(args.model, "cpu")
        source = args.model
    else:
        torch.manual_seed(0)
        config = ModelConfig(x_channels=1, y_channels=2 if args.task == "qpi" else 1, preset=args.preset)
        model = CVDM(config).eval()
        info = ModelInfo(task=args.task, config=config, upsampling_factor=1 if args.task == "qpi" else 2)
        source = f"random weights, preset {args.preset}"
    print(f"torch {torch.__version__}; model: {source} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
          f"parameters); N = {args.samples}, tile {args.tile}², default NFE {args.nfe or info.sampler.get('steps')}")
    if not args.no_cpu:
        run_device(torch.device("cpu"), model, info, args)
    if torch.cuda.is_available():
        run_device(torch.device("cuda"), model, info, args)
    else:
        print("\n(no CUDA device here: GPU rows not measured)")


if __name__ == "__main__":
    main()
