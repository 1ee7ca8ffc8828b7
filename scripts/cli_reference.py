"""Write docs/cli.md, the reference of every `cvdm` command, from the parser itself.

    python scripts/cli_reference.py            # rewrite docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 if docs/cli.md differs from the parser

tests/test_cli_reference.py runs the check, so the page cannot fall behind the code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "cli.md"
WIDTH = "100"  # help text wrapped at a fixed width, whatever the terminal


def render() -> str:
    os.environ["COLUMNS"] = WIDTH
    sys.path.insert(0, str(ROOT / "src"))
    from napari_cvdm.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# `cvdm` command reference", "",
             "Generated from the parser by `python scripts/cli_reference.py`; do not edit by hand "
             "(`tests/test_cli_reference.py` fails when this page and the code differ). How to use the commands "
             "together: [command-line.md](command-line.md).", "",
             "| command | what it does |", "|---|---|"]
    helps = {choice.dest: choice.help for choice in commands._choices_actions}
    for name in commands.choices:
        lines.append(f"| [`cvdm {name}`](#cvdm-{name}) | {helps.get(name) or ''} |")
    lines += ["", "```text", parser.format_help().rstrip(), "```"]
    for name, sub in commands.choices.items():
        lines += ["", f"## cvdm {name}", "", "```text", sub.format_help().rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    check = "--check" in sys.argv[1:]
    text = render()
    if check:
        if not PAGE.is_file() or PAGE.read_text() != text:
            print(f"{PAGE} differs from the parser: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
