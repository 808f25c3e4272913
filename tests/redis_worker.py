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
- ``costs`` and ``costs-debt``: no cue, the store API alone. Four tasks take COUNT starts of
  service ``tokens`` whose cost windows are :data:`COST_WINDOWS` (acquire with a random
  estimate, sleep 0-40 ms, settle a random actual: at most the estimate, or with
  ``costs-debt`` up to 1.5 times it). Each grant is written as
  ``grant <time asked> <pid> <time answered>|<lease>|<estimate>``, each settlement as
  ``settle <time sent> <pid> <time answered>|<lease>|<actual>``.
- ``cue-costs``: a cue, as a user writes it: COUNT items of task ``ask`` on the shared service
  ``llm`` whose only limits are the cost windows :data:`COST_WINDOWS` (``costs={"tokens":
  ...}``); each work's estimate comes from its params (50-250 tokens), its handler sleeps
  0-40 ms and charges a random actual at most its estimate (``work.charge``). Grants and
  settlements are written as in the ``costs`` modes, by the store the cue uses.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import anyio

import runcue
from runcue._redis import RedisStore

# The cost windows of the ``costs`` modes: 1000 tokens per 0.5 s, and a minute-long window
# that never binds, so the store keeps every start of the run for the test to read.
COST_WINDOWS = (runcue.RateSpec(1000, 0.5), runcue.RateSpec(10**9, 60.0))


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
        costs: Sequence[tuple[str, runcue.RateSpec, float]] = (),
    ) -> float:
        asked = time.time()
        wait = await super().acquire(
            service, windows=windows, concurrent=concurrent, lease=lease, ttl=ttl, costs=costs
        )
        if wait == 0:
            estimate = f"|{costs[0][2]!r}" if costs else ""
            record(self.out, "grant", f"{time.time():.6f}|{lease}{estimate}", when=asked)
        return wait

    async def settle(self, service: str, lease: str, actual: Mapping[str, float]) -> None:
        sent = time.time()
        await super().settle(service, lease, actual)
        record(self.out, "settle", f"{time.time():.6f}|{lease}|{actual['tokens']!r}", when=sent)


async def spend(store: RedisStore, out: IO[str], count: int, debt: bool) -> None:
    """Take ``count`` starts of the cost windows through the store alone, four at a time."""
    pid = os.getpid()
    chance = random.Random(pid)
    items = iter(range(count))

    async def taker(task: int) -> None:
        for item in items:
            lease = f"{pid}-{task}-{item}"
            estimate = float(chance.randint(50, 250))
            costs = [("tokens", window, estimate) for window in COST_WINDOWS]
            while True:
                asked = time.time()
                wait = await store.acquire(
                    "tokens", windows=(), concurrent=None, lease=lease, ttl=5, costs=costs
                )
                if wait == 0:
                    break
                await anyio.sleep(wait)
            record(out, "grant", f"{time.time():.6f}|{lease}|{estimate!r}", when=asked)
            await anyio.sleep(chance.uniform(0, 0.04))
            actual = float(round(estimate * chance.uniform(0.2, 1.5 if debt else 1.0)))
            sent = time.time()
            await store.settle("tokens", lease, {"tokens": actual})
            record(out, "settle", f"{time.time():.6f}|{lease}|{actual!r}", when=sent)

    async with anyio.create_task_group() as tg:
        for task in range(4):
            tg.start_soon(taker, task)


async def ask(store: AuditedStore, out: IO[str], count: int, ttl: float) -> None:
    """The ``cue-costs`` mode: a cue sharing one token budget with the other processes."""
    windows = ";".join(f"{spec.limit}/{spec.period:g}s" for spec in COST_WINDOWS)
    chance = random.Random(os.getpid())
    async with runcue.Cue(store=store, lease_ttl=ttl, seed=os.getpid()) as cue:
        cue.service("llm", costs={"tokens": windows}, shared=True)

        @cue.task("ask", uses="llm", cost=lambda unit: {"tokens": unit.params["estimate"]})
        async def ask(unit: runcue.WorkUnit) -> None:
            await anyio.sleep(chance.uniform(0, 0.04))
            unit.charge(tokens=float(round(unit.params["estimate"] * chance.uniform(0.2, 1.0))))

        for index in range(count):
            await cue.submit("ask", {"i": index, "estimate": float(chance.randint(50, 250))})
        record(out, "ready", "-")
    record(out, "done", "-")


async def main(url: str, namespace: str, mode: str, count: int, output: Path, ttl: float) -> None:
    if mode.startswith("costs"):
        store = RedisStore(url, namespace=namespace)
        with output.open("a") as out:
            await spend(store, out, count, debt=mode == "costs-debt")
            record(out, "done", "-")
        await store.aclose()
        return
    store = AuditedStore(url, namespace=namespace)
    if mode == "cue-costs":
        with output.open("a") as out:
            store.out = out
            await ask(store, out, count, ttl)
        await store.aclose()
        return
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
                why = f"{type(error).__name__}:{str(error)[:150]}".replace(" ", "_")
                record(out, "failed", f"{unit.params['i']}|{why}|{unit.attempt}")

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
