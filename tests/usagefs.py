"""Calling quotagate's descriptor-based readers on a plain path, for tests that build spools by path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quotagate.usage import maildir, maildirsize, safefs

PathLike = str | bytes | Path


@contextmanager
def dir_fd(path: PathLike) -> Iterator[int]:
    fd = os.open(path, safefs.DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def read_maildirsize(root: PathLike, owner: int | None = None) -> maildirsize.Parsed | None:
    with dir_fd(root) as fd:
        return maildirsize.read(fd, owner)


def folder_stamp(folder: PathLike) -> maildir.Stamp:
    with dir_fd(folder) as fd:
        return maildir.stamp(fd)
