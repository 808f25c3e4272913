"""Runners and attempts: the tasks that call handlers, and what one attempt does.

An admitted work reaches a runner in one of three ways: through its service's **dispatch
stream** (a memory object stream with no buffer) to an idle runner waiting on it; in a new
runner task when no runner waits; or, most often, taken by a runner that just finished an
attempt of the same service (:meth:`Dispatcher.take_next`), with no hop at all. A runner that
finds nothing to take waits on the stream (up to the service's ``concurrent`` runners, at
most ``MAX_IDLE``; no timer, so an idle cue costs no CPU). While one idle runner is being
woken, the next is woken by it (``Dispatcher.hand_on``), not by the scheduler: a burst that
needs no waiting wakes one or two of them, not all.

One cancel scope covers a runner's attempts until ``cancel()`` cancels the one running
(``work._scope``); the runner then leaves that scope and opens a fresh one.

An attempt re-checks its admission after every await between admission and the handler call
(and after the hand-over itself): the cue may have begun stopping, a ``RateLimited`` may have
paused the service. Then the handler is not called; the admission is taken back.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import _backend
from ._artifacts import Snapshot
from ._dispatch import WALK
from ._errors import HandlerTimeout, WorkCancelled
from ._hooks import logger
from ._queues import RUNNING
from ._reports import IN_REPORT, IN_RUNNER
from ._service import MAX_IDLE

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ._scheduler import Scheduler
    from ._service import Service
    from ._task import TaskSpec
    from ._work import WorkUnit

__all__ = ["MAX_IDLE", "Runners"]

_ATTEMPTS = tuple(f"attempt {n}" for n in range(16))  # the "started" event's details
RUNNER_NAME = "runcue runner"  # given to start_soon: naming a task from its function costs more


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


def _charge_actual(work: WorkUnit, spec: TaskSpec, result: Any) -> None:
    """The task's ``actual_cost(work, result)``, as if the handler had charged it."""
    assert spec.actual_cost is not None
    try:
        actual = spec.actual_cost(work, result)
        if actual:
            work._more().charged = None
            work.charge(**actual)
    except Exception:
        logger.exception(
            "runcue: the actual_cost function of task %r raised for %s; its estimate stands",
            spec.name,
            work,
        )


def _keep_declared(work: WorkUnit, service: Service) -> None:
    """Charges in dimensions the service's cost windows do not declare are dropped with a
    warning, before anything settles them (here or in the store): a settlement must not
    fail, or every limit's books stay open."""
    extra = work._extra
    cost = service.cost
    if extra is None or not extra.charged or cost is None:
        return
    charged = extra.charged
    dimensions = cost.limiter.dimensions
    unknown = [dimension for dimension in charged if dimension not in dimensions]
    if unknown:
        logger.warning(
            "runcue: %s charged %s, which %s does not declare (it declares %s); ignored",
            work,
            ", ".join(map(repr, unknown)),
            service.label,
            ", ".join(map(repr, dimensions)),
        )
        extra.charged = {d: amount for d, amount in charged.items() if d in dimensions} or None


