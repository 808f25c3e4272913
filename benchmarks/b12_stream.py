"""B12: endless inputs in bounded memory -- 1,000,000 inputs streamed through ``cue.map``.

``Cue(max_pending=10,000)``, one ``concurrent=100`` service, no-op async handlers; the inputs
come from a generator (``{"i": n}``) and every finished work is taken from ``async for``.

- **Flat memory**: ``tracemalloc``'s peak over the whole run (the cue entered and left, the
  inputs read, every work yielded), streaming 1,000,000 inputs against streaming 100,000:
  a stream holds at most its window of works, so ten times the inputs may not need more
  memory (target: within 10 %).
- **Per-item time**: the 1,000,000 inputs without ``tracemalloc``, per item, against B1's
  runcue per item (20,000 works submitted in a loop, then ``join()``; a B1 run lasts a
  fiftieth of a stream's, so each round takes the median of five), interleaved in the same
  run (target: at most 1.3x).

The peaks are the lower of two runs each: a peak is the largest moment of a run, and a
machine busy with other work can make one run's scheduling burst (more work queued at once,
never more than the window and the ``keep_finished`` history allow); the lower of two is
the stream's own footprint.
"""

from __future__ import annotations

import gc
import tracemalloc

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
from .b1_throughput import ITEMS as B1_ITEMS
from .b1_throughput import runcue_join

ID = "B12"
TITLE = "streaming inputs through cue.map, max_pending=10,000"
MAX_PENDING = 10_000
CONCURRENT = 100


async def stream(items: int, max_pending: int = MAX_PENDING, *, rate: str | None = None) -> float:
    """Seconds to stream ``items`` inputs through ``cue.map`` (cue set-up and teardown in);
    ``rate``: the service's rate too (B12b)."""

    async def noop(work: runcue.WorkUnit) -> None:
        return None

    elapsed = stopwatch()
    yielded = 0
    async with runcue.Cue(max_pending=max_pending) as cue:
        cue.service("svc", concurrent=CONCURRENT, rate=rate)
        cue.task("noop", uses="svc")(noop)
        async with cue.map("noop", ({"i": index} for index in range(items))) as results:
            async for _ in results:
                yielded += 1
    seconds = elapsed()
    if yielded != items:
        msg = f"the stream yielded {yielded} works for {items} inputs"
        raise AssertionError(msg)
    return seconds


async def stream_peak(items: int, max_pending: int = MAX_PENDING) -> float:
    """tracemalloc's peak, in bytes, over streaming ``items`` inputs."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        await stream(items, max_pending)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return float(peak - before)


def b1_median(backend: Backend, runs: int = 5) -> float:
    """B1's runcue, ``runs`` times on fresh loops: the median seconds."""
    return median([on_loop(backend, lambda: runcue_join(B1_ITEMS)) for _ in range(runs)])


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Per-item time against B1 (interleaved), then the peaks of a short and a long stream."""
    long, short = (200_000, 20_000) if settings.quick else (1_000_000, 100_000)
    pending = 2_000 if settings.quick else MAX_PENDING
    b1_median(backend, runs=1)  # warm-up: imports, caches
    times = interleave(
        {
            "stream": lambda: on_loop(backend, lambda: stream(long, pending)),
            "b1": lambda: b1_median(backend),
        },
        settings.rounds(full=3, quick=1),
        warmup=0,  # (B1 warms up below; the stream is long enough not to need it)
        say=settings.say,
    )
    peaks = interleave(
        {
            "short": lambda: on_loop(backend, lambda: stream_peak(short, pending)),
            "long": lambda: on_loop(backend, lambda: stream_peak(long, pending)),
        },
        settings.rounds(full=2, quick=1),
        warmup=0,
        say=settings.say,
    )
    per_item = [seconds / long for seconds in times["stream"]]
    b1_per_item = [seconds / B1_ITEMS for seconds in times["b1"]]
    to_b1 = median(paired_ratios(per_item, b1_per_item))
    short_peak, long_peak = min(peaks["short"]), min(peaks["long"])
    growth = long_peak / short_peak
    return [
        Row(
            ID,
            backend,
            f"{TITLE}: {long:,} inputs (max_pending={pending:,}), no-op handlers, concurrent=100",
            f"{fmt_seconds(median(times['stream']))} ({fmt_seconds(median(per_item))}/item);"
            f" peak {long_peak / 1e6:.1f} MB",
            f"B1 {fmt_seconds(median(b1_per_item))}/item; {short:,} inputs: peak"
            f" {short_peak / 1e6:.1f} MB",
            f"{fmt_ratio(to_b1)} B1 per item; peak {fmt_ratio(growth)} the short stream's",
            "≤ 1.3x B1 per item; peak ≤ 1.1x",
            to_b1 <= 1.3 and growth <= 1.1,
        )
    ]
