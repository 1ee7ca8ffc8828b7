"""benchmarks/qpi_regression.py trains in chunks: a stopped run resumed gives the network of an uninterrupted one."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def regression():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("qpi_regression", ROOT / "benchmarks" / "qpi_regression.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from skimage import data, io, transform

    folder = tmp_path_factory.mktemp("photos")
    for name in ("camera", "coins", "moon", "text", "page", "horse", "clock", "brick", "grass", "gravel"):
        image = transform.resize(np.asarray(getattr(data, name)(), dtype=float), (300, 300), anti_aliasing=True)
        io.imsave(folder / f"{name}.png", (255 * (image - image.min()) / np.ptp(image)).astype(np.uint8))
    return folder


def _args(out, photos, **changes):
    args = SimpleNamespace(out=out, model=ROOT / "models" / "cvdm-qpi-residual.safetensors", source_images=photos,
                           steps=4, simulated_images=2, noise_map=False, seed=0, overwrite=False, resume=False,
                           chunk_steps=0)
    for name, value in changes.items():
        setattr(args, name, value)
    return args


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_two_chunks_give_the_uninterrupted_network(regression, photos, tmp_path, one_thread):
    regression.train_regression(_args(tmp_path / "whole", photos))
    regression.train_regression(_args(tmp_path / "chunks", photos, chunk_steps=2))
    with pytest.raises(SystemExit, match="--resume"):  # a second start without --resume replaces nothing
        regression.train_regression(_args(tmp_path / "chunks", photos, chunk_steps=2))
    with pytest.raises(SystemExit, match="other seed"):
        regression.train_regression(_args(tmp_path / "chunks", photos, resume=True, seed=1))
    regression.train_regression(_args(tmp_path / "chunks", photos, chunk_steps=2, resume=True))
    whole = load_file(str(tmp_path / "whole" / "regression.safetensors"))
    chunks = load_file(str(tmp_path / "chunks" / "regression.safetensors"))
    assert whole.keys() == chunks.keys()
    for name in whole:
        torch.testing.assert_close(chunks[name], whole[name], rtol=0, atol=0, msg=name)
    with pytest.raises(SystemExit, match="complete"):
        regression.train_regression(_args(tmp_path / "chunks", photos, resume=True))
