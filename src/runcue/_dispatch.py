"""Dispatch: the one path from a service's queue to a runner.

A walk over one service's queue, while its limits may have room: take the next work (or a
batch, when the checks must be asked in one go: in a worker thread, or awaited), claim it in
the store when it is keyed, ask its checks (``is_ready``, then ``is_stale``: declared
artifacts first), then admit it -- every limit of the service at once, the awaiting ones
(the store) after the local ones -- and hand it to a runner. Work that is not ready is parked
and does not use up the room; work that is stale-free is skipped. After every await the
decision is taken again: the work may have been cancelled, the cue may be stopping.

Three callers take this path: the scheduler (every service with queued work, round robin, a
slice of the walk each), a runner that just finished an attempt (``take_next``: the next
work of its own service, to run itself, with no hop), and ``submit()`` (``start``: a work
with nothing ahead of it and nothing to ask, admitted on the spot). A walk lets other tasks
run every ``BATCH_MAX`` works or ``WALK_SLICE`` seconds, so it never holds the loop.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import anyio.lowlevel

from ._checks import RUN, Verdict
from ._errors import QuotaExhausted
from ._queues import CHECKING
from ._work import WorkUnit

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._service import Service

__all__ = ["BATCH_MAX", "WALK", "WALK_SLICE", "Dispatcher"]

BATCH_MAX = 256  # most work units checked in one go per service
WALK_SLICE = 0.002  # longest a walk over not-ready work goes on before others may run (s)
WALK: Any = object()  # take_now's answer when the next work needs a walk (checks, the store)


class Dispatcher:
    """Starts queued work when its service's limits allow."""

    def __init__(self, engine: Scheduler) -> None:
        self.engine = engine
        self.yielded = 0.0  # seconds the current dispatch let other tasks run

    # ------------------------------------------------------------------ hand-over

    def hands_on(self) -> bool:
        """True when a woken runner can take its service's next work itself, on the spot:
        nothing to ask first (with checks, handing on would walk and re-ask not-ready work
        the scheduler already asked) and no store round trips."""
        engine = self.engine
        return engine.fleet is None and not engine.checks.active

    def handing_on(self, service: Service) -> bool:
        """True while an idle runner of ``service`` is being woken and will wake the next
        one itself: the scheduler leaves the service's queue to it."""
        return bool(service.handing and service.idle_runners) and self.hands_on()

    async def hand_on(self, service: Service) -> None:
        """A runner just woken with a work wakes the next idle runner while work waits and
        room is left: idle runners are woken one after another, each by the last, instead of
        all at once, so work that runs without waiting (the first runner drains the queue)
        wakes one or two, and work that waits (I/O) still spreads over every free slot."""
        if service.queue.live and service.idle_runners and self.hands_on():
            following = self.take_now(service)  # (no walk: nothing to ask, no store)
            if following is not None and following is not WALK:
                self.engine.runners.launch(following, service)
        elif service.queue.live:
            self.engine.wake()  # no idle runner left to wake: the scheduler starts the rest

    def start(self, work: WorkUnit, service: Service) -> bool:
        """Admit a work now (local limits only) and hand it to a runner; False when the
        limits have no room for it now."""
        engine = self.engine
        if engine.closing:
            return False  # the cue is stopping: it starts nothing new
        holds = service.admission.admit(work)
        if holds is None:
            return False
        work._holds = holds
        engine.mark_running(work, service)
        engine.runners.launch(work, service)
        return True

    # ------------------------------------------------------------------ the walk

    async def dispatch(self) -> None:
        """The scheduler's turn. Round robin: each pass gives every service with queued work
        one slice of its walk, so a long walk over one service's waiting work never holds up
        another's starts. The whole walk stays in this tick (other tasks run between slices),
        so the tick measures what a sweep really costs and spaces the next one."""
        engine = self.engine
        again = True
        while again and not engine.closing:
            again = False
            for service in list(engine.queued_services):
                if await self.walk(service) is True:
                    again = True
                if not service.queue.live:
                    engine.queued_services.pop(service, None)
                service.admission.unused()

    def take_now(self, service: Service) -> Any:
        """A runner that just finished an attempt takes its service's next work itself: the
        admitted work, None, or :data:`WALK` when it needs a walk (checks to ask, the store)
        -- then ``await walk(service, take=True)``. No coroutine in the common case."""
        queue = service.queue
        engine = self.engine
        if not queue.live or engine.closing:
            return None
        if engine.checks.active or engine.fleet is not None:
            return WALK
        work = queue.pop()
        if work is not None:
            holds = service.admission.admit(work)
            if holds is not None:
                work._holds = holds
                engine.mark_running(work, service)
                return work
            engine.enqueue(work, engine.clock())
        engine.wake()  # work is left that the scheduler must time (a rate slot, a pause)
        return None

    async def take_next(self, service: Service) -> WorkUnit | None:
        """:meth:`take_now`, walking when it must."""
        taken = self.take_now(service)
        if taken is WALK:
            walked = await self.walk(service, take=True)
            return walked if isinstance(walked, WorkUnit) else None
        return taken  # type: ignore[no-any-return]

    async def walk(self, service: Service, *, take: bool = False) -> WorkUnit | bool | None:
        """Start what may start of one service. With ``take``, stop at the first admitted
        work and return it (with its holds) instead of handing it to a runner. Otherwise
        True when the walk stopped only to let other tasks run (call again)."""
        engine = self.engine
        checks = engine.checks
        queue = service.queue
        fleet = engine.fleet
        began = time.perf_counter()
        walked = 0
        while queue.live and not engine.closing:
            if not take and self.handing_on(service):
                return None  # a runner being woken takes it on (hand_on)
            free = service.free_slots()
            if free <= 0:
                if self._give_up_head(service):
                    continue  # it failed at once (max_wait); the next one may too
                break
            batched = checks.active and not checks.inline
            if batched and take and not checks.runs_here:
                break  # checks run in a worker thread: the scheduler asks them in batches
            size = 1  # one at a time when asked inline: work that is not ready uses no room
            if not take and fleet is None and (batched or not checks.active):
                size = int(min(free, queue.live, BATCH_MAX))
            batch: list[WorkUnit] = []
            for _ in range(size):
                work = queue.pop()
                if work is None:
                    break
                work._where = CHECKING
                batch.append(work)
            if not batch:
                break
            if (
                fleet is not None
                and batch[0].key is not None
                and not fleet.claimed(batch[0])
                and not await self._claim(batch[0])
            ):
                continue
            verdicts = await self._verdicts(batch)
            parked = False
            for index, (work, verdict) in enumerate(zip(batch, verdicts)):
                if not self.settle(work, service, verdict, asked_inline=checks.inline):
                    parked = parked or verdict[0] not in ("run", "skip")
                    continue
                handed = await self._admit(work, service)
                if handed is None:
                    if self._give_up(work, service):
                        continue  # a spent window: it failed at once (max_wait)
                    now = engine.clock()
                    for rest in batch[index:]:
                        if rest._where == CHECKING:
                            engine.enqueue(rest, now)
                    if take and queue.live:
                        engine.wake()
                    return None
                if take:
                    return handed
                engine.runners.launch(work, service)
            walked += len(batch)
            slow = time.perf_counter() - began > WALK_SLICE
            if walked >= BATCH_MAX or slow or (batched and parked):
                if take:
                    if queue.live:
                        engine.wake()  # a long walk: the scheduler goes on with it
                    return None
                await self.between_batches()
                return True
        if take and queue.live and not engine.closing:
            engine.wake()  # work is left that the scheduler must time (a rate slot, a pause)
        return None

    async def _verdicts(self, batch: list[WorkUnit]) -> list[Verdict]:
        checks = self.engine.checks
        if not checks.active:
            return [RUN] * len(batch)
        if checks.inline:
            return [checks.verdict_now(work) for work in batch]
        begun = time.perf_counter()
        verdicts = await checks.evaluate(batch)
        self.engine.sweeps.spent += time.perf_counter() - begun
        return verdicts

    async def _claim(self, work: WorkUnit) -> bool:
        """Claim keyed work in the store before its checks are asked (so a process that
        waited for another's claim sees the output through ``is_stale``)."""
        engine = self.engine
        fleet = engine.fleet
        assert fleet is not None
        claimed = await fleet.claim(work)
        if work._where != CHECKING:
            if claimed:  # cancelled while claiming: let the others have it
                engine.give_back_soon(work)
            return False
        if not claimed:
            engine.delay(work, min(1.0, fleet.ttl / 4), "claimed_elsewhere")
            return False
        return True

    async def _admit(self, work: WorkUnit, service: Service) -> WorkUnit | None:
        """Every limit of the service, the awaiting ones after the local ones; the work is
        running when this returns its hand-over, else it is still CHECKING (for the caller
        to queue again) or was cancelled meanwhile."""
        engine = self.engine
        if engine.closing:
            return None  # the cue is stopping: it starts nothing new, whatever was decided
        admission = service.admission
        holds = admission.admit(work)
        if holds is None:
            return None
        if admission.awaiting:
            granted = await admission.admit_awaiting(work)
            if (
                not granted
                or work._where != CHECKING
                or engine.closing
                or not admission.still(holds)
            ):
                admission.release(holds)
                if granted:
                    engine.give_back_soon(work)  # granted, but cancelled or held back meanwhile
                return None
        work._holds = holds
        engine.mark_running(work, service)
        return work

    def _give_up_head(self, service: Service) -> bool:
        """The service has no room: its next work fails now if a spent window keeps it
        waiting past its ``max_wait`` (True)."""
        head = service.queue.head()
        if head is None or (head._task.max_wait is None and service.max_wait is None):
            return False
        if not self._overruns(head, service):
            return False
        taken = service.queue.pop()
        assert taken is head
        head._where = CHECKING
        return self._give_up(head, service)

    def _overruns(self, work: WorkUnit, service: Service) -> bool:
        limit = work._task.max_wait
        if limit is None:
            limit = service.max_wait
        if limit is None:
            return False
        now = self.engine.clock()
        ready = max(service.queue.ready_at(now), service.admission.ready_at(work, now))
        return ready != math.inf and ready - now > limit

    def _give_up(self, work: WorkUnit, service: Service) -> bool:
        """A work refused admission: with a ``max_wait`` that a spent window overruns, it
        fails now with ``QuotaExhausted`` (True) instead of waiting hours."""
        limit = work._task.max_wait
        if limit is None:
            limit = service.max_wait
        if limit is None or work._where != CHECKING:
            return False
        engine = self.engine
        now = engine.clock()
        ready = service.admission.ready_at(work, now)
        if not (ready - now > limit) or ready == math.inf:
            return False  # (inf: a finishing handler frees it, not a window)
        reason = service.admission.blocked(work, now)
        why = reason[1] if reason is not None else f"{service.label}'s limits are spent"
        error = QuotaExhausted(
            f"Quota exhausted: work {work.id} ({work.task}) cannot start within"
            f" max_wait={limit:g}s: {why}",
            frees_in=ready - now,
        )
        engine.outcomes.fail_pending(work, error)
        return True

    def settle(
        self, work: WorkUnit, service: Service, verdict: Verdict, *, asked_inline: bool = True
    ) -> bool:
        """Act on a CHECKING work's verdict: True when it should start now; otherwise it is
        skipped or parked (or was cancelled while its checks ran)."""
        if work._where != CHECKING:
            return False  # cancelled while its checks ran
        kind = verdict[0]
        if kind == "run":
            return True
        engine = self.engine
        if kind == "skip":
            engine.outcomes.skip(work, service)
        else:
            engine.park(work, verdict, asked_inline=asked_inline)
        return False

    async def between_batches(self) -> None:
        """Let the runners just started (and every other task) go on: a long dispatch, or a
        long walk over work that is not ready yet, never holds the loop."""
        paused = time.perf_counter()
        await anyio.lowlevel.checkpoint()
        self.yielded += time.perf_counter() - paused
