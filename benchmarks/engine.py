"""Engine benchmark: training throughput and reconstruction memory/time.

    .venv/bin/python benchmarks/engine.py            # ~3-5 min on 2 CPU cores

Prints the device, then

1. training steps/s of the ``tiny`` and ``small`` presets (simulated SR data,
   64² patches, batch 8) on the CPU, and on the GPU when there is one;
2. peak memory and time of ``reconstruct`` on 1024² and 4096² inputs, each case in
   a fresh process (peak RSS from ``ru_maxrss`` minus the RSS before the input was
   made; numpy's own peak from ``tracemalloc``).

On a CPU a 4096² input through a real U-Net takes tens of minutes (thousands of
tiles), so the 4096² cases run the full engine — upsampling, normalisation,
position-keyed noise, tiles, blending, accumulators — with the two networks
replaced by a 3-layer conv net ("engine" rows); the network's own working
memory per tile is measured separately on one 256² tile of the ``small`` preset.
With a GPU the 4096² cases also run with the real ``small`` network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


class PeakRSS:
    """Peak resident memory (MB) while the ``with`` block runs.

    Polls /proc every 2 ms; where the process's all-time peak (ru_maxrss, which also
    covers the imports) rises during the block, that exact value is used instead.
    """

    def __enter__(self):
        self.peak, self._running = _rss_mb(), True
        self._maxrss_before = _peak_rss_mb()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while self._running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        if _peak_rss_mb() > self._maxrss_before:
            self.peak = max(self.peak, _peak_rss_mb())


class LocalNet(nn.Module):
    """Stand-in network: three small convolutions (one strided), no normalisation or attention."""

    stride = 2

    def __init__(self, in_channels: int, out_channels: int, gamma_channels: int = 0):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels + gamma_channels, 4, 3, padding=1)
        self.down = nn.Conv2d(4, 4, 3, stride=2, padding=1)
        self.conv_out = nn.Conv2d(8, out_channels, 3, padding=1)

    def forward(self, x, gamma=None):
        height, width = x.shape[-2:]
        if gamma is not None:
            x = torch.cat([x, gamma], 1)
        x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        h = F.silu(self.conv_in(x))
        coarse = F.silu(self.down(h)).repeat_interleave(2, -2).repeat_interleave(2, -1)
        return self.conv_out(torch.cat([h, coarse], 1))[..., :height, :width]


def _model(task: str, preset: str, device: str):
    from napari_cvdm.checkpoint import ModelInfo
    from napari_cvdm.model import CVDM, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(1, 2 if task == "qpi" else 1, "tiny" if preset == "engine" else preset)
    model = CVDM(config)
    if preset == "engine":
        model.denoiser = LocalNet(1 + config.y_channels, 1, gamma_channels=1)
        model.schedule.spatial_net = LocalNet(config.y_channels, 1)
    if task == "qpi":
        info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                         input_normalization={"mode": "mean"},
                         target_normalization={"mode": "fixed", "low": [0.0], "high": [3.5]})
    else:
        info = ModelInfo(task="sr", config=config, input_pixel_size_um=0.0626, upsampling_factor=2,
                         input_normalization={"mode": "percentile"}, target_normalization={"mode": "percentile"})
    return model.to(device).eval(), info


def predict_case(case: dict) -> dict:
    """Run one reconstruction in this process and measure it."""
    from napari_cvdm.engine import ReconstructionSettings, reconstruct

    torch.set_num_threads(case.get("threads", 1))
    model, info = _model(case["task"], case["preset"], case["device"])
    baseline = _rss_mb()
    tracemalloc.start()
    rng = np.random.default_rng(0)
    size = case["size"]
    shape = (2, size, size) if case["task"] == "qpi" else (size, size)
    settings = ReconstructionSettings(n_samples=case["n_samples"], steps=case["steps"], sampler="ddim",
                                      tile_size=case["tile"], tile_overlap=case["overlap"], device=case["device"],
                                      max_batch=case.get("max_batch"))
    if case["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as memory:
        image = (100 + 10 * rng.standard_normal(shape)).astype(np.float32)
        start = time.perf_counter()
        result = reconstruct(model, info, image, settings)
        elapsed = time.perf_counter() - start
    _, numpy_peak = tracemalloc.get_traced_memory()
    out = {
        **case, "output": list(result.mean.shape), "tiles": result.metadata["tiles"], "seconds": round(elapsed, 1),
        "peak_rss_increase_mb": round(memory.peak - baseline), "numpy_peak_mb": round(numpy_peak / 2**20),
        "output_maps_mb": round(3 * result.mean.nbytes / 2**20),
    }
    if case["device"] == "cuda":
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def _run_case(case: dict) -> dict:
    command = [sys.executable, __file__, "--case", json.dumps(case)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def training_throughput(preset: str, device: str, steps: int) -> float:
    from napari_cvdm.train import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as folder:
        config = TrainConfig(task="sr", preset=preset, patch_size=64, batch_size=8, steps=steps + 1,
                             simulated_images=8, simulated_size=128, validation_fraction=0.0,
                             checkpoint_every=0, device=device, output=f"{folder}/m.safetensors")
        trainer = Trainer(config)
        trainer.train_step(trainer.draw(0))  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            trainer.train_step(trainer.draw(step))
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        trainer.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(predict_case(json.loads(args.case))))
        return

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}; CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads; "
          + (f"GPU {torch.cuda.get_device_name(0)}" if cuda else "no GPU"))

    print("\n## Training throughput (SR, 64² patches, batch 8)\n")
    print("| preset | device | steps/s | patches/s |\n|---|---|---|---|")
    for device in ["cpu"] + (["cuda"] if cuda else []):
        for preset, steps in (("tiny", 5), ("small", 3)) if device == "cpu" else (("tiny", 50), ("small", 50),
                                                                                  ("paper", 20)):
            rate = training_throughput(preset, device, steps)
            print(f"| {preset} | {device} | {rate:.2f} | {8 * rate:.1f} |", flush=True)

    print("\n## Reconstruction memory and time (DDIM, fresh process per row)\n")
    cases = [
        dict(task="qpi", size=1024, preset="tiny", tile=64, overlap=16, n_samples=2, steps=1, device="cpu"),
        dict(task="qpi", size=1024, preset="engine", tile=256, overlap=32, n_samples=2, steps=1, device="cpu"),
        dict(task="sr", size=1024, preset="engine", tile=256, overlap=32, n_samples=2, steps=1, device="cpu"),
        dict(task="qpi", size=4096, preset="engine", tile=256, overlap=32, n_samples=2, steps=1, device="cpu"),
        dict(task="sr", size=4096, preset="engine", tile=256, overlap=32, n_samples=2, steps=1, device="cpu"),
        dict(task="qpi", size=256, preset="small", tile=256, overlap=32, n_samples=8, steps=1, device="cpu"),
        dict(task="qpi", size=256, preset="small", tile=256, overlap=32, n_samples=8, steps=1, device="cpu",
             max_batch=2),
    ]
    if cuda:
        cases += [dict(task=t, size=4096, preset="small", tile=256, overlap=32, n_samples=8, steps=2,
                       device="cuda") for t in ("qpi", "sr")]
    print("| task | input | output | network | tile/overlap | N (per call) | steps | device | tiles | s "
          "| peak RSS +MB | numpy peak MB | 3 output maps MB |")
    print("|---" * 13 + "|")
    for case in cases:
        r = _run_case({**case, "threads": args.threads})
        network = "3-layer conv (engine only)" if r["preset"] == "engine" else r["preset"]
        extra = f" (CUDA peak {r['cuda_peak_mb']} MB)" if "cuda_peak_mb" in r else ""
        print(f"| {r['task']} | {r['size']}² | {r['output'][-1]}² | {network} | {r['tile']}/{r['overlap']} "
              f"| {r['n_samples']} ({r.get('max_batch') or r['n_samples']}) | {r['steps']} | {r['device']} | {r['tiles'][0]}×{r['tiles'][1]} "
              f"| {r['seconds']} | {r['peak_rss_increase_mb']}{extra} | {r['numpy_peak_mb']} "
              f"| {r['output_maps_mb']} |", flush=True)


if __name__ == "__main__":
    main()
