"""B3: latency from ``await cue.submit()`` to the first line of the handler, on an idle cue.

The floor is one ``send`` to a task waiting on ``receive`` of an AnyIO memory object stream.
The two alternate trial by trial on one event loop; before every trial the cue is joined and
left quiet for 2 ms, so the scheduler is asleep when the submission arrives.
"""

from __future__ import annotations

import math
import time

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

import runcue

from ._harness import (
    Backend,
    Row,
    Settings,
    fmt_ratio,
    fmt_seconds,
    on_loop,
    percentile,
)

ID = "B3"
TITLE = "submit -> handler entry latency, idle cue"
QUIET = 0.002


async def _trials(trials: int) -> tuple[list[float], list[float]]:
    ours: list[float] = []
    floor: list[float] = []
    submitted = 0.0
    entered = anyio.Event()

    async def handler(work: runcue.WorkUnit) -> None:
        ours.append(time.perf_counter() - submitted)
        entered.set()

    async def receiver(receive: MemoryObjectReceiveStream[float]) -> None:
        async with receive:
            async for sent in receive:
                floor.append(time.perf_counter() - sent)
                entered.set()

    send, receive = anyio.create_memory_object_stream[float](math.inf)
    async with anyio.create_task_group() as tg, runcue.Cue() as cue:
        tg.start_soon(receiver, receive)
        cue.service("svc", concurrent=100)
        cue.task("ping", uses="svc")(handler)
        for index in range(trials + 10):  # the first ten warm up
            await cue.join()
            await anyio.sleep(QUIET)
            entered = anyio.Event()
            submitted = time.perf_counter()
            await cue.submit("ping", {"i": index})
            await entered.wait()

            await anyio.sleep(QUIET)
            entered = anyio.Event()
            await send.send(time.perf_counter())
            await entered.wait()
        await cue.join()
        send.close()
    return ours[10:], floor[10:]


def run(backend: Backend, settings: Settings) -> list[Row]:
    """300 alternating trials (100 with ``--quick``)."""
    trials = 100 if settings.quick else 300
    ours, floor = on_loop(backend, lambda: _trials(trials))
    settings.say(f"{trials} trials: runcue p50 {percentile(ours, 0.5) * 1e6:.0f} µs")
    ratio = percentile(ours, 0.5) / percentile(floor, 0.5)

    def spread(values: list[float]) -> str:
        p50, p90, p99 = (fmt_seconds(percentile(values, q)) for q in (0.5, 0.9, 0.99))
        return f"p50 {p50}, p90 {p90}, p99 {p99}"

    return [
        Row(
            ID,
            backend,
            f"{TITLE}, {trials} trials",
            spread(ours),
            f"stream send→receive {spread(floor)}",
            f"{fmt_ratio(ratio)} (p50)",
            "p50 ≤ 3x floor",
            ratio <= 3.0,
        )
    ]
