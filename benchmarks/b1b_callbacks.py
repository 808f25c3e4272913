"""B1b: B1 with the callbacks an app registers: ``on_complete`` and ``on_failure`` (sync, as
most are) and one ``cue.subscribe`` listener (what ``runcue.progress`` and metrics hook into).

The same 20,000 no-op handlers under ``concurrent=100``, against the same floor (100 AnyIO
workers draining one memory object stream). Each callback does what a cheap real one does:
counts. Target: at most 3.5x the floor, on both backends -- callbacks cost what they cost the
user, not a coroutine, a task or a lock each.
"""

from __future__ import annotations

from collections import Counter

import runcue

from . import b1_throughput
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
)

ID = "B1b"
TITLE = "B1 with sync on_complete and on_failure and one subscribe listener"
ITEMS = b1_throughput.ITEMS
TARGET = 3.5


def with_callbacks(cue: runcue.Cue) -> None:
    """Register the callbacks a typical app has; they count, as a cheap real one would."""
    counts: Counter[str] = Counter()

    @cue.on_complete
    def completed(work: runcue.WorkUnit, result: object, duration: float) -> None:
        counts["completed"] += 1

    @cue.on_failure
    def failed(work: runcue.WorkUnit, error: BaseException) -> None:
        counts["failed"] += 1  # pragma: no cover - the handlers never fail

    def listen(event: runcue.WorkEvent) -> None:
        counts[event.kind] += 1

    cue.subscribe(listen)


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Measure runcue with callbacks, plain B1 and the floor, interleaved."""
    results = interleave(
        {
            "callbacks": lambda: on_loop(
                backend, lambda: b1_throughput.runcue_join(ITEMS, prepare=with_callbacks)
            ),
            "plain": lambda: on_loop(backend, lambda: b1_throughput.runcue_join(ITEMS)),
            "floor": lambda: on_loop(backend, lambda: b1_throughput.stream_workers(ITEMS)),
        },
        settings.rounds(full=7, quick=3),
        say=settings.say,
    )
    ours, plain, floor = results["callbacks"], results["plain"], results["floor"]
    to_floor = median(paired_ratios(ours, floor))
    added = (median(ours) - median(plain)) / ITEMS

    def timing(values: list[float]) -> str:
        return f"{fmt_seconds(median(values))} ({fmt_seconds(median(values) / ITEMS)}/item)"

    return [
        Row(
            ID,
            backend,
            TITLE,
            f"{timing(ours)}; callbacks add {fmt_seconds(added)}/item over plain B1",
            f"floor {timing(floor)}; plain B1 {timing(plain)}",
            f"{fmt_ratio(to_floor)} floor",
            f"≤ {TARGET:g}x floor",
            to_floor <= TARGET,
        )
    ]
