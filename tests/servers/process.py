"""Running a private server process as its own system user, on loopback, until the tests end."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A loopback port nothing listens on right now, for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_dir(prefix: str, owner: str | None = None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"quotagate-{prefix}-", dir="/var/tmp"))
    path.chmod(0o755)
    if owner is not None and os.geteuid() == 0:
        shutil.chown(path, owner, owner)
    return path


def run_as(user: str | None, args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command as ``user`` (when we are root), raising with its output on failure."""
    cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *args] if _switch(user) else args
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done  # type: ignore[no-any-return]


def spawn_as(user: str | None, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *args] if _switch(user) else args
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _switch(user: str | None) -> bool:
    if user is None or os.geteuid() != 0:
        return False
    pwd.getpwnam(user)
    return True


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 60, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server did not listen on {host}:{port}:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
