"""The scheduler: one task that wires the parts together and sleeps until something can change.

The parts, each in its own module:

- ``_queues.py``: each service's priority queue, the parking of work that is not ready, the
  retry backoffs (pure data structures);
- ``_limits.py`` and ``_slots.py``: admission, a service's limits as objects of one protocol;
- ``_dispatch.py``: the one path from a queue through the checks and the limits to a runner;
- ``_runners.py``: the runner tasks and what one attempt does;
- ``_outcomes.py`` and ``_reports.py``: how work ends, and who is told (callbacks,
  listeners, waiters);
- ``_deadlines.py``: retries coming due, pending and stall timeouts;
- ``_fleet.py``: leases and claims in a shared store;
- ``_diagnosis.py``: why work waits, in words, and the ``stats()`` snapshot.

``docs/architecture.md`` draws how a work travels through them.

This module owns the state they share -- the live work, the finished history, the counts, the
de-duplication index -- and the loop: the scheduler task sleeps on one memory object stream
until something can change -- a submission or anything else that needs it (a "wake" item,
coalesced so a burst of submissions costs one wake), the next free rate slot, a retry coming
due, a deadline, a store holding running out, the periodic recheck of work that was not ready.
Nothing polls at a fixed interval: an idle cue sleeps without a deadline. A submission enters
its service's queue at once (or starts on the spot), so a runner that finishes a moment later
already competes with it.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from . import _backend
from ._backpressure import PendingBound
from ._checks import CheckRunner, Verdict
from ._deadlines import Deadlines
from ._diagnosis import describe
from ._dispatch import Dispatcher
from ._errors import WorkCancelled
from ._fleet import Fleet
from ._hooks import Hooks, logger
from ._limits import bind_limits
from ._outcomes import Outcomes
from ._queues import (
    INTAKE,
    NOWHERE,
    PARKED,
    QUEUED,
    RUNNING,
    SWEPT,
    Delayed,
    Parking,
    SweepClock,
)
from ._reports import Reports
from ._runners import Runners
from ._service import Service
from ._slots import ThreadLimit
from ._store import Store
from ._twins import Twins
from ._work import PriorityContext, WorkState, WorkUnit

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Scheduler"]


def _clamp_priority(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return 0.5
    return min(1.0, max(0.0, number))


class Scheduler:
    """Owns pending and running work and the loop; the parts decide and act."""

    def __init__(
        self,
        *,
        services: dict[str | None, Service],
        hooks: Hooks,
        checks: CheckRunner,
        pending_warn_after: float | None,
        pending_timeout: float | None,
        stall_warn_after: float | None,
        stall_timeout: float | None,
        recheck_interval: float,
        priority_aging: float,
        keep_finished: int | None,
        max_threads: int,
        seed: int | None,
    ) -> None:
        self.services = services
        self.hooks = hooks
        self.checks = checks
        # Progress is timed only for stall detection: one clock read less per start and end.
        self.watch_stalls = stall_warn_after is not None or stall_timeout is not None
        self.priority_aging = priority_aging
        self.keep_finished = keep_finished
        self.max_threads = max_threads
        self.rng = random.Random(seed)
        self.clock: Callable[[], float] = anyio.current_time  # the loop's own clock after bind()
        # Seconds until the loop's earliest timer is due, where the loop says (trio); see
        # Cue.submit.
        self.next_timer_in: Callable[[], float] | None = None

        # Made in bind(): before it, submissions wait in a plain list.
        self._send: MemoryObjectSendStream[None] | None = None
        self._receive: MemoryObjectReceiveStream[None] | None = None
        self._backlog: list[WorkUnit] = []
        self._wake_in_stream = False
        self.tg: TaskGroup | None = None
        self.closing = False
        self.fatal: BaseException | None = None  # a handler's KeyboardInterrupt/SystemExit

        self.works: dict[int, WorkUnit] = {}  # pending and running, by number (work._seq)
        self.finished: OrderedDict[int, WorkUnit] = OrderedDict()  # by _seq, oldest first
        self.twins = Twins()  # live work that asked for de-duplication
        self.sweeps = SweepClock(recheck_interval)
        self.parking = Parking(self.sweeps)
        checks.producers = self.parking.producers
        self.delayed = Delayed()
        self.queued_services: dict[Service, None] = {}  # services with queued work, in order
        self.threads: ThreadLimit | None = None  # sync handlers on services without concurrent
        self.bound: PendingBound | None = None  # max_pending (set by the Cue)

        self.seq = 0
        self.running = 0
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.skipped = 0
        self.cancelled = 0
        self.retried = 0
        self.started_at = 0.0
        self.stopped_at: float | None = None
        self.last_progress = 0.0
        self.stall_warned = False
        self.store: Store | None = None
        self.fleet: Fleet | None = None  # leases and claims in the store (with a store)
        # (loop clock, time.monotonic()) when the last run stopped: see bind().
        self._stopped_monotonic: tuple[float, float] | None = None

        self.reports = Reports(self, hooks)
        self.outcomes = Outcomes(self)
        self.deadlines = Deadlines(
            self,
            pending_warn_after=pending_warn_after,
            pending_timeout=pending_timeout,
            stall_warn_after=stall_warn_after,
            stall_timeout=stall_timeout,
        )
        self.dispatch = Dispatcher(self)
        self.runners = Runners(self)

    @property
    def pending(self) -> int:
        """Work units submitted and not yet running or finished."""
        return len(self.works) - self.running

    @property
    def listeners(self) -> tuple[Callable[[Any], object], ...]:
        return self.reports.listeners

    def describe(self, work: WorkUnit) -> tuple[str, str]:
        return describe(self, work)

    # ------------------------------------------------------------------ lifecycle

    def bind(self, tg: TaskGroup) -> None:
        """Attach to the task group that will own every running work (inside the loop)."""
        self.tg = tg
        self.clock = _backend.fast_clock()
        self.next_timer_in = _backend.next_timer_in()
        now = self.clock()
        # A run after an earlier one (the cue was stopped and started again): the loop's
        # clock may have another origin now (a new event loop; trio's clock starts at a random
        # offset), so times kept from the last run move onto this clock, keeping the real time
        # that passed in between; the limits' history still counts.
        shift = 0.0
        if self._stopped_monotonic is not None:
            between = time.monotonic() - self._stopped_monotonic[1]
            shift = now - between - self._stopped_monotonic[0]
            self._stopped_monotonic = None
        self.closing = False
        self.stopped_at = None
        self._wake_in_stream = False
        self.stall_warned = False
        self.reports.rebind()
        self.checks.rebind()
        # Entries of work that ended in an earlier run would never come due on this clock.
        self.delayed.keep_pending(lambda work: work.state is WorkState.PENDING)
        self.deadlines.keep_pending()
        self.started_at = self.last_progress = now
        self.sweeps.start(now)
        self.runners.bind()
        self.threads = ThreadLimit(anyio.CapacityLimiter(self.max_threads), self.max_threads)
        for service in self.services.values():
            self._bind_service(service, shift)
            if service.cost is not None and self.works:
                self.outcomes.reestimate(service)  # (declared again since those submits?)
        self._send, self._receive = anyio.create_memory_object_stream[None](math.inf)
        for work in self._backlog:
            if work._where == INTAKE:
                self.enqueue(work, now)
        self._backlog.clear()
        self.wake()

    def _bind_service(self, service: Service, shift: float = 0.0) -> None:
        assert self.threads is not None and self.tg is not None
        service.bind(self.clock, shift, self.threads, self.fleet)
        bind_limits(service.admission.limits, self.tg, self.wake)

    def add_service(self, service: Service) -> None:
        """A service declared (or re-declared) while the cue runs."""
        if self.tg is None:
            return
        if service.send is None:
            self._bind_service(service)
        else:
            assert self.threads is not None
            service.rebuild(self.threads, self.fleet)
            bind_limits(service.admission.limits, self.tg, self.wake)
            self.outcomes.reestimate(service)  # (windows changed: estimates are asked again)
        self.wake()

    def close(self) -> None:
        """The cue's task group has ended: account for work handed to a runner that never
        got to it, close the streams, remember when (for a next run)."""
        for work in list(self.works.values()):
            if work.state is WorkState.RUNNING and work._where == RUNNING:
                service = self.services[work._task.service]
                holds = work._holds
                if holds is not None:
                    holds[0].release(holds)
                    work._holds = None
                self.outcomes.ended_by(work, service, WorkCancelled("the cue stopped while it ran"))
        for service in self.services.values():
            service.close()
        if self._send is not None:
            self._send.close()
            self._send = None
        if self.tg is not None:
            self._stopped_monotonic = (self.clock(), time.monotonic())
        self.tg = None

    # ------------------------------------------------------------------ intake

    def submit(
        self, work: WorkUnit, dedup_key: Any, now: float | None = None, *, bounded: bool = True
    ) -> WorkUnit | None:
        """Take a new work unit (validated by the Cue); returns the live twin if one exists,
        None when ``max_pending`` refuses it (``bounded=False``: a place was granted).
        ``now``: the loop's time, when the caller just read it."""
        bound = self.bound
        if (
            bound is not None
            and bounded
            and (len(self.works) - self.running + bound.granted >= bound.limit or bound.waiters)
        ):
            return self.twins.find(work, dedup_key)  # max_pending reached; a twin never waits
        if dedup_key is not None:
            twin = self.twins.add(work, dedup_key)
            if twin is not None:
                return twin
        if now is None:
            now = self.clock()
        work._submitted = now
        work._where = INTAKE
        self.works[work._seq] = work
        self.submitted += 1
        if work._outputs:
            self.parking.add_producer(work)
        reports = self.reports
        if reports.is_idle:
            reports.busy()
        if self.deadlines.watches_pending:
            self.deadlines.mark_pending(work, now)
        if reports.listeners:
            reports.emit("queued", work, now=now)
        if self._send is None:
            self._backlog.append(work)  # the cue has not started yet
            return work
        service = self.services[work._task.service]
        # Nothing to ask and nothing ahead of it: start it now if the limits allow, without a
        # round trip through the scheduler. (While an idle runner is already being woken, the
        # work queues instead: that runner takes it when it runs, or the scheduler hands it
        # on, so a burst of submissions costs one wake-up, not one each.)
        if (
            not service.queue.live
            and not service.handing
            and not self.checks.active
            and self.fleet is None
            and not self.closing
            and self.tg is not None
            and self.dispatch.start(work, service)
        ):
            return work
        # Straight into its service's queue, so a runner that finishes a moment later
        # already sees it; the scheduler is nudged through the stream.
        self.enqueue(work, now)
        if not self._wake_in_stream:
            self.wake()
        return work

    def wake(self) -> None:
        """Make the scheduler look again soon (coalesced: one wake item at a time)."""
        if not self._wake_in_stream and self._send is not None:
            self._wake_in_stream = True
            try:
                self._send.send_nowait(None)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                pass  # the cue has stopped (or its scheduler ended): nobody needs waking

    def poke(self) -> None:
        """Recheck every parked work now."""
        self.parking.everything_to_sweep()
        self.sweeps.poke()
        self.wake()

    # ------------------------------------------------------------------ places

    def enqueue(self, work: WorkUnit, now: float) -> None:
        """Queue a pending work in its service (it is asked and admitted when room exists)."""
        service = self.services[work._task.service]
        priority = work.priority
        if self.hooks.priority is not None:
            try:
                context = PriorityContext(work, now - work._submitted, self.pending)
                priority = _clamp_priority(self.hooks.priority(context))
            except Exception:
                logger.exception(
                    "runcue: the priority callback raised for %s; using %s", work, work.priority
                )
        work._blocked = None
        # (order_key, inline: this runs for most works)
        service.queue.push(work, work._submitted / self.priority_aging - priority)
        self.queued_services[service] = None

    def unqueue(self, work: WorkUnit) -> None:
        """Forget a pending work wherever it waits (a queue entry goes stale)."""
        where = work._where
        if where == QUEUED:
            service = self.services[work._task.service]
            service.queue.discard(work)
            if not service.queue.live:
                self.queued_services.pop(service, None)
        elif where in (PARKED, SWEPT):
            self.parking.unpark(work)
        work._where = NOWHERE

    def park(self, work: WorkUnit, verdict: Verdict, *, asked_inline: bool = True) -> None:
        """Keep a work that may not start yet (``verdict``: why) until a sweep or a wake-up."""
        self.parking.park(work, verdict, asked_inline=asked_inline, now=self.clock())
        if self.reports.listeners:
            self.reports.emit("waiting", work, f"{verdict[0]}: {verdict[1]}")

    def delay(self, work: WorkUnit, seconds: float, reason: str) -> None:
        """Hold pending work aside until ``seconds`` from now (a claim held elsewhere)."""
        work._blocked = (reason, f"asked again in {seconds:.3g}s")
        self.delayed.push(work, self.clock() + seconds)

    def mark_running(self, work: WorkUnit, service: Service) -> None:
        """Admitted: the work counts as running from now (its runner emits ``started``)."""
        work._where = RUNNING
        work._scope = None  # set by its runner once it runs
        work.state = WorkState.RUNNING
        work.started_at = time.time()
        work._blocked = None
        self.running += 1
        service.running += 1
        service.started += 1
        if service.running > service.max_running:
            service.max_running = service.running
        if self.watch_stalls:
            self.last_progress = self.clock()
            self.stall_warned = False
        bound = self.bound
        if bound is not None and bound.waiters:
            bound.room_made(self.pending)

    def give_back_soon(self, work: WorkUnit) -> None:
        """Return what a work holds in the store, in the background."""
        fleet = self.fleet
        if fleet is not None and fleet.holds(work) and self.tg is not None:
            self.tg.start_soon(fleet.give_back, work)

    # ------------------------------------------------------------------ the loop

    async def loop(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The scheduler task: runs until cancelled."""
        receive = self._receive
        assert receive is not None
        with receive:
            task_status.started()
            while True:
                self._drain(receive)
                await self._tick()
                timeout = self._next_deadline() - self.clock()
                if timeout <= 0:
                    await anyio.lowlevel.checkpoint()  # never hold the loop, whatever is due
                    continue
                if timeout == math.inf:
                    await receive.receive()
                    self._wake_in_stream = False
                else:
                    with anyio.move_on_after(timeout):
                        await receive.receive()
                        self._wake_in_stream = False

    def _drain(self, receive: MemoryObjectReceiveStream[None]) -> None:
        """Take every wake-up already sent: one look at the state serves them all."""
        while True:
            try:
                receive.receive_nowait()
            except anyio.WouldBlock:
                return
            self._wake_in_stream = False

    async def _tick(self) -> None:
        now = self.clock()
        fleet = self.fleet
        if fleet is not None and fleet.holdings:
            fleet.expire(now)
        self.deadlines.tick(now)
        parking = self.parking
        sweeps = self.sweeps
        swept_at = None
        due = False
        if parking.orphans and now >= sweeps.orphans_at():
            parking.orphans_to_sweep()
            sweeps.last_orphans = now
            due = True
        if parking.swept and (due or sweeps.due(now, self.running)):
            swept_at = time.perf_counter()
            self.dispatch.yielded = 0.0
            sweeps.swept_now(now, self.checks.take_spent())
            for work in parking.take_swept():
                self.enqueue(work, now)
        if self.queued_services and not self.closing:
            await self.dispatch.dispatch()
        if swept_at is not None:
            # What a sweep really costs: the checks it led to and the queue work around them
            # (not the time other tasks ran while the dispatch let them).
            sweeps.measured(time.perf_counter() - swept_at - self.dispatch.yielded)

    def _next_deadline(self) -> float:
        deadline = self.deadlines.next_at()
        fleet = self.fleet
        if fleet is not None and fleet.holdings:
            deadline = min(deadline, fleet.next_deadline())
        parking = self.parking
        if parking.swept:
            deadline = min(deadline, self.sweeps.next_at(self.running))
        if parking.orphans:
            deadline = min(deadline, self.sweeps.orphans_at())
        if not self.closing and self.queued_services:
            now = self.clock()
            handing_on = self.dispatch.handing_on
            for service in self.queued_services:
                if not handing_on(service):  # (a runner being woken starts it, or wakes us)
                    deadline = min(deadline, service.ready_at(now))
        return deadline

    # ------------------------------------------------------------------ waiting

    async def wait_no_running(self, *, reports: bool = True) -> None:
        await self.reports.wait_no_running(reports=reports)

    async def join(self) -> None:
        await self.reports.join()

    async def wait_for(self, work: WorkUnit) -> None:
        await self.reports.wait_for(work)
