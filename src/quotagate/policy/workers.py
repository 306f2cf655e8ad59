"""``serve --workers N``: N daemons answering on the same sockets, supervised by one process.

The supervisor binds every ``[policy] listen`` socket once and starts N workers (each a
``quotagate serve`` of its own, started afresh with ``exec``: nothing of the supervisor's threads
or state leaks into them), handing them the sockets; the kernel gives each new connection to
whichever worker accepts first, so a busy worker takes fewer. One shared accept queue rather
than one ``SO_REUSEPORT`` socket per worker: the connections waiting for a worker that dies
stay in the queue for the others, instead of being reset with it.

The workers keep their reservations in ``[shared] url`` (Redis), as daemons on several MX hosts
do: a transaction's RCPT, its DATA and its end may each reach another worker. Without it each
worker would hold room the others cannot see, and together they would accept up to N times a
mailbox's room: more than one worker without ``[shared]`` is refused at start.

The supervisor tells systemd when every worker is ready, forwards SIGHUP (each worker reloads)
and SIGTERM (each drains), restarts a worker that dies, and one whose event loop stops sending
its heartbeat (a loop stuck in a blocking call) after killing it. It serves the workers' metrics
added up (:mod:`quotagate.policy.fleetmetrics`). Only the first worker follows the spool
([watch] enabled: the others weigh its readings through Redis) and answers the control socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from quotagate.config import Config, ConfigError
from quotagate.errors import StartupError
from quotagate.policy.daemon import WorkerRole
from quotagate.policy.fleetmetrics import FleetCollector
from quotagate.policy.listeners import Listener, bind_listeners, close_all, serve_metrics
from quotagate.sdnotify import MORE_TIME, more_time, notify, watchdog_interval

log = logging.getLogger(__name__)

# A worker's event loop sends a heartbeat every second; silent this long, it is stuck.
STUCK_SECONDS = 20.0
# A restarted worker not ready this long after it started (loading the store, connecting) is stuck
# too. Only after the first start: until every worker is ready, systemd's TimeoutStartSec rules.
START_SECONDS = 300.0
# A worker that ran at least this long before it died is restarted at once; one that keeps
# dying sooner waits 1, 2, 4 ... up to MAX_BACKOFF seconds between attempts.
_HEALTHY_SECONDS = 10.0
_MAX_BACKOFF = 30.0
_MESSAGES = {"READY=1": b"R", "WATCHDOG=1": b"W"}


def check_workers(config: Config, count: int) -> None:
    """More than one worker needs the shared state: a ConfigError saying so otherwise."""
    if count > 1 and config.shared.url is None:
        raise ConfigError(
            f"{count} workers need [shared] url (a Redis) to share reservations: each would otherwise "
            f"hold room the others cannot see, and together they could accept {count} times a mailbox's "
            "room; set [shared] url, or run one worker"
        )


# -- the worker's side -------------------------------------------------------------------------
def worker_spec(index: int, count: int, listeners: Sequence[Listener], pipe: int, metrics_file: Path | None) -> str:
    """What a worker is told on its command line (hidden option ``serve --worker``)."""
    return json.dumps(
        {
            "index": index,
            "count": count,
            "listeners": [[listener.sock.fileno(), listener.name] for listener in listeners],
            "pipe": pipe,
            "metrics_file": None if metrics_file is None else str(metrics_file),
        }
    )


def worker_role(spec: str) -> WorkerRole:
    """The role a worker was given by its supervisor (inherited descriptors)."""
    data = json.loads(spec)
    listeners = [Listener(socket.socket(fileno=fd), name) for fd, name in data["listeners"]]
    for listener in listeners:
        listener.sock.setblocking(False)
    pipe = int(data["pipe"])

    def report(state: str) -> None:
        message = _MESSAGES.get(state)
        if message is not None:
            try:
                os.write(pipe, message)
            except BlockingIOError:  # the supervisor is behind: a heartbeat more or less changes nothing
                return
            except BrokenPipeError:
                os.kill(os.getpid(), signal.SIGTERM)  # the supervisor is gone: stop too

    os.set_blocking(pipe, False)
    metrics_file = data["metrics_file"]
    metrics_path = None if metrics_file is None else Path(metrics_file)
    return WorkerRole(int(data["index"]), listeners, report, metrics_path, int(data["count"]))


# -- the supervisor's side ---------------------------------------------------------------------
@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    pipe: int  # read end: R when ready, W every second after
    started: float
    ready: bool = False
    last_seen: float = 0.0


class Supervisor:
    """Starts, watches and stops the workers; ``command`` starts one (``quotagate … serve``)."""

    def __init__(self, config: Config, count: int, command: list[str]) -> None:
        check_workers(config, count)
        self.config = config
        self.count = count
        self.command = command
        self.workers: dict[int, _Worker] = {}
        self._failures = dict.fromkeys(range(count), 0)
        self._due: dict[int, float] = {}  # restarts waiting for their backoff
        self._signals: list[int] = []
        self._selector = selectors.DefaultSelector()
        self._listeners: list[Listener] = []
        self._folder = Path(tempfile.mkdtemp(prefix="quotagate-workers-"))
        self._fleet = FleetCollector(self._folder)
        registry = CollectorRegistry()
        registry.register(self._fleet)
        self.registry = registry
        running = Gauge("quotagate_policy_workers", "Workers of serve --workers answering", registry=registry)
        running.set_function(lambda: sum(w.ready for w in list(self.workers.values())))
        self._restarts = Counter(
            "quotagate_policy_worker_restarts",
            "Workers restarted, by cause (died: exited or killed; stuck: its event loop stopped)",
            ["cause"],
            registry=registry,
        )

    # -- workers -------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        metrics = self._fleet.path(index) if self.config.policy.metrics else None
        spec = worker_spec(index, self.count, self._listeners, write, metrics)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_SOCKET", "WATCHDOG_"))}
        fds = [listener.sock.fileno() for listener in self._listeners] + [write]
        try:
            process = subprocess.Popen([*self.command, "--worker", spec], pass_fds=fds, env=env)
        except OSError:
            os.close(read)
            raise
        finally:
            os.close(write)
        worker = _Worker(index, process, read, time.monotonic())
        self.workers[index] = worker
        self._selector.register(read, selectors.EVENT_READ, worker)

    def _heard(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.pipe, 4096)
        except BlockingIOError:
            return
        if not data:  # the worker is gone (its exit is reaped by _reap)
            self._selector.unregister(worker.pipe)
            os.close(worker.pipe)
            worker.pipe = -1
            return
        worker.last_seen = time.monotonic()
        if b"R" in data:
            worker.ready = True

    def _reap(self, stopping: bool) -> list[_Worker]:
        """Workers that exited: forgotten, their metrics kept; restarts scheduled unless stopping."""
        gone = [w for w in self.workers.values() if w.process.poll() is not None]
        now = time.monotonic()
        for worker in gone:
            if worker.pipe >= 0:
                self._selector.unregister(worker.pipe)
                os.close(worker.pipe)
            del self.workers[worker.index]
            self._fleet.retire(worker.index)
            if stopping:
                continue
            log.error(
                "worker %d (pid %d) %s: starting it again", worker.index, worker.process.pid, _how(worker.process)
            )
            self._restarts.labels("died").inc()
            healthy = now - worker.started >= _HEALTHY_SECONDS
            self._failures[worker.index] = 0 if healthy else self._failures[worker.index] + 1
            self._due[worker.index] = now + (0.0 if healthy else _backoff(self._failures[worker.index]))
        return gone

    def _kill_stuck(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.process.poll() is not None:
                continue
            if worker.ready and now - worker.last_seen > STUCK_SECONDS:
                why = f"sent no heartbeat for {STUCK_SECONDS:g}s (its event loop is stuck)"
            elif not worker.ready and now - worker.started > START_SECONDS:
                why = f"was not ready {START_SECONDS:g}s after it started (a store or Redis that hangs?)"
            else:
                continue
            log.error("worker %d (pid %d) %s: killing it", worker.index, worker.process.pid, why)
            self._restarts.labels("stuck").inc()
            worker.process.kill()

    # -- the loop ------------------------------------------------------------------------------
    def _on_signal(self, number: int, _frame: object) -> None:
        self._signals.append(number)

    def _wait(self, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            if key.data is None:  # the signal wake-up socket
                with contextlib.suppress(BlockingIOError):
                    key.fileobj.recv(4096)  # type: ignore[union-attr]
            else:
                self._heard(key.data)

    def _start(self) -> None:
        """Every worker up and ready, or a StartupError (the first one's exit status)."""
        for index in range(self.count):
            self._spawn(index)
        asked = 0.0
        while not all(w.ready for w in self.workers.values()):
            if time.monotonic() - asked >= MORE_TIME / 3:  # the first worker's first scan may be long
                notify(more_time())
                asked = time.monotonic()
            if signal.SIGTERM in self._signals or signal.SIGINT in self._signals:
                raise StartupError("stopped while the workers were starting")
            for worker in self._reap(stopping=True):
                raise StartupError(
                    f"worker {worker.index} {_how(worker.process)} before it was ready (see its lines above)"
                )
            self._wait(0.5)

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        wake_read, wake_write = socket.socketpair()
        wake_read.setblocking(False)
        wake_write.setblocking(False)
        self._selector.register(wake_read, selectors.EVENT_READ, None)
        previous = signal.set_wakeup_fd(wake_write.fileno(), warn_on_full_buffer=False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
        try:
            self._listeners = bind_listeners(self.config.policy)
            serve_metrics(self.config.policy.metrics, self.registry)
            self._start()
            log.info(
                "%d workers answering on %s",
                self.count,
                ", ".join(listener.name for listener in self._listeners),
            )
            notify("READY=1")
            self._serve()
            notify("STOPPING=1")
        finally:
            self._stop_all()
            close_all(self._listeners)
            shutil.rmtree(self._folder, ignore_errors=True)
            signal.set_wakeup_fd(previous)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            self._selector.close()
            wake_read.close()
            wake_write.close()

    def _serve(self) -> None:
        interval = watchdog_interval()
        pinged = 0.0
        while True:
            while self._signals:
                number = self._signals.pop(0)
                if number in (signal.SIGTERM, signal.SIGINT):
                    log.info("stopping: draining the workers")
                    return
                log.info("reloading: telling every worker (workers and listen change only with a restart)")
                for worker in self.workers.values():
                    if worker.ready:  # one still starting reads the new config anyway; SIGHUP would kill it
                        worker.process.send_signal(signal.SIGHUP)
            self._reap(stopping=False)
            self._kill_stuck()
            now = time.monotonic()
            for index, due in list(self._due.items()):
                if due <= now:
                    del self._due[index]
                    try:
                        self._spawn(index)
                    except OSError as exc:  # out of processes or memory: try again later
                        self._failures[index] += 1
                        self._due[index] = now + _backoff(self._failures[index])
                        log.error("cannot start worker %d again (%s): trying later", index, exc.strerror or exc)
            if interval is not None and now - pinged >= interval:
                notify("WATCHDOG=1")
                pinged = now
            self._wait(0.5)

    def _stop_all(self) -> None:
        """SIGTERM to every worker; those still running after they could drain are killed."""
        for worker in self.workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.policy.drain_seconds + 10
        for worker in list(self.workers.values()):
            try:
                worker.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d (pid %d) did not stop: killing it", worker.index, worker.process.pid)
                worker.process.kill()
                worker.process.wait()
        self._reap(stopping=True)


def _backoff(failures: int) -> float:
    """Seconds before starting again a worker that failed ``failures`` times in a row: 1, 2, 4 ..."""
    return min(2.0 ** max(failures - 1, 0), _MAX_BACKOFF)


def _how(process: subprocess.Popen[bytes]) -> str:
    code = process.returncode
    if code is not None and code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"
