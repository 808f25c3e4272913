"""B2: does the per-item cost stay flat as the batch grows (2,000 / 10,000 / 40,000 items)?

The B1 workload (no-op async handlers, one ``concurrent=100`` service, submit all then join)
at three sizes, interleaved round by round; the claim is on the paired ratio of the per-item
time at 40,000 to the per-item time at 2,000.
"""

from __future__ import annotations

from functools import partial

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
from .b1_throughput import runcue_join

ID = "B2"
TITLE = "scaling, per-item time at 2,000 / 10,000 / 40,000 items"
SIZES = (2_000, 10_000, 40_000)


def _per_item(backend: Backend, items: int) -> float:
    return on_loop(backend, lambda: runcue_join(items)) / items


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Measure the three sizes, interleaved."""
    results = interleave(
        {f"{size}": partial(_per_item, backend, size) for size in SIZES},
        settings.rounds(full=5, quick=2),
        say=settings.say,
    )
    small, large = results[str(SIZES[0])], results[str(SIZES[-1])]
    growth = median(paired_ratios(large, small))
    shown = "; ".join(f"{size:,}: {fmt_seconds(median(results[str(size)]))}" for size in SIZES)
    return [
        Row(
            ID,
            backend,
            TITLE,
            f"per item {shown}",
            "(runcue at 2,000)",
            f"{fmt_ratio(growth)} (40,000 vs 2,000)",
            "≤ 1.3x",
            growth <= 1.3,
        )
    ]
