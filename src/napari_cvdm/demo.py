"""A self-contained end-to-end run: train, save, load, sample, write TIFFs.

Trains a tiny CVDM on the Gaussian oracle (:mod:`napari_cvdm.toy`) for a few
steps on the CPU or GPU, saves it as a model file, reloads it, draws N samples
of a held-out input and writes the mean, variance and γ map as TIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch

from .checkpoint import ModelInfo, load_model, save_model
from .model import CVDM, ModelConfig, sample_statistics
from .toy import gaussian_oracle_batch


def run_demo(out_dir: str | Path, steps: int = 200, seed: int = 0, size: int = 32) -> list[Path]:
    """Returns the written paths: model file, mean, variance, γ map, posterior truth."""
    out_dir = Path(out_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    config = ModelConfig(x_channels=1, y_channels=2, preset="tiny", schedule="cvdm")
    model = CVDM(config).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(steps):
        batch = gaussian_oracle_batch(16, size, generator)
        loss = model.loss(batch.x0.to(device), batch.y.to(device)).total
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps}  loss {loss.item():.4f}")

    info = ModelInfo(task="generic", config=config, description="Gaussian-oracle demo model",
                     training={"steps": steps, "data": "napari_cvdm.toy Gaussian oracle", "device": str(device)})
    model_path = save_model(out_dir / "demo.safetensors", model, info)
    model, _ = load_model(model_path, device)

    test = gaussian_oracle_batch(1, 64, torch.Generator().manual_seed(seed + 1))
    stats = sample_statistics(model, test.y.to(device), 8, steps=20, clip=None,
                              generator=torch.Generator(device).manual_seed(seed))
    outputs = {
        "mean": stats.mean, "variance": stats.variance, "gamma_map": stats.gamma_map,
        "true_posterior_mean": test.posterior_mean, "true_posterior_variance": test.posterior_std**2,
    }
    paths = [model_path]
    for name, image in outputs.items():
        path = out_dir / f"{name}.tif"
        tifffile.imwrite(path, image[0, 0].cpu().numpy().astype(np.float32))
        paths.append(path)
    return paths
