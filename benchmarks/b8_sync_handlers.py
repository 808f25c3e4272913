"""B8: no-op SYNC handlers (run in worker threads) under one ``concurrent=20`` service.

The baseline: one task per item calling ``anyio.to_thread.run_sync`` on the same function,
20 at a time through one ``CapacityLimiter(20)``.
"""

from __future__ import annotations

import anyio
import anyio.to_thread

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
    stopwatch,
)

ID = "B8"
TITLE = "2,000 no-op sync handlers, concurrent=20"
ITEMS = 2_000
CONCURRENT = 20


def noop(item: object) -> None:
    """The handler both sides run in a worker thread."""
    return None


async def runcue_sync(items: int) -> float:
    """Seconds for runcue to run ``items`` sync handlers."""
    elapsed = stopwatch()
    async with runcue.Cue() as cue:
        cue.service("blocking", concurrent=CONCURRENT)
        cue.task("noop", uses="blocking")(noop)
        for index in range(items):
            await cue.submit("noop", {"i": index})
        await cue.join()
    return elapsed()


async def to_thread_sync(items: int) -> float:
    """Seconds for ``items`` tasks calling ``to_thread.run_sync`` 20 at a time."""
    limiter = anyio.CapacityLimiter(CONCURRENT)

    async def one(index: int) -> None:
        await anyio.to_thread.run_sync(noop, {"i": index}, limiter=limiter)

    elapsed = stopwatch()
    async with anyio.create_task_group() as tg:
        for index in range(items):
            tg.start_soon(one, index)
    return elapsed()


def run(backend: Backend, settings: Settings) -> list[Row]:
    """runcue and ``to_thread.run_sync``, interleaved."""
    results = interleave(
        {
            "runcue": lambda: on_loop(backend, lambda: runcue_sync(ITEMS)),
            "to_thread": lambda: on_loop(backend, lambda: to_thread_sync(ITEMS)),
        },
        settings.rounds(full=7, quick=3),
        say=settings.say,
    )
    ours, floor = results["runcue"], results["to_thread"]
    ratio = median(paired_ratios(ours, floor))
    return [
        Row(
            ID,
            backend,
            TITLE,
            f"{fmt_seconds(median(ours))} ({fmt_seconds(median(ours) / ITEMS)}/item)",
            f"to_thread.run_sync + CapacityLimiter(20) {fmt_seconds(median(floor))}",
            fmt_ratio(ratio),
            "≤ 1.5x",
            ratio <= 1.5,
        )
    ]
