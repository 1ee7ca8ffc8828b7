"""GPU check, Python part: bf16 vs fp32 denoiser throughput and a 1024², N = 8 reconstruction.

    PYTHONPATH=src python benchmarks/gpu_check.py                       # on a CUDA machine (~1-2 min)
    PYTHONPATH=src python benchmarks/gpu_check.py --device cpu --quick  # tiny sizes: checks the code runs

Called by ``benchmarks/gpu_check.sh``, which also runs the CUDA-marked tests and a DDP
training step. Prints the device and every figure:

1. forward passes/s of the denoiser on one reconstruction call (``--batch`` samples ×
   ``--tile``² tile) in fp32 and bf16 (autocast), TFLOP/s from the FLOPs of one pass
   counted with ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add), and
   the fraction of the card's dense vendor peak (``throughput.KNOWN_PEAKS``; "unknown
   card" otherwise). fp32 convolutions may use TF32 (PyTorch's cuDNN default);
2. wall time of ``napari_cvdm.engine.reconstruct`` on a ``--size``² QPI stack with
   N = ``--samples`` at the model's default sampler and steps, precision ``auto`` (bf16
   on CUDA), after a one-tile warm-up; peak GPU memory.

Timing does not depend on the weights: the model is a **randomly initialised** ``--preset``
(default ``paper``), so the reconstruction is timed, not judged.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from throughput import KNOWN_PEAKS, count_flops, sync, time_nfe  # noqa: E402

from napari_cvdm.checkpoint import ModelInfo  # noqa: E402
from napari_cvdm.model import CVDM, ModelConfig  # noqa: E402
from napari_cvdm.engine import ReconstructionSettings, reconstruct, tile_spans, network_stride  # noqa: E402

#: --quick: sizes that run in seconds on a CPU (the code path, not the figures, is checked).
QUICK = dict(preset="tiny", tile=32, batch=2, size=64, samples=2, steps=2, repeats=2)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def vendor_peaks(name: str) -> tuple[float, float] | None:
    """(fp32, bf16) dense TFLOP/s of a known card, else None."""
    return next((peak for key, peak in KNOWN_PEAKS.items() if key in name), None)


def random_model(preset: str, device: torch.device) -> tuple[CVDM, ModelInfo]:
    """A randomly initialised QPI model of ``preset`` (seeded) on ``device``."""
    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=2, preset=preset)
    info = ModelInfo(task="qpi", config=config, upsampling_factor=1, target_unit="rad",
                     input_normalization={"mode": "mean"},
                     target_normalization={"mode": "fixed", "low": [0.0], "high": [3.5]})
    return CVDM(config).to(device).eval(), info


def throughput(model: CVDM, device: torch.device, args) -> None:
    """fp32 and bf16 forward passes/s, TFLOP/s and fraction of the vendor peak."""
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 1, args.tile, args.tile)
    inputs = tuple(t.to(device) for t in (torch.randn(shape, generator=g),
                                          torch.randn((args.batch, 2, args.tile, args.tile), generator=g),
                                          torch.rand(shape, generator=g)))
    flops = count_flops(model, inputs)
    peaks = vendor_peaks(device_name(device)) if device.type == "cuda" else None
    print(f"\n## Denoiser throughput: batch {args.batch} × {args.tile}² tile, {flops / 1e9:.1f} GFLOP per pass "
          f"(FlopCounterMode)")
    print("vendor dense peak: " + (f"fp32 {peaks[0]:.0f}, bf16 {peaks[1]:.0f} TFLOP/s" if peaks else "unknown card"))
    print("| precision | passes/s | ms/pass | TFLOP/s | % of peak |\n|---|---|---|---|---|")
    fp32_seconds = None
    for label, dtype, peak_index in (("fp32", None, 0), ("bf16", torch.bfloat16, 1)):
        seconds, _ = time_nfe(model, inputs, dict(autocast_dtype=dtype, channels_last=False, compile=False),
                              args.repeats, device)
        fp32_seconds = fp32_seconds or seconds
        achieved = flops / seconds / 1e12
        share = f"{100 * achieved / peaks[peak_index]:.1f} %" if peaks else "unknown card"
        print(f"| {label} | {1 / seconds:.2f} | {seconds * 1e3:.1f} | {achieved:.3g} | {share} |", flush=True)
    print(f"bf16 speed-up over fp32: {fp32_seconds / seconds:.2f}×")


def end_to_end(model: CVDM, info: ModelInfo, device: torch.device, args) -> float:
    """Seconds of one ``--size``² reconstruction (N = ``--samples``) after a one-tile warm-up."""
    image = (1.0 + 0.1 * np.random.default_rng(0).standard_normal((2, args.size, args.size))).astype(np.float32)
    settings = ReconstructionSettings(n_samples=args.samples, steps=args.steps, device=str(device), precision="auto")
    tile = min(settings.tile_size or args.size, args.size)
    warm = ReconstructionSettings(**{**settings.__dict__, "steps": 1})
    reconstruct(model, info, image[..., :tile, :tile], warm)  # cuDNN autotuning, allocator warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    result = reconstruct(model, info, image, settings)
    sync(device)
    seconds = time.perf_counter() - start
    meta = result.metadata
    tiles = len(tile_spans(args.size, settings.tile_size, settings.tile_overlap, network_stride(model))) ** 2
    memory = (f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
              if device.type == "cuda" else "")
    print(f"\n## End to end: reconstruct() on a {args.size}² QPI stack, N = {args.samples}, preset {args.preset} "
          f"(random weights: timing only)")
    print(f"sampler {meta.get('sampler')}, {meta.get('steps')} steps, precision {meta.get('precision')}, "
          f"{tiles} tile(s) of {tile}²: {seconds:.2f} s{memory}; finite: {bool(np.isfinite(result.mean).all())}")
    return seconds


def ddp_probe(device_type: str) -> int:
    """Under ``torchrun``: one DDP backward step over NCCL (gloo for ``cpu``), ranks fed different data.

    Checks that DistributedDataParallel averaged the gradients (identical on every rank); 0 if so.
    """
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(2, 4, 3, padding=1).to(device)
    net = DistributedDataParallel(layer, device_ids=[local_rank] if device.type == "cuda" else None)
    torch.manual_seed(1 + rank)
    net(torch.randn(4, 2, 32, 32, device=device)).square().mean().backward()
    grad = layer.weight.grad.detach().clone()
    gathered = [torch.empty_like(grad) for _ in range(world)]
    dist.all_gather(gathered, grad)
    agree = all(torch.equal(other, grad) for other in gathered)
    if rank == 0:
        nccl = f", NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}" if device.type == "cuda" else ""
        print(f"DDP probe: {world} rank(s), backend {dist.get_backend()}{nccl}; "
              f"gradients identical on all ranks: {agree}")
    dist.destroy_process_group()
    return 0 if agree else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (" + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()) + ")")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--tile", type=int, default=256, help="throughput tile side (the reconstruct default)")
    parser.add_argument("--batch", type=int, default=8, help="samples per forward pass")
    parser.add_argument("--size", type=int, default=1024, help="end-to-end image side (pixels)")
    parser.add_argument("--samples", type=int, default=8, help="end-to-end N")
    parser.add_argument("--steps", type=int, default=None, help="end-to-end sampler steps (default: the model's)")
    parser.add_argument("--repeats", type=int, default=20, help="timed forward passes per precision")
    parser.add_argument("--ddp-probe", action="store_true", help="only the DDP probe (run under torchrun)")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: GPU check skipped")
        return 0
    if args.ddp_probe:
        return ddp_probe(device.type)
    model, info = random_model(args.preset, device)
    print(f"device: {device_name(device)}; torch {torch.__version__}; preset {args.preset} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, random weights)")
    throughput(model, device, args)
    end_to_end(model, info, device, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
