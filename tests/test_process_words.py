"""The product speaks of what it does, not of how it was made: no rounds of work, issue
numbers or which machines were available, in the README, docs, model cards, scripts,
benchmarks or the package source. ("Round" and "stop" as ordinary words are fine.)"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATTERNS = (r"\bstops? \d+", r"\bissue #?\d+", r"\blent\b", r"no GPU was", r"this session", r"review commit")
WORDS = re.compile("|".join(f"(?:{p})" for p in PATTERNS), re.IGNORECASE)
SUFFIXES = {".md", ".py", ".sh", ".toml", ".yaml", ".yml", ".txt", ".cfg"}


def _files():
    yield ROOT / "README.md"
    for folder in ("docs", "models", "scripts", "benchmarks", "src"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts:
                yield path


def test_the_words_are_caught():
    for text in ("stop 24", "Stops 19", "issue 17", "issue #5", "no device was lent", "no GPU was available",
                 "trained in this session", "review commit abc"):
        assert WORDS.search(text), text
    for text in ("Stop finishes the current step", "rounds of samples", "a stopped run", "issues a warning"):
        assert not WORDS.search(text), text


@pytest.mark.parametrize("path", list(_files()), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_process_words(path):
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if WORDS.search(line)]
    assert not hits, "words about how the project was made:\n" + "\n".join(hits)
