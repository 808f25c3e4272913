"""A real ``redis-server`` for the tests, and helpers for the worker processes that use it.

:func:`require_redis` decides whether the Redis tests can run: without the ``redis-server``
binary (or the ``redis`` client library) they are skipped with the reason, unless the
environment variable ``RUNCUE_REQUIRE_REDIS`` is set (CI sets it), in which case they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import runcue

__all__ = [
    "Record",
    "RedisServer",
    "Worker",
    "free_port",
    "poll_until",
    "read_records",
    "redis_server_running",
    "require_redis",
]

WORKER = Path(__file__).with_name("redis_worker.py")
# The workers import the same runcue as the tests do.
SRC = Path(runcue.__file__).resolve().parent.parent


def require_redis() -> str:
    """The path of ``redis-server``; skips (or, under RUNCUE_REQUIRE_REDIS, fails) without it."""
    required = bool(os.environ.get("RUNCUE_REQUIRE_REDIS"))
    binary = shutil.which("redis-server")
    problem = None
    if binary is None:
        problem = "the redis-server binary is not on PATH (apt-get install redis-server)"
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            problem = "the redis client library is not installed (pip install 'runcue[redis]')"
    if problem is not None:
        if required:
            pytest.fail(f"RUNCUE_REQUIRE_REDIS is set but {problem}")
        pytest.skip(f"Redis tests skipped: {problem}; set RUNCUE_REQUIRE_REDIS=1 to make it fail")
    assert binary is not None
    return binary


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(
    condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.01
) -> None:
    """Wait until ``condition()`` holds, checking every ``interval``; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisServer:
    """One ``redis-server`` on a loopback port; stop/start keep the port. Without persistence
    unless ``appendonly`` (then every write is fsynced to the AOF before it is answered)."""

    def __init__(self, binary: str, directory: Path, *, appendonly: bool = False) -> None:
        self.binary = binary
        self.directory = directory
        self.appendonly = appendonly
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start the server (on the same port as before, if it ran before) and wait for PING."""
        assert self.process is None, "the server is already running"
        keep_port = self.port != 0
        for _ in range(5):
            if not keep_port:
                self.port = free_port()
            self.starts += 1
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "yes" if self.appendonly else "no",
                    "--appendfsync",
                    "always",
                    "--dir",
                    str(self.directory),
                    "--logfile",
                    str(self.directory / f"redis-{self.starts}.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.process.poll() is None:
                if self._ping():
                    return
                time.sleep(0.01)
            self._kill()  # it exited (most likely the port was taken meanwhile) or hung
        pytest.fail(f"redis-server did not start on port {self.port}; see {self.directory}")

    def _kill(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self._kill()

    def suspend(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a frozen server go on (SIGCONT)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (SIGTERM; SIGKILL if it lingers) and wait until it exited."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same port: the data is gone (no persistence)."""
        self.stop()
        self.start()


@contextmanager
def redis_server_running(directory: Path, *, appendonly: bool = False) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, always stopped on exit."""
    server = RedisServer(require_redis(), directory, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.resume()  # (a test that failed while it was frozen)
        server.stop()


@dataclass(frozen=True)
class Record:
    """One line a worker wrote: ``kind`` is start, end, ready or done; ``time`` is time.time()."""

    kind: str
    time: float
    pid: int
    item: str


def read_records(paths: Sequence[Path]) -> list[Record]:
    """Every complete line of the workers' output files, in file order."""
    records: list[Record] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # being written
            kind, when, pid, item = line.split()
            records.append(Record(kind, float(when), int(pid), item))
    return records


class Worker:
    """``tests/redis_worker.py`` running as its own OS process."""

    def __init__(
        self,
        url: str,
        namespace: str,
        mode: str,
        count: int,
        output: Path,
        *,
        backend: str = "asyncio",
        ttl: float = 2.0,
    ) -> None:
        self.output = output
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
        self.stderr_path = output.with_suffix(".stderr")
        with self.stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    url,
                    namespace,
                    mode,
                    str(count),
                    str(output),
                    backend,
                    str(ttl),
                ],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )

    def records(self) -> list[Record]:
        return read_records([self.output])

    def count(self, kind: str) -> int:
        return sum(1 for record in self.records() if record.kind == kind)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; its exit status (the test fails on a timeout)."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"worker {self.output.name} did not finish in {timeout}s: {self.stderr()}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-3000:]
        except OSError:
            return ""
