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
granted waiter that is cancelled before it submits passes its place on. Once the bound was
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
    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class PendingBound:
    """``max_pending``: admission of new work by its count, FIFO waiters, deadlock watch."""

    __slots__ = (
        "_looked",
        "_since",
        "deadlock_timeout",
        "granted",
        "limit",
        "resume_at",
        "waiters",
    )

    def __init__(self, limit: int, deadlock_timeout: float | None) -> None:
        self.limit = limit
        self.resume_at = limit - max(1, limit // 16)  # the low-water mark (see the docstring)
        self.deadlock_timeout = deadlock_timeout
        self.waiters: deque[_Waiter] = deque()
        self.granted = 0  # waiters woken with a place, not yet submitted
        self._looked: tuple[int, ...] = ()  # the progress counters at the last look
        self._since = -math.inf  # since when nothing progressed (loop time)

    def room_made(self, pending: int, *, at_once: bool = False) -> None:
        """Pending work started or ended: grant places to the front waiters (from the
        low-water mark on, or ``at_once``)."""
        if not at_once and pending + self.granted > self.resume_at:
            return
        waiters = self.waiters
        while waiters and pending + self.granted < self.limit:
            waiter = waiters.popleft()
            waiter.granted = True
            self.granted += 1
            waiter.event.set()

    def release_all(self) -> None:
        """The cue stops: wake every waiter without a place (each sees the state and raises)."""
        while self.waiters:
            self.waiters.popleft().event.set()

    async def wait(self, engine: Scheduler) -> bool:
        """Wait in line until granted a place (True) or released by a stop (False).

        :raises SubmitDeadlock: see the module docstring.
        """
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
        except BaseException:
            if waiter.granted:
                self.granted -= 1
                self.room_made(engine.pending, at_once=True)  # its place goes to the next
            else:
                self.waiters.remove(waiter)
            raise
        if waiter.granted:
            self.granted -= 1
        return waiter.granted

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
