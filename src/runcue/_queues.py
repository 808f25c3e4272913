"""Where pending work waits: each service's priority queue, the parking of work that is not
ready, and the retry backoffs. Plain data structures: nothing here awaits or reads a clock
(times are passed in), so it is unit-tested without an event loop.

Where a pending work unit is (``work._where``):

- ``INTAKE``: submitted before the cue started.
- ``QUEUED``: in its service's :class:`WorkQueue`, waiting for room. Its checks are asked only
  when room exists, right before it would start, so they see the freshest artifacts and work
  behind a full service costs no check calls at all.
- ``PARKED``: ``is_ready`` said no (or a check raised): in the :class:`Parking`, waiting for
  a producer (``precise``) or for the world outside (``orphans``).
- ``SWEPT``: parked too, in the part every sweep rechecks (:class:`Swept`).
- ``DELAYED``: failed, waiting for its retry backoff (or for a claim held elsewhere): in
  :class:`Delayed`.
- ``CHECKING``: its checks (or a store round trip) are being awaited.
- ``RUNNING``: admitted; its handler runs, or is about to.

**Ordering inside a service**: a binary heap keyed on ``submitted / priority_aging -
priority``, then submission order. With that key every waiting work "ages" at the same rate, so
the relative order never changes while they wait: choosing the next work is O(log n), higher
priority goes first, equal priority is FIFO, and a low-priority work overtakes newer
high-priority ones after ``priority_aging`` seconds per unit of priority (no starvation).
Entries are removed lazily: a work that left the queue keeps a stale entry (its ``_token``
moved on) until it reaches the top.

**Parking**: a sweep puts every parked work back into its queue. Declared work (inputs and
outputs) is never swept by completions: it waits for precisely the producers of its missing
inputs (``precise``), or, for an input no live work produces, for the periodic recheck and
``poke()`` (``orphans``). :class:`SweepClock` decides when sweeps are due, spaced by what the
last one cost so that re-asking never takes much of the loop.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._artifacts import artifact_key

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = [
    "CHECKING",
    "DELAYED",
    "INTAKE",
    "NOWHERE",
    "PARKED",
    "QUEUED",
    "RUNNING",
    "SWEPT",
    "Delayed",
    "Parking",
    "SweepClock",
    "Swept",
    "WorkQueue",
    "order_key",
]

NOWHERE, INTAKE, QUEUED, PARKED, DELAYED, CHECKING, RUNNING, SWEPT = range(8)


def is_parked(where: int) -> bool:
    """``work._where`` says it is in the :class:`Parking` (any part of it)."""
    return where in (PARKED, SWEPT)


class Swept:
    """The parked work every sweep rechecks, in the order it was parked.

    A list with lazy removal rather than a dict: a work here costs one list slot (8 bytes, not
    a dict entry's 30-50), which matters when tens of thousands of works wait for callbacks to
    say they are ready. A work is here while its ``_where`` is ``SWEPT``; one taken out (cancelled,
    woken by a producer) leaves a stale entry behind, skipped by the next sweep, and the list
    is compacted when stale entries outnumber live ones. A work parked again before that has
    two entries: whichever is met first takes it (its ``_where`` moves on), the other is stale.
    """

    __slots__ = ("entries", "live")

    def __init__(self) -> None:
        self.entries: list[WorkUnit] = []
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def __iter__(self) -> Iterator[WorkUnit]:
        """The live works, each once (not on a hot path: diagnosis, tests)."""
        seen: set[int] = set()
        for work in self.entries:
            if work._where == SWEPT and id(work) not in seen:
                seen.add(id(work))
                yield work

    def add(self, work: WorkUnit) -> None:
        work._where = SWEPT
        self.entries.append(work)
        self.live += 1

    def discard(self, work: WorkUnit) -> None:
        """Take a work out (the caller gives it its next ``_where``)."""
        work._where = NOWHERE
        self.live -= 1
        if len(self.entries) > 2 * self.live + 64:
            self.entries = list(self)

    def take(self) -> list[WorkUnit]:
        """Every live work, taken out (each ``_where`` is NOWHERE until the caller's)."""
        taken = []
        for work in self.entries:
            if work._where == SWEPT:
                work._where = NOWHERE  # (a second entry of it is stale now)
                taken.append(work)
        self.entries = []
        self.live = 0
        return taken


SWEEP_BUDGET = 3.0  # completion sweeps wait >= this x the check time the last sweep cost
PERIODIC_BUDGET = 100.0  # periodic sweeps wait >= this x the check time the last sweep cost


def order_key(submitted: float, priority: float, aging: float) -> float:
    """The queue key: lower first. See the module docstring."""
    return submitted / aging - priority


class WorkQueue:
    """One service's waiting work: a heap with lazy deletion, and the count of live entries."""

    __slots__ = ("heap", "live")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, WorkUnit]] = []
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def push(self, work: WorkUnit, key: float) -> None:
        """Queue a work (it is no longer anywhere else)."""
        work._token += 1
        work._where = QUEUED
        heapq.heappush(self.heap, (key, work._seq, work._token, work))
        self.live += 1

    def pop(self) -> WorkUnit | None:
        """The first live work, taken out of the queue (its ``_where`` is the caller's)."""
        heap = self.heap
        while heap:
            _, _, token, work = heapq.heappop(heap)
            if work._where == QUEUED and work._token == token:
                self.live -= 1
                if not self.live:
                    heap.clear()
                return work
        return None

    def head(self) -> WorkUnit | None:
        """The first live work, left in place."""
        heap = self.heap
        while heap:
            _, _, token, work = heap[0]
            if work._where == QUEUED and work._token == token:
                return work
            heapq.heappop(heap)
        return None

    def discard(self, work: WorkUnit) -> None:
        """A queued work leaves (cancelled, finished): its entry goes stale."""
        work._where = NOWHERE
        self.live -= 1
        if not self.live:
            self.heap.clear()

    def ready_at(self, now: float) -> float:
        """When the queue can hand out its next work as far as time decides (-inf: now)."""
        return -math.inf

    def drain(self) -> list[tuple[float, WorkUnit]]:
        """Take every live work out, with its order key (to move them to another queue)."""
        live = [
            (key, work)
            for key, _, token, work in self.heap
            if work._where == QUEUED and work._token == token
        ]
        self.heap = []
        self.live = 0
        for _, work in live:
            work._where = NOWHERE
        return live

    def entries(self) -> Iterator[WorkUnit]:
        """The live works, in no particular order."""
        for _, _, token, work in self.heap:
            if work._where == QUEUED and work._token == token:
                yield work


