"""Where the bytes of a pending work go: B7's scenario, grouped by the line that allocated them.

``python -m benchmarks.b7_breakdown [--items N] [--backend asyncio|trio]`` submits ``N``
never-ready works with params ``{"i": n}`` to a started cue (after one warm-up work), then
prints the tracemalloc difference per allocating line, in bytes per work, largest first.
It is the profile behind B7's figure (``b7_memory.py`` measures the total the same way).
"""

from __future__ import annotations

import argparse
import gc
import linecache
import os
import tracemalloc

import anyio

import runcue

from ._harness import NeverReady


async def breakdown(items: int, top: int) -> list[tuple[float, str]]:
    """(bytes per work, allocating line) for the ``top`` largest differences."""
    tracemalloc.start(4)
    try:
        async with runcue.Cue() as cue:
            pending = NeverReady(cue)
            await pending.submit(1, first=-1)
            await pending.asked_at_least(1)
            await pending.all_parked(1)
            gc.collect()
            before = tracemalloc.take_snapshot()
            await pending.submit(items)
            await pending.asked_at_least(items + 1)
            await pending.all_parked(items + 1)
            gc.collect()
            after = tracemalloc.take_snapshot()
            await cue.stop()
    finally:
        tracemalloc.stop()
    rows = []
    total = 0
    for stat in after.compare_to(before, "lineno"):
        total += stat.size_diff
        frame = stat.traceback[0]
        code = linecache.getline(frame.filename, frame.lineno).strip()
        place = f"{os.path.basename(frame.filename)}:{frame.lineno}"
        rows.append((stat.size_diff / items, f"{place:<22} {code}"))
    rows.sort(reverse=True)
    return [(total / items, "total"), *rows[:top]]


def main() -> None:
    """Print the breakdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--top", type=int, default=12)
    options = parser.parse_args()
    rows = anyio.run(breakdown, options.items, options.top, backend=options.backend)
    for per_item, where in rows:
        print(f"{per_item:8.1f} B/work  {where}")


if __name__ == "__main__":
    main()
