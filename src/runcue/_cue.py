"""The Cue: the public face over the scheduler -- submission and queries here, declarations in
``_registry.py``, running, stopping and starting again in ``_lifecycle.py``."""

from __future__ import annotations

import builtins
import functools
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import anyio
import anyio.from_thread
import anyio.lowlevel

from . import _backend, _diagnosis
from ._artifacts import artifact_key, resolve
from ._backpressure import PendingBound
from ._checks import CheckMode, CheckRunner
from ._durations import Duration
from ._errors import (
    CueFull,
    CueStateError,
    UnknownServiceError,
    UnknownTaskError,
    WorkCancelled,
    WorkNotFound,
)
from ._events import WorkEvent
from ._fleet import Fleet
from ._forecast import ForecastReport, forecast
from ._graph import GraphReport, check_graph
from ._hooks import Hooks
from ._lifecycle import RUNNING, STOPPED, STOPPING, Lifecycle
from ._plan import Plan, make_plan
from ._registry import Registry, check_seconds
from ._scheduler import Scheduler
from ._service import Service
from ._stats import CueStats
from ._store import Store
from ._stream import DEFAULT_WINDOW, Inputs, WorkStream, open_stream
from ._task import TaskSpec
from ._work import WorkState, WorkUnit

__all__ = ["Cue"]

SUBMIT_SLICE = 0.002  # longest a burst of submit() calls holds the loop, in seconds
# ... where the loop does not say when its next timer is due (asyncio): a timer's task waits
# for the slice's end, so the slice is shorter.
BLIND_SLICE = 0.0005
DEADLINE_PEEK = 0.0001  # in a burst, how often at most submit() looks for a due timer
PEEK_SHARE = 20  # ...and at most one look per PEEK_SHARE times what a look costs


def _checked_priority(priority: object) -> float:
    if (
        isinstance(priority, bool)
        or not isinstance(priority, (int, float))
        or not (0.0 <= priority <= 1.0)
    ):
        msg = f"priority must be a number from 0.0 to 1.0 (higher runs first), got {priority!r}"
        raise ValueError(msg)
    return float(priority)


def _freeze_params(params: Mapping[str, Any]) -> Any:
    """The de-duplication key of params: flat hashable params take the fast path."""
    try:
        return frozenset(params.items())
    except TypeError:
        return _freeze(params)


