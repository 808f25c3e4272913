"""A timeline of a cue's run as trace events, for Perfetto and ``chrome://tracing``.

:class:`Timeline` is a listener (``cue.subscribe``) that keeps what it sees as compact
records; :meth:`Timeline.document` turns them into the Trace Event Format's JSON object
format (``{"traceEvents": [...]}``), and :func:`trace` does both around a block and writes
the file when the block ends -- however it ends.

The picture: one process per service (named after it, labelled with its limits); in it one
thread per slot, so an attempt runs on the lowest slot of its service free at its start and
concurrent attempts sit on separate rows. Each attempt is a complete slice (``"ph": "X"``)
named ``task (outcome)``; each wait -- from queued, or from a retry or a rate-limit pause,
to the start -- is an async slice (``"b"``/``"e"``) named ``waiting``, ``retry backoff`` or
``rate-limit pause``; a counter (``"C"``) per service tracks work queued and running; a
service pause is an instant (``"i"``). Times are microseconds since the timeline began.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from ._artifacts import atomic_write
from ._events import ATTEMPT_OUTCOMES, WorkEvent

if TYPE_CHECKING:
    from ._cue import Cue
    from ._work import WorkUnit

__all__ = ["Timeline", "trace"]

NO_SERVICE = "(no service)"
QUEUE_TID = 0  # the thread of a service's waits and counter; slots are threads 1, 2, ...
# trace-viewer's reserved colour names (Perfetto colours by name instead)
COLOURS = {"failed": "terrible", "retried": "bad", "rate_limited": "bad", "cancelled": "grey"}
WAITS = {"queued": "waiting", "retrying": "retry backoff", "paused": "rate-limit pause"}
PARAMS_SHOWN = 200  # characters of a work's params repr kept in its slices' args


class _Lane:
    """One service: its process id, its free slots, its counts."""

    __slots__ = ("free", "name", "pid", "queued", "running", "slots")

    def __init__(self, pid: int, name: str) -> None:
        self.pid = pid
        self.name = name
        self.free: list[int] = []  # slot numbers given back, lowest first (a heap)
        self.slots = 0  # slot numbers ever used: 1..slots
        self.queued = 0
        self.running = 0

    def take_slot(self) -> int:
        if self.free:
            return heapq.heappop(self.free)
        self.slots += 1
        return self.slots


class _Open:
    """A work whose wait or attempt is under way."""

    __slots__ = ("lane", "reason", "since", "slot", "wait", "work")

    def __init__(self, work: WorkUnit, lane: _Lane, since: float, wait: str | None) -> None:
        self.work = work
        self.lane = lane
        self.since = since  # when the current wait or attempt began
        self.wait = wait  # the open wait slice's name; None while running
        self.slot = 0  # the slot of the running attempt
        self.reason = ""  # why it waits, from the latest "waiting" event


# A record: (ph, name, pid, tid, seconds, duration or None, args or None, extra fields or None)
Record = tuple[
    str, str, int, int, float, float | None, dict[str, Any] | None, dict[str, Any] | None
]


class Timeline:
    """A listener that records a cue's run as a trace-event timeline.

    ::

        timeline = runcue.Timeline()
        cue.subscribe(timeline)
        ...
        timeline.write("run.json")         # open it in https://ui.perfetto.dev

    :func:`runcue.trace` does this around a block. The records stay in memory (a few
    hundred bytes per work) until written; for a worker that never ends, prefer
    :func:`runcue.instrument`.

    :param origin: the clock time (``anyio.current_time()``) that is 0 on the timeline;
        default: the first event's time.
    :param labels: a label per service name (e.g. its limits), shown on its process.
    """

    def __init__(
        self, *, origin: float | None = None, labels: Mapping[str | None, str] | None = None
    ) -> None:
        self.origin = origin
        self.labels: dict[str | None, str] = dict(labels or {})
        self._records: list[Record] = []
        self._lanes: dict[str | None, _Lane] = {}
        self._open: dict[str, _Open] = {}
        self._last = origin if origin is not None else 0.0

    def __len__(self) -> int:
        """Events recorded so far (without the metadata naming processes and threads)."""
        return len(self._records)

    # ------------------------------------------------------------------ events

    def __call__(self, event: WorkEvent) -> None:
        """Record one event (the listener interface)."""
        kind = event.kind
        now = event.time
        if self.origin is None:
            self.origin = now
        self._last = now
        work = event.work
        record = self._open.get(work.id)
        if kind == "queued":
            if record is None:
                record = self._open[work.id] = _Open(work, self._lane(event.service), now, None)
                self._begin_wait(record, event, "queued")
            return
        if record is None:
            if kind != "started":
                return  # queued before the timeline began, and never ran since
            record = self._open[work.id] = _Open(work, self._lane(event.service), now, None)
        if kind == "waiting":
            record.reason = event.details
        elif kind == "started":
            self._end_wait(record, event, "started")
            lane = record.lane
            record.slot = lane.take_slot()
            record.since = now
            lane.running += 1
            self._count(lane, now)
        elif record.wait is None:  # an attempt ends
            self._end_attempt(record, event)
        else:  # ended while waiting: skipped, timed out, cancelled
            self._end_wait(record, event, kind)
            del self._open[work.id]
            self._count(record.lane, now)

    def _lane(self, service: str | None) -> _Lane:
        lane = self._lanes.get(service)
        if lane is None:
            name = NO_SERVICE if service is None else service
            lane = self._lanes[service] = _Lane(len(self._lanes) + 1, name)
        return lane

    def _begin_wait(self, record: _Open, event: WorkEvent, why: str) -> None:
        lane = record.lane
        record.wait = WAITS[why]
        record.since = event.time
        record.reason = ""
        lane.queued += 1
        work = event.work
        args = {"work": work.id, "task": work.task, "params": _shown(work.params)}
        self._records.append(
            ("b", record.wait, lane.pid, QUEUE_TID, event.time, None, args, {"id": work.id})
        )
        self._count(lane, event.time)

    def _end_wait(self, record: _Open, event: WorkEvent, outcome: str) -> None:
        if record.wait is None:
            return
        lane = record.lane
        args: dict[str, Any] = {"next": outcome}
        if record.reason:
            args["reason"] = record.reason
        self._records.append(
            ("e", record.wait, lane.pid, QUEUE_TID, event.time, None, args, {"id": event.work.id})
        )
        record.wait = None
        lane.queued -= 1

    def _end_attempt(self, record: _Open, event: WorkEvent) -> None:
        kind = event.kind
        lane = record.lane
        outcome = ATTEMPT_OUTCOMES.get(kind, kind)
        error = event.details if outcome != "completed" else ""
        self._records.append(_attempt(record, outcome, event.time, error))
        heapq.heappush(lane.free, record.slot)
        lane.running -= 1
        if kind == "paused":
            pause = event.details or "paused"
            scope = {"s": "p"}  # an instant across the service's process
            self._records.append(("i", pause, lane.pid, QUEUE_TID, event.time, None, None, scope))
        if kind in ("retrying", "paused"):
            self._begin_wait(record, event, kind)  # counts too
            return
        del self._open[event.work.id]
        self._count(lane, event.time)

    def _count(self, lane: _Lane, now: float) -> None:
        counts = {"queued": lane.queued, "running": lane.running}
        self._records.append(("C", "work", lane.pid, QUEUE_TID, now, None, counts, None))

    # ------------------------------------------------------------------ output

    def document(self, end: float | None = None) -> dict[str, Any]:
        """The timeline as a Trace Event Format JSON object.

        Waits and attempts still open are closed at ``end`` (default: the latest event)
        with the outcome ``unfinished``; the timeline itself is not changed.
        """
        origin = self.origin if self.origin is not None else 0.0
        end = self._last if end is None else max(end, self._last)
        records = list(self._records)
        for work_id, record in self._open.items():
            if record.wait is None:
                records.append(_attempt(record, "unfinished", end, ""))
            else:
                closing = {"next": "unfinished"}
                pid, wait = record.lane.pid, record.wait
                records.append(("e", wait, pid, QUEUE_TID, end, None, closing, {"id": work_id}))
        events = self._metadata()
        for ph, name, pid, tid, seconds, duration, args, extra in records:
            item: dict[str, Any] = {
                "name": name,
                "cat": "runcue",
                "ph": ph,
                "ts": _micros(seconds - origin),
                "pid": pid,
                "tid": tid,
            }
            if duration is not None:
                item["dur"] = _micros(max(0.0, duration))
            if args is not None:
                item["args"] = args
            if extra is not None:
                item.update(extra)
            events.append(item)
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {"producer": "runcue", "clock": "seconds since the timeline began"},
        }

    def write(self, path: str | os.PathLike[str], end: float | None = None) -> None:
        """Write :meth:`document` to ``path`` as JSON, all at once (never half-written)."""
        document = self.document(end)
        with atomic_write(path, encoding="utf-8") as handle:
            json.dump(document, handle, separators=(",", ":"))

    def _metadata(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []

        def meta(name: str, pid: int, tid: int, args: dict[str, Any]) -> None:
            events.append({"name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args})

        for service, lane in self._lanes.items():
            meta("process_name", lane.pid, QUEUE_TID, {"name": lane.name})
            meta("process_sort_index", lane.pid, QUEUE_TID, {"sort_index": lane.pid})
            label = self.labels.get(service)
            if label:
                meta("process_labels", lane.pid, QUEUE_TID, {"labels": label})
            meta("thread_name", lane.pid, QUEUE_TID, {"name": "queue"})
            meta("thread_sort_index", lane.pid, QUEUE_TID, {"sort_index": QUEUE_TID})
            for slot in range(1, lane.slots + 1):
                meta("thread_name", lane.pid, slot, {"name": f"slot {slot}"})
                meta("thread_sort_index", lane.pid, slot, {"sort_index": slot})
        return events


def _attempt(record: _Open, outcome: str, end: float, error: str) -> Record:
    """The complete slice of an attempt that ended at ``end``."""
    work = record.work
    args: dict[str, Any] = {"work": work.id, "attempt": work.attempt, "outcome": outcome}
    if error:
        args["error"] = error
    extra = {"cname": COLOURS[outcome]} if outcome in COLOURS else None
    name = f"{work.task} ({outcome})"
    pid, slot, since = record.lane.pid, record.slot, record.since
    return ("X", name, pid, slot, since, end - since, args, extra)


def _micros(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _shown(params: Mapping[str, Any]) -> str:
    text = repr(dict(params))
    return text if len(text) <= PARAMS_SHOWN else text[: PARAMS_SHOWN - 1] + "…"


def _labels(cue: Cue) -> dict[str | None, str]:
    labels: dict[str | None, str] = {}
    for name, service in cue.stats().services.items():
        parts = []
        if service.concurrent is not None:
            parts.append(f"concurrent={service.concurrent}")
        if service.rate is not None:
            parts.append(f"rate={service.rate}")
        if parts:
            labels[name] = ", ".join(parts)
    return labels


@asynccontextmanager
async def trace(
    cue: Cue, path: str | os.PathLike[str], *, wait: bool = True
) -> AsyncIterator[Timeline]:
    """Record a timeline of ``cue`` while the block runs; write it to ``path`` when it ends.

    ::

        async with runcue.Cue() as cue, runcue.trace(cue, "run.json"):
            for page in pages:
                await cue.submit("extract", {"page": page})

    Open the file in https://ui.perfetto.dev (or ``chrome://tracing``). Leaving the block
    normally first waits until the cue has nothing pending or running (as leaving the cue's
    own block would), so the timeline follows the work to its end; an exception or a
    cancellation leaves at once. The file is written however the block ends, all at once, so
    it is always a whole JSON document; work still waiting or running at that moment shows
    as ``unfinished``. Enter it before the work you want to see is submitted.

    :param wait: wait for the cue to be idle before leaving (see above); False for a slice
        of a cue that keeps running, e.g. ``with anyio.move_on_after(60)`` in a worker.

    :raises TypeError: when ``path`` is not a path.
    :raises FileNotFoundError: when the directory of ``path`` does not exist (at entry,
        before anything runs).
    """
    if not isinstance(path, (str, os.PathLike)):
        msg = f"trace() writes to a file path (str or os.PathLike), got {path!r}"
        raise TypeError(msg)
    target = Path(path)
    if not target.parent.is_dir():
        msg = (
            f"cannot write the timeline to {str(target)!r}: the directory"
            f" {str(target.parent)!r} does not exist; create it first"
        )
        raise FileNotFoundError(msg)
    timeline = Timeline(origin=anyio.current_time())
    unsubscribe = cue.subscribe(timeline)
    try:
        yield timeline
        if wait:
            await cue.join()
    finally:
        unsubscribe()
        end = anyio.current_time()
        timeline.labels.update(_labels(cue))
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(timeline.write, target, end)
