"""What the packaging tests share: the man pages built once, and reading them as man shows them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from quotagate.manpages import write_pages


@pytest.fixture(scope="session")
def manpath(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MANPATH directory holding the generated pages (man1/quotagate.1, man5/quotagate.toml.5)."""
    root = tmp_path_factory.mktemp("man")
    write_pages(root)
    return root


def rendered(page: Path) -> str:
    """The page as ``man`` shows it, plain text with whitespace collapsed; groff warnings fail."""
    env = {**os.environ, "MANWIDTH": "200", "MAN_KEEP_FORMATTING": "", "LC_ALL": "C.UTF-8"}
    done = subprocess.run(
        ["man", "--warnings=w", "-l", str(page)], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stderr == "", done.stderr
    return " ".join(done.stdout.split())
