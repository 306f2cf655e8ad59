"""The README keeps exactly two fenced set-up commands (the demo and scripts/test): everything
else is prose or a configuration snippet, so a newcomer knows what to copy."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
SHELL = {"sh", "shell", "bash", "console", "shell-session"}


def test_the_readme_has_exactly_two_fenced_shell_blocks() -> None:
    fences = re.findall(r"^```(\S*)[^\n]*$", README.read_text(), re.MULTILINE)
    openings = fences[::2]  # each block opens and closes with a fence
    assert len(fences) % 2 == 0
    assert [lang for lang in openings if lang in SHELL] == ["sh", "sh"], openings
