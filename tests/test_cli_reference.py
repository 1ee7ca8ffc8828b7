"""docs/cli.md is the parser's own help: regenerated here, any difference fails."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_matches_the_parser():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    page = (ROOT / "docs" / "cli.md").read_text()
    assert page == expected, "docs/cli.md is out of date: run python scripts/cli_reference.py"
