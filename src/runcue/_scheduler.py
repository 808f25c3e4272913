"""The event-driven core: where pending work waits, when it is checked, and when it starts.

One scheduler task owns every pending work unit. It sleeps on one memory object stream until
something can change -- a submission or anything else that needs it (a "wake" item, coalesced
so a burst of submissions costs one wake), a free rate slot, a retry coming due, a pending or
stall deadline, or the periodic recheck of work that was not ready. A submission enters its
service's queue at once, so a runner that finishes a moment later already competes with it.
Nothing polls at a fixed interval: an idle cue sleeps without a deadline.

Where a pending work unit is (``work._where``):

- ``INTAKE``: submitted before the cue started.
- ``QUEUED``: in its service's priority heap, waiting for room. Its checks are asked only
  when room exists, right before it would start, so they see the freshest artifacts and work
  behind a full service costs no check calls at all.
- ``PARKED``: ``is_ready`` said no (or a check raised). A sweep puts every parked work back
  into its queue; sweeps follow completions (at most one per scheduler wake-up, and, while
  work runs, spaced so that re-asking takes at most about a quarter of the time; with nothing
  running, at once), ``cue.poke()``, and the periodic ``recheck_interval`` (stretched so
  background rechecks stay under about 1 % of a core). A long dispatch lets other tasks run
  between its batches, so a walk over many waiting works never holds the loop. Declared work
  is never swept by completions: it waits for precisely its inputs' producers, or, for an
  input no live work produces, for the periodic recheck and ``poke()``.
- ``DELAYED``: failed, waiting for its retry backoff to end.
- ``CHECKING``: its checks are being asked.
- ``RUNNING``: its handler runs in its own task, inside its own cancel scope.

Ordering inside a service: a binary heap keyed on ``submitted / priority_aging - priority``,
then submission order. With that key every waiting work unit "ages" at the same rate, so the
relative order never changes while they wait: choosing the next work is O(log n), higher
priority goes first, equal priority is FIFO, and a low-priority unit overtakes newer
high-priority ones after ``priority_aging`` seconds per unit of priority (no starvation).
"""

from __future__ import annotations

import contextlib
import contextvars
import heapq
import math
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskGroup

from . import _backend
from ._artifacts import Snapshot, artifact_key, declared_stale, describe
from ._checks import CheckRunner, Verdict
from ._errors import (
    HandlerTimeout,
    PendingTimeout,
    RateLimited,
    StallTimeout,
    WorkCancelled,
)
from ._events import WorkEvent
from ._fleet import Fleet
from ._hooks import Hooks, call_hook, logger
from ._rate import RateLimiter
from ._service import Service
from ._store import Store
from ._task import TaskSpec, is_async_callable
from ._work import PriorityContext, WorkState, WorkUnit

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = ["Scheduler"]

NOWHERE, INTAKE, QUEUED, PARKED, DELAYED, CHECKING, RUNNING = range(7)
IN_RUNNER: contextvars.ContextVar[bool] = contextvars.ContextVar("runcue_in_runner", default=False)
IN_REPORT: contextvars.ContextVar[bool] = contextvars.ContextVar("runcue_in_report", default=False)
BATCH_MAX = 256  # most work units checked in one go per service
WALK_SLICE = 0.002  # longest a walk over not-ready work goes on before others may run (s)
SWEEP_BUDGET = 3.0  # completion sweeps wait >= this x the check time the last sweep cost
PERIODIC_BUDGET = 100.0  # periodic sweeps wait >= this x the check time the last sweep cost
_WARN, _TIMEOUT = 0, 1
MAX_SPARES = 128  # most idle runners a service keeps (see Scheduler._runner)
RUNNER_NAME = "runcue runner"  # given to start_soon: naming a task from its function costs more


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} (repr failed)>"


def _same_work(one: WorkUnit, other: WorkUnit) -> bool:
    """Whether two work units are the same work: the same key, or no key and the same task
    with equal params."""
    if one.task != other.task:
        return False
    if one.key is not None or other.key is not None:
        return bool(one.key == other.key)
    return bool(one.params == other.params)


def _clamp_priority(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]
    if math.isnan(number):
        return 0.5
    return min(1.0, max(0.0, number))


class _Spare:
    """An idle runner waiting for its service's next work (see ``Scheduler._runner``)."""

    __slots__ = ("event", "work")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.work: tuple[WorkUnit, object, bool] | None = None


