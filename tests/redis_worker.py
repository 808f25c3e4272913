"""One OS process of the multi-process Redis tests: a cue sharing its limits through Redis.

Usage: ``redis_worker.py URL NAMESPACE MODE COUNT OUTPUT [BACKEND [LEASE_TTL]]``

Each handler start and end is appended to OUTPUT as ``start|end <time.time()> <pid> <item>|<id>``,
each start the store granted as ``grant <time asked> <pid> <time answered>|<lease>``; ``ready``
follows the submissions and ``done`` the end of the run. Modes:

- ``limits``: COUNT items on service ``api`` (``20/sec``, ``concurrent=4``, shared); each
  handler sleeps 50-250 ms, so both limits bind in turn.
- ``hold``: COUNT items on the same service whose handlers sleep for a minute (they hold
  their leases until the process is killed).
- ``keyed``: COUNT items with ``key=item-N`` on a shared service; the handler appends its pid to
  the proof file ``proof-N`` next to OUTPUT after 300 ms; ``is_stale`` is true while it is absent.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import IO

import anyio

import runcue
from runcue._redis import RedisStore


def record(out: IO[str], kind: str, item: object, when: float | None = None) -> None:
    when = time.time() if when is None else when
    out.write(f"{kind} {when:.6f} {os.getpid()} {item}\n")
    out.flush()


class AuditedStore(RedisStore):
    """Records each granted start as ``grant <time before asking> <pid> <time after>|<lease>``:
    the server admitted it somewhere inside that interval (the hosts share one clock)."""

    out: IO[str]

    async def acquire(
        self,
        service: str,
        *,
        windows: tuple[runcue.RateSpec, ...],
        concurrent: int | None,
        lease: str,
        ttl: float,
    ) -> float:
        asked = time.time()
        wait = await super().acquire(
            service, windows=windows, concurrent=concurrent, lease=lease, ttl=ttl
        )
        if wait == 0:
            record(self.out, "grant", f"{time.time():.6f}|{lease}", when=asked)
        return wait


async def main(url: str, namespace: str, mode: str, count: int, output: Path, ttl: float) -> None:
    store = AuditedStore(url, namespace=namespace)
    with output.open("a") as out:
        store.out = out
        async with runcue.Cue(store=store, lease_ttl=ttl, seed=os.getpid()) as cue:
            cue.service("api", rate="20/sec", concurrent=4, shared=True)

            @cue.task("work", uses="api")
            async def work(unit: runcue.WorkUnit) -> None:
                item = unit.params["i"]
                record(out, "start", f"{item}|{unit.id}")
                try:
                    if mode == "hold":
                        await anyio.sleep(60)
                    elif mode == "keyed":
                        await anyio.sleep(0.3)
                        with (output.parent / f"proof-{item}").open("a") as proof:
                            proof.write(f"{os.getpid()}\n")
                    else:
                        await anyio.sleep(random.Random(item).uniform(0.05, 0.25))
                finally:
                    record(out, "end", f"{item}|{unit.id}")

            @cue.is_stale
            def is_stale(unit: runcue.WorkUnit) -> bool:
                if mode != "keyed":
                    return True
                return not (output.parent / f"proof-{unit.params['i']}").exists()

            @cue.on_failure
            def on_failure(unit: runcue.WorkUnit, error: BaseException) -> None:
                record(out, "failed", unit.params["i"])

            for index in range(count):
                key = f"item-{index}" if mode == "keyed" else None
                await cue.submit("work", {"i": index}, key=key)
            record(out, "ready", "-")
        record(out, "done", "-")
    await store.aclose()


if __name__ == "__main__":
    url, namespace, mode, count, output = sys.argv[1:6]
    backend = sys.argv[6] if len(sys.argv) > 6 else "asyncio"
    ttl = float(sys.argv[7]) if len(sys.argv) > 7 else 2.0
    anyio.run(main, url, namespace, mode, int(count), Path(output), ttl, backend=backend)
