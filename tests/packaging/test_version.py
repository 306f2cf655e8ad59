"""The version has one source, the package metadata built from pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

import quotagate
from quotagate.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version_option_prints_the_installed_metadata_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"quotagate {version('quotagate')}\n"
    assert quotagate.__version__ == version("quotagate")


def test_no_source_file_repeats_the_version() -> None:
    """A second copy of the number would drift from pyproject's at the next release."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    pattern = re.compile(rf"(?<![\d.]){re.escape(declared)}(?![\d.])")
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "src").rglob("*.py") if pattern.search(p.read_text())]
    assert copies == []
