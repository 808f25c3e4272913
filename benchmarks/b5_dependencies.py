"""B5: producer/consumer pairs, consumers submitted first.

runcue: ``P`` consumers, then ``P`` producers, no-op handlers and no limits; a producer adds
its number to an in-memory set as it finishes, and ``is_ready`` lets consumer ``i`` run once
``i`` is in the set (a counter in the check counts the consumer calls). The baseline is the
same flow written by hand: one task per consumer waiting on its own ``anyio.Event``, one task
per producer that sets it.
"""

from __future__ import annotations

from functools import partial

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
    stopwatch,
)

ID = "B5"
TITLE = "producer/consumer pairs, consumers submitted first"
PAIRS = (1_000, 4_000)


async def runcue_pairs(pairs: int, calls: list[int]) -> float:
    """Seconds for ``pairs`` pairs; appends the consumer ``is_ready`` calls to ``calls``."""
    produced: set[int] = set()
    asked = 0

    async def consume(work: runcue.WorkUnit) -> None:
        return None

    async def produce(work: runcue.WorkUnit) -> None:
        produced.add(work.params["i"])

    def is_ready(work: runcue.WorkUnit) -> bool:
        nonlocal asked
        if work.task == "consume":
            asked += 1
            return work.params["i"] in produced
        return True

    elapsed = stopwatch()
    async with runcue.Cue() as cue:
        cue.task("consume")(consume)
        cue.task("produce")(produce)
        cue.is_ready(is_ready)
        for index in range(pairs):
            await cue.submit("consume", {"i": index})
        for index in range(pairs):
            await cue.submit("produce", {"i": index})
        await cue.join()
    seconds = elapsed()
    calls.append(asked)
    return seconds


async def event_pairs(pairs: int) -> float:
    """The same flow with one ``anyio.Event`` per pair."""
    events = [anyio.Event() for _ in range(pairs)]
    produced: set[int] = set()

    async def consume(index: int) -> None:
        await events[index].wait()

    async def produce(index: int) -> None:
        produced.add(index)
        events[index].set()

    elapsed = stopwatch()
    async with anyio.create_task_group() as tg:
        for index in range(pairs):
            tg.start_soon(consume, index)
        for index in range(pairs):
            tg.start_soon(produce, index)
    return elapsed()


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Both sizes, runcue and the Event version interleaved."""
    rows = []
    for pairs in PAIRS:
        calls: list[int] = []
        results = interleave(
            {
                "runcue": partial(on_loop, backend, partial(runcue_pairs, pairs, calls)),
                "events": partial(on_loop, backend, partial(event_pairs, pairs)),
            },
            settings.rounds(full=4, quick=2),
            say=settings.say,
        )
        ours, events = results["runcue"], results["events"]
        ratio = median(paired_ratios(ours, events))
        per_consumer = max(calls) / pairs
        rows.append(
            Row(
                ID,
                backend,
                f"{TITLE}, P={pairs:,}",
                f"{fmt_seconds(median(ours))}; is_ready {per_consumer:.2f} calls/consumer (worst)",
                f"anyio.Event per pair {fmt_seconds(median(events))}",
                fmt_ratio(ratio),
                "≤ 10 is_ready calls/consumer; ≤ 1.5x",
                per_consumer <= 10 and ratio <= 1.5,
            )
        )
    return rows
