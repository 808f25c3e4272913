"""B7: memory held per pending work unit (50,000 never-ready items with small params).

``tracemalloc`` current memory once every item was submitted, asked ``is_ready`` once and
parked (not while a sweep has put them back into their queue to ask again: that costs about
100 B per item more, for the moment the sweep takes), minus the memory of the same started
cue before the first submission, after ``gc.collect()``, over the item count. The baseline
is the least a queue can hold: a ``__slots__`` record (id, task, params) per item in a dict
keyed by id, with the same params.

A second baseline shows what bounds the target: the least a scheduler with runcue's API can
hold per pending item — a 7-field ``__slots__`` record (string id, task, params, state,
sequence number for FIFO, submission time, content digest) in an index by id, a
de-duplication index by content digest (identical in-flight work is not queued twice) and a
list of waiting records. No real scheduler state (priority, attempt, key, retries, cancel
scopes, timestamps, declared artifacts) is in it, yet it is already above 400 B.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc
from typing import Any

import runcue

from ._harness import (
    Backend,
    NeverReady,
    Row,
    Settings,
    fmt_bytes,
    fmt_ratio,
    interleave,
    median,
    on_loop,
)

ID = "B7"
TITLE = "memory per pending item"


class Record:
    """The baseline's pending item."""

    __slots__ = ("id", "params", "task")

    def __init__(self, record_id: str, task: str, params: dict[str, Any]) -> None:
        self.id = record_id
        self.task = task
        self.params = params


class LeanWork:
    """The lean scheduler's pending item: only what ids, FIFO and de-duplication need."""

    __slots__ = ("digest", "id", "params", "seq", "state", "submitted", "task")

    def __init__(
        self, work_id: str, task: str, params: dict[str, Any], seq: int, digest: int
    ) -> None:
        self.id = work_id
        self.task = task
        self.params = params
        self.state = "pending"
        self.seq = seq
        self.submitted = time.monotonic()
        self.digest = digest


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def runcue_bytes(items: int) -> float:
    """Bytes per pending work unit."""
    tracemalloc.start()
    try:
        async with runcue.Cue() as cue:
            pending = NeverReady(cue)
            await pending.submit(1, first=-1)  # one item to warm every structure up
            await pending.asked_at_least(1)
            await pending.all_parked(1)
            before = _traced()
            await pending.submit(items)
            await pending.asked_at_least(items + 1)
            await pending.all_parked(items + 1)
            after = _traced()
            await cue.stop()
    finally:
        tracemalloc.stop()
    return (after - before) / items


async def record_bytes(items: int) -> float:
    """Bytes per record in a dict."""
    prefix = os.urandom(3).hex()
    pending: dict[str, Record] = {}
    tracemalloc.start()
    try:
        before = _traced()
        for index in range(items):
            record_id = f"{prefix}-{index}"
            pending[record_id] = Record(record_id, "noop", {"i": index})
        after = _traced()
    finally:
        tracemalloc.stop()
    return (after - before) / items


async def lean_bytes(items: int) -> float:
    """Bytes per pending item of the lean scheduler (id index, de-dup index, waiting list)."""
    prefix = os.urandom(3).hex()
    by_id: dict[str, LeanWork] = {}
    by_digest: dict[int, LeanWork] = {}
    waiting: list[LeanWork] = []
    tracemalloc.start()
    try:
        before = _traced()
        for index in range(items):
            params = {"i": index}
            digest = hash(("noop", tuple(sorted(params.items()))))
            if digest in by_digest:
                continue
            seq = index + 1_000  # past the small-int cache, like any real counter
            work = LeanWork(f"{prefix}-{seq}", "noop", params, seq, digest)
            by_id[work.id] = by_digest[digest] = work
            waiting.append(work)
        after = _traced()
    finally:
        tracemalloc.stop()
    return (after - before) / items


def run(backend: Backend, settings: Settings) -> list[Row]:
    """runcue and the record, interleaved."""
    items = 20_000 if settings.quick else 50_000
    results = interleave(
        {
            "runcue": lambda: on_loop(backend, lambda: runcue_bytes(items)),
            "record": lambda: on_loop(backend, lambda: record_bytes(items)),
            "lean": lambda: on_loop(backend, lambda: lean_bytes(items)),
        },
        settings.rounds(full=1, quick=1),  # memory is deterministic: one round is enough
        warmup=0,
        say=settings.say,
    )
    ours, record = median(results["runcue"]), median(results["record"])
    lean = median(results["lean"])
    return [
        Row(
            ID,
            backend,
            f"{TITLE}, {items:,} never-ready items, params {{'i': n}}",
            f"{fmt_bytes(ours)}/item",
            f"__slots__ record in a dict {fmt_bytes(record)}/item; least scheduler record"
            f" (7 fields, id and de-dup indexes, waiting list) {fmt_bytes(lean)}/item",
            f"{fmt_ratio(ours / record)} the record, {fmt_ratio(ours / lean)} the least"
            " scheduler record",
            "≤ 600 B/item",
            ours <= 600,
        )
    ]