class _ThreadCall:
    """A sync handler's call in a worker thread, which may outlive the wait for it."""

    __slots__ = ("_lock", "abandoned", "done", "finished", "notify", "started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = False
        self.finished = False
        self.abandoned = False
        self.done: anyio.Event | None = None
        self.notify: Callable[[Callable[[], object]], bool] | None = None

    def run(self, handler: Callable[[WorkUnit], Any], work: WorkUnit) -> Any:
        with self._lock:
            if self.abandoned:
                return None  # given up before the thread got to it: never call the handler
            self.started = True
        try:
            return handler(work)
        finally:
            with self._lock:
                self.finished = True
                tell = self.abandoned
            if tell and self.done is not None and self.notify is not None:
                # Handed over without waiting: the loop may have stopped, or be gone.
                self.notify(self.done.set)

    def abandon(self) -> bool:
        """Stop waiting; True when the handler is still running in its thread (then ``done``
        will be set when it returns). A call whose thread has not started never starts."""
        with self._lock:
            self.abandoned = True
            if self.finished or not self.started:
                return False
            self.done = anyio.Event()
            self.notify = _backend.notifier_from_thread()
            return True


class Scheduler:
    """Owns pending work, decides what starts, runs attempts and reports outcomes."""

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
        self.pending_warn_after = pending_warn_after
        self.pending_timeout = pending_timeout
        self.stall_warn_after = stall_warn_after
        self.stall_timeout = stall_timeout
        # Progress is timed only for stall detection: one clock read less per start and end.
        self.watch_stalls = stall_warn_after is not None or stall_timeout is not None
        self.recheck_interval = recheck_interval
        self.priority_aging = priority_aging
        self.keep_finished = keep_finished
        self.max_threads = max_threads
        self.rng = random.Random(seed)
        self.clock: Callable[[], float] = anyio.current_time  # the loop's own clock after bind()
        # Seconds until the loop's earliest timer is due, where the loop says (trio, asyncio's
        # own loop); see Cue.submit.
        self.next_timer_in: Callable[[], float] | None = None
        self._runner_scope: Callable[[], _backend.RunnerScope] = anyio.CancelScope

        # Made in bind(): before it, submissions wait in a plain list.
        self._send: MemoryObjectSendStream[None] | None = None
        self._receive: MemoryObjectReceiveStream[None] | None = None
        self._backlog: list[WorkUnit] = []
        self._wake_in_stream = False
        self.tg: TaskGroup | None = None
        self.closing = False

        self.works: dict[str, WorkUnit] = {}  # pending and running
        self.finished: OrderedDict[str, WorkUnit] = OrderedDict()  # oldest first
        # Live work by the hash of its identity (task and params, or its key): only the int is
        # kept, and equality is checked on the work itself, so a pending work costs no frozen
        # copy of its params. Hash collisions chain in a list.
        self.dedup: dict[int, WorkUnit | list[WorkUnit]] = {}
        self.parked: dict[str, WorkUnit] = {}  # rechecked by sweeps
        # Declared work waiting for an input that live work will produce: woken precisely
        # when that producer finishes, never swept (see _park).
        self.parked_precise: dict[str, WorkUnit] = {}
        # Declared work waiting for an input no live work produces: only the world outside
        # can make it ready, so completions do not sweep it; periodic rechecks and poke() do.
        self.parked_orphans: dict[str, WorkUnit] = {}
        self._last_orphan_sweep = -math.inf
        self.producers: dict[Any, dict[str, WorkUnit]] = {}  # output key -> live producers
        self.waiting_on: dict[Any, dict[str, WorkUnit]] = {}  # input key -> parked consumers
        self._waits_for: dict[str, list[Any]] = {}  # work id -> its keys in waiting_on
        checks.producers = self.producers
        self.delayed: list[tuple[float, int, int, WorkUnit]] = []
        self.deadlines: list[tuple[float, int, int, float, WorkUnit]] = []
        self.queued_services: dict[Service, None] = {}  # services with queued work, in order
        self._threads: anyio.CapacityLimiter | None = None  # sync handlers on unlimited services
        self._run_threads: anyio.CapacityLimiter | None = None  # never blocks: gated above

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

        self._sweep_wanted = False
        self._last_sweep = -math.inf
        self._sweep_cost = 0.0  # check seconds spent since the last sweep
        self._last_sweep_cost = 0.0
        self._yielded = 0.0  # seconds the current dispatch let other tasks run
        self._handler_finished = False  # a handler returned or raised since the last sweep

        self._idle = anyio.Event()
        self._idle.set()
        self._is_idle = True  # mirrors self._idle.is_set(), cheaper to read per submit
        self._no_running: anyio.Event | None = None
        self._reporting = 0  # callbacks being awaited; join() and stop() wait for them
        self._waiters: dict[str, anyio.Event] = {}
        self.listeners: list[Callable[[WorkEvent], object]] = []
        self.async_hooks = False  # an async outcome callback is registered
        self.async_on_start = False  # on_start is async: the world may change while awaited
        self.store: Store | None = None
        self.fleet: Fleet | None = None  # leases and claims in the store (with a store)
        # (loop clock, time.monotonic()) when the last run stopped: see bind().
        self._stopped_monotonic: tuple[float, float] | None = None

    def emit(
        self, kind: str, work: WorkUnit, details: str = "", duration: float | None = None
    ) -> None:
        """Tell every listener (only called when there is one)."""
        event = WorkEvent(kind, work, self.clock(), work._task.service, details, duration)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "runcue: the event listener %r raised; it stays subscribed", listener
                )

    # ------------------------------------------------------------------ intake

    @property
    def pending(self) -> int:
        """Work units submitted and not yet running or finished."""
        return len(self.works) - self.running

    def bind(self, tg: TaskGroup) -> None:
        """Attach to the task group that will own every running work (inside the loop)."""
        self.tg = tg
        self.clock = _backend.fast_clock()
        self.next_timer_in = _backend.next_timer_in()
        self._runner_scope = _backend.runner_scope()
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
        self._no_running = None
        self.stall_warned = False
        if self._idle.is_set():  # (an unset one may have a join() waiting on it already)
            self._idle = anyio.Event()  # made on this run's loop
            self._idle.set()
        self.checks.rebind()
        # Entries of work that ended in an earlier run would never come due on this clock.
        self.delayed = [entry for entry in self.delayed if entry[3].state is WorkState.PENDING]
        self.deadlines = [entry for entry in self.deadlines if entry[4].state is WorkState.PENDING]
        heapq.heapify(self.delayed)
        heapq.heapify(self.deadlines)
        self.started_at = self.last_progress = self._last_sweep = now
        self._last_orphan_sweep = now
        self._threads = anyio.CapacityLimiter(self.max_threads)
        self._run_threads = anyio.CapacityLimiter(math.inf)
        for service in self.services.values():
            service.bind(self.clock, shift)
        self._send, self._receive = anyio.create_memory_object_stream[None](math.inf)
        for work in self._backlog:
            if work._where == INTAKE:
                self._enqueue(work, now)
        self._backlog.clear()
        self.wake()

    def close(self) -> None:
        """Close the intake stream (the cue has stopped); remember when, for a next run."""
        if self._send is not None:
            self._send.close()
            self._send = None
        if self.tg is not None:
            self._stopped_monotonic = (self.clock(), time.monotonic())
        self.tg = None

    def submit(self, work: WorkUnit, dedup_key: Any) -> WorkUnit:
        """Take a new work unit (validated by the Cue); returns the live twin if one exists."""
        if dedup_key is not None:
            digest = hash(dedup_key)
            known = self.dedup.get(digest)
            if known is None:
                self.dedup[digest] = work
            else:
                chain = known if isinstance(known, list) else [known]
                for twin in chain:
                    if _same_work(twin, work):
                        return twin
                chain.append(work)
                self.dedup[digest] = chain
            work._dedup_key = digest
        self.seq += 1
        work._seq = self.seq
        now = self.clock()
        work._submitted = now
        work._where = INTAKE
        self.works[work.id] = work
        self.submitted += 1
        for output in work._outputs:
            key = artifact_key(output)
            self.producers.setdefault(key, {})[work.id] = work
            for dependent in self.waiting_on.get(key, {}).values():
                # It waited for an input nobody produced; now this work will: wake it
                # precisely when this one finishes instead of sweeping it.
                if (
                    self.parked.pop(dependent.id, None) is not None
                    or self.parked_orphans.pop(dependent.id, None) is not None
                ):
                    self.parked_precise[dependent.id] = dependent
        if self._is_idle:
            self._is_idle = False
            self._idle = anyio.Event()
        if self.pending_warn_after is None and self.pending_timeout is None:
            work._enqueued = now
        else:
            self._mark_pending(work, now)
        if self.listeners:
            self.emit("queued", work)
        if self._send is None:
            self._backlog.append(work)  # the cue has not started yet
            return work
        service = self.services[work._task.service]
        if (
            not service.queued
            and not service.waking
            and not self.checks.active
            and self.store is None
            and not self.closing
            and self.tg is not None
        ):
            # Nothing to ask and nothing ahead of it: start it now if the limits allow,
            # without a round trip through the scheduler. (While a spare runner is already
            # being woken, the work queues instead: that runner takes it when it runs, or the
            # scheduler hands it on, so a burst of submissions costs one wake-up, not one each.)
            slots = self._admit(work, service)
            if slots is not None:
                self._launch(work, service, *slots)
                return work
        # Straight into its service's queue, so a runner that finishes a moment later
        # already sees it; the scheduler is nudged through the stream.
        self._enqueue(work, now)
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
        self.parked.update(self.parked_precise)
        self.parked.update(self.parked_orphans)
        self.parked_precise.clear()
        self.parked_orphans.clear()
        self._sweep_wanted = True
        self._last_sweep = -math.inf
        self.wake()

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
                deadline = self._next_deadline()
                timeout = deadline - self.clock()
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
        if self.fleet is not None and self.fleet.holdings:
            self.fleet.expire(now)
        self._due_retries(now)
        if self.deadlines:
            await self._due_deadlines(now)
        if self.watch_stalls:
            await self._check_stall(now)
        swept_at = None
        due = False
        if self.parked_orphans and now >= self._orphan_sweep_at():
            self.parked.update(self.parked_orphans)
            self.parked_orphans.clear()
            self._last_orphan_sweep = now
            due = True
        if self.parked and (due or self._sweep_due(now)):
            swept_at = time.perf_counter()
            self._yielded = 0.0
            self._sweep(now)
        if self.queued_services and not self.closing:
            await self._dispatch()
        if swept_at is not None:
            # What a sweep really costs: the checks it led to and the queue work around them
            # (not the time other tasks ran while the dispatch let them).
            cost = time.perf_counter() - swept_at - self._yielded
            self._last_sweep_cost = max(self._last_sweep_cost, cost)

    def _next_deadline(self) -> float:
        deadline = math.inf
        if self.delayed:
            deadline = self.delayed[0][0]
        if self.deadlines:
            deadline = min(deadline, self.deadlines[0][0])
        if self.fleet is not None and self.fleet.holdings:
            deadline = min(deadline, self.fleet.next_deadline())
        if self.parked:
            if self._sweep_wanted:
                deadline = min(deadline, self._sweep_wanted_at())
            deadline = min(deadline, self._periodic_sweep_at())
        if self.parked_orphans:
            deadline = min(deadline, self._orphan_sweep_at())
        if self.pending and self.watch_stalls:
            if self.stall_warn_after is not None and not self.stall_warned:
                deadline = min(deadline, self.last_progress + self.stall_warn_after)
            if self.stall_timeout is not None:
                deadline = min(deadline, self.last_progress + self.stall_timeout)
        if not self.closing:
            now = self.clock()
            for service in self.queued_services:
                deadline = min(deadline, self._service_ready_at(service, now))
        return deadline

    def _service_ready_at(self, service: Service, now: float) -> float:
        """When queued work of this service may start, as far as time decides it.

        Only time needs a timer: a full concurrency or thread limit is freed by finishing
        work, which wakes the scheduler itself. Times already past mean "now" only while
        nothing else blocks, so the scheduler never spins on a deadline it cannot act on.
        """
        if service.paused_until > now:
            return service.paused_until
        if self._handing_on(service):
            return math.inf  # a runner being woken starts it (and wakes us if it cannot)
        limiter = service.limiter
        if limiter is not None and limiter.available_tokens <= 0:
            return math.inf
        threads = self._threads
        if (
            service.concurrent is None
            and threads is not None
            and threads.available_tokens <= 0
            and self._head_is_sync(service)
        ):
            return math.inf
        ready_at = -math.inf
        if service.shared:
            if service.shared_wait_until > now:
                ready_at = service.shared_wait_until
        elif service.rate is not None:
            ready_at = service.rate.next_free(now)
        return ready_at

    @staticmethod
    def _head_is_sync(service: Service) -> bool:
        queue = service.queue
        return bool(queue) and not queue[0][3]._task.is_async

    # ------------------------------------------------------------------ queues

    def _enqueue(self, work: WorkUnit, now: float) -> None:
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
        work._token += 1
        work._where = QUEUED
        work._blocked = None
        key = work._submitted / self.priority_aging - priority
        heapq.heappush(service.queue, (key, work._seq, work._token, work))
        service.queued += 1
        self.queued_services[service] = None

    def _pop(self, service: Service) -> WorkUnit | None:
        queue = service.queue
        while queue:
            _, _, token, work = heapq.heappop(queue)
            if work._where == QUEUED and work._token == token:
                service.queued -= 1
                return work
        return None

    def _unqueue(self, work: WorkUnit) -> None:
        """Forget a pending work wherever it waits (its heap entries go stale)."""
        where = work._where
        if where == QUEUED:
            service = self.services[work._task.service]
            service.queued -= 1
            if service.queued == 0:
                service.queue.clear()
                self.queued_services.pop(service, None)
        elif where == PARKED:
            self.parked.pop(work.id, None)
            self.parked_precise.pop(work.id, None)
            self.parked_orphans.pop(work.id, None)
        work._where = NOWHERE

    def _park(self, work: WorkUnit, verdict: Verdict, *, asked_inline: bool = True) -> None:
        """Keep a work that may not start yet (``verdict``: why) until a sweep or a wake-up."""
        reason, details = verdict
        work._where = PARKED
        work._blocked = verdict  # the checks' shared tuples: no allocation per waiting work
        precise = False
        if self._waits_for:
            self._forget_waiting(work)  # what it waited for before this check
        if reason == "not_ready" and work._missing:
            keys = []
            for item in work._missing:
                key = artifact_key(item)
                keys.append(key)
                self.waiting_on.setdefault(key, {})[work.id] = work
                producers = self.producers.get(key)
                if producers and any(p is not work for p in producers.values()):
                    precise = True
            self._waits_for[work.id] = keys
        if precise:
            self.parked_precise[work.id] = work
        elif work._missing and reason == "not_ready" and asked_inline:
            # (Only when no await came between asking and here: a producer that finished
            # meanwhile may have made the input; then completions' sweeps must see it.)
            if not self.parked_orphans:
                self._last_orphan_sweep = self.clock()  # its first recheck: one gap from now
            self.parked_orphans[work.id] = work
        else:
            self.parked[work.id] = work
        if self.listeners:
            self.emit("waiting", work, f"{reason}: {details}")

    def _forget_waiting(self, work: WorkUnit) -> None:
        """Take a work out of ``waiting_on`` (and drop the keys nobody waits for any more)."""
        waiting_on = self.waiting_on
        for key in self._waits_for.pop(work.id, ()):
            waiting = waiting_on.get(key)
            if waiting is not None:
                waiting.pop(work.id, None)
                if not waiting:
                    del waiting_on[key]

    def _recheck_gap(self) -> float:
        return max(self.recheck_interval, PERIODIC_BUDGET * self._last_sweep_cost)

    def _orphan_sweep_at(self) -> float:
        return self._last_orphan_sweep + self._recheck_gap()

    def _periodic_sweep_at(self) -> float:
        return self._last_sweep + self._recheck_gap()

    def _sweep_wanted_at(self) -> float:
        """When a sweep that completions asked for may run: spaced so that re-asking takes at
        most about a quarter of the time -- or half of it once a handler finished and nothing
        of this cue runs any more (waiting longer would only leave the cue idle)."""
        if self.running == 0 and self._handler_finished:
            return self._last_sweep + self._last_sweep_cost
        return self._last_sweep + SWEEP_BUDGET * self._last_sweep_cost

    def _sweep_due(self, now: float) -> bool:
        if self._sweep_wanted and now >= self._sweep_wanted_at():
            return True
        return now >= self._periodic_sweep_at()

    def _sweep(self, now: float) -> None:
        """Put every parked work back into its queue, to be checked when room exists."""
        self._sweep_wanted = False
        self._handler_finished = False
        self._last_sweep = now
        self._last_sweep_cost = self._sweep_cost + self.checks.take_spent()
        self._sweep_cost = 0.0
        parked, self.parked = self.parked, {}
        for work in parked.values():
            self._enqueue(work, now)

    def _due_retries(self, now: float) -> None:
        delayed = self.delayed
        while delayed and delayed[0][0] <= now:
            _, _, token, work = heapq.heappop(delayed)
            if work._where == DELAYED and work._token == token:
                if work._blocked is None:  # a retry (not a claim held elsewhere)
                    work.attempt += 1
                self._enqueue(work, now)

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self) -> None:
        if self.store is not None:
            await self._dispatch_with_store()
            return
        # Round robin: each pass gives every service one slice of its walk, so a long walk over
        # one service's waiting work never holds up another's starts. The whole walk stays in
        # this tick (it lets other tasks run between slices), so the tick measures what a
        # sweep really costs and spaces the next one.
        again = True
        while again and not self.closing:
            again = False
            for service in list(self.queued_services):
                if await self._dispatch_service(service):
                    again = True

    async def _dispatch_service(self, service: Service) -> bool:
        """One service's turn; True when it stopped after a slice of a long walk."""
        checks = self.checks
        more = False
        while service.queued and not self.closing:
            if self._handing_on(service):
                break  # a runner being woken takes it on (_hand_on)
            free = service.free_slots(self.clock)
            if free <= 0:
                break
            if checks.active and checks.inline:
                more = await self._dispatch_inline(service)
                break
            count = int(min(free, service.queued, BATCH_MAX))
            batch: list[WorkUnit] = []
            for _ in range(count):
                work = self._pop(service)
                if work is None:
                    break
                work._where = CHECKING
                batch.append(work)
            if checks.active:  # in a worker thread, or async: one batch at a time
                begun = time.perf_counter()
                verdicts = await checks.evaluate(batch)
                self._sweep_cost += time.perf_counter() - begun
                blocked = False
                parked = 0
                for work, verdict in zip(batch, verdicts):
                    if work._where != CHECKING:
                        continue  # cancelled while its checks ran
                    kind = verdict[0]
                    if kind == "run":
                        if blocked or not self._start(work, service):
                            blocked = True
                            self._enqueue(work, self.clock())
                    elif kind == "skip":
                        self._skip(work, service)
                    else:
                        self._park(work, verdict, asked_inline=False)
                        parked += 1
                if blocked:
                    break
                if parked or count == BATCH_MAX:
                    await self._between_batches()
            else:
                for index, work in enumerate(batch):
                    if not self._start(work, service):
                        now = self.clock()
                        for rest in batch[index:]:
                            self._enqueue(rest, now)
                        break
                else:
                    if count == BATCH_MAX:
                        await self._between_batches()
                    continue
                break
        if service.queued == 0:
            service.queue.clear()
            self.queued_services.pop(service, None)
        return more

    async def _dispatch_inline(self, service: Service) -> bool:
        """Start what may start of one service, asking sync checks one work at a time.

        Work that is not ready does not use up the room: the walk goes on until the room is
        filled or the queue is empty, letting other tasks run every ``BATCH_MAX`` works (or
        ``WALK_SLICE`` seconds, when checks are slow or raise and log).
        Returns True when it stopped only to let them run (call again), False when done.
        """
        checks = self.checks
        clock = self.clock
        walked = 0
        began = time.perf_counter()
        while service.queued and not self.closing:
            if service.free_slots(clock) <= 0:
                return False
            work = self._pop(service)
            if work is None:
                return False
            work._where = CHECKING
            ready = self._settle(work, service, checks.verdict_now(work))
            if ready and not self._start(work, service):
                self._enqueue(work, clock())
                return False
            walked += 1
            if walked >= BATCH_MAX or time.perf_counter() - began > WALK_SLICE:
                await self._between_batches()  # (slow checks, or checks that raise and log)
                return True
        return False

    async def _between_batches(self) -> None:
        """Let the runners just started (and every other task) go on: a long dispatch, or a
        long walk over work that is not ready yet, never holds the loop."""
        paused = time.perf_counter()
        await anyio.lowlevel.checkpoint()
        self._yielded += time.perf_counter() - paused

    async def _dispatch_with_store(self) -> None:
        """Dispatch one work at a time: claims and shared limits each cost a store round trip.

        Keyed work is claimed before its checks are asked (so a process that waited for
        another's claim sees the output through ``is_stale``); a shared service asks the store
        for each start after its local slots are taken, and gives them back when refused.
        After every await, the decision is taken again: the work may have been cancelled,
        the cue may be stopping, the service paused.
        """
        fleet = self.fleet
        assert fleet is not None
        checks = self.checks
        for service in list(self.queued_services):
            while service.queued and not self.closing:
                now = self.clock()
                if service.shared and service.shared_wait_until > now:
                    break
                if service.free_slots(self.clock) <= 0:
                    break
                work = self._pop(service)
                if work is None:
                    break
                work._where = CHECKING
                if work.key is not None and not fleet.claimed(work):
                    claimed = await fleet.claim(work)
                    if work._where != CHECKING:
                        if claimed:  # cancelled while claiming: let the others have it
                            self._give_back_soon(work)
                        continue
                    if not claimed:
                        self._delay(work, min(1.0, fleet.ttl / 4), "claimed_elsewhere")
                        continue
                if checks.active and not await self._check_one(work, service):
                    continue
                slots = self._take_slots(work, service)
                if slots is None:
                    self._enqueue(work, self.clock())
                    break
                if service.shared:
                    wait = await fleet.acquire(service, work)
                    held_back = not self._still_admitted(work, service)
                    if wait > 0 or work._where != CHECKING or held_back:
                        self._release(service, *slots)
                        if wait <= 0:  # granted, but cancelled or held back meanwhile
                            self._give_back_soon(work)
                            if work._where != CHECKING:
                                continue
                        if work._where == CHECKING:
                            self._enqueue(work, self.clock())
                        if wait > 0:
                            service.shared_wait_until = self.clock() + wait
                        break
                self._mark_running(work, service)
                self._launch(work, service, *slots)
            if service.queued == 0:
                service.queue.clear()
                self.queued_services.pop(service, None)

    def _give_back_soon(self, work: WorkUnit) -> None:
        assert self.fleet is not None and self.tg is not None
        if self.fleet.holds(work):
            self.tg.start_soon(self.fleet.give_back, work)

    def _delay(self, work: WorkUnit, seconds: float, reason: str) -> None:
        """Hold pending work aside until ``seconds`` from now (a retry, or a claim elsewhere)."""
        work._token += 1
        work._where = DELAYED
        work._blocked = (reason, f"asked again in {seconds:.3g}s")
        heapq.heappush(self.delayed, (self.clock() + seconds, work._seq, work._token, work))

    def _start(self, work: WorkUnit, service: Service) -> bool:
        """Take room in the service and hand the work to a runner; False when there is no
        room now, or when an idle runner is already being woken for this service and will
        hand the next work on itself (see :meth:`_hand_on`)."""
        if self._handing_on(service):
            return False
        admitted = self._admit(work, service)
        if admitted is None:
            return False
        self._launch(work, service, *admitted)
        return True

    def _hands_on(self) -> bool:
        """True when a woken runner can take its service's next work itself, on the spot:
        nothing to ask first (with checks, handing on would walk and re-ask not-ready work
        the scheduler already asked) and no store round trips."""
        return self.store is None and not self.checks.active

    def _handing_on(self, service: Service) -> bool:
        """True while an idle runner of ``service`` is being woken and will wake the next
        one itself: the scheduler leaves the service's queue to it."""
        return bool(service.waking and service.spares) and self._hands_on()

    async def _hand_on(self, service: Service) -> None:
        """A runner just woken with a work wakes the next idle runner while work waits and
        room is left: idle runners are woken one after another, each by the last, instead of
        all at once, so work that runs without waiting (the first runner drains the queue)
        wakes one or two, and work that waits (I/O) still spreads over every free slot."""
        if service.queued and service.spares and self._hands_on():
            following = await self._take_next(service)
            if following is not None:
                self._launch(following[0], service, following[1], following[2])
        elif service.queued:
            self.wake()  # no idle runner left to wake: the scheduler starts the rest

    def _launch(
        self, work: WorkUnit, service: Service, borrower: object, thread_slot: bool
    ) -> None:
        """Run an admitted work: on the service's idle runner when it has one (one wake-up,
        like a stream hop), else in a new runner task."""
        if service.spares:
            spare: _Spare = service.spares.pop()  # the latest to go idle: its memory is warm
            spare.work = (work, borrower, thread_slot)
            service.waking += 1
            spare.event.set()
            return
        assert self.tg is not None
        self.tg.start_soon(self._runner, work, service, borrower, thread_slot, name=RUNNER_NAME)

    def _admit(self, work: WorkUnit, service: Service) -> tuple[object, bool] | None:
        """Take every slot the work needs, all or nothing, and mark it running."""
        slots = self._take_slots(work, service)
        if slots is not None:
            self._mark_running(work, service)
        return slots

    def _take_slots(self, work: WorkUnit, service: Service) -> tuple[object, bool] | None:
        """Take a concurrency slot (and a thread slot for a sync handler on a service without
        ``concurrent``) and a local rate slot, all or nothing. Returns the thread slot's
        borrower (None without one) and whether a thread slot was taken."""
        if self.closing:
            return None  # the cue is stopping: it starts nothing new, whatever was decided
        if service.paused_until != -math.inf and service.paused_until > self.clock():
            return None  # RateLimited paused the service: nothing of it starts
        slots = service.limiter
        assert slots is not None
        if slots.borrowed_tokens >= slots.total_tokens:
            return None
        slots.borrowed_tokens += 1
        borrower: object = None
        thread_slot = False
        if service.concurrent is None and not work._task.is_async:
            assert self._threads is not None
            borrower = object()
            try:
                self._threads.acquire_on_behalf_of_nowait(borrower)
            except anyio.WouldBlock:
                slots.borrowed_tokens -= 1
                return None
            thread_slot = True
        if service.rate is not None and not service.shared and not service.rate.try_reserve():
            self._release(service, borrower, thread_slot)
            return None
        return borrower, thread_slot

    def _mark_running(self, work: WorkUnit, service: Service) -> None:
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
        if self.listeners:
            self.emit("started", work, f"attempt {work.attempt}")

    async def _runner(
        self, work: WorkUnit, service: Service, borrower: object, thread_slot: bool
    ) -> None:
        """Run attempts of one service, one after another, in this task.

        After each attempt the runner takes the next queued work of the same service itself
        (when the limits allow and its checks can be asked here), so a busy service costs no
        task spawn and no scheduler round trip per work. With nothing it may take, it ends.

        One cancel scope covers the attempts of a runner until ``cancel()`` cancels the one
        running (``work._scope``); the runner then leaves that scope and opens a fresh one.

        A runner that finds nothing to take stays as one of its service's spares (up to the
        service's ``concurrent``, at most ``MAX_SPARES``; no timer, so an idle cue still costs
        no CPU) until the scheduler hands it the next work that may start: a start on an idle
        service, or work trickling in as fast as it runs, then costs one wake-up instead of a
        new task. While one is being woken, the next is woken by it (:meth:`_hand_on`), not
        by the scheduler. Spares end with the cue's task group.
        """
        IN_RUNNER.set(True)
        IN_REPORT.set(False)  # spawned from a callback's task, it runs handlers, not callbacks
        following: tuple[WorkUnit, object, bool] | None = (work, borrower, thread_slot)
        while following is not None:
            scope = self._runner_scope()
            held: _ThreadCall | None = None
            with scope:
                while following is not None:
                    work, borrower, thread_slot = following
                    following = None
                    work._scope = scope
                    if work._cancel_requested:
                        scope.cancel()  # cancel() came before this runner started
                    held = await self._attempt(work, service, borrower, thread_slot, scope)
                    if scope.cancel_called or held is not None:
                        break
                    following = await self._take_next(service)
                    if following is None:
                        # Idle in this same scope: nothing can cancel it meanwhile (cancel()
                        # reaches a work's scope only once the work is handed over).
                        following = await self._wait_as_spare(service)
            if held is not None:
                try:
                    assert held.done is not None
                    await held.done.wait()  # a thread that outlived its wait keeps its slot
                finally:
                    service.abandoned -= 1
                    self._release(service, borrower, thread_slot)
            if following is None and (scope.cancel_called or held is not None):
                following = await self._take_next(service)
            if following is None:
                following = await self._wait_as_spare(service)

    async def _wait_as_spare(self, service: Service) -> tuple[WorkUnit, object, bool] | None:
        """Wait as the service's idle runner; the work handed over, or None to end now."""
        spares = service.spares
        if self.closing or len(spares) >= min(service.concurrent or MAX_SPARES, MAX_SPARES):
            return None
        spare = _Spare()
        spares.append(spare)
        try:
            await spare.event.wait()
        except BaseException as exc:
            # The cue is going away. A work handed over in the same moment was admitted
            # (marked running, slots taken): account for it as interrupted.
            if spare in spares:
                spares.remove(spare)
            if spare.work is not None:
                service.waking -= 1
                work, borrower, thread_slot = spare.work
                rate = None if service.shared else service.rate
                self._interrupted(
                    work, service, borrower, thread_slot, self._runner_scope(), None, rate, exc
                )
            raise
        service.waking -= 1
        if spare.work is not None:
            await self._hand_on(service)
        return spare.work

    async def _attempt(
        self,
        work: WorkUnit,
        service: Service,
        borrower: object,
        thread_slot: bool,
        scope: _backend.RunnerScope,
    ) -> _ThreadCall | None:
        """One attempt, reported. Returns the thread call when its thread still runs (the
        caller then waits for it before releasing the slots)."""
        spec: TaskSpec = work._task
        hooks = self.hooks
        call: _ThreadCall | None = None
        result: Any = None
        error: BaseException | None = None
        snapshot: Snapshot | None = None
        rate = None if service.shared else service.rate  # holds a reservation for this start
        if not self._still_admitted(work, service):
            # Admitted, then handed to this runner: the cue began stopping, or the service was
            # paused (RateLimited), before the runner got to it. No handler call now.
            self._unadmit(work, service, borrower, thread_slot, rate)
            return None
        begun = self.clock()
        try:
            if work._cancel_requested:
                await anyio.lowlevel.checkpoint()  # cancelled before it started: no handler call
            if hooks.on_start is not None:
                await self._report("on_start", hooks.on_start, work)
                if self.async_on_start and not self._still_admitted(work, service):
                    # Stopping, or paused (RateLimited) while on_start was awaited: the
                    # handler does not start now; the work goes back to pending.
                    self._unadmit(work, service, borrower, thread_slot, rate)
                    return None
            if work._outputs and spec.delete_on_error:
                snapshot = Snapshot(work._outputs)
            if rate is not None:
                # The start counts from now, right before the handler is called.
                if rate.commit() and service.queued:
                    self.wake()
                rate = None
            if hooks.on_start is not None:
                begun = self.clock()  # the handler's own time, after its on_start
            if not spec.is_async:
                call = _ThreadCall()
            guard = None if self.fleet is None else self.fleet.guard(work)
            if spec.timeout is None and guard is None:
                if call is None:
                    result = await spec.handler(work)  # the common case, without a detour
                else:
                    result = await self._invoke(spec, work, call)
            else:  # scopes only when needed: entering one costs as much as a no-op handler
                result, error = await self._invoke_bounded(spec, work, call, begun, guard)
        except Exception as exc:
            error = exc
        except BaseException as exc:
            stray = (
                isinstance(exc, anyio.get_cancelled_exc_class())
                and not work._cancel_requested
                and anyio.current_effective_deadline() != -math.inf
            )
            if not stray:
                return self._interrupted(
                    work, service, borrower, thread_slot, scope, call, rate, exc
                )
            # A cancellation nobody here asked for (asyncio: the handler awaited something
            # that was cancelled elsewhere): the attempt failed, the cue goes on.
            error = exc
        duration = self.clock() - begun
        still_running = call is not None and call.abandon()
        if still_running:
            service.abandoned += 1
        else:
            self._release(service, borrower, thread_slot)
        if work._outputs:
            self._check_outputs(work, error, snapshot)
        if self.fleet is not None:
            await self.fleet.after_attempt(work, error)
        if error is None and self.hooks.on_complete is None and not work._cancel_requested:
            self._completed(work, service, result, duration)  # the common case: no await
        else:
            await self._conclude(work, service, result, error, duration)
        return call if still_running else None

    def _still_admitted(self, work: WorkUnit, service: Service) -> bool:
        """After an await (or a hand-over to a runner) between admission and the handler
        call: do the limits still let this work start? (The cue may have begun stopping, or
        the service been paused.)"""
        if self.closing:
            return False
        paused = service.paused_until
        return paused == -math.inf or paused <= self.clock()

    def _unadmit(
        self,
        work: WorkUnit,
        service: Service,
        borrower: object,
        thread_slot: bool,
        rate: RateLimiter | None,
    ) -> None:
        """Take back an admission whose handler was not called: its slots and rate slot are
        freed, the start is not counted, and the work is pending again (or cancelled, when
        the cue is stopping)."""
        if rate is not None:
            rate.release()
        self._release(service, borrower, thread_slot)
        self.running -= 1
        service.running -= 1
        service.started -= 1
        work.started_at = None
        now = self.clock()
        if self._back_to_pending(work, now):
            self._enqueue(work, now)
            if self.listeners:
                self.emit("waiting", work, "paused: the service paused before the handler")
            self.wake()
        if self.running <= 1:
            self._check_idle()

    async def _invoke_bounded(
        self,
        spec: TaskSpec,
        work: WorkUnit,
        call: _ThreadCall | None,
        begun: float,
        guard: anyio.CancelScope | None,
    ) -> tuple[Any, BaseException | None]:
        """The handler inside the scopes that may end it early: its task's timeout, and the
        loss of what it holds in the store. Returns its result and the error that ended it."""
        result: Any = None
        error: BaseException | None = None
        try:
            with guard if guard is not None else contextlib.nullcontext():
                if spec.timeout is None:
                    result = await self._invoke(spec, work, call)
                else:
                    with anyio.CancelScope(deadline=begun + spec.timeout) as limit:
                        result = await self._invoke(spec, work, call)
                    if limit.cancelled_caught:
                        error = HandlerTimeout(
                            f"task {spec.name!r} ran longer than its timeout of {spec.timeout:g}s"
                        )
        finally:
            if guard is not None:
                assert self.fleet is not None
                lost = self.fleet.lost(work, guard)
                if lost is not None:
                    error = lost
        return result, error

    async def _invoke(self, spec: TaskSpec, work: WorkUnit, call: _ThreadCall | None) -> Any:
        """Call the handler: an async one here, a sync one in a worker thread."""
        if call is None:
            return await spec.handler(work)
        return await anyio.to_thread.run_sync(
            call.run, spec.handler, work, abandon_on_cancel=True, limiter=self._run_threads
        )

    def _interrupted(
        self,
        work: WorkUnit,
        service: Service,
        borrower: object,
        thread_slot: bool,
        scope: _backend.RunnerScope,
        call: _ThreadCall | None,
        rate: RateLimiter | None,
        exc: BaseException,
    ) -> _ThreadCall:
        """An attempt ended by cancel(), the cue stopping, or a KeyboardInterrupt-like error:
        account for it synchronously, then re-raise -- unless it is this work's own cancel()
        while its thread still runs: then the runner absorbs the cancellation and waits for
        the thread before giving its slot back."""
        if rate is not None:
            rate.release()  # cancelled before its handler started: no start happened
        still_running = call is not None and call.abandon()
        keep_slot = still_running and work._cancel_requested and scope.cancel_called
        if keep_slot:
            service.abandoned += 1
        else:
            self._release(service, borrower, thread_slot)  # the cue is going away, or done
        if work._where == RUNNING:
            if work._cancel_requested or isinstance(exc, anyio.get_cancelled_exc_class()):
                reason = (
                    f"work {work.id} ({work.task}) was cancelled while it ran"
                    if work._cancel_requested
                    else "the cue stopped while it ran"
                )
                self._conclude_now(work, service, WorkCancelled(reason), WorkState.CANCELLED)
                if self.hooks.on_cancel is not None:
                    self._report_soon("on_cancel", self.hooks.on_cancel, work)
            else:
                self._conclude_now(work, service, exc, WorkState.FAILED)
        if keep_slot:
            assert call is not None
            return call
        raise exc

    def _check_outputs(
        self, work: WorkUnit, error: BaseException | None, snapshot: Snapshot | None
    ) -> None:
        """After an attempt: remove what a failed one left behind (Make's .DELETE_ON_ERROR),
        and say so when a successful one left its outputs stale."""
        try:
            if error is not None:
                if snapshot is not None:
                    for output in snapshot.touched():
                        remove = getattr(output, "delete", None)
                        if callable(remove):
                            remove()
                            logger.warning(
                                "runcue: %s failed; removed the output %s it had written",
                                work,
                                describe(output),
                            )
                return
            reason = declared_stale(work._inputs, work._outputs, work._task.max_age)
            if reason is not None:
                logger.warning(
                    "runcue: %s completed but its outputs still read as stale (%s): did the"
                    " handler forget to write them?",
                    work,
                    reason,
                )
        except Exception:
            logger.exception("runcue: checking the outputs of %s raised", work)

    async def _check_one(self, work: WorkUnit, service: Service) -> bool:
        """Ask one CHECKING work's checks; True when it should start now. Otherwise it was
        skipped, parked, or cancelled while its checks ran."""
        checks = self.checks
        if checks.inline:
            return self._settle(work, service, checks.verdict_now(work))
        begun = time.perf_counter()
        (verdict,) = await checks.evaluate([work])
        self._sweep_cost += time.perf_counter() - begun
        return self._settle(work, service, verdict, asked_inline=False)

    def _settle(
        self, work: WorkUnit, service: Service, verdict: Verdict, *, asked_inline: bool = True
    ) -> bool:
        """Act on a CHECKING work's verdict: True when it should start now; otherwise it is
        skipped or parked (or was cancelled while its checks ran)."""
        if work._where != CHECKING:
            return False  # cancelled while its checks ran
        kind = verdict[0]
        if kind == "skip":
            self._skip(work, service)
        elif kind == "run":
            return True
        else:
            self._park(work, verdict, asked_inline=asked_inline)
        return False

    async def _take_next(self, service: Service) -> tuple[WorkUnit, object, bool] | None:
        checks = self.checks
        active = checks.active
        began = time.perf_counter() if active else 0.0
        while service.queued and not self.closing and self.store is None:
            if active:
                if not checks.runs_here:
                    break  # the scheduler asks the checks in batches (in a worker thread)
                if service.free_slots(self.clock) <= 0:
                    break  # no room: do not ask checks for nothing (_admit re-checks anyway)
            work = self._pop(service)
            if work is None:
                break
            if active:
                work._where = CHECKING
                if checks.inline:
                    # The common case without a coroutine: sync checks asked right here.
                    if not self._settle(work, service, checks.verdict_now(work)):
                        if time.perf_counter() - began > WALK_SLICE:
                            break  # a long walk: the scheduler goes on with it (woken below)
                        continue
                elif not await self._check_one(work, service):
                    continue
            admitted = self._admit(work, service)
            if admitted is None:
                self._enqueue(work, self.clock())
                break
            return (work, *admitted)
        if service.queued and not self.closing:
            self.wake()  # work is left that the scheduler must time (a rate slot, a pause)
        return None

    def _release(self, service: Service, borrower: object, thread_slot: bool) -> None:
        assert service.limiter is not None
        service.limiter.borrowed_tokens -= 1
        if thread_slot:
            assert self._threads is not None
            self._threads.release_on_behalf_of(borrower)
            if self.queued_services:
                self.wake()  # a thread slot is shared by every service without `concurrent`

    async def _conclude(
        self,
        work: WorkUnit,
        service: Service,
        result: Any,
        error: BaseException | None,
        duration: float,
    ) -> None:
        """Report one attempt's outcome: complete, retry, pause, fail or cancel."""
        hooks = self.hooks
        if self.async_hooks and service.queued:
            self.wake()  # its slot is free; an async callback below must not keep it idle
        if error is None and not work._cancel_requested:
            self._completed(work, service, result, duration)
            if hooks.on_complete is not None:
                await self._report("on_complete", hooks.on_complete, work, result, duration)
            return
        spec: TaskSpec = work._task
        self._attempt_ended(service)
        if work._cancel_requested or error is None:
            self._finish(
                work,
                WorkState.CANCELLED,
                exception=WorkCancelled(f"work {work.id} ({work.task}) was cancelled while it ran"),
            )
            self.cancelled += 1
            if hooks.on_cancel is not None:
                self._report_soon("on_cancel", hooks.on_cancel, work)  # not in the cancelled scope
            return
        if isinstance(error, RateLimited):
            now = self.clock()
            service.paused_until = max(service.paused_until, now + error.retry_after)
            logger.info(
                "runcue: service %r paused for %.3gs (RateLimited from %s)",
                service.name,
                error.retry_after,
                work,
            )
            if self.listeners:
                self.emit("paused", work, f"service paused {error.retry_after:.3g}s")
            if self._back_to_pending(work, now):
                self._enqueue(work, now)
            self.wake()
            return
        if spec.should_retry(error, work.attempt) and not self.closing:
            delay = spec.backoff.delay(work.attempt, self.rng)
            service.retried += 1
            self.retried += 1
            if self.listeners:
                self.emit("retrying", work, f"{error!r}; retry in {delay:.3g}s", duration)
            now = self.clock()
            # Pending again before on_retry runs: cancel() or stop() meanwhile find it there.
            if self._back_to_pending(work, now):
                work._token += 1
                work._where = DELAYED  # work.attempt counts up when the retry comes due
                work.exception = error
                token = work._token
                if hooks.on_retry is not None:
                    # Pending (cancel() and stop() find it) but not yet due: the retry waits
                    # until on_retry returned.
                    await self._report("on_retry", hooks.on_retry, work, error, delay)
                if work._where == DELAYED and work._token == token:
                    due = now + delay
                    heapq.heappush(self.delayed, (due, work._seq, token, work))
                    self.wake()
            return
        service.failed += 1
        self.failed += 1
        self._finish(work, WorkState.FAILED, exception=error, duration=duration)
        if hooks.on_failure is not None:
            await self._report("on_failure", hooks.on_failure, work, error)

    def _attempt_ended(self, service: Service) -> None:
        """A handler returned or raised: it no longer runs."""
        self.running -= 1
        service.running -= 1
        self._handler_finished = True
        if self.watch_stalls:
            self.last_progress = self.clock()
            self.stall_warned = False
        if self.running <= 1:
            self._check_idle()

    def _completed(self, work: WorkUnit, service: Service, result: Any, duration: float) -> None:
        """Bookkeeping for an attempt that returned (its on_complete is the caller's)."""
        self._attempt_ended(service)
        service.completed += 1
        self.completed += 1
        self._finish(work, WorkState.COMPLETED, result, None, duration)

    def _back_to_pending(self, work: WorkUnit, now: float) -> bool:
        """Make a finished attempt pending again; False (and cancelled) when the cue stops."""
        work.state = WorkState.PENDING
        work._where = NOWHERE
        work._scope = None  # its runner goes on with other work: cancel() must not reach it
        if self.closing:
            self._finish(
                work,
                WorkState.CANCELLED,
                exception=WorkCancelled("the cue stopped before this work could run again"),
            )
            self.cancelled += 1
            if self.hooks.on_cancel is not None:
                self._report_soon("on_cancel", self.hooks.on_cancel, work)
            return False
        self._mark_pending(work, now)
        return True

    def _conclude_now(
        self, work: WorkUnit, service: Service, error: BaseException, state: WorkState
    ) -> None:
        """Synchronous bookkeeping for an attempt ended by cancellation or a BaseException."""
        self.running -= 1
        service.running -= 1
        if self.running <= 1:
            self._check_idle()
        if state is WorkState.CANCELLED:
            self.cancelled += 1
        else:
            service.failed += 1
            self.failed += 1
        self._finish(work, state, exception=error)

    def _skip(self, work: WorkUnit, service: Service) -> None:
        service.skipped += 1
        self.skipped += 1
        work.skipped = True
        if self.watch_stalls:
            self.last_progress = self.clock()
            self.stall_warned = False
        self._finish(work, WorkState.COMPLETED)
        if self.hooks.on_skip is not None:
            self._report_soon("on_skip", self.hooks.on_skip, work)

    def _finish(
        self,
        work: WorkUnit,
        state: WorkState,
        result: Any = None,
        exception: BaseException | None = None,
        duration: float | None = None,
    ) -> None:
        """Move a work unit to its terminal state and tell everyone who waits."""
        if work._where == QUEUED or work._where == PARKED:
            self._unqueue(work)
        else:
            work._where = NOWHERE
        work.state = state
        work.result = result
        work.exception = exception
        work.completed_at = time.time()
        work._scope = None
        work_id = work.id
        self.works.pop(work_id, None)
        if work._outputs:
            self._wake_dependents(work)
        if self.fleet is not None:
            self._give_back_soon(work)
        if self._waits_for:
            self._forget_waiting(work)
        if work._missing:
            work._missing = []
        digest = work._dedup_key
        if digest is not None:
            known = self.dedup.get(digest)
            if known is work:
                del self.dedup[digest]
            elif isinstance(known, list) and work in known:
                known.remove(work)
                if len(known) == 1:
                    self.dedup[digest] = known[0]
        keep = self.keep_finished
        finished = self.finished
        if keep is None:
            finished[work_id] = work
        elif keep > 0:
            finished[work_id] = work
            if len(finished) > keep:
                finished.popitem(last=False)  # the oldest
        if self._waiters:
            waiter = self._waiters.pop(work_id, None)
            if waiter is not None:
                waiter.set()
        if not self.works or self.running <= 1:
            self._check_idle()
        if self.parked and state is not WorkState.CANCELLED:
            self._sweep_wanted = True
            self.wake()
        if self.listeners:
            kind = "skipped" if work.skipped else state.value
            self.emit(kind, work, "" if exception is None else _safe_repr(exception), duration)

    def _wake_dependents(self, work: WorkUnit) -> None:
        """A producer finished: recheck exactly the parked work that waits for its outputs."""
        now = self.clock()
        woke = False
        for output in work._outputs:
            key = artifact_key(output)
            producers = self.producers.get(key)
            if producers is not None:
                producers.pop(work.id, None)
                if not producers:
                    del self.producers[key]
            for dependent in self.waiting_on.pop(key, {}).values():
                if dependent._where == PARKED:
                    self._unqueue(dependent)
                    self._enqueue(dependent, now)
                    woke = True
        if woke:
            self.wake()

    # ------------------------------------------------------------------ deadlines

    def _mark_pending(self, work: WorkUnit, now: float) -> None:
        work._enqueued = now
        if self.pending_warn_after is not None:
            heapq.heappush(
                self.deadlines, (now + self.pending_warn_after, work._seq, _WARN, now, work)
            )
        if self.pending_timeout is not None:
            heapq.heappush(
                self.deadlines, (now + self.pending_timeout, work._seq, _TIMEOUT, now, work)
            )

    async def _due_deadlines(self, now: float) -> None:
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, kind, since, work = heapq.heappop(deadlines)
            if work.state is not WorkState.PENDING or work._enqueued != since:
                continue
            waited = now - since
            if kind == _WARN:
                if self.hooks.on_pending_warning is not None:
                    self._report_soon(
                        "on_pending_warning", self.hooks.on_pending_warning, work, waited
                    )
                else:
                    logger.warning(
                        "runcue: %s has been pending for %.1fs (pending_warn_after=%gs); %s",
                        work,
                        waited,
                        self.pending_warn_after,
                        self.describe(work)[1],
                    )
            elif work._where == CHECKING:
                # Its checks are being asked right now: decide once they answered.
                heapq.heappush(deadlines, (now + 0.05, work._seq, kind, since, work))
                continue
            else:
                error = PendingTimeout(
                    f"Pending timeout: work {work.id} ({work.task}) was pending for {waited:.1f}s,"
                    " longer than"
                    f" pending_timeout={self.pending_timeout:g}s; last seen:"
                    f" {self.describe(work)[1]}"
                )
                await self._fail_pending(work, error)

    async def _fail_pending(self, work: WorkUnit, error: BaseException) -> None:
        service = self.services[work._task.service]
        service.failed += 1
        self.failed += 1
        self._finish(work, WorkState.FAILED, exception=error)
        if self.hooks.on_failure is not None:
            self._report_soon("on_failure", self.hooks.on_failure, work, error)

    async def _check_stall(self, now: float) -> None:
        pending = self.pending
        if not pending:
            return
        quiet = now - self.last_progress
        if self.stall_timeout is not None and now >= self.last_progress + self.stall_timeout:
            logger.warning(
                "runcue: no work started or finished for %.1fs (stall_timeout=%gs); failing %d"
                " pending work units",
                quiet,
                self.stall_timeout,
                pending,
            )
            victims = [
                w
                for w in self.works.values()
                if w.state is WorkState.PENDING and w._where != CHECKING
            ]
            for work in victims:
                error = StallTimeout(
                    f"Stall timeout: work {work.id} ({work.task}) failed: nothing started or"
                    " finished for"
                    f" {quiet:.1f}s (stall_timeout={self.stall_timeout:g}s); last seen:"
                    f" {self.describe(work)[1]}"
                )
                await self._fail_pending(work, error)
            self.last_progress = now
            return
        if (
            self.stall_warn_after is not None
            and not self.stall_warned
            and now >= self.last_progress + self.stall_warn_after
        ):
            self.stall_warned = True
            if self.hooks.on_stall_warning is not None:
                self._report_soon("on_stall_warning", self.hooks.on_stall_warning, quiet, pending)
            else:
                logger.warning(
                    "runcue: no work started or finished for %.1fs; %d pending (see"
                    " cue.debug_blocked())",
                    quiet,
                    pending,
                )

    # ------------------------------------------------------------------ control

    async def cancel(self, work: WorkUnit, reason: str) -> bool:
        """Cancel pending or running work; False when it already finished."""
        if work.state is WorkState.PENDING:
            self.cancelled += 1
            self._finish(work, WorkState.CANCELLED, exception=WorkCancelled(reason))
            if self.hooks.on_cancel is not None:
                await self._report("on_cancel", self.hooks.on_cancel, work)
            return True
        if work.state is WorkState.RUNNING:
            work._cancel_requested = True
            if work._scope is not None:
                work._scope.cancel()
            return True
        return False

    async def cancel_all_pending(self, reason: str) -> int:
        """Cancel every pending work unit (the cue is stopping); returns how many.

        All of them end cancelled at once, with no await in between (a check or a claim
        still being awaited for one of them finds it cancelled and starts nothing); then
        their ``on_cancel`` callbacks run concurrently, each bounded like any callback: in
        the cue's task group while it runs (``stop()`` waits for them), else right here.
        """
        victims = [w for w in self.works.values() if w.state is WorkState.PENDING]
        if victims:
            logger.warning(
                "runcue: stopping with %d work units still pending; they end cancelled: %s",
                len(victims),
                ", ".join(repr(w) for w in victims[:5]) + (" ..." if len(victims) > 5 else ""),
            )
        for work in victims:
            self.cancelled += 1
            self._finish(work, WorkState.CANCELLED, exception=WorkCancelled(reason))
        hook = self.hooks.on_cancel
        if hook is not None and victims:
            if self.tg is not None or not is_async_callable(hook):
                for work in victims:
                    self._report_soon("on_cancel", hook, work)
            else:  # stopped before it ran: no task group of the cue's to run them in
                async with anyio.create_task_group() as tg:
                    for work in victims:
                        self._reporting += 1
                        tg.start_soon(self._report_counted, "on_cancel", hook, work)
        return len(victims)

    def cancel_running(self) -> None:
        for work in list(self.works.values()):
            if work.state is WorkState.RUNNING:
                # Also work handed to a runner that has not started it yet (no scope yet):
                # the runner sees the request before calling its handler.
                work._cancel_requested = True
                if work._scope is not None:
                    work._scope.cancel()

    async def _report(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Call an event callback; join() and stop() wait until it returned."""
        self._reporting += 1
        await self._report_counted(name, hook, *args)

    def _report_soon(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Call an event callback without holding up the caller (the scheduler): a sync one
        right here, an async one in its own task. join() and stop() still wait for it."""
        if not is_async_callable(hook) or self.tg is None:
            try:
                hook(*args)
            except Exception:
                logger.exception("runcue: the %s callback %r raised; the cue goes on", name, hook)
            return
        self._reporting += 1
        self.tg.start_soon(self._report_counted, name, hook, *args)

    async def _report_counted(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Await a callback already counted in ``_reporting`` (stop() from inside it knows)."""
        token = IN_REPORT.set(True)
        try:
            if name == "on_cancel":
                # Often reported while the cue is being cancelled: let it finish (bounded).
                with anyio.CancelScope(shield=True):
                    await call_hook(name, hook, *args, timeout=min(self.checks.timeout, 5.0))
            else:
                await call_hook(name, hook, *args, timeout=self.checks.timeout)
        finally:
            IN_REPORT.reset(token)
            self._reporting -= 1
            self._check_idle()

    def _check_idle(self) -> None:
        # Waiters re-check their own condition: waking them early is harmless.
        if self.running <= 1 and self._no_running is not None:
            self._no_running.set()
        if not self._reporting and not self.works:
            self._is_idle = True
            self._idle.set()

    async def wait_no_running(self, *, reports: bool = True) -> None:
        """Until no handler runs (and, with ``reports``, no callback is being awaited) -- but
        for the caller's own, when a handler or a callback is the caller."""
        own = 1 if IN_RUNNER.get() and not IN_REPORT.get() else 0
        own_report = 1 if IN_REPORT.get() else 0
        while self.running > own or (reports and self._reporting > own_report):
            self._no_running = anyio.Event()
            await self._no_running.wait()

    async def join(self) -> None:
        while self.works or self._reporting:
            if self._idle.is_set():
                self._is_idle = False
                self._idle = anyio.Event()
            await self._idle.wait()

    async def wait_for(self, work: WorkUnit) -> None:
        if work.state.finished:
            return
        event = self._waiters.get(work.id)
        if event is None:
            event = self._waiters[work.id] = anyio.Event()
        await event.wait()

    # ------------------------------------------------------------------ diagnosis

    def missing_inputs(self, work: WorkUnit) -> str:
        """Which declared inputs are missing, and what (if anything) will produce them."""
        parts = []
        for item in work._missing:
            producers = [
                p for p in self.producers.get(artifact_key(item), {}).values() if p is not work
            ]
            if producers:
                maker = producers[0]
                source = f"{maker.state.value} work {maker.id} ({maker.task}) will produce it"
                state = "waiting for input" if item.exists() else "missing input"
                parts.append(f"{state} {describe(item)}: {source}")
            else:
                parts.append(
                    f"missing input {describe(item)}: no pending or running work produces it"
                )
        return "; ".join(parts)

    def describe(self, work: WorkUnit) -> tuple[str, str]:
        """(reason, details) for why this pending work is not running."""
        where = work._where
        now = self.clock()
        if where == PARKED and work._blocked is not None:
            if work._blocked[0] == "not_ready" and work._missing:
                return ("not_ready", self.missing_inputs(work))
            return work._blocked
        if where == INTAKE:
            return ("queued", "submitted; the scheduler has not seen it yet")
        if where == CHECKING:
            return ("checking", "is_ready / is_stale are being asked")
        if (
            where == DELAYED
            and work._blocked is not None
            and work._blocked[0] == "claimed_elsewhere"
        ):
            return (
                "claimed_elsewhere",
                "another process holds the claim on its key; asked again"
                " soon, and is_stale decides once the claim is free",
            )
        if where == DELAYED:
            for due, _, token, delayed in self.delayed:
                if delayed is work and token == work._token:
                    return (
                        "retry_wait",
                        f"attempt {work.attempt + 1} starts in {due - now:.3g}s"
                        f" (after {work.exception!r})",
                    )
            return ("retry_wait", f"attempt {work.attempt + 1} waits for its backoff")
        if where == QUEUED:
            service = self.services[work._task.service]
            label = (
                "work without a service" if service.name is None else f"service {service.name!r}"
            )
            if self.closing:
                return ("stopping", "the cue is stopping and starts nothing new")
            if service.shared and service.store_error is not None:
                return (
                    "store_unreachable",
                    f"{label} keeps its limits in the store, which"
                    f" does not answer ({service.store_error}); nothing starts until it does",
                )
            if service.shared and service.shared_wait_until > now:
                return (
                    "shared_limit",
                    f"{label}'s shared limits (all processes) are used up;"
                    f" asking again in {service.shared_wait_until - now:.3g}s",
                )
            if service.paused_until > now:
                return (
                    "paused",
                    f"{label} is paused (RateLimited) for another"
                    f" {service.paused_until - now:.3g}s",
                )
            limiter = service.limiter
            if limiter is not None and limiter.available_tokens <= 0:
                return (
                    "service_full",
                    f"{label} runs {service.running + service.abandoned} of"
                    f" {service.concurrent} at once",
                )
            threads = self._threads
            if (
                not work._task.is_async
                and service.concurrent is None
                and threads is not None
                and threads.available_tokens <= 0
            ):
                return ("threads_full", f"all max_threads={self.max_threads} worker threads busy")
            if service.rate is not None:
                next_free = service.rate.next_free()
                if next_free > now:
                    return (
                        "rate_limited",
                        f"{label} used its rate {service.rate_text!r};"
                        f" next slot in {next_free - now:.3g}s",
                    )
            return ("queued", f"waiting its turn among {label} ({service.queued} queued)")
        return ("unknown", f"state {work.state.value}")
