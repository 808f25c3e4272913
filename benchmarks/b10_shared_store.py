"""B10: shared (``RedisStore``) vs in-process dispatch, 2,000 no-op async handlers.

One ``concurrent=100`` service runs the same no-op handlers twice per round: in-process, and
with ``shared=True`` through a :class:`runcue.RedisStore` (every start asks the server for a
lease in one Lua script and gives it back when the handler returns). The two alternate round
by round; the row reports the median of the per-round differences as the time each item adds.

A second row measures the store alone with a cost window (tokens): 2,000 starts taken by 100
concurrent callers through :class:`runcue.RedisStore`, each ``acquire`` + ``release`` (the
lease) against ``acquire(costs=...)`` + ``settle`` + ``release``, and the same with 10,000
more starts already recorded in the window (an hour long): the time each item adds, the
server's time in scripts per item, and the memory a recorded start takes in Redis.

The server is a private ``redis-server`` started on a free loopback port for the scenario (no
persistence, its files in a temporary directory) and stopped after it. Without the
``redis-server`` binary or the ``redis`` client library the row is reported as skipped and
the run does not fail. ``python -m benchmarks.redis_overhead`` runs the same measurement on
its own, also against a server you name (``--url``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

import runcue

from ._harness import (
    Backend,
    Row,
    Settings,
    fmt_ratio,
    fmt_seconds,
    interleave,
    median,
    on_loop,
    paired_ratios,
    percentile,
    stopwatch,
)

ID = "B10"
TITLE = "shared (RedisStore) vs in-process dispatch, 2,000 no-op async handlers, concurrent=100"
ITEMS = 2_000
CONCURRENT = 100
TARGET_MS = 2.0
TARGET = f"≤ {TARGET_MS:g} ms/item added"
PINGS = 500
COST_TITLE = (
    "shared cost window: acquire(costs)+settle+release vs acquire+release, store API, "
    "2,000 starts, 100 callers"
)
COST_WINDOW = runcue.RateSpec(10**12, 3600.0)  # an hour long, never full: measures the cost
RECORDED = 10_000  # starts already in the window for the "full" variant


class RedisUnavailable(Exception):
    """Redis cannot be used on this machine; the message says why (the row's text)."""


def unavailable() -> str | None:
    """Why the scenario cannot run here, or None when it can."""
    if importlib.util.find_spec("redis") is None:
        return "skipped: redis client library not installed (pip install 'runcue[redis]')"
    if shutil.which("redis-server") is None:
        return "skipped: redis-server not found"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, SIGKILL if it lingers; wait until it exited."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextmanager
def private_redis(attempts: int = 5) -> Iterator[str]:
    """A private ``redis-server`` on a free loopback port; yields its URL, stops it after.

    :raises RedisUnavailable: when the binary is not on PATH.
    :raises RuntimeError: when it is there but does not start (``attempts`` ports tried).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        msg = "skipped: redis-server not found"
        raise RedisUnavailable(msg)
    with tempfile.TemporaryDirectory(prefix="runcue-bench-redis-") as directory:
        log = Path(directory) / "redis.log"
        for _ in range(attempts):
            port = _free_port()
            arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            arguments += ["--appendonly", "no", "--dir", directory, "--logfile", str(log)]
            process = subprocess.Popen(
                [binary, *arguments], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                deadline = time.monotonic() + 10
                while process.poll() is None and time.monotonic() < deadline:
                    if _answers(port):
                        break
                    time.sleep(0.01)
                else:
                    continue  # it exited (most likely the port was taken meanwhile) or hung
                yield f"redis://127.0.0.1:{port}/0"
                return
            finally:
                _stop(process)
        tail = log.read_text(encoding="utf-8", errors="replace")[-500:] if log.exists() else ""
        msg = f"redis-server did not start after {attempts} attempts: {tail.strip()}"
        raise RuntimeError(msg)


def _command_counts(url: str) -> tuple[int, int]:
    """The server's ``(EVALSHA calls, every command)`` so far; each count includes itself."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        scripts = sum(
            int(stats[name]["calls"])
            for name in ("cmdstat_evalsha", "cmdstat_eval")
            if name in stats
        )
        total = sum(int(entry["calls"]) for entry in stats.values())
        return scripts, total
    finally:
        client.close()


