import json
import pickle
import re
import struct

import pytest
import torch
from safetensors.torch import save_file

from napari_cvdm import cli
from napari_cvdm.checkpoint import FORMAT_VERSION, ModelInfo, load_model, read_model_info, save_model
from napari_cvdm.errors import ModelFileError
from napari_cvdm.model import CVDM, ModelConfig, SamplingOptions, sample


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
    first = sample(model, y, SamplingOptions(steps=3), generator=torch.Generator().manual_seed(1))
    second = sample(loaded, y, SamplingOptions(steps=3), generator=torch.Generator().manual_seed(1))
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


def test_base_and_calibration_round_trip(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig(x_channels=1, y_channels=1, preset="tiny")
    info = ModelInfo(task="sr", config=config, upsampling_factor=2,
                     base={"kind": "wiener", "strength": 0.1}, calibration={"scale": [1.3]})
    path = save_model(tmp_path / "m.safetensors", CVDM(config), info)
    assert read_model_info(path) == info
    assert ModelInfo(task="sr", config=config).base == {}  # optional, empty by default


def _write_raw_header(path, header: dict) -> None:
    """A file whose safetensors header is ``header`` (written by hand: safetensors refuses to)."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(400))


@pytest.mark.parametrize("entry", [{"dtype": "F32", "shape": [100], "data_offsets": 5},
                                   {"dtype": "F32", "shape": [100], "data_offsets": ["0", "400"]},
                                   {"dtype": "F32", "shape": [100], "data_offsets": [0, 4000]},
                                   {"dtype": "F99", "shape": [100], "data_offsets": [0, 400]}])
def test_a_hostile_safetensors_header_is_refused(tmp_path, entry):
    path = tmp_path / "hostile.safetensors"
    _write_raw_header(path, {"__metadata__": {"napari_cvdm": "{}"}, "weight": entry})
    _assert_rejected(path, "not a napari-cvdm model file", "header is invalid")
    with pytest.raises(ModelFileError, match="header is invalid"):
        read_model_info(path)


def _with(key, value):
    """Metadata edit: set ``key`` (``a.b`` reaches into a nested mapping) to ``value``."""
    def edit(meta):
        *parents, leaf = key.split(".")
        target = meta
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return edit


def _without(key):
    return lambda meta: meta.pop(key)


HOSTILE_METADATA = {
    "format_version huge": (_with("format_version", 1e999), "format_version"),
    "format_version string": (_with("format_version", "1"), "format_version"),
    "format_version bool": (_with("format_version", True), "format_version"),
    "format_version missing": (_without("format_version"), "format_version"),
    "sampler a string": (_with("sampler", "fast"), "sampler"),
    "sampler steps negative": (_with("sampler.steps", -3), "sampler.steps"),
    "sampler steps huge": (_with("sampler.steps", 10**20), "sampler.steps"),
    "sampler steps float": (_with("sampler.steps", 2.5), "sampler.steps"),
    "sampler n_samples zero": (_with("sampler.n_samples", 0), "sampler.n_samples"),
    "sampler eta nan": (_with("sampler.eta", float("nan")), "sampler.eta"),
    "sampler clip negative": (_with("sampler.clip", -1.0), "sampler.clip"),
    "x_channels fractional": (_with("config.x_channels", 1.5), "x_channels"),
    "x_channels zero": (_with("config.x_channels", 0), "x_channels"),
    "config unknown preset": (_with("config.preset", "huge"), "preset"),
    "config unknown field": (_with("config.bogus", 1), "bogus"),
    "config a list": (_with("config", [1, 2]), "config"),
    "pixel size negative": (_with("input_pixel_size_um", -0.5), "input_pixel_size_um"),
    "pixel size zero": (_with("input_pixel_size_um", 0), "input_pixel_size_um"),
    "pixel size nan": (_with("input_pixel_size_um", float("nan")), "input_pixel_size_um"),
    "pixel size string": (_with("input_pixel_size_um", "0.2"), "input_pixel_size_um"),
    "upsampling 1000": (_with("upsampling_factor", 1000), "upsampling_factor"),
    "upsampling zero": (_with("upsampling_factor", 0), "upsampling_factor"),
    "upsampling float": (_with("upsampling_factor", 2.0), "upsampling_factor"),
    "task unknown": (_with("task", "denoise"), "task"),
    "task missing": (_without("task"), "task"),
    "training a list": (_with("training", [1]), "training"),
    "base a string": (_with("base", "wiener"), "base"),
    "unknown field": (_with("colour", "red"), "colour"),
}


@pytest.mark.parametrize("case", list(HOSTILE_METADATA))
def test_hostile_metadata_gives_one_sentence_naming_the_field(tmp_path, case, capsys):
    edit, field_name = HOSTILE_METADATA[case]
    model, info, _ = _saved(tmp_path)
    meta = info.to_dict()
    edit(meta)
    path = tmp_path / "hostile.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
              metadata={"napari_cvdm": json.dumps(meta)})
    message = _assert_rejected(path, field_name)
    with pytest.raises(ModelFileError, match=re.escape(field_name)):
        read_model_info(path)
    assert cli.main(["info", str(path)]) == 2  # `cvdm info` reports it, no traceback
    error_lines = capsys.readouterr().err.strip().splitlines()
    assert error_lines == [f"cvdm info: error: {message}"]


@pytest.mark.parametrize("text", ["not json", "[1, 2]", "null", "[" * 100_000])
def test_metadata_that_is_not_a_json_object(tmp_path, text):
    path = tmp_path / "odd.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"napari_cvdm": text})
    _assert_rejected(path, "unreadable napari-cvdm metadata")


def test_a_model_that_would_be_refused_is_never_written(tmp_path):
    config = ModelConfig(x_channels=1, y_channels=1, preset="tiny")
    info = ModelInfo(task="sr", config=config, upsampling_factor=1000)
    with pytest.raises(ValueError, match="upsampling_factor"):
        save_model(tmp_path / "m.safetensors", CVDM(config), info)
    assert not list(tmp_path.iterdir())
