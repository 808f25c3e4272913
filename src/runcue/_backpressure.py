"""Backpressure: ``Cue(max_pending=N)`` -- who may submit now, who waits, in which order, and
when waiting can never end.

**What counts.** A work is *pending* from its submission until its handler starts or it ends
without running (skipped, cancelled, failed while pending) -- exactly ``stats().pending``:
queued, waiting for its inputs (parked), waiting for a retry, its checks being asked. Running
work does not count (the services' own limits bound it), and a retry makes a work pending
again without asking anyone.

**Who waits.** A submission is refused (``Scheduler.submit`` asks, inline) while
``pending + granted >= limit`` or while anyone waits already, so waiting submitters go
first-in first-out and a newcomer never overtakes them. Room is handed out by *grants*: when
pending work starts or ends, waiters at the front are granted one place each and woken; a
granted waiter that is cancelled before it submits passes its place on. Granted waiters
submit in the order they were granted, whatever order the backend wakes them in (trio may
wake a batch last first): one that wakes before an earlier one submitted waits for its
*turn*, so their works also queue and start in the order the callers came. Once the bound was
reached, grants wait until pending has fallen to a low-water mark (``limit - limit // 16``,
at least one below the limit), then fill up to the limit at once: a producer that runs
ahead wakes once per ``limit // 16`` starts, not once per start.

**When waiting cannot end.** A blocked submitter looks at the cue every quarter of
``deadlock_timeout``. When, for that long, nothing started, finished or was submitted,
nothing ran, no callback was being awaited, every pending work was parked (``is_ready`` said
no, or a check raised) and each of them was asked again since, the submitter gives up with
:class:`SubmitDeadlock`: only work not yet submitted could make them ready.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from itertools import chain
from typing import TYPE_CHECKING

import anyio

from ._errors import SubmitDeadlock

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["PendingBound"]

POLL_SHARE = 4  # a blocked submitter looks for a deadlock this many times per deadlock_timeout
POLL_LEAST = 0.01  # ... but at most every this many seconds


class _Waiter:
    __slots__ = ("event", "granted", "granted_at", "turn")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False
        self.granted_at = 0.0  # loop time of the grant: its work's submission time
        self.turn: anyio.Event | None = None  # set when the waiters granted before it are in


class PendingBound:
    """``max_pending``: admission of new work by its count, FIFO waiters, deadlock watch."""

    __slots__ = (
        "_clock",
        "_looked",
        "_since",
        "deadlock_timeout",
        "granted",
        "limit",
        "resume_at",
        "turns",
        "waiters",
    )

    def __init__(self, limit: int, deadlock_timeout: float | None) -> None:
        self.limit = limit
        self.resume_at = limit - max(1, limit // 16)  # the low-water mark (see the docstring)
        self.deadlock_timeout = deadlock_timeout
        self.waiters: deque[_Waiter] = deque()
        self.granted = 0  # waiters woken with a place, not yet submitted
        self.turns: deque[_Waiter] = deque()  # those waiters, in the order of their grants
        self._looked: tuple[int, ...] = ()  # the progress counters at the last look
        self._since = -math.inf  # since when nothing progressed (loop time)
        self._clock: Callable[[], float] | None = None  # the loop's clock, once a caller waits

    def room_made(self, pending: int, *, at_once: bool = False) -> None:
        """Pending work started or ended: grant places to the front waiters (from the
        low-water mark on, or ``at_once``)."""
        if not at_once and pending + self.granted > self.resume_at:
            return
        waiters = self.waiters
        if not waiters or self._clock is None:
            return
        # One time for every waiter granted here: their works queue in the order the
        # callers came (the sequence number breaks the tie), however the backend orders
        # their wake-ups (trio may run them last first).
        now = self._clock()
        while waiters and pending + self.granted < self.limit:
            waiter = waiters.popleft()
            waiter.granted = True
            waiter.granted_at = now
            self.granted += 1
            self.turns.append(waiter)
            waiter.event.set()

    def release_all(self) -> None:
        """The cue stops: wake every waiter, with a place or without (each sees the state and
        raises)."""
        while self.waiters:
            self.waiters.popleft().event.set()
        for waiter in self.turns:
            if waiter.turn is not None:
                waiter.turn.set()

    def submitted(self, waiter: _Waiter) -> None:
        """A granted waiter's work is in (or it gave up): its place is no longer held for it,
        and the next granted waiter may submit."""
        self.granted -= 1
        turns = self.turns
        first = turns[0] is waiter
        turns.remove(waiter)
        if first and turns and turns[0].turn is not None:
            turns[0].turn.set()

    async def wait(self, engine: Scheduler) -> _Waiter | None:
        """Wait in line until granted a place and it is this caller's turn to submit (its
        waiter: the caller submits, then calls :meth:`submitted`), or until released by a
        stop (None).

        :raises SubmitDeadlock: see the module docstring.
        """
        self._clock = engine.clock
        waiter = _Waiter()
        self.waiters.append(waiter)
        try:
            timeout = self.deadlock_timeout
            if timeout is None:
                await waiter.event.wait()
            else:
                poll = max(POLL_LEAST, timeout / POLL_SHARE)
                while not waiter.event.is_set():
                    with anyio.move_on_after(poll):
                        await waiter.event.wait()
                    if not waiter.event.is_set():
                        self._look_for_deadlock(engine, timeout)
            if waiter.granted and self.turns[0] is not waiter:
                waiter.turn = anyio.Event()  # woken before a waiter granted earlier submitted
                await waiter.turn.wait()
        except BaseException:
            if waiter.granted:
                self.submitted(waiter)
                self.room_made(engine.pending, at_once=True)  # its place goes to the next
            else:
                self.waiters.remove(waiter)
            raise
        return waiter if waiter.granted else None

    def _look_for_deadlock(self, engine: Scheduler, timeout: float) -> None:
        """Raise :class:`SubmitDeadlock` when nothing in the cue can make room any more."""
        now = engine.clock()
        looked = (
            engine.submitted,
            engine.completed,
            engine.failed,
            engine.skipped,
            engine.cancelled,
            engine.retried,
            sum(service.started for service in engine.services.values()),
        )
        if engine.running or engine.reports.reporting or looked != self._looked:
            self._looked, self._since = looked, now
            return
        parking = engine.parking
        sweeps = engine.sweeps
        pending = engine.pending
        if (
            now - self._since < timeout
            or not pending
            or len(parking) != pending  # some work waits for a slot, a retry, a check
            or (parking.swept and sweeps.last_sweep < self._since)  # not all asked again yet
            or (parking.orphans and sweeps.last_orphans < self._since)
        ):
            return
        example = next(chain(parking.swept, parking.orphans.values(), parking.precise.values()))
        reason, details = example._blocked or ("not_ready", "is_ready said no")
        msg = (
            f"submit() waited {now - self._since:.3g}s for room under max_pending={self.limit},"
            f" but all {pending} pending work units wait for their inputs and nothing runs"
            f" (e.g. {example!r}: {reason}, {details}), so none of them can start and make"
            " room: the work that would make them ready has not been submitted. Submit the"
            " work that produces an input before the work that needs it, raise max_pending,"
            " or pass deadlock_timeout=None when inputs appear outside the cue"
        )
        raise SubmitDeadlock(msg)