def ping_round_trip(url: str, pings: int = PINGS) -> list[float]:
    """Seconds per ``PING`` from the synchronous client on this thread (the wire alone)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        times: list[float] = []
        for _ in range(pings):
            elapsed = stopwatch()
            client.ping()
            times.append(elapsed())
        return times
    finally:
        client.close()


async def run_items(items: int, url: str | None) -> float:
    """Seconds to run ``items`` no-op handlers, cue set-up and teardown included.

    With ``url`` the service is ``shared=True`` through a fresh namespace of that server;
    creating and closing the store stay outside the time.
    """
    store = None
    if url is not None:
        namespace = f"runcue-bench-{os.getpid()}-{time.time_ns()}"
        store = runcue.RedisStore(url, namespace=namespace)

    async def noop(work: runcue.WorkUnit) -> None:
        return None

    try:
        elapsed = stopwatch()
        async with runcue.Cue(store=store) as cue:
            cue.service("svc", concurrent=CONCURRENT, shared=store is not None)
            cue.task("noop", uses="svc")(noop)
            for index in range(items):
                await cue.submit("noop", {"i": index})
            await cue.join()
        return elapsed()
    finally:
        if store is not None:
            await store.aclose()


def _script_micros(url: str) -> float:
    """The server's µs spent in scripts (EVALSHA and EVAL) so far."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
        return sum(
            float(stats[name]["usec"])
            for name in ("cmdstat_evalsha", "cmdstat_eval")
            if name in stats
        )
    finally:
        client.close()


