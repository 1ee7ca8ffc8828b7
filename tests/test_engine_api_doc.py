"""docs/engine_api.md quotes the real signatures of the API a front end calls."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from napari_cvdm.acquisition import Acquisition
from napari_cvdm.checkpoint import load_model
from napari_cvdm.engine import ReconstructionSettings, reconstruct
from napari_cvdm.io import read_image
from napari_cvdm.model.samplers import SamplingOptions, sample, sample_statistics
from napari_cvdm.predict import Hooks, predict

PAGE = Path(__file__).resolve().parents[1] / "docs" / "engine_api.md"


def plain_signature(obj) -> str:
    """``name(a, b=1, *, c=None)``: the signature without annotations, as the page writes it."""
    parts, star = [], False
    for parameter in inspect.signature(obj).parameters.values():
        if parameter.kind is parameter.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        default = parameter.default
        if default is parameter.empty:
            parts.append(parameter.name)
        else:
            if dataclasses.is_dataclass(default) and default == type(default)():
                text = f"{type(default).__name__}()"  # a default-constructed options object
            else:
                text = "frozenset()" if default == frozenset() else repr(default).replace("'", '"')
            parts.append(f"{parameter.name}={text}")
    return f"{obj.__name__}({', '.join(parts)})"


@pytest.mark.parametrize("obj", [predict, Acquisition, Hooks, reconstruct, ReconstructionSettings, SamplingOptions,
                                 sample, sample_statistics, load_model, read_image],
                         ids=lambda obj: obj.__name__)
def test_the_page_quotes_the_signature(obj):
    expected = plain_signature(obj)
    assert expected in PAGE.read_text(), f"docs/engine_api.md should quote `{expected}`"
