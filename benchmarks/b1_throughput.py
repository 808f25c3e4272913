"""B1: throughput of no-op async handlers under one ``concurrent=100`` service.

runcue: submit every item, then ``await cue.join()`` (entering and leaving the cue included).
The floor: 100 AnyIO worker tasks reading one memory object stream. The peer:
``aiometer.run_on_each(max_at_once=100)`` (aiometer runs on AnyIO, so on trio too).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import aiometer
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

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

ID = "B1"
TITLE = "throughput, 20,000 no-op async handlers, concurrent=100"
ITEMS = 20_000
CONCURRENT = 100


async def runcue_join(
    items: int,
    concurrent: int = CONCURRENT,
    *,
    prepare: Callable[[runcue.Cue], object] | None = None,
) -> float:
    """Seconds for runcue to run ``items`` no-op handlers, cue set-up and teardown included.

    :param prepare: called with the cue once its service and task are declared (B13 turns
        instrumentation on there).
    """

    async def noop(work: runcue.WorkUnit) -> None:
        return None

    elapsed = stopwatch()
    async with runcue.Cue() as cue:
        cue.service("svc", concurrent=concurrent)
        cue.task("noop", uses="svc")(noop)
        if prepare is not None:
            prepare(cue)
        for index in range(items):
            await cue.submit("noop", {"i": index})
        await cue.join()
    return elapsed()


async def stream_workers(items: int, workers: int = CONCURRENT) -> float:
    """The floor: ``workers`` tasks draining one memory object stream."""

    async def noop(item: dict[str, int]) -> None:
        return None

    async def worker(receive: MemoryObjectReceiveStream[dict[str, int]]) -> None:
        async with receive:
            async for item in receive:
                await noop(item)

    elapsed = stopwatch()
    send, receive = anyio.create_memory_object_stream[dict[str, int]](math.inf)
    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker, receive.clone())
        receive.close()
        async with send:
            for index in range(items):
                send.send_nowait({"i": index})
    return elapsed()


async def aiometer_each(items: int, max_at_once: int = CONCURRENT) -> float:
    """The peer: ``aiometer.run_on_each``."""

    async def noop(item: dict[str, int]) -> None:
        return None

    elapsed = stopwatch()
    work: list[Any] = [{"i": index} for index in range(items)]
    await aiometer.run_on_each(noop, work, max_at_once=max_at_once)
    return elapsed()


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Measure runcue, the floor and aiometer, interleaved."""
    results = interleave(
        {
            "runcue": lambda: on_loop(backend, lambda: runcue_join(ITEMS)),
            "floor": lambda: on_loop(backend, lambda: stream_workers(ITEMS)),
            "aiometer": lambda: on_loop(backend, lambda: aiometer_each(ITEMS)),
        },
        settings.rounds(full=7, quick=3),
        say=settings.say,
    )
    ours, floor, peer = results["runcue"], results["floor"], results["aiometer"]
    to_floor = median(paired_ratios(ours, floor))
    to_peer = median(paired_ratios(ours, peer))

    def timing(values: list[float]) -> str:
        return f"{fmt_seconds(median(values))} ({fmt_seconds(median(values) / ITEMS)}/item)"

    return [
        Row(
            ID,
            backend,
            TITLE,
            timing(ours),
            f"floor {timing(floor)}; aiometer {timing(peer)}",
            f"{fmt_ratio(to_floor)} floor; {fmt_ratio(to_peer)} aiometer",
            "≤ 3x floor; < 1x aiometer",
            to_floor <= 3.0 and to_peer < 1.0,
        )
    ]