def _forget(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (the cost windows would keep them for an hour)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
    finally:
        client.close()


def _bytes_per_start(url: str, namespace: str) -> float:
    """What one recorded start takes in Redis: the cost keys' memory over their starts."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = [f"{namespace}:svc:svc:costs", f"{namespace}:svc:svc:costs:amounts"]
        starts = int(client.zcard(keys[0]))
        used = sum(int(client.memory_usage(key) or 0) for key in keys)
        return used / starts if starts else math.nan
    finally:
        client.close()


async def take_starts(url: str, namespace: str, items: int, costs: bool) -> float:
    """Seconds for ``CONCURRENT`` callers to take ``items`` starts of ``svc`` through the
    store: acquire and release, with ``costs`` also a cost window and a settlement."""
    store = runcue.RedisStore(url, namespace=namespace)
    windows = [("tokens", COST_WINDOW, 100.0)] if costs else []
    prefix = f"{time.time_ns()}-"
    left = iter(range(items))

    async def caller() -> None:
        for index in left:
            lease = f"{prefix}{index}"
            while (
                wait := await store.acquire(
                    "svc", windows=(), concurrent=CONCURRENT, lease=lease, ttl=10, costs=windows
                )
            ) > 0:
                await anyio.sleep(wait)
            if costs:
                await store.settle("svc", lease, {"tokens": 80.0})
            await store.release("svc", lease)

    try:
        elapsed = stopwatch()
        async with anyio.create_task_group() as tg:
            for _ in range(CONCURRENT):
                tg.start_soon(caller)
        return elapsed()
    finally:
        await store.aclose()


def measure_costs(backend: Backend, settings: Settings, url: str, items: int = ITEMS) -> Row:
    """The store alone: starts without, with, and with a well-filled cost window."""
    prefix = f"runcue-bench-costs-{os.getpid()}-{time.time_ns()}-"
    try:
        return _measure_costs(backend, settings, url, items, prefix)
    finally:
        _forget(url, prefix)


def _measure_costs(backend: Backend, settings: Settings, url: str, items: int, prefix: str) -> Row:
    full = f"{prefix}full"
    on_loop(backend, lambda: take_starts(url, full, RECORDED, costs=True))
    scripts: dict[str, list[float]] = {"plain": [], "costs": [], "full": []}

    def variant(name: str) -> Callable[[], float]:
        def run_once() -> float:
            namespace = full if name == "full" else f"{prefix}{time.time_ns()}"
            before = _script_micros(url)
            seconds = on_loop(backend, lambda: take_starts(url, namespace, items, name != "plain"))
            scripts[name].append((_script_micros(url) - before) / items)
            return seconds

        return run_once

    results = interleave(
        {name: variant(name) for name in scripts},
        settings.rounds(full=7, quick=3),
        say=settings.say,
    )
    plain, costs, filled = results["plain"], results["costs"], results["full"]
    added = median([(ours - base) / items for ours, base in zip(costs, plain)])
    added_full = median([(ours - base) / items for ours, base in zip(filled, plain)])
    script = {name: median(values[-len(plain) :]) for name, values in scripts.items()}
    per_start = _bytes_per_start(url, full)

    def per_item(values: list[float]) -> str:
        return f"{fmt_seconds(median(values) / items)}/item"

    return Row(
        ID,
        backend,
        COST_TITLE.replace(f"{ITEMS:,}", f"{items:,}"),
        f"with a cost window {per_item(costs)}, scripts {script['costs']:.3g} µs/item;"
        f" with {RECORDED:,}+ starts in the window {per_item(filled)}, scripts"
        f" {script['full']:.3g} µs/item; {per_start:.0f} B of Redis memory per recorded start",
        f"acquire+release {per_item(plain)}, scripts {script['plain']:.3g} µs/item",
        f"+{added * 1e3:.3g} ms/item added (+{added_full * 1e3:.3g} ms/item with"
        f" {RECORDED:,}+ recorded)",
        "(informative)",
        None,
    )


def measure(backend: Backend, settings: Settings, url: str, items: int = ITEMS) -> list[Row]:
    """In-process and shared runs of ``items`` handlers, interleaved, against ``url``."""
    scripts: list[float] = []
    commands: list[float] = []

    def shared() -> float:
        scripts_before, commands_before = _command_counts(url)
        seconds = on_loop(backend, lambda: run_items(items, url))
        scripts_after, commands_after = _command_counts(url)
        scripts.append((scripts_after - scripts_before) / items)
        # The first INFO counts itself only after it ran: one command of the delta is ours.
        commands.append((commands_after - commands_before - 1) / items)
        return seconds

    results = interleave(
        {
            "in-process": lambda: on_loop(backend, lambda: run_items(items, None)),
            "shared": shared,
        },
        settings.rounds(full=7, quick=3),
        say=settings.say,
    )
    local, remote = results["in-process"], results["shared"]
    added = median([(ours - base) / items for ours, base in zip(remote, local)])
    ratio = median(paired_ratios(remote, local))
    pings = ping_round_trip(url)
    per_item_scripts = median(scripts[-len(remote) :])
    per_item_commands = median(commands[-len(remote) :])

    def timing(values: list[float]) -> str:
        return f"{fmt_seconds(median(values))} ({fmt_seconds(median(values) / items)}/item)"

    title = TITLE.replace(f"{ITEMS:,}", f"{items:,}")
    return [
        Row(
            ID,
            backend,
            title,
            f"shared {timing(remote)}; per item {per_item_scripts:.2f} scripts (EVALSHA),"
            f" {per_item_commands:.1f} Redis commands counting those inside scripts",
            f"in-process {timing(local)}; loopback PING round trip"
            f" p50 {fmt_seconds(percentile(pings, 0.5))}",
            f"+{added * 1e3:.3g} ms/item added ({fmt_ratio(ratio)} in-process)",
            TARGET,
            added * 1e3 <= TARGET_MS,
        ),
        measure_costs(backend, settings, url, items),
    ]


def skipped_rows(backend: Backend, reason: str) -> list[Row]:
    """The rows when Redis cannot be used here: reported, neither passed nor failed."""
    return [
        Row(ID, backend, title, reason, "", "", target, None, skipped=True)
        for title, target in ((TITLE, TARGET), (COST_TITLE, "(informative)"))
    ]


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Start a private server, measure, stop it; skipped rows without Redis."""
    reason = unavailable()
    if reason is not None:
        settings.say(reason)
        return skipped_rows(backend, reason)
    try:
        with private_redis() as url:
            settings.say(f"private redis-server at {url}")
            return measure(backend, settings, url)
    except RedisUnavailable as missing:
        return skipped_rows(backend, str(missing))
