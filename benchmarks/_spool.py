"""What the benchmarks' generated spools share: sparse message files, and a spool kept between runs.

A spool is reused when the marker file in it holds the same parameters; otherwise it is built in a
staging folder (marked as such from the first moment) and renamed into place, so a build that was
interrupted is never taken for a finished one, and a folder that is not ours is never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def write_message(path: str, size: int, header: bytes, owner: int | None = None) -> None:
    """A message file of ``size`` bytes: ``header`` then a hole, so the apparent size is right and
    the disk use one block; owned by uid and gid ``owner`` when given."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, header[:size])
        os.ftruncate(fd, size)
        if owner is not None:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)


def keep(root: Path, params: Mapping[str, object], marker: str, build: Callable[[Path], None]) -> bool:
    """Make sure ``root`` holds the spool for ``params``; True when an earlier one was reused.

    ``build(staging)`` writes the spool into ``staging``, a folder that already exists.
    """
    partial = f"{marker}.partial"
    try:
        found = json.loads((root / marker).read_text())
    except (OSError, ValueError):
        found = None
    if found == params:
        return True
    if root.exists():
        if found is None:
            sys.exit(f"{root} exists without {marker}: not ours, refusing to touch it")
        shutil.rmtree(root)
    staging = root.with_name(root.name + ".partial")
    if staging.exists():
        if not (staging / partial).exists():
            sys.exit(f"{staging} exists and is not ours: refusing to touch it")
        shutil.rmtree(staging)
    staging.mkdir(parents=True, mode=0o755)
    (staging / partial).touch()
    build(staging)
    (staging / marker).write_text(json.dumps(params))
    (staging / partial).unlink()
    staging.rename(root)
    return False
