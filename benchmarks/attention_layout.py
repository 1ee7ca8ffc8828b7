"""The bottleneck attention's memory layout: one network call, strided (stop 16) vs contiguous q, k, v.

    PYTHONPATH=src nice .venv/bin/python benchmarks/attention_layout.py     # ~1 min here

With a strided head dimension ``scaled_dot_product_attention`` falls back to PyTorch's math
kernel, which materialises the tokens × tokens matrix; contiguous q, k, v take the fused
(flash) kernel. For each shipped residual model: one call of the denoiser on 4 samples of a
256² tile (the engine's default call), the two layouts in alternating pairs in one process
(ratio per pair, > 1: contiguous faster), the largest difference of their outputs, and the
peak resident memory each call adds (a child process per layout: ``ru_maxrss`` is per process).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_cvdm.checkpoint import load_model  # noqa: E402
from napari_cvdm.model.unet import SelfAttention2d  # noqa: E402


def strided_forward(self: SelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """The stop-16 code path: q, k, v as transposed views (head dimension strided)."""
    b, c, h, w = x.shape
    q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
    attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
    return x + self.out(attended.transpose(-1, -2).reshape(b, c, h, w))


def _inputs(model, batch: int, side: int):
    generator = torch.Generator().manual_seed(0)
    shape = (batch, model.config.x_channels, side, side)
    condition = torch.randn(batch, model.config.condition_channels, side, side, generator=generator)
    return torch.randn(shape, generator=generator), condition, torch.rand(shape, generator=generator)


@torch.no_grad()
def call(model, layout: str, batch: int, side: int) -> tuple[float, torch.Tensor]:
    inputs = _inputs(model, batch, side)
    strided = layout == "strided"
    patch = mock.patch.object(SelfAttention2d, "forward", strided_forward) if strided else contextlib.nullcontext()
    with patch:
        start = time.perf_counter()
        out = model.predict_noise(*inputs)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", nargs=2, metavar=("TASK", "LAYOUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        model, _ = load_model(ROOT / "models" / f"cvdm-{args.child[0]}-residual.safetensors", "cpu")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        call(model, args.child[1], args.batch, args.side)
        print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before))
        return 0
    print(f"device: CPU {platform.processor() or platform.machine()}, {args.threads} thread(s), torch "
          f"{torch.__version__}; one call on {args.batch} × {args.side}²")
    print("| model | strided s | contiguous s | ratio per pair | max abs Δ | MiB added: strided | contiguous |")
    print("|---|---|---|---|---|---|---|")
    # children first: Linux keeps ru_maxrss across fork and exec, so a child started from a
    # parent that has already run the network would inherit the parent's peak
    memories = {task: {layout: json.loads(subprocess.run(
        [sys.executable, __file__, "--child", task, layout, "--batch", str(args.batch), "--side", str(args.side),
         "--threads", str(args.threads)], capture_output=True, text=True, check=True).stdout)
        for layout in ("strided", "contiguous")} for task in ("qpi", "sr")}
    for task in ("qpi", "sr"):
        model, _ = load_model(ROOT / "models" / f"cvdm-{task}-residual.safetensors", "cpu")
        call(model, "contiguous", 1, 64)  # load the kernels once
        times, ratios, delta = {"strided": [], "contiguous": []}, [], 0.0
        for _ in range(args.pairs):
            (old, old_out), (new, new_out) = (call(model, layout, args.batch, args.side)
                                              for layout in ("strided", "contiguous"))
            times["strided"].append(old)
            times["contiguous"].append(new)
            ratios.append(old / new)
            delta = max(delta, float((old_out - new_out).abs().max()))
        memory = memories[task]
        print(f"| {task} | {min(times['strided']):.2f} | {min(times['contiguous']):.2f} | "
              f"{', '.join(f'{r:.2f}' for r in ratios)} | {delta:.1e} | {memory['strided']:.0f} | "
              f"{memory['contiguous']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
