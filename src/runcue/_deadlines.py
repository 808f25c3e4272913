"""Deadlines: retries coming due, work pending too long (``pending_warn_after``,
``pending_timeout``), and a cue where nothing progresses (``stall_warn_after``,
``stall_timeout``). The scheduler asks :meth:`Deadlines.next_at` when it must wake up and
calls :meth:`Deadlines.tick` when it does; nothing here waits.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING

from ._errors import PendingTimeout, StallTimeout
from ._hooks import logger
from ._queues import CHECKING
from ._work import WorkState, WorkUnit

if TYPE_CHECKING:
    from ._scheduler import Scheduler

__all__ = ["Deadlines"]

_WARN, _TIMEOUT = 0, 1


class Deadlines:
    """Retry, pending and stall deadlines of one cue."""

    def __init__(
        self,
        engine: Scheduler,
        *,
        pending_warn_after: float | None,
        pending_timeout: float | None,
        stall_warn_after: float | None,
        stall_timeout: float | None,
    ) -> None:
        self.engine = engine
        self.pending_warn_after = pending_warn_after
        self.pending_timeout = pending_timeout
        self.stall_warn_after = stall_warn_after
        self.stall_timeout = stall_timeout
        self.watches_pending = pending_warn_after is not None or pending_timeout is not None
        # (deadline, seq, kind, pending since, work)
        self.heap: list[tuple[float, int, int, float, WorkUnit]] = []

    def keep_pending(self) -> None:
        """A new run: entries of work that ended belong to an old clock."""
        self.heap = [entry for entry in self.heap if entry[4].state is WorkState.PENDING]
        heapq.heapify(self.heap)

    def mark_pending(self, work: WorkUnit, now: float) -> None:
        """The work is (again) pending from ``now``."""
        work._more().enqueued = now  # (an entry whose time differs is stale)
        if self.pending_warn_after is not None:
            heapq.heappush(self.heap, (now + self.pending_warn_after, work._seq, _WARN, now, work))
        if self.pending_timeout is not None:
            heapq.heappush(self.heap, (now + self.pending_timeout, work._seq, _TIMEOUT, now, work))

    def next_at(self) -> float:
        engine = self.engine
        deadline = engine.delayed.next_due()
        if self.heap:
            deadline = min(deadline, self.heap[0][0])
        if engine.watch_stalls and engine.pending:
            if self.stall_warn_after is not None and not engine.stall_warned:
                deadline = min(deadline, engine.last_progress + self.stall_warn_after)
            if self.stall_timeout is not None:
                deadline = min(deadline, engine.last_progress + self.stall_timeout)
        return deadline

    def tick(self, now: float) -> None:
        engine = self.engine
        if engine.delayed:
            for work in engine.delayed.pop_due(now):
                if work._blocked is None:  # a retry (not a claim held elsewhere)
                    work.attempt += 1
                engine.enqueue(work, now)
        if self.heap:
            self._due_pending(now)
        if engine.watch_stalls:
            self._check_stall(now)

    def _due_pending(self, now: float) -> None:
        engine = self.engine
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, kind, since, work = heapq.heappop(heap)
            extra = work._extra
            if work.state is not WorkState.PENDING or extra is None or extra.enqueued != since:
                continue
            waited = now - since
            if kind == _WARN:
                hook = engine.hooks.on_pending_warning
                if hook is not None:
                    engine.reports.report_soon("on_pending_warning", hook, work, waited)
                else:
                    logger.warning(
                        "runcue: %s has been pending for %.1fs (pending_warn_after=%gs); %s",
                        work,
                        waited,
                        self.pending_warn_after,
                        engine.describe(work)[1],
                    )
            elif work._where == CHECKING:
                # Its checks are being asked right now: decide once they answered.
                heapq.heappush(heap, (now + 0.05, work._seq, kind, since, work))
            else:
                assert self.pending_timeout is not None
                error = PendingTimeout(
                    f"Pending timeout: work {work.id} ({work.task}) was pending for"
                    f" {waited:.1f}s, longer than pending_timeout={self.pending_timeout:g}s;"
                    f" last seen: {engine.describe(work)[1]}"
                )
                engine.outcomes.fail_pending(work, error)

    def _check_stall(self, now: float) -> None:
        engine = self.engine
        pending = engine.pending
        if not pending:
            return
        quiet = now - engine.last_progress
        timeout = self.stall_timeout
        if timeout is not None and now >= engine.last_progress + timeout:
            logger.warning(
                "runcue: no work started or finished for %.1fs (stall_timeout=%gs); failing %d"
                " pending work units",
                quiet,
                timeout,
                pending,
            )
            victims = [
                w
                for w in engine.works.values()
                if w.state is WorkState.PENDING and w._where != CHECKING
            ]
            for work in victims:
                error = StallTimeout(
                    f"Stall timeout: work {work.id} ({work.task}) failed: nothing started or"
                    f" finished for {quiet:.1f}s (stall_timeout={timeout:g}s); last seen:"
                    f" {engine.describe(work)[1]}"
                )
                engine.outcomes.fail_pending(work, error)
            engine.last_progress = now
            return
        warn = self.stall_warn_after
        if warn is not None and not engine.stall_warned and now >= engine.last_progress + warn:
            engine.stall_warned = True
            hook = engine.hooks.on_stall_warning
            if hook is not None:
                engine.reports.report_soon("on_stall_warning", hook, quiet, pending)
            else:
                logger.warning(
                    "runcue: no work started or finished for %.1fs; %d pending (see"
                    " cue.debug_blocked())",
                    quiet,
                    pending,
                )


_INF = math.inf
