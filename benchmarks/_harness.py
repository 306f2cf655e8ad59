"""What every benchmark shares: the processes it starts, ports, /proc readings, percentiles, the
signal that stops it. Imported by the benchmark scripts as a sibling module (they run as
``python benchmarks/NAME.py``, which puts this folder on ``sys.path``)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import multiprocessing.process
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"


class Interrupted(Exception):
    """SIGTERM: unwind like Ctrl-C so that everything started is stopped."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Interrupted` in the main thread."""
    signal.signal(signal.SIGTERM, _on_sigterm)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on), None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` from 0 to 1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def best(repeat: int, fn: Callable[[], object]) -> float:
    """The shortest of ``repeat`` timed calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def machine() -> list[str]:
    """The first words of every benchmark's versions line."""
    return [f"{os.cpu_count()} CPUs", f"Linux {platform.release()}", f"Python {platform.python_version()}"]


@dataclass(frozen=True)
class Ran:
    output: str  # stdout then stderr
    seconds: float


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 900) -> Ran:
    """Run ``argv`` to the end; a non-zero exit is a RuntimeError that shows its output."""
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return Ran(done.stdout + done.stderr, time.monotonic() - started)


def exported_source(rev: str, dest: Path) -> str:
    """quotagate as of git revision ``rev``, unpacked under ``dest``: the PYTHONPATH that runs it
    with this virtualenv's Python. The libraries it needs that this virtualenv lacks (pydantic, for
    a revision before the config moved to msgspec) are installed beside it, not here."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "src", "pyproject.toml"], capture_output=True, check=True
    )
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    wanted = tomllib.loads((dest / "pyproject.toml").read_text())["project"].get("dependencies", [])
    missing = [req for req in wanted if not _installed(req)]
    if not missing:
        return str(dest / "src")
    print(f"quotagate@{rev} needs {', '.join(missing)}: installing into {dest / 'deps'}", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(dest / "deps"), *missing]
    run(pip)
    return os.pathsep.join([str(dest / "src"), str(dest / "deps")])


def _installed(requirement: str) -> bool:
    """Whether a distribution of the name ``requirement`` starts with is installed (any version)."""
    name = re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0]
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class Processes:
    """Every process a run started: servers in sessions of their own (stopped as process groups)
    and multiprocessing workers; :meth:`stop_all` on the way out, Ctrl-C included."""

    def __init__(self) -> None:
        self.servers: list[subprocess.Popen[bytes]] = []
        self.workers: list[multiprocessing.process.BaseProcess] = []

    def start(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self.servers.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20) -> tuple[int | None, float]:
        """SIGTERM to the process (Dovecot's master and Exim's daemon stop their children), then
        SIGTERM and, if need be, SIGKILL to whatever is left of the process group it leads:
        (its exit status, seconds it took to stop)."""
        started = time.monotonic()
        if proc.poll() is None:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break  # the group is empty
            deadline = time.monotonic() + timeout / 3
            while time.monotonic() < deadline and _group_alive(proc.pid):
                time.sleep(0.05)
        if proc.poll() is None:
            proc.wait(timeout=timeout)
        if proc in self.servers:
            self.servers.remove(proc)
        return proc.returncode, time.monotonic() - started

    def stop_worker(self, worker: multiprocessing.process.BaseProcess) -> None:
        if worker.is_alive():
            worker.terminate()
        worker.join(10)
        if worker.is_alive():
            worker.kill()
            worker.join(5)
        if worker in self.workers:
            self.workers.remove(worker)

    def stop_all(self) -> None:
        for worker in list(self.workers):
            self.stop_worker(worker)
        for proc in reversed(list(self.servers)):
            self.stop(proc)
