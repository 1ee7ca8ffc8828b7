"""scripts/train_gpu.sh, the one-command GPU recipe, run on the CPU with tiny settings."""

import os
import subprocess
import sys
from pathlib import Path

from napari_cvdm.checkpoint import read_model_info

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_recipe_trains_both_models(tmp_path):
    cvdm = Path(sys.executable).with_name("cvdm")
    env = {**os.environ, "PRESET": "tiny", "STEPS": "2", "BATCH": "2", "PATCH": "32", "DEVICE": "cpu",
           "IMAGES": "4", "SIZE": "64", "CVDM": str(cvdm)}
    subprocess.run(["bash", str(ROOT / "scripts" / "train_gpu.sh"), str(tmp_path)], env=env, check=True,
                   capture_output=True, timeout=600)
    for task in ("qpi", "sr"):
        info = read_model_info(tmp_path / f"cvdm-{task}-gpu.safetensors")
        assert info.task == task and info.config.formulation == "residual" and info.training["steps"] == 2
    assert read_model_info(tmp_path / "cvdm-qpi-gpu.safetensors").config.base == "physics_predictor"
