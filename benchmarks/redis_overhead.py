"""Shared (RedisStore) vs in-process dispatch: the time each item adds, on loopback.

``python -m benchmarks.redis_overhead [--url redis://...] [--items 2000] [--repeat 3]``

Runs ``--items`` no-op async handlers on one ``concurrent=100`` service, once in-process and
once with ``shared=True`` through a :class:`runcue.RedisStore` (each start asks the server for
a lease and gives it back), interleaved, on asyncio and on trio, and prints the medians and
the added milliseconds per item (target: <= 2 ms). Without ``--url`` it starts a private
``redis-server`` on a free loopback port and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

import runcue
from runcue._redis import RedisStore

TARGET_MS = 2.0


async def run_items(items: int, url: str | None) -> float:
    """Seconds to run ``items`` no-op handlers, cue set-up and teardown included."""
    store = RedisStore(url, namespace=f"bench-{os.getpid()}-{time.time_ns()}") if url else None
    began = time.perf_counter()
    async with runcue.Cue(store=store) as cue:
        cue.service("svc", concurrent=100, shared=store is not None)

        @cue.task("noop", uses="svc")
        async def noop(work: runcue.WorkUnit) -> None:
            return None

        for index in range(items):
            await cue.submit("noop", {"i": index})
        await cue.join()
    elapsed = time.perf_counter() - began
    if store is not None:
        await store.aclose()
    return elapsed


@contextmanager
def private_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; pass --url of a running server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as directory:
        arguments = ["--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        arguments += ["--appendonly", "no", "--dir", directory]
        process = subprocess.Popen([binary, *arguments], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit("redis-server did not start")
                    time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running Redis server (default: start a private one)")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with private_server() if options.url is None else _given(options.url) as url:
        worst = 0.0
        for backend in ("asyncio", "trio"):
            local: list[float] = []
            shared: list[float] = []
            anyio.run(run_items, 200, url, backend=backend)  # warm up
            for _ in range(options.repeat):
                local.append(anyio.run(run_items, options.items, None, backend=backend))
                shared.append(anyio.run(run_items, options.items, url, backend=backend))
            per_local = statistics.median(local) / options.items * 1000
            per_shared = statistics.median(shared) / options.items * 1000
            added = per_shared - per_local
            worst = max(worst, added)
            print(
                f"{backend:8} {options.items} items: in-process {per_local:.3f} ms/item,"
                f" shared {per_shared:.3f} ms/item, added {added:.3f} ms/item"
                f" (target <= {TARGET_MS} ms)"
            )
    return 0 if worst <= TARGET_MS else 1


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    sys.exit(main())