class Delayed:
    """Work waiting for a time: a retry's backoff, or a claim another process holds."""

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, WorkUnit]] = []

    def __bool__(self) -> bool:
        return bool(self.heap)

    def push(self, work: WorkUnit, due: float) -> None:
        work._token += 1
        work._where = DELAYED
        heapq.heappush(self.heap, (due, work._seq, work._token, work))

    def next_due(self) -> float:
        return self.heap[0][0] if self.heap else math.inf

    def pop_due(self, now: float) -> Iterator[WorkUnit]:
        """The works whose time has come (stale entries are dropped)."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, token, work = heapq.heappop(heap)
            if work._where == DELAYED and work._token == token:
                yield work

    def due_of(self, work: WorkUnit) -> float | None:
        """When this delayed work comes due (None when it is not delayed here)."""
        for due, _, token, delayed in self.heap:
            if delayed is work and token == work._token:
                return due
        return None

    def keep_pending(self, is_pending: Any) -> None:
        """Drop entries of work that ended (a new run: their times belong to an old clock)."""
        self.heap = [entry for entry in self.heap if is_pending(entry[3])]
        heapq.heapify(self.heap)


class Parking:
    """Work that may not start yet, and the indexes that wake it precisely.

    - ``swept``: rechecked by every sweep (callback-style work, check errors);
    - ``precise``: declared work waiting for an input that live work will produce: woken
      when that producer finishes, never swept;
    - ``orphans``: declared work waiting for an input no live work produces: only the world
      outside can make it ready, so completions do not sweep it; periodic rechecks and
      ``poke()`` do.
    """

    __slots__ = ("orphans", "precise", "producers", "sweeps", "swept", "waiting_on", "waits_for")

    def __init__(self, sweeps: SweepClock) -> None:
        self.sweeps = sweeps
        self.swept = Swept()
        self.precise: dict[int, WorkUnit] = {}
        self.orphans: dict[int, WorkUnit] = {}
        self.producers: dict[Any, dict[int, WorkUnit]] = {}  # output key -> live producers
        self.waiting_on: dict[Any, dict[int, WorkUnit]] = {}  # input key -> parked consumers
        self.waits_for: dict[int, list[Any]] = {}  # work._seq -> its keys in waiting_on

    def __len__(self) -> int:
        return len(self.swept) + len(self.precise) + len(self.orphans)

    def park(
        self, work: WorkUnit, verdict: tuple[str, str], *, asked_inline: bool, now: float
    ) -> None:
        """Keep a work that may not start (``verdict``: why) in the part that fits it."""
        reason = verdict[0]
        work._where = PARKED
        work._blocked = verdict  # the checks' shared tuples: no allocation per waiting work
        if self.waits_for:
            self.forget_waiting(work)  # what it waited for before this check
        precise = False
        if reason == "not_ready" and work._missing:
            keys = []
            for item in work._missing:
                key = artifact_key(item)
                keys.append(key)
                self.waiting_on.setdefault(key, {})[work._seq] = work
                producers = self.producers.get(key)
                if producers and any(p is not work for p in producers.values()):
                    precise = True
            self.waits_for[work._seq] = keys
        if precise:
            self.precise[work._seq] = work
        elif work._missing and reason == "not_ready" and asked_inline:
            # (Only when no await came between asking and here: a producer that finished
            # meanwhile may have made the input; then completions' sweeps must see it.)
            if not self.orphans:
                self.sweeps.last_orphans = now  # its first recheck: one gap from now
            self.orphans[work._seq] = work
        else:
            self.swept.add(work)

    def unpark(self, work: WorkUnit) -> None:
        """Take a parked work out of whichever part holds it (its ``_where`` is the caller's)."""
        if work._where == SWEPT:
            self.swept.discard(work)
            return
        seq = work._seq
        if self.precise.pop(seq, None) is None:
            self.orphans.pop(seq, None)

    def forget_waiting(self, work: WorkUnit) -> None:
        """Take a work out of ``waiting_on`` (and drop the keys nobody waits for any more)."""
        waiting_on = self.waiting_on
        for key in self.waits_for.pop(work._seq, ()):
            waiting = waiting_on.get(key)
            if waiting is not None:
                waiting.pop(work._seq, None)
                if not waiting:
                    del waiting_on[key]

    def add_producer(self, work: WorkUnit) -> None:
        """A new work declares outputs: work waiting for them now waits for it, precisely."""
        for output in work._outputs:
            key = artifact_key(output)
            self.producers.setdefault(key, {})[work._seq] = work
            for dependent in self.waiting_on.get(key, {}).values():
                # It waited for an input nobody produced; now this work will: wake it
                # precisely when this one finishes instead of sweeping it.
                if dependent._where == SWEPT:
                    self.swept.discard(dependent)
                    dependent._where = PARKED
                    self.precise[dependent._seq] = dependent
                elif self.orphans.pop(dependent._seq, None) is not None:
                    self.precise[dependent._seq] = dependent

    def producer_done(self, work: WorkUnit) -> list[WorkUnit]:
        """A producer finished: the parked work that waits for its outputs, taken out of the
        parking (the caller queues it to be checked again)."""
        woken: list[WorkUnit] = []
        for output in work._outputs:
            key = artifact_key(output)
            producers = self.producers.get(key)
            if producers is not None:
                producers.pop(work._seq, None)
                if not producers:
                    del self.producers[key]
            for dependent in self.waiting_on.pop(key, {}).values():
                if is_parked(dependent._where):
                    self.unpark(dependent)
                    woken.append(dependent)
        return woken

    def take_swept(self) -> list[WorkUnit]:
        """Every work a sweep rechecks, taken out of the parking."""
        return self.swept.take()

    def orphans_to_sweep(self) -> None:
        """The periodic recheck of work waiting for inputs made outside the cue."""
        for work in self.orphans.values():
            self.swept.add(work)
        self.orphans.clear()

    def everything_to_sweep(self) -> None:
        """``poke()``: every parked work is rechecked by the next sweep."""
        for part in (self.precise, self.orphans):
            for work in part.values():
                self.swept.add(work)
            part.clear()


class SweepClock:
    """When sweeps of parked work are due, spaced by what the last one cost (pure).

    A sweep that completions asked for waits at least ``SWEEP_BUDGET`` times the check time
    the last sweep cost (half of that once a handler finished and nothing runs any more:
    waiting longer would only leave the cue idle); periodic rechecks (of ``swept`` work and
    of ``orphans``) come every ``recheck_interval``, stretched to ``PERIODIC_BUDGET`` times
    that cost, so background rechecks stay under about 1 % of a core.
    """

    __slots__ = (
        "handler_finished",
        "last_cost",
        "last_orphans",
        "last_sweep",
        "recheck_interval",
        "spent",
        "wanted",
    )

    def __init__(self, recheck_interval: float) -> None:
        self.recheck_interval = recheck_interval
        self.wanted = False  # completions asked for a sweep
        self.handler_finished = False  # a handler returned or raised since the last sweep
        self.last_sweep = -math.inf
        self.last_orphans = -math.inf
        self.last_cost = 0.0  # seconds the last sweep's checks (and queue work) cost
        self.spent = 0.0  # check seconds spent since the last sweep

    def start(self, now: float) -> None:
        self.last_sweep = self.last_orphans = now

    def gap(self) -> float:
        return max(self.recheck_interval, PERIODIC_BUDGET * self.last_cost)

    def wanted_at(self, running: int) -> float:
        if running == 0 and self.handler_finished:
            return self.last_sweep + self.last_cost
        return self.last_sweep + SWEEP_BUDGET * self.last_cost

    def periodic_at(self) -> float:
        return self.last_sweep + self.gap()

    def orphans_at(self) -> float:
        return self.last_orphans + self.gap()

    def due(self, now: float, running: int) -> bool:
        if self.wanted and now >= self.wanted_at(running):
            return True
        return now >= self.periodic_at()

    def next_at(self, running: int) -> float:
        """The earliest time a sweep of ``swept`` work may be due."""
        periodic = self.periodic_at()
        return min(periodic, self.wanted_at(running)) if self.wanted else periodic

    def swept_now(self, now: float, inline_spent: float) -> None:
        """A sweep starts: reset what asked for it and remember what the last one cost."""
        self.wanted = False
        self.handler_finished = False
        self.last_sweep = now
        self.last_cost = self.spent + inline_spent
        self.spent = 0.0

    def measured(self, cost: float) -> None:
        """What the sweep really cost, once its dispatch ended (queue work included)."""
        self.last_cost = max(self.last_cost, cost)

    def poke(self) -> None:
        self.wanted = True
        self.last_sweep = -math.inf
