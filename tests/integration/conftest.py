"""Fixtures for measuring spools: a directory everyone can traverse, and running code without privileges.

Root reads a ``chmod 000`` folder anyway, so "unreadable" must be tested as another user: when the
tests run as root, :func:`as_nobody` forks a child that drops to uid/gid 65534 and sends the
result back pickled over a pipe.
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.scanenv import Env

NOBODY = 65534


def as_nobody(fn: Callable[[], Any]) -> Any:
    """``fn()`` run without root's power to read anything; its result (or exception) comes back.

    The child cannot import modules from directories only root may read (the interpreter may
    live under /root): import or use everything ``fn`` needs once before calling this.
    """
    if os.geteuid() != 0:
        return fn()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                outcome: tuple[str, Any] = ("value", fn())
            except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
                outcome = ("error", exc)
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(outcome, pipe)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the unprivileged child failed"
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    return value


def make_unreadable(path: str | bytes | Path) -> None:
    os.chmod(path, 0)


def _open_up(base: str) -> None:
    """Every directory 0o755 and every file 0o644, so that uid 65534 may read what it should."""
    os.chmod(base, 0o755)
    for dirpath, dirnames, filenames in os.walk(base):
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
        for f in filenames:
            full = os.path.join(dirpath, f)
            if not os.path.islink(full) and stat.S_ISREG(os.lstat(full).st_mode):
                os.chmod(full, 0o644)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A fresh directory under /tmp that uid 65534 can traverse (pytest's tmp_path is 0o700)."""
    base = tempfile.mkdtemp(prefix="quotagate-spool-", dir="/tmp")
    os.chmod(base, 0o755)
    try:
        yield Path(base)
    finally:
        for dirpath, dirnames, _ in os.walk(base):  # let a non-root owner delete 000 folders
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if not os.path.islink(full):
                    os.chmod(full, 0o755)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def open_up() -> Callable[[str | Path], None]:
    """Make a spool readable by uid 65534: call it after building, before removing permissions."""
    return lambda base: _open_up(str(base))


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Make a directory read-only even for root (a read-only bind mount); undone afterwards."""
    mounted: list[Path] = []

    def make(directory: Path) -> None:
        if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(directory), str(directory)]).returncode != 0:
            pytest.skip("a read-only bind mount needs root")
        mounted.append(directory)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(directory)], check=True)

    yield make
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=False)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A spool, a config and a store in ``tmp_path`` (see :class:`tests.integration.scanenv.Env`)."""
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close()
