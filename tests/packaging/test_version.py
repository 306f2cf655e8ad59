"""The version has one source, ``quotagate.__version__``, which the package metadata is built from."""

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


def test_no_other_file_repeats_the_version() -> None:
    """A second copy of the number would drift from the first at the next release."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "quotagate.__version__"}
    pattern = re.compile(rf"(?<![\d.]){re.escape(quotagate.__version__)}(?![\d.])")
    sources = [ROOT / "pyproject.toml", *(ROOT / "src").rglob("*.py")]
    copies = [str(p.relative_to(ROOT)) for p in sources if pattern.search(p.read_text())]
    assert copies == ["src/quotagate/__init__.py"]
