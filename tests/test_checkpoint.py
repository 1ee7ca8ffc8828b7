import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from napari_cvdm.checkpoint import FORMAT_VERSION, ModelInfo, load_model, read_model_info, save_model
from napari_cvdm.errors import ModelFileError
from napari_cvdm.model import CVDM, ModelConfig, sample


def _saved(tmp_path, **kwargs):
    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=2, preset="tiny", schedule="cvdm")
    model = CVDM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    info = ModelInfo(task="qpi", config=config, input_pixel_size_um=0.21, target_unit="rad",
                     target_normalization={"low": [0.0], "high": [3.5]})
    path = save_model(tmp_path / "model.safetensors", model, info, **kwargs)
    return model, info, path


def test_save_then_load_gives_identical_outputs(tmp_path):
    model, info, path = _saved(tmp_path)
    loaded, loaded_info = load_model(path)
    assert loaded_info == info
    y = torch.randn(1, 2, 10, 10)
    first = sample(model, y, steps=3, generator=torch.Generator().manual_seed(1))
    second = sample(loaded, y, steps=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, second)
    assert not list(tmp_path.glob("*.tmp"))


def test_half_precision_file_is_smaller_and_loads_as_float32(tmp_path):
    _, _, full = _saved(tmp_path / "a")
    _, _, half = _saved(tmp_path / "b", dtype=torch.float16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, _ = load_model(half)
    assert next(loaded.parameters()).dtype == torch.float32


def test_metadata_can_be_read_without_the_weights(tmp_path):
    _, info, path = _saved(tmp_path)
    assert read_model_info(path).task == "qpi"
    assert read_model_info(path).output_pixel_size_um == pytest.approx(0.21)


def _assert_rejected(path, *words):
    with pytest.raises(ModelFileError) as error:
        load_model(path)
    message = str(error.value)
    assert path.name in message or str(path) in message
    assert "\n" not in message
    for word in words:
        assert word in message
    return message


def test_missing_file(tmp_path):
    _assert_rejected(tmp_path / "nothing.safetensors", "not found")


def test_corrupt_file(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    _assert_rejected(path, "not a napari-cvdm model")


def test_truncated_file(tmp_path):
    _, _, path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_rejected(path, "truncated")
    with pytest.raises(ModelFileError, match="truncated"):
        read_model_info(path)  # the header-only read notices it too


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    _assert_rejected(path, "not a napari-cvdm model")


def test_newer_format_version(tmp_path):
    model, info, _ = _saved(tmp_path)
    meta = info.to_dict() | {"format_version": FORMAT_VERSION + 1}
    path = tmp_path / "future.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"napari_cvdm": json.dumps(meta)})
    _assert_rejected(path, "newer")


def test_weights_that_do_not_match_the_declared_architecture(tmp_path):
    model, info, _ = _saved(tmp_path)
    path = tmp_path / "mismatch.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.pop("denoiser.input_conv.weight")
    save_file(state, str(path), metadata={"napari_cvdm": json.dumps(info.to_dict())})
    _assert_rejected(path, "does not match")


class _Payload:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_a_pickle_is_never_executed(tmp_path):
    payload = _Payload()
    payload.marker = str(tmp_path / "executed")
    for name in ["model.safetensors", "model.pt"]:
        path = tmp_path / name
        path.write_bytes(pickle.dumps(payload))
        _assert_rejected(path)
    assert not (tmp_path / "executed").exists()
