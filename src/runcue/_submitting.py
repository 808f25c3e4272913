"""Submission: how work enters a cue -- ``submit()`` (with its bursts and its wait under
``max_pending``), ``submit_nowait()``, ``submit_threadsafe()`` and ``cue.map()`` -- and the
checks every new work unit passes first (a known task, params a mapping, a priority, the
tenant and cost estimate, declared artifacts). The base of :class:`runcue.Cue` that turns a
call into a :class:`WorkUnit` handed to the scheduler; everything after that is the engine's.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.from_thread
import anyio.lowlevel

from . import _backend
from ._artifacts import artifact_key, resolve
from ._errors import CueFull, CueStateError, UnknownTaskError
from ._lifecycle import RUNNING, STOPPED, STOPPING
from ._stream import DEFAULT_WINDOW, Inputs, WorkStream, open_stream
from ._work import WorkUnit

if TYPE_CHECKING:
    from ._cue import Cue
    from ._scheduler import Scheduler
    from ._service import Service
    from ._task import TaskSpec

__all__ = ["Submitting"]

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


class Submitting:
    """Submission, the base of :class:`runcue.Cue` (see the module docstring)."""

    _engine: Scheduler
    _tasks: dict[str, TaskSpec]
    _services: dict[str | None, Service]
    _id_prefix: str
    _state: str
    _launching: bool
    _token: anyio.lowlevel.EventLoopToken | None
    _made: WorkUnit | None  # the last submit()'s new work unit ...
    _found: WorkUnit | None  # ... and the one it returned (a twin, or it)
    _peek_every: float

    def _new_run(self) -> None:
        # Submission bursts (see submit) start afresh with every run.
        self._last_submit = -math.inf  # loop time of the last submit()
        self._burst_from = -math.inf
        self._yield_at = -math.inf  # loop time of the burst's next look at the loop

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
        waiter = None
        try:
            while waiter is None:  # (None: woken because the cue stops)
                waiter = await bound.wait(engine)
                if self._state in (STOPPING, STOPPED):
                    raise self._stopped_error()
            work.created_at = time.time()
            # Submitted as of its grant, the time shared by every caller let in at that
            # moment: with its turn, the works queue in the order the callers came.
            found = engine.submit(work, dedup_key, waiter.granted_at, bounded=False)
            assert found is not None
            return found
        finally:
            if waiter is not None:
                bound.submitted(waiter)
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
            try:
                hash(key)
            except TypeError:
                msg = f"key must be hashable (a string, a number, a tuple), got {key!r}"
                raise TypeError(msg) from None
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
            cast("Cue", self), task, inputs, window=window, ordered=bool(ordered), priority=priority
        )
