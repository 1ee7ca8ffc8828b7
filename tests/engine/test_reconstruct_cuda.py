"""The CUDA path of ``reconstruct`` (marker ``cuda``: skipped without a device; benchmarks/gpu_check.sh runs them)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_cvdm.checkpoint import load_model
from napari_cvdm.errors import InputError
from napari_cvdm.engine import ReconstructionSettings, reconstruct, resolve_device

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QPI_MODEL = Path(__file__).resolve().parents[2] / "models" / "cvdm-qpi-small.safetensors"


def _stack(size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    base = 1.0 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    return np.stack([base + 0.05 * rng.standard_normal(base.shape),
                     base[::-1] + 0.05 * rng.standard_normal(base.shape)]).astype(np.float32)


def _mean(device: str, **options) -> np.ndarray:
    model, info = load_model(QPI_MODEL, device)
    settings = ReconstructionSettings(n_samples=2, steps=4, tile_size=None, device=device, **options)
    result = reconstruct(model, info, _stack(), settings)
    assert result.metadata["device"].startswith(device.split(":")[0])
    assert np.isfinite(result.mean).all() and np.isfinite(result.variance).all()
    return result.mean


@pytest.fixture
def no_tf32():
    """fp32 convolutions without TF32 (PyTorch's cuDNN default), so CUDA fp32 is CPU fp32 up to rounding."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = saved


def test_cuda_fp32_reconstructs_what_the_cpu_does(no_tf32):
    cpu = _mean("cpu", precision="fp32")
    np.testing.assert_allclose(_mean("cuda", precision="fp32"), cpu, atol=2e-3)  # same position-keyed noise
    np.testing.assert_allclose(_mean("cuda", precision="fp32", channels_last=True), cpu, atol=2e-3)


def test_bf16_on_cuda_stays_near_fp32():
    fp32 = _mean("cuda", precision="fp32")
    bf16 = _mean("cuda", precision="bf16")
    assert np.abs(bf16 - fp32).mean() < 0.05  # radians; bf16 keeps ~3 significant digits per activation


def test_auto_picks_cuda_and_a_missing_gpu_index_is_an_input_error():
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(InputError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")
