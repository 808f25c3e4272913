"""B12b: what a long rate window costs -- ``rate="1000000/day"`` at full use (informative).

An exact sliding window remembers the time of every start still inside it (``_rate.py``), so
a day-long window at a million starts a day holds a million timestamps. Measured:

- **memory per start in the window**: ``tracemalloc`` current memory after 1,000,000
  reserve-and-commit starts into a fresh ``RateLimiter("1000000/day")`` (driven by a fake
  clock at exactly the limit's pace, so all of them are in the window), over the count;
- **time per start with 1,000,000 in the window**: the window full, 200,000 more starts at
  the limit's pace (each one lets the oldest go), without ``tracemalloc``;
- **through a cue**: streaming 1,000,000 no-op works (as B12) through a service with
  ``rate="1000000/day"``, against the same with a window that never holds more than a few
  hundred starts (``"1000/0.001s"``, as wide open) and without a rate, interleaved: what a
  start costs in the whole engine while the day window fills from empty to full.
"""

from __future__ import annotations

import gc
import time
import tracemalloc

from runcue._rate import RateLimiter, parse_rate

from ._harness import (
    Backend,
    Row,
    Settings,
    fmt_seconds,
    interleave,
    median,
    on_loop,
    paired_ratios,
)
from .b12_stream import stream

ID = "B12b"
TITLE = "a long rate window at full use, rate='1000000/day'"
RATE = "1000000/day"
SHORT = "1000/0.001s"  # the same headroom, a millisecond long
LIMIT = 1_000_000
PERIOD = 86_400.0
STEADY = 200_000  # starts timed once the window is full


def _limiter() -> tuple[RateLimiter, list[float]]:
    now = [0.0]
    return RateLimiter(parse_rate(RATE), clock=lambda: now[0]), now


def _start(limiter: RateLimiter, now: list[float], count: int) -> None:
    """``count`` starts at the limit's pace (one every period / limit seconds)."""
    step = PERIOD / LIMIT
    for _ in range(count):
        now[0] += step
        if not limiter.try_reserve():
            msg = "the window refused a start at the limit's own pace"
            raise AssertionError(msg)
        limiter.commit()


def bytes_per_start(starts: int = LIMIT) -> float:
    """Traced bytes the window holds per start inside it."""
    gc.collect()
    tracemalloc.start()
    try:
        limiter, now = _limiter()
        before = tracemalloc.get_traced_memory()[0]
        _start(limiter, now, starts)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    if limiter.used()[0][1] != starts:
        msg = "the window lost starts"
        raise AssertionError(msg)
    return (after - before) / starts


def seconds_per_start_when_full(starts: int = LIMIT, steady: int = STEADY) -> float:
    """Seconds per start (reserve and commit) while the window holds ``starts`` starts."""
    limiter, now = _limiter()
    _start(limiter, now, starts)
    begun = time.perf_counter()
    _start(limiter, now, steady)
    return (time.perf_counter() - begun) / steady


def run(backend: Backend, settings: Settings) -> list[Row]:
    """The window alone, then the whole engine with and without the rate (interleaved)."""
    items = 200_000 if settings.quick else LIMIT
    held = bytes_per_start()
    per_start = seconds_per_start_when_full()
    times = interleave(
        {
            "rate": lambda: on_loop(backend, lambda: stream(items, rate=RATE)),
            "short": lambda: on_loop(backend, lambda: stream(items, rate=SHORT)),
            "plain": lambda: on_loop(backend, lambda: stream(items)),
        },
        settings.rounds(full=1, quick=1),
        warmup=0,
        say=settings.say,
    )

    def added(baseline: str) -> float:
        return median([a - b for a, b in zip(times["rate"], times[baseline])]) / items

    to_short = median(paired_ratios(times["rate"], times["short"]))
    return [
        Row(
            ID,
            backend,
            TITLE,
            f"{held:.1f} B per start in the window ({held * LIMIT / 1e6:.0f} MB full);"
            f" {fmt_seconds(per_start)} per start with {LIMIT:,} in it",
            f"through a cue, {items:,} starts: {fmt_seconds(median(times['rate']) / items)}"
            f"/item with the day window, {fmt_seconds(median(times['short']) / items)} with a"
            f" 1 ms window, {fmt_seconds(median(times['plain']) / items)} without a rate",
            f"{fmt_seconds(added('short'))} per start over a 1 ms window ({to_short:.3g}x);"
            f" {fmt_seconds(added('plain'))} over no rate",
            "informative",
            None,
        )
    ]