class Runners:
    """The runner tasks of every service, and the attempts they run."""

    def __init__(self, engine: Scheduler) -> None:
        self.engine = engine
        self.scope: Callable[[], _backend.RunnerScope] = anyio.CancelScope
        self.threads: anyio.CapacityLimiter | None = None  # never blocks: gated by admission

    def bind(self) -> None:
        self.scope = _backend.runner_scope()
        self.threads = anyio.CapacityLimiter(math.inf)

    def launch(self, work: WorkUnit, service: Service) -> None:
        """Run an admitted work: on an idle runner of its service when one waits (one
        wake-up, a stream hop), else in a new runner task."""
        if service.idle_runners > service.handing:
            send = service.send
            assert send is not None
            send.send_nowait(work)
            service.handing += 1
            return
        tg = self.engine.tg
        assert tg is not None
        tg.start_soon(self.run, service, work, name=RUNNER_NAME)

    async def run(self, service: Service, first: WorkUnit) -> None:
        """A runner: attempts of one service, one after another, in this task."""
        IN_RUNNER.set(True)
        IN_REPORT.set(False)  # spawned from a callback's task, it runs handlers, not callbacks
        try:
            await self._run(service, first)
        except (KeyboardInterrupt, SystemExit) as exc:
            # Held here instead of raised through this task, where asyncio would let it out
            # of the event loop itself, past the code around ``async with`` / ``stop()``:
            # the cue stops, and leaving it raises this error there (on every backend).
            engine = self.engine
            if engine.fatal is None:
                engine.fatal = exc
            if engine.tg is not None:
                engine.tg.cancel_scope.cancel()

    async def _run(self, service: Service, first: WorkUnit) -> None:
        receive = service.receive
        assert receive is not None
        dispatch = self.engine.dispatch
        with receive.clone() as own:
            following: WorkUnit | None = first
            handed = True  # (the first work was handed over: its admission is asked again)
            while following is not None:
                scope = self.scope()
                held: _ThreadCall | None = None
                with scope:
                    while following is not None:
                        work = following
                        following = None
                        work._scope = scope
                        if work._cancel_requested:
                            scope.cancel()  # cancel() came before this runner started
                        held = await self.attempt(work, service, scope, handed)
                        if scope.cancel_called or held is not None:
                            break
                        following = dispatch.take_now(service)
                        handed = False  # taken right here: no await since its admission
                        if following is WALK:
                            following = await dispatch.take_next(service)
                        if following is None:
                            # Idle in this same scope: nothing can cancel it meanwhile
                            # (cancel() reaches a work's scope once it is handed over).
                            following = await self._idle(service, own)
                            handed = True
                if held is not None:
                    try:
                        assert held.done is not None
                        await held.done.wait()  # a thread that outlived its wait keeps its slot
                    finally:
                        service.abandoned -= 1
                        holds = work._holds
                        work._holds = None
                        holds[0].settle_held(holds, work, self.engine.clock())
                if following is None and (scope.cancel_called or held is not None):
                    following = await dispatch.take_next(service)
                if following is None:
                    following = await self._idle(service, own)
                handed = True

    async def _idle(
        self, service: Service, receive: MemoryObjectReceiveStream[WorkUnit]
    ) -> WorkUnit | None:
        """Wait as one of the service's idle runners; the work handed over, or None to end."""
        engine = self.engine
        concurrent = service.concurrent
        limit = MAX_IDLE if concurrent is None or concurrent > MAX_IDLE else concurrent
        if engine.closing or service.idle_runners >= limit:
            return None
        service.idle_runners += 1
        try:
            handed = await receive.receive()
        finally:
            service.idle_runners -= 1
        service.handing -= 1
        await engine.dispatch.hand_on(service)
        return handed

    # ------------------------------------------------------------------ one attempt

    async def attempt(
        self, work: WorkUnit, service: Service, scope: _backend.RunnerScope, handed: bool = True
    ) -> _ThreadCall | None:
        """One attempt, reported. Returns the thread call when its thread still runs (the
        caller then waits for it before the slots it holds go back). ``handed``: the work
        came through a hand-over (the stream, a new runner), so the world may have changed
        since its admission; a work the runner took itself was admitted a moment ago."""
        engine = self.engine
        spec: TaskSpec = work._task
        hooks = engine.hooks
        admission = service.admission
        call: _ThreadCall | None = None
        result: Any = None
        error: BaseException | None = None
        snapshot: Snapshot | None = None
        committed = False
        begun = engine.clock()
        if handed and (engine.closing or not admission.still(work._holds)):
            # Handed to this runner, then the cue began stopping, the service was paused
            # (RateLimited) or its limits lowered before the runner got to it: no call now.
            self.unadmit(work, service)
            return None
        reports = engine.reports
        if reports.listeners:
            attempt = work.attempt
            details = _ATTEMPTS[attempt] if attempt < len(_ATTEMPTS) else f"attempt {attempt}"
            reports.emit("started", work, details, now=begun)
        try:
            if work._cancel_requested:
                await anyio.lowlevel.checkpoint()  # cancelled before it started: no handler call
            on_start = hooks.on_start
            if on_start is not None:
                if "on_start" in reports.async_hooks:
                    await reports.report("on_start", on_start, work)
                    if engine.closing or not admission.still(work._holds):
                        self.unadmit(work, service)  # (the world changed while it was awaited)
                        return None
                else:
                    reports.call("on_start", on_start, work)
                begun = engine.clock()  # the handler's own time, after its on_start
            if work._outputs and spec.delete_on_error:
                snapshot = Snapshot(work._outputs)
            # The start counts from now, right before the handler is called.
            holds = work._holds
            news = holds[0].committers and holds[0].commit(holds, begun)
            if news and service.queue.live:
                engine.wake()
            committed = True
            if work._extra is not None:
                work._extra.charged = None  # (charges count per attempt)
            if not spec.is_async:
                call = _ThreadCall()
            guard = None if engine.fleet is None else engine.fleet.guard(work)
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
                return self._interrupted(work, service, scope, call, committed, exc)
            # A cancellation nobody here asked for (asyncio: the handler awaited something
            # that was cancelled elsewhere): the attempt failed, the cue goes on.
            error = exc
        now = engine.clock()
        duration = now - begun
        if error is None and spec.actual_cost is not None:
            _charge_actual(work, spec, result)
        if work._extra is not None:
            _keep_declared(work, service)
        still_running = call is not None and call.abandon()
        if still_running:
            service.abandoned += 1
        holds = work._holds
        admitted_by = holds[0]
        admitted_by.settle(holds, work, now, error, still_running=still_running)
        if not still_running:
            work._holds = None
        if admitted_by.awaiting:
            await admitted_by.settle_async(work, error)
        outcomes = engine.outcomes
        if work._outputs:
            outcomes.check_outputs(work, error, snapshot)
        if error is None and not work._cancel_requested:
            on_complete = hooks.on_complete
            if on_complete is None:
                outcomes.completed(work, service, result, duration, now)  # no await
                return call if still_running else None
            if "on_complete" not in reports.async_hooks:  # a sync callback: no coroutine
                outcomes.completed(work, service, result, duration, now)
                try:
                    on_complete(work, result, duration)
                except Exception:
                    logger.exception(
                        "runcue: the on_complete callback %r raised; the cue goes on", on_complete
                    )
                return call if still_running else None
        await outcomes.conclude(work, service, result, error, duration)
        return call if still_running else None

    async def _invoke(self, spec: TaskSpec, work: WorkUnit, call: _ThreadCall | None) -> Any:
        """Call the handler: an async one here, a sync one in a worker thread."""
        if call is None:
            return await spec.handler(work)
        return await anyio.to_thread.run_sync(
            call.run, spec.handler, work, abandon_on_cancel=True, limiter=self.threads
        )

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
                fleet = self.engine.fleet
                assert fleet is not None
                lost = fleet.lost(work, guard)
                if lost is not None:
                    error = lost
        return result, error

    def unadmit(self, work: WorkUnit, service: Service) -> None:
        """Take back an admission whose handler was not called: its holds go back, the start
        is not counted, and the work is pending again (cancelled, when the cue stops)."""
        engine = self.engine
        holds = work._holds
        holds[0].release(holds)
        work._holds = None
        engine.running -= 1
        service.running -= 1
        service.started -= 1
        work.started_at = None
        if engine.fleet is not None:
            engine.give_back_soon(work)
        now = engine.clock()
        if engine.outcomes.back_to_pending(work, now):
            engine.enqueue(work, now)
            if engine.reports.listeners:
                engine.reports.emit("waiting", work, "paused: the service paused before it ran")
            engine.wake()
        if engine.running <= 1:
            engine.reports.check_idle()

    def _interrupted(
        self,
        work: WorkUnit,
        service: Service,
        scope: _backend.RunnerScope,
        call: _ThreadCall | None,
        committed: bool,
        exc: BaseException,
    ) -> _ThreadCall:
        """An attempt ended by cancel(), the cue stopping, or a KeyboardInterrupt-like error:
        account for it synchronously, then re-raise -- unless it is this work's own cancel()
        while its thread still runs: then the runner absorbs the cancellation and waits for
        the thread before the slots it holds go back."""
        engine = self.engine
        holds = work._holds
        still_running = call is not None and call.abandon()
        keep_slot = still_running and work._cancel_requested and scope.cancel_called
        if not committed:
            holds[0].release(holds)  # cancelled before its handler started: no start
        else:
            if keep_slot:
                service.abandoned += 1
            _keep_declared(work, service)
            holds[0].settle(holds, work, engine.clock(), exc, still_running=keep_slot)
        if not keep_slot:
            work._holds = None
        if work._where == RUNNING:
            if work._cancel_requested or isinstance(exc, anyio.get_cancelled_exc_class()):
                reason = (
                    f"work {work.id} ({work.task}) was cancelled while it ran"
                    if work._cancel_requested
                    else "the cue stopped while it ran"
                )
                engine.outcomes.ended_by(work, service, WorkCancelled(reason))
            else:
                engine.outcomes.ended_by(work, service, exc)
        if keep_slot:
            assert call is not None
            return call
        raise exc
