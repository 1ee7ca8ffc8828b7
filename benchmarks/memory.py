"""Peak memory of ``reconstruct()`` on a large input (the goal: a 4096² input under 4 GB).

    PYTHONPATH=src nice .venv/bin/python benchmarks/memory.py --size 4096      # ~10 min on 1 loaded core

Each task runs in its own process (peak resident memory, ``ru_maxrss``, is per process). The
engine's own buffers (outputs, the condition and base of the plane, the tiles' running moments
and λ maps) do not depend on the network's size, so the whole image runs through a model of the
``tiny`` preset (untrained, the shipped models' architecture otherwise: residual, TIE or
predictor base, λ at ¼ resolution) with one NFE; the activations of one network call of the
shipped ``small`` models (4 samples of a 256² tile, the default) are measured apart, and the sum
is reported. Also printed: the longest silence between two progress reports.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def engine_run(task: str, size: int) -> dict:
    from napari_cvdm.checkpoint import ModelInfo, load_model
    from napari_cvdm.model import CVDM, ModelConfig
    from napari_cvdm.engine import ReconstructionSettings, reconstruct

    shipped, shipped_info = load_model(ROOT / "models" / f"cvdm-{task}-residual.safetensors", "cpu")
    config = ModelConfig(**{**shipped_info.config.to_dict(), "preset": "tiny"})
    model = CVDM(config).eval()
    info = ModelInfo(**{**shipped_info.__dict__, "config": config})
    rng = np.random.default_rng(0)
    side = size
    image = (rng.poisson(100, (2, side, side)) if task == "qpi" else rng.poisson(100, (side, side))).astype(np.float32)
    before = _peak_mib()
    last, gaps = [time.perf_counter()], []

    def progress(done, total):
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    start = time.perf_counter()
    result = reconstruct(model, info, image, ReconstructionSettings(n_samples=4, steps=1, device="cpu"),
                         progress=progress)
    return {"task": task, "input": list(image.shape), "output": list(result.mean.shape),
            "tiles": result.metadata["tiles"], "seconds": time.perf_counter() - start,
            "peak_mib": _peak_mib(), "peak_before_mib": before, "longest_silence_s": max(gaps)}


def network_call(task: str) -> dict:
    from napari_cvdm.checkpoint import load_model

    model, _ = load_model(ROOT / "models" / f"cvdm-{task}-residual.safetensors", "cpu")
    x, gamma = torch.randn(4, 1, 256, 256), torch.rand(4, 1, 256, 256)
    condition = torch.randn(4, model.config.condition_channels, 256, 256)
    before = _peak_mib()
    with torch.no_grad():
        model.predict_noise(x, condition, gamma)
    return {"task": task, "call_peak_mib": _peak_mib(), "call_before_mib": before}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="input side (pixels)")
    parser.add_argument("--tasks", nargs="+", default=["qpi", "sr"], choices=["qpi", "sr"])
    parser.add_argument("--child", choices=["engine", "call"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.child:
        for task in args.tasks:
            print(json.dumps(engine_run(task, args.size) if args.child == "engine" else network_call(task)))
        return 0
    print(f"device: CPU {platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}")
    for task in args.tasks:
        rows = {}
        for child in ("engine", "call"):
            out = subprocess.run([sys.executable, __file__, "--child", child, "--tasks", task, "--size", str(args.size)],
                                 capture_output=True, text=True, check=True)
            rows[child] = json.loads(out.stdout.strip().splitlines()[-1])
        engine, call = rows["engine"], rows["call"]
        total = engine["peak_mib"] + call["call_peak_mib"] - call["call_before_mib"]
        print(f"{task}: input {engine['input']} → output {engine['output']}, {engine['tiles']} tiles; engine peak "
              f"{engine['peak_mib']:.0f} MiB (tiny network, {engine['seconds']:.0f} s, longest silence "
              f"{engine['longest_silence_s']:.1f} s) + one small-network call "
              f"{call['call_peak_mib'] - call['call_before_mib']:.0f} MiB = {total:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
