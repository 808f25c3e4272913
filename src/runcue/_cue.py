"""The Cue: the public face over the scheduler -- queries and diagnosis here, submission in
``_submitting.py``, declarations in ``_registry.py``, running, stopping and starting again in
``_lifecycle.py``."""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Mapping
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel

from . import _diagnosis
from ._backpressure import PendingBound
from ._checks import CheckMode, CheckRunner
from ._durations import Duration
from ._errors import (
    UnknownServiceError,
    WorkCancelled,
    WorkNotFound,
)
from ._events import WorkEvent
from ._fleet import Fleet
from ._forecast import ForecastReport, forecast
from ._graph import GraphReport, check_graph
from ._hooks import Hooks
from ._lifecycle import RUNNING, STOPPING, Lifecycle
from ._plan import Plan, make_plan
from ._registry import Registry, check_seconds
from ._scheduler import Scheduler
from ._service import Service
from ._stats import CueStats
from ._store import Store
from ._submitting import DEADLINE_PEEK, Submitting
from ._task import TaskSpec
from ._work import WorkState, WorkUnit

__all__ = ["Cue"]


class Cue(Submitting, Registry, Lifecycle):
    """Runs interdependent, rate-limited work inside your program.

    Declare services and tasks, register the checks, then run the cue one of three ways:

    - ``async with runcue.Cue() as cue:`` -- leaving the block waits until nothing is pending
      or running, then stops (an exception in the block cancels everything instead);
    - ``cue.start()`` ... ``await cue.stop()`` -- from any async code, asyncio or trio;
    - ``await task_group.start(cue.run)`` -- under your own task group, until ``stop()``.

    :param pending_warn_after: warn (``on_pending_warning``, else the ``runcue`` logger) about
        work pending longer than this many seconds.
    :param pending_timeout: fail work pending longer than this with ``PendingTimeout``.
    :param stall_warn_after: warn (``on_stall_warning``, else the logger) when nothing started
        or finished for this long while work is pending.
    :param stall_timeout: fail every pending work with ``StallTimeout`` when nothing started or
        finished for this long.
    :param recheck_interval: the longest a not-ready work waits before ``is_ready`` is asked
        again when nothing else happens (stretched for very large parked sets so rechecks
        stay under ~1 % of a core). Completions and ``poke()`` recheck sooner.
    :param priority_aging: seconds of waiting worth one full unit of priority (no starvation).
    :param keep_finished: how many finished work units ``get``/``list``/``wait`` still know
        (oldest forgotten first); None keeps all (memory grows without bound).
    :param max_threads: worker threads for sync handlers of services without ``concurrent``
        (a service with ``concurrent=M`` gets exactly M).
    :param checks: where sync checks run: ``"auto"`` (on the loop until one is slow, then in a
        worker thread), ``"inline"`` or ``"thread"``.
    :param check_timeout: seconds a check may take before it counts as a ``check_error``;
        it also bounds each async event callback (cancelled and logged when it runs over).
    :param seed: seeds the retry jitter, for reproducible runs.
    :param store: shared storage (e.g. :class:`runcue.RedisStore`) for the limits of services
        declared with ``shared=True`` and for claims on keyed work, across processes.
    :param lease_ttl: seconds a store lease or claim lives unless renewed (renewed every
        third of it while the work runs); a dead process frees its slots within this.
    :param max_pending: backpressure: while this many work units are pending
        (``stats().pending``: submitted, not yet running or finished), ``submit()`` waits,
        first come first served, ``submit_nowait()`` raises :class:`CueFull`, and
        ``submit_threadsafe()`` blocks its thread. None: never wait.
    :param deadlock_timeout: with ``max_pending``: a ``submit()`` that waited this long while
        every pending work waited for its inputs and nothing ran raises
        :class:`SubmitDeadlock`; None waits on (inputs made outside the cue).
    """

    def __init__(
        self,
        *,
        pending_warn_after: float | None = None,
        pending_timeout: float | None = None,
        stall_warn_after: float | None = None,
        stall_timeout: float | None = None,
        recheck_interval: float = 0.25,
        priority_aging: float = 300.0,
        keep_finished: int | None = 10_000,
        max_threads: int = 40,
        checks: CheckMode = "auto",
        check_timeout: float | None = 60.0,
        seed: int | None = None,
        store: Store | None = None,
        lease_ttl: float = 10.0,
        max_pending: int | None = None,
        deadlock_timeout: float | None = 5.0,
    ) -> None:
        if keep_finished is not None and (
            isinstance(keep_finished, bool)
            or not isinstance(keep_finished, int)
            or keep_finished < 0
        ):
            msg = f"keep_finished must be a whole number >= 0 or None, got {keep_finished!r}"
            raise ValueError(msg)
        if isinstance(max_threads, bool) or not isinstance(max_threads, int) or max_threads < 1:
            msg = f"max_threads must be a whole number >= 1, got {max_threads!r}"
            raise ValueError(msg)
        self._tasks: dict[str, TaskSpec] = {}
        self._services: dict[str | None, Service] = {None: Service(None, clock=anyio.current_time)}
        self._hooks = Hooks()
        self._engine = Scheduler(
            services=self._services,
            hooks=self._hooks,
            checks=CheckRunner(
                self._hooks, mode=checks, timeout=check_seconds("check_timeout", check_timeout)
            ),
            pending_warn_after=check_seconds("pending_warn_after", pending_warn_after),
            pending_timeout=check_seconds("pending_timeout", pending_timeout),
            stall_warn_after=check_seconds("stall_warn_after", stall_warn_after),
            stall_timeout=check_seconds("stall_timeout", stall_timeout),
            recheck_interval=check_seconds(  # type: ignore[arg-type]
                "recheck_interval", recheck_interval, allow_none=False
            ),
            priority_aging=check_seconds(  # type: ignore[arg-type]
                "priority_aging", priority_aging, allow_none=False
            ),
            keep_finished=keep_finished,
            max_threads=max_threads,
            seed=seed,
        )
        if store is not None and not isinstance(store, Store):
            msg = f"store must implement the runcue Store protocol (e.g. RedisStore), got {store!r}"
            raise TypeError(msg)
        ttl = check_seconds("lease_ttl", lease_ttl, allow_none=False)
        self._engine.store = store
        if store is not None:
            self._engine.fleet = Fleet(store, clock=anyio.current_time)
            self._engine.fleet.ttl = ttl  # type: ignore[assignment]
        deadlock_after = check_seconds("deadlock_timeout", deadlock_timeout)
        if max_pending is not None:
            if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
                msg = f"max_pending must be a whole number >= 1 or None, got {max_pending!r}"
                raise ValueError(msg)
            self._engine.bound = PendingBound(max_pending, deadlock_after)
        self._id_prefix = os.urandom(3).hex()
        self._made = None
        self._found = None
        self._peek_every = DEADLINE_PEEK
        self._init_lifecycle()

    def _find(self, work_id: str) -> WorkUnit | None:
        """The work whose id is ``work_id`` ("<this cue's prefix>-<number>"), if kept."""
        if type(work_id) is not str:
            return None
        prefix, _, number = work_id.rpartition("-")
        if prefix != self._id_prefix or not (number.isascii() and number.isdigit()):
            return None
        if number[0] == "0":
            return None
        seq = int(number)
        engine = self._engine
        return engine.works.get(seq) or engine.finished.get(seq)

    async def get(self, work_id: str) -> WorkUnit | None:
        """The work unit with this id, or None (never submitted, or no longer kept)."""
        return self._find(work_id)

    async def list(
        self,
        *,
        state: WorkState | str | None = None,
        task: str | None = None,
        limit: int | None = 100,
    ) -> builtins.list[WorkUnit]:
        """Known work units, pending and running first, then finished, oldest first."""
        wanted = WorkState(state) if state is not None else None
        found: builtins.list[WorkUnit] = []
        for pool in (self._engine.works, self._engine.finished):
            for work in list(pool.values()):
                if wanted is not None and work.state is not wanted:
                    continue
                if task is not None and work.task != task:
                    continue
                found.append(work)
                if limit is not None and len(found) >= limit:
                    return found
        return found

    async def cancel(self, work_id: str) -> bool:
        """Cancel pending or running work. True if it was cancelled, False if it had finished.

        Running async handlers are cancelled through their cancel scope; a running sync
        handler cannot be interrupted: the work ends cancelled now, its thread runs on and
        keeps its concurrency slot until it returns, and its result is dropped.
        """
        work = self._find(work_id)
        if work is None:
            return False
        reason = f"work {work_id} ({work.task}) was cancelled"
        return await self._engine.outcomes.cancel(work, reason)

    async def wait(self, work_id: str) -> Any:
        """Wait until the work finishes; return its result (None when skipped).

        :raises: the handler's own exception when it failed, ``WorkCancelled`` when it was
            cancelled, ``PendingTimeout``/``StallTimeout`` when it timed out while pending,
            ``WorkNotFound`` for an unknown id.
        """
        work = self._find(work_id)
        if work is None:
            msg = f"no work with id {work_id!r} is known (never submitted, or no longer kept)"
            raise WorkNotFound(msg)
        await self._engine.wait_for(work)
        if work.state is WorkState.COMPLETED:
            return work.result
        if work.exception is not None:
            raise work.exception
        raise WorkCancelled(f"work {work_id} ({work.task}) was cancelled")

    async def join(self) -> None:
        """Wait until nothing is pending or running."""
        await self._engine.join()

    def poke(self) -> None:
        """Ask ``is_ready`` again for every waiting work now (an artifact changed outside)."""
        self._engine.poke()

    def subscribe(self, listener: Callable[[WorkEvent], object]) -> Callable[[], None]:
        """Call ``listener(event)`` for every :class:`WorkEvent`; returns an unsubscribe function.

        Any number of listeners may subscribe (the ``on_*`` callbacks hold one function each).
        Listeners run synchronously on the event loop and must be quick.
        """
        if not callable(listener):
            msg = f"subscribe() needs a callable taking one WorkEvent, got {listener!r}"
            raise TypeError(msg)
        return self._engine.reports.subscribe(listener)

    # ------------------------------------------------------------------ diagnosis

    def debug_blocked(self) -> builtins.list[dict[str, Any]]:
        """Every pending work with why it is not running.

        Each item is ``{"work", "reason", "details"}``; reasons: ``not_ready``,
        ``check_error``, ``service_full``, ``rate_limited``, ``paused``, ``threads_full``,
        ``retry_wait``, ``queued``, ``checking``, ``stopping`` (and with a store
        ``store_unreachable``, ``shared_limit``, ``claimed_elsewhere``). (``unknown_task``
        cannot occur: ``submit()`` rejects unknown tasks.)
        """
        return _diagnosis.debug_blocked(self._engine)

    def explain(self, work_id: str) -> str:
        """One sentence on where this work stands and, if pending, why it is not running."""
        return _diagnosis.explain(self._engine, self._find(work_id), work_id)

    def check_graph(self) -> GraphReport:
        """Look for stalls before they happen among pending work that declares its inputs:
        missing inputs that no pending or running work produces, and cycles of work waiting
        for each other's outputs. ``str(report)`` reads as sentences; ``report.ok``."""
        return check_graph(self._engine)

    # ------------------------------------------------------------------ plan and forecast

    async def plan(self) -> Plan:
        """What would run, and why, for every work submitted and not yet running -- without
        calling a handler, on a cue that runs or has not started (see :class:`runcue.Plan`).

        The checks are asked directly: nothing is parked, counted or logged, and a check that
        raises is reported in the plan. ``print(await cue.plan())`` lists the verdicts."""
        return await make_plan(self._engine)

    async def forecast(
        self,
        durations: Mapping[str, Duration] | None = None,
        *,
        default: Duration | None = None,
        callbacks: Literal["ask", "ignore"] = "ask",
        seed: int | None = 0,
    ) -> ForecastReport:
        """When would the submitted work finish, which service binds, how long does work
        wait? A copy of this cue -- its services, limits, tasks, checks and dependencies --
        runs with stand-in handlers on a virtual clock; no handler of yours is called.

        :param durations: seconds per task: a number, ``runcue.Uniform(low, high)``,
            ``runcue.Exponential(mean)`` or a function of a ``random.Random``. A task not
            named takes the mean of what this cue measured for it so far, else ``default``.
        :param callbacks: ``"ask"`` your ``is_ready``/``is_stale`` (they see the real world,
            which a forecast never changes), or ``"ignore"`` them (every work counts as ready
            and stale; declarations still apply).
        :param seed: seeds the distributions and retry jitter (None: a fresh draw each time).
        :raises ValueError: for a task that is not registered, a bad duration, or a task
            with pending work and no duration.
        :raises ImportError: without trio (``pip install 'runcue[trio]'``).
        """
        return await forecast(self, durations, default=default, callbacks=callbacks, seed=seed)

    def stats(self) -> CueStats:
        """A frozen snapshot of every counter (see :class:`CueStats`)."""
        return _diagnosis.stats(self._engine, running=self._state in (RUNNING, STOPPING))

    def limiter(self, service: str) -> anyio.CapacityLimiter:
        """The :class:`anyio.CapacityLimiter` that holds service ``service``'s concurrency.

        Code outside runcue may share the service's budget with the handlers: ``async with
        cue.limiter("openai"): await client.call()`` counts against ``concurrent=`` like a
        running handler (and waits, FIFO, while the service is full). Re-declaring the
        service sets its ``total_tokens``. It is the same object for the life of the cue (a
        run under another backend than the last makes a new one).

        :raises UnknownServiceError: for a service nobody declared.
        """
        found = self._services.get(service) if isinstance(service, str) else None
        if found is None:
            known = ", ".join(repr(s) for s in self._services if s is not None) or "none yet"
            msg = (
                f"Unknown service {service!r} (declared: {known}); declare it with"
                f" cue.service({service!r}, concurrent=...)"
            )
            raise UnknownServiceError(msg)
        return found.capacity()

    def __repr__(self) -> str:
        engine = self._engine
        return (
            f"<runcue.Cue {self._state}: {engine.pending} pending, {engine.running} running,"
            f" {len(self._tasks)} tasks, {len(self._services) - 1} services>"
        )
