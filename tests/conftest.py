import torch

# Tests are tiny; more threads only contend on small CI machines.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture
def residual_qpi_writer():
    """``write(path, base)``: save an untrained tiny residual QPI model with the TIE ``base`` at ``path``."""
    from napari_cvdm.checkpoint import ModelInfo, save_model
    from napari_cvdm.model import CVDM, ModelConfig

    def write(path, base):
        config = ModelConfig(x_channels=1, y_channels=2, preset="tiny", base="physics", residual_scale=0.5,
                             schedule_downsample=4, padding="reflect")
        info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                         input_normalization={"mode": "mean"},
                         target_normalization={"mode": "fixed", "low": [0.0], "high": [3.5]},
                         sampler={"name": "dpm_solver_2m_sde", "steps": 2, "n_samples": 2, "clip": 4.0},
                         base=base.to_dict())
        torch.manual_seed(0)
        return save_model(path, CVDM(config), info)

    return write


def _model_file(path, task: str):
    """A tiny untrained CVDM of ``task`` with slightly perturbed weights (so its samples vary), saved at ``path``."""
    from napari_cvdm.checkpoint import ModelInfo, save_model
    from napari_cvdm.model import CVDM, ModelConfig

    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=2 if task == "qpi" else 1, preset="tiny")
    model = CVDM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    if task == "qpi":
        info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                         input_normalization={"mode": "mean"},
                         target_normalization={"mode": "fixed", "low": [0.0], "high": [3.5]})
    else:
        info = ModelInfo(task="sr", config=config, input_pixel_size_um=0.0626, upsampling_factor=2,
                         input_normalization={"mode": "percentile"}, target_normalization={"mode": "percentile"})
    return save_model(path, model, info)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``{"qpi": path, "sr": path}``: tiny model files shared by the CLI tests."""
    folder = tmp_path_factory.mktemp("models")
    return {task: _model_file(folder / f"{task}.safetensors", task) for task in ("qpi", "sr")}


class PlaneReads:
    """A stack ``(P, ...)`` as a dask array of one chunk per plane (``array``) that records each plane it
    computes: ``reads`` holds ``(plane, thread name)`` in order (under dask's synchronous scheduler a
    plane is computed in the thread that asked for it)."""

    def __init__(self, stack):
        import dask.array as da

        self.reads: list[tuple[int, str]] = []
        chunks = (1, *stack.shape[1:])
        self.array = da.from_array(stack, chunks=chunks).map_blocks(self._read, dtype=stack.dtype,
                                                                      meta=stack[:0])

    def _read(self, block, block_info=None):
        import threading

        self.reads.append((int(block_info[0]["chunk-location"][0]), threading.current_thread().name))
        return block

    def count(self, plane: int) -> int:
        """How many times ``plane`` was computed."""
        return sum(p == plane for p, _ in self.reads)


@pytest.fixture
def plane_reads():
    """``plane_reads(stack)``: a :class:`PlaneReads` lazy copy of ``stack`` that records its plane reads."""
    return PlaneReads


def load_benchmark(name: str):
    """The module ``benchmarks/<name>.py``, with benchmarks/ on the path for its own imports."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def write_photos(folder, side: int):
    """Ten photos (scikit-image's bundled ones) of ``side``² in ``folder``: enough for a split by file."""
    import numpy as np
    from skimage import data, io, transform

    for name in ("camera", "coins", "moon", "text", "page", "horse", "clock", "brick", "grass", "gravel"):
        image = transform.resize(np.asarray(getattr(data, name)(), dtype=float), (side, side), anti_aliasing=True)
        io.imsave(folder / f"{name}.png", (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8))
    return folder