def _freeze(value: Any) -> Any:
    """A hashable stand-in for params, equal exactly when the params compare equal."""
    if isinstance(value, Mapping):
        return frozenset((key, _freeze(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return (type(value) is list, tuple(_freeze(item) for item in value))
    if isinstance(value, (set, frozenset)):
        return frozenset(_freeze(item) for item in value)
    try:
        hash(value)
    except TypeError:
        return ("unhashable", type(value).__qualname__, id(value))
    return value


def _share_and_cost(work: WorkUnit, spec: TaskSpec, service: Service, tenant: Any) -> None:
    """The work's tenant and cost estimate, for the few works that have them (submit())."""
    tenants = service.tenants
    if tenant is None and tenants is not None and tenants.key is not None:
        try:
            tenant = tenants.key(work)
        except Exception as exc:
            msg = f"{service.label}: its Tenants(key=...) raised for {work.params!r}: {exc!r}"
            raise TypeError(msg) from exc
    if tenant is not None:
        try:
            hash(tenant)
        except TypeError:
            msg = f"a tenant must be hashable (a name, a number), got {tenant!r}"
            raise TypeError(msg) from None
        work._more().tenant = tenant
        if tenants is None:
            service.use_tenants()  # the first tenant: the queue goes round robin from now on
    cost = spec.cost
    if cost is not None and service.cost is not None:
        if callable(cost):
            try:
                cost = cost(work)
            except Exception as exc:
                msg = f"task {spec.name!r}: its cost= function raised for {work.params!r}: {exc!r}"
                raise TypeError(msg) from exc
        work._more().cost = service.cost.limiter.check(cost)


class Cue(Registry, Lifecycle):
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
        self._made: WorkUnit | None = None  # the last submit()'s new work unit ...
        self._found: WorkUnit | None = None  # ... and the one it returned (a twin, or it)
        self._peek_every = DEADLINE_PEEK
        self._init_lifecycle()

    def _new_run(self) -> None:
        # Submission bursts (see submit) start afresh with every run.
        self._last_submit = -math.inf  # loop time of the last submit()
        self._burst_from = -math.inf
        self._yield_at = -math.inf  # loop time of the burst's next look at the loop

    # ------------------------------------------------------------------ work

    async def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: float | None = None,
        key: Any = None,
        tenant: Any = None,
    ) -> str:
        """Queue work for ``task``; returns its id.

        ``tenant``: whose share of the service this work runs in (any hashable value): the
        service's waiting work is then served round robin across tenants (see ``Tenants``).

        Every call creates a new work unit with its own id, unless de-duplication was asked
        for: work with the same ``key`` as pending or running work of the same task, or, for
        a task declared ``dedup=True``, with equal params, is not queued twice: the existing
        id is returned.

        With ``max_pending``, a call waits while that many work units are pending (calls that
        wait go in the order they came; de-duplication into live work never waits). Without
        it, a lone call never waits. In a long burst of calls with no other ``await`` in between,
        one call in every ~2 ms first lets other tasks run (a checkpoint, where a cancelled
        caller gets its cancellation and nothing is submitted), so started work runs while the
        rest is still being submitted. A burst also lets the tasks of the loop's due timers
        run (within ~0.1 ms of the timer; shielded, so cancellation still comes only at a
        slice's end), where the loop tells when its next timer is due publicly (trio).

        :raises UnknownTaskError: for a task nobody registered.
        :raises TypeError: when params is not a mapping.
        :raises CostTooLargeError: (a ``ValueError``) when the task's cost estimate for this
            work is above a whole cost window of its service: it could never start.
        :raises CueStateError: after ``stop()`` (also when the cue stops while it waits).
        :raises SubmitDeadlock: waiting for room under ``max_pending`` could never end.
        """
        now: float | None = None
        if self._state == RUNNING:
            # A long burst of submissions lets started work (and every other task) run every
            # SUBMIT_SLICE seconds, so the first works begin while the rest are still being
            # submitted; where the loop tells when its next timer is due (_backend.next_timer_in),
            # the tasks of due timers run too (a handler's sleep, a rate slot, a timeout). A
            # submission after a pause starts a new burst and never waits.
            engine = self._engine
            now = engine.clock()
            burst = SUBMIT_SLICE if engine.next_timer_in is not None else BLIND_SLICE
            if now - self._last_submit > burst:
                self._burst_from = now
                self._yield_at = now + self._peek_every
            elif now >= self._yield_at:
                timer_in = engine.next_timer_in
                wait = math.inf if timer_in is None else self._peek(timer_in)
                if now - self._burst_from > burst:
                    await anyio.lowlevel.checkpoint()  # where a cancelled caller learns it
                    if wait <= 0:
                        await _backend.let_due_timers_run()
                    self._burst_from = now = engine.clock()
                    if timer_in is not None:
                        wait = self._peek(timer_in)
                elif wait <= 0 and timer_in is not None:
                    # Let the due timer's task run; cancellation still waits for the slice.
                    await _backend.let_due_timers_run()
                    now = engine.clock()
                    wait = self._peek(timer_in)
                self._yield_at = min(self._burst_from + burst, now + max(wait, self._peek_every))
            self._last_submit = now
        work, dedup_key = self._new_work(task, params, priority, key, tenant)
        found = self._engine.submit(work, dedup_key, now)
        if found is None:  # max_pending work units are pending
            found = await self._submit_in_turn(work, dedup_key)
        self._made, self._found = work, found  # (for cue.map's stream, right after this call)
        return found.id

    def submit_nowait(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: float | None = None,
        key: Any = None,
        tenant: Any = None,
    ) -> str:
        """``submit()`` that never waits: with ``max_pending`` reached it raises instead.
        Call it on the event loop's thread (from another: ``submit_threadsafe()``).

        :raises CueFull: ``max_pending`` work units are pending (or others wait for room).
        :raises: what ``submit()`` raises for bad input or a stopped cue.
        """
        work, dedup_key = self._new_work(task, params, priority, key, tenant)
        found = self._engine.submit(work, dedup_key)
        if found is None:
            bound = self._engine.bound
            assert bound is not None
            msg = (
                f"the cue is full: {self._engine.pending} work units are pending"
                f" (max_pending={bound.limit}) or waiting to be submitted; 'await"
                " cue.submit(...)' waits for room instead, or raise Cue(max_pending=...)"
            )
            raise CueFull(msg)
        return found.id

    async def _submit_in_turn(self, work: WorkUnit, dedup_key: Any) -> WorkUnit:
        """Wait for room under ``max_pending`` (first come, first served), then submit."""
        engine = self._engine
        bound = engine.bound
        assert bound is not None
        if self._state != RUNNING and not self._launching:
            msg = (
                f"max_pending={bound.limit} work units are pending and the cue has not started,"
                " so nothing can make room: start the cue ('async with', start() or"
                " tg.start(cue.run)) before submitting more"
            )
            raise CueFull(msg)
        granted = False
        try:
            while not granted:  # (not granted: woken because the cue stops)
                granted = await bound.wait(engine)
                if self._state in (STOPPING, STOPPED):
                    raise self._stopped_error()
            work.created_at = time.time()
            found = engine.submit(work, dedup_key, bounded=False)
            assert found is not None
            return found
        finally:
            if granted:
                bound.room_made(engine.pending, at_once=True)  # a place left unused goes on

    def _stopped_error(self) -> CueStateError:
        return CueStateError(
            f"cannot submit to a {self._state} Cue; submit inside 'async with Cue() as cue:'"
            " or between cue.start() and cue.stop() (a stopped cue starts again)"
        )

    def _unknown_task(self, task: str) -> UnknownTaskError:
        known = ", ".join(repr(name) for name in self._tasks) or "none"
        return UnknownTaskError(
            f"Unknown task {task!r} (registered: {known}); register it with @cue.task({task!r})"
        )

    def _new_work(
        self,
        task: str,
        params: Mapping[str, Any] | None,
        priority: float | None,
        key: Any,
        tenant: Any,
    ) -> tuple[WorkUnit, Any]:
        """A validated work unit and its de-duplication key (None: none asked for)."""
        if self._state in (STOPPING, STOPPED):
            raise self._stopped_error()
        spec = self._tasks.get(task)
        if spec is None:
            raise self._unknown_task(task)
        if params is None:
            params = {}
        elif type(params) is not dict and not isinstance(params, Mapping):
            msg = (
                f"params must be a mapping such as a dict, got {type(params).__name__}: {params!r}"
            )
            raise TypeError(msg)
        else:
            params = dict(params)
        priority = 0.5 if priority is None else _checked_priority(priority)
        dedup_key: Any = None  # without key= or a dedup task, no index is kept at all
        if key is not None:
            dedup_key = ("key", task, key)
        elif spec.dedup:
            dedup_key = (task, _freeze_params(params))
        engine = self._engine
        engine.seq += 1
        work = WorkUnit(
            self._id_prefix,  # its id is "<prefix>-<number>", made when asked (work.id)
            task,
            params,
            priority=priority,
            key=key,
            created_at=time.time(),
        )
        work._seq = engine.seq
        work._task = spec
        service = self._services[spec.service]
        if tenant is not None or spec.cost is not None or service.tenants is not None:
            _share_and_cost(work, spec, service, tenant)
        if spec.declares:
            try:
                work._inputs = resolve(spec.inputs, work)
                work._outputs = resolve(spec.outputs, work)
                for item in (*work._inputs, *work._outputs):
                    hash(artifact_key(item))  # an artifact must be usable as a graph node
            except Exception as exc:
                msg = f"task {task!r}: its inputs/outputs could not be read for {params!r}: {exc}"
                raise TypeError(msg) from exc
        return work, dedup_key

    def _peek(self, timer_in: Callable[[], float]) -> float:
        """Seconds until the loop's next timer; spaces the next look by what this one cost
        (trio counts the tasks waiting on sockets in the same call)."""
        begun = time.perf_counter()
        wait = timer_in()
        self._peek_every = max(DEADLINE_PEEK, PEEK_SHARE * (time.perf_counter() - begun))
        return wait

    def submit_threadsafe(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: float | None = None,
        key: Any = None,
        tenant: Any = None,
    ) -> str:
        """``submit()`` from another thread (a sync handler, a GUI or a plain thread).

        Blocks that thread until the cue's event loop took the work; returns its id. Raises
        what ``submit()`` raises, and ``CueStateError`` when the cue is not running. Do not
        call it from the event loop's own thread: use ``await cue.submit()`` there.
        """
        token = self._token
        if token is None or self._state != RUNNING:
            msg = (
                f"submit_threadsafe() needs a running cue, and this one is {self._state}; start"
                " it first ('async with', start() or tg.start(cue.run))"
            )
            raise CueStateError(msg)
        if _backend.current_backend() is not None:
            msg = (
                "submit_threadsafe() was called from the event loop's own thread, where it would"
                " wait for itself forever; use 'await cue.submit(...)' there"
            )
            raise CueStateError(msg)
        return anyio.from_thread.run(
            functools.partial(self.submit, task, params, priority=priority, key=key, tenant=tenant),
            token=token,
        )

    def map(
        self,
        task: str,
        inputs: Inputs,
        *,
        window: int | None = None,
        ordered: bool = False,
        priority: float | None = None,
    ) -> WorkStream:
        """Submit ``task`` once per params mapping of ``inputs`` (an iterable or an async
        iterable, read lazily) and yield each work once it has finished::

            async with cue.map("ocr", ({"page": p} for p in pages)) as results:
                async for work in results:
                    ...  # work.state: completed, failed (work.exception) or cancelled

        At most ``window`` of its works are open at once -- submitted and not yet yielded --
        so memory stays bounded however long the inputs and however slow the consumer;
        ``submit()``'s own backpressure (``max_pending``) applies as well.

        :param window: works open at once; default: the cue's ``max_pending``, else 1,000.
        :param ordered: yield in input order (a slow work holds back those after it, and at
            most ``window`` wait behind it), instead of as they finish.
        :param priority: of every work, as in ``submit()``.
        :raises UnknownTaskError: for a task nobody registered (here, not when iterated).
        :raises CueStateError: when iterated while the cue is not running.

        Failed and cancelled works are yielded, not raised; leaving ``async with`` cancels
        the works not yet yielded. See :class:`WorkStream`.
        """
        if task not in self._tasks:
            raise self._unknown_task(task)
        if isinstance(inputs, (Mapping, str, bytes)) or not (
            hasattr(inputs, "__iter__") or hasattr(inputs, "__aiter__")
        ):
            msg = (
                "cue.map() needs an iterable (or async iterable) of params mappings, such as"
                f" [{{'page': 1}}, {{'page': 2}}], got {type(inputs).__name__}: {inputs!r:.80}"
            )
            raise TypeError(msg)
        if window is None:
            bound = self._engine.bound
            window = DEFAULT_WINDOW if bound is None else bound.limit
        elif isinstance(window, bool) or not isinstance(window, int) or window < 1:
            msg = f"window must be a whole number >= 1 (works open at once), got {window!r}"
            raise ValueError(msg)
        if priority is not None:
            _checked_priority(priority)
        return open_stream(
            self, task, inputs, window=window, ordered=bool(ordered), priority=priority
        )

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
        return await self._engine.cancel(work, f"work {work_id} ({work.task}) was cancelled")

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
