"""benchmarks/qpi_regression.py trains in chunks: a stopped run resumed gives the network of an uninterrupted one."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from conftest import load_benchmark, write_photos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def regression():
    return load_benchmark("qpi_regression")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("photos"), 300)


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
