"""The README keeps exactly two fenced set-up commands (the demo and scripts/test): everything
else is prose or a configuration snippet, so a newcomer knows what to copy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from quotagate.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"
SHELL = {"sh", "shell", "bash", "console", "shell-session"}


def test_the_readme_has_exactly_two_fenced_shell_blocks() -> None:
    fences = re.findall(r"^```(\S*)[^\n]*$", README.read_text(), re.MULTILINE)
    openings = fences[::2]  # each block opens and closes with a fence
    assert len(fences) % 2 == 0
    assert [lang for lang in openings if lang in SHELL] == ["sh", "sh"], openings


def test_the_lsearch_config_the_readme_shows_is_what_exim_config_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scenario: a newcomer copies the block the README says `exim-config --lookup lsearch`
    prints. Expected: it is what the command prints for the config the README names.
    Before the fix: the README showed an older router and lookup (no ``no_verify_sender``, no
    ``local+tag@domain``): pasted, the owner of a full mailbox could not send, and tagged
    addresses of a full mailbox got through."""
    text = README.read_text()
    start = text.index("`quotagate exim-config --lookup lsearch` prints:")
    shown = re.search(r"```\n(.*?)```", text[start:], re.S)
    assert shown is not None
    config = tmp_path / "quotagate.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///{tmp_path}/quotagate.db"\n[publish]\nfile = "/etc/exim4/quotagate-overquota"\n'
    )
    assert main(["--config", str(config), "exim-config", "--lookup", "lsearch"]) == 0
    assert capsys.readouterr().out == shown.group(1)
