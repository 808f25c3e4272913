"""The Cue: registration, lifecycle, submission and queries, over the scheduler core."""

from __future__ import annotations

import builtins
import functools
import math
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from anyio.abc import TaskGroup

from . import _backend, _diagnosis
from ._artifacts import ArtifactSpec, artifact_key, resolve
from ._checks import CheckMode, CheckRunner
from ._errors import (
    CueStateError,
    UnknownServiceError,
    UnknownTaskError,
    WorkCancelled,
    WorkNotFound,
)
from ._events import WorkEvent
from ._fleet import Fleet
from ._graph import GraphReport, check_graph
from ._hooks import Hooks
from ._reports import IN_RUNNER
from ._scheduler import Scheduler
from ._service import Service
from ._stats import CueStats
from ._store import Store
from ._task import Backoff, RetryOn, TaskSpec, is_async_callable
from ._work import WorkState, WorkUnit

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

__all__ = ["Cue"]

F = TypeVar("F", bound=Callable[..., Any])

_NEW, _RUNNING, _STOPPING, _STOPPED = "new", "running", "stopping", "stopped"
SUBMIT_SLICE = 0.002  # longest a burst of submit() calls holds the loop, in seconds
# ... where the loop does not say when its next timer is due (asyncio): a timer's task waits
# for the slice's end, so the slice is shorter.
BLIND_SLICE = 0.0005
DEADLINE_PEEK = 0.0001  # in a burst, how often at most submit() looks for a due timer
PEEK_SHARE = 20  # ...and at most one look per PEEK_SHARE times what a look costs


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


def _check_seconds(name: str, value: float | None, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        msg = f"{name} must be a number of seconds > 0 (or None to turn it off), got {value!r}"
        raise ValueError(msg)
    return float(value)


class Cue:
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
                self._hooks, mode=checks, timeout=_check_seconds("check_timeout", check_timeout)
            ),
            pending_warn_after=_check_seconds("pending_warn_after", pending_warn_after),
            pending_timeout=_check_seconds("pending_timeout", pending_timeout),
            stall_warn_after=_check_seconds("stall_warn_after", stall_warn_after),
            stall_timeout=_check_seconds("stall_timeout", stall_timeout),
            recheck_interval=_check_seconds(  # type: ignore[arg-type]
                "recheck_interval", recheck_interval, allow_none=False
            ),
            priority_aging=_check_seconds(  # type: ignore[arg-type]
                "priority_aging", priority_aging, allow_none=False
            ),
            keep_finished=keep_finished,
            max_threads=max_threads,
            seed=seed,
        )
        if store is not None and not isinstance(store, Store):
            msg = f"store must implement the runcue Store protocol (e.g. RedisStore), got {store!r}"
            raise TypeError(msg)
        ttl = _check_seconds("lease_ttl", lease_ttl, allow_none=False)
        self._engine.store = store
        if store is not None:
            self._engine.fleet = Fleet(store, clock=anyio.current_time)
            self._engine.fleet.ttl = ttl  # type: ignore[assignment]
        self._state = _NEW
        self._mode: Literal["context", "run", "background"] | None = None
        self._own_entry = False  # run()/start() enter the cue themselves, their run prepared
        self._launching = False  # start() spawned the background run; it has not entered yet
        self._tg: TaskGroup | None = None
        self._loop_scope: anyio.CancelScope | None = None
        self._stop_requested = anyio.Event()
        self._closed = anyio.Event()
        self._entered = anyio.Event()
        self._background_error: BaseException | None = None
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._id_prefix = os.urandom(3).hex()
        self._ids = 0
        self._last_submit = -math.inf  # loop time of the last submit() (bursts, see submit)
        self._burst_from = -math.inf
        self._yield_at = -math.inf  # loop time of the burst's next look at the loop (submit)
        self._peek_every = DEADLINE_PEEK

    # ------------------------------------------------------------------ registration

    def service(
        self,
        name: str,
        *,
        rate: str | None = None,
        concurrent: int | None = None,
        shared: bool = False,
    ) -> None:
        """Declare a service, or change its limits (also while running).

        :param rate: ``"N/period"``, e.g. ``"60/min"``, ``"100/15min"``, or several windows
            joined by ``;`` (``"60/min;10/10s"``): at most N handler starts in any window.
        :param concurrent: at most this many handlers of the service run at once.
        :param shared: keep these limits in the cue's ``store``, shared by every process
            that uses the same store and namespace.
        :raises ValueError: (``InvalidRateError``) for a rate that does not parse, or a bad
            ``concurrent``.
        """
        if not isinstance(name, str) or not name:
            msg = f"a service name must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        if shared and self._engine.store is None:
            msg = (
                f"service {name!r}: shared=True keeps the limits in a store; create the cue"
                " with runcue.Cue(store=runcue.RedisStore(...))"
            )
            raise ValueError(msg)
        existing = self._services.get(name)
        service = existing or Service(name, clock=anyio.current_time)
        service.configure(rate=rate, concurrent=concurrent)  # validates before anything changes
        service.shared = shared
        if existing is None:
            self._services[name] = service
        if self._state in (_RUNNING, _STOPPING):
            self._engine.add_service(service)  # its admission is rebuilt, live

    def task(
        self,
        name: str,
        *,
        uses: str | None = None,
        retry: int = 1,
        backoff: Backoff | float | None = None,
        retry_on: RetryOn = Exception,
        timeout: float | None = None,
        inputs: ArtifactSpec | None = None,
        outputs: ArtifactSpec | None = None,
        max_age: float | None = None,
        delete_on_error: bool = True,
        dedup: bool = False,
    ) -> Callable[[F], F]:
        """Register the decorated function (sync or async) as the handler of task ``name``.

        :param uses: the service whose limits the handler runs under.
        :param retry: attempts in all, the first included (1 = no retry).
        :param backoff: a :class:`Backoff`, or a number used as its ``base``.
        :param retry_on: exception types, or a predicate on the exception, that deserve a retry.
        :param timeout: seconds before an attempt fails with ``HandlerTimeout``.
        :param inputs: declared input artifacts: a params key, or ``work -> iterable`` of paths
            or artifacts. The work is ready when all exist.
        :param outputs: declared outputs, likewise. The work is stale when one is missing or
            older than an input (or than ``max_age`` seconds).
        :param delete_on_error: remove declared outputs a failed attempt created or changed.
        :param dedup: treat a submit whose params equal those of pending or running work of
            this task as that same work (its id is returned, nothing new is queued). Off by
            default: every ``submit()`` is a new work unit. ``key=`` on ``submit()`` always
            de-duplicates, with or without this.
        """
        if not isinstance(name, str) or not name:
            msg = f"a task name must be a non-empty string, got {name!r}"
            raise ValueError(msg)
        if name in self._tasks:
            msg = f"task {name!r} is already registered; give the new handler another name"
            raise ValueError(msg)
        if uses is not None and uses not in self._services:
            known = ", ".join(repr(s) for s in self._services if s is not None) or "none yet"
            msg = (
                f"Unknown service {uses!r}: task {name!r} uses it, but it is not declared"
                f" (declared: {known}); call cue.service({uses!r}, ...) before registering the task"
            )
            raise UnknownServiceError(msg)
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
            msg = (
                f"task {name!r}: retry counts attempts (the first included) and must be a whole"
                f" number >= 1, got {retry!r}"
            )
            raise ValueError(msg)
        if backoff is None:
            policy = Backoff()
        elif isinstance(backoff, Backoff):
            policy = backoff
        elif isinstance(backoff, (int, float)) and not isinstance(backoff, bool):
            policy = Backoff(base=float(backoff))
        else:
            msg = f"task {name!r}: backoff must be a runcue.Backoff or a number, got {backoff!r}"
            raise TypeError(msg)
        if not isinstance(dedup, bool):
            msg = f"task {name!r}: dedup must be True or False, got {dedup!r}"
            raise TypeError(msg)
        if not (callable(retry_on) or isinstance(retry_on, tuple)):
            msg = (
                f"task {name!r}: retry_on must be exception types or a predicate, got {retry_on!r}"
            )
            raise TypeError(msg)
        limit = _check_seconds(f"task {name!r}: timeout", timeout)
        age = _check_seconds(f"task {name!r}: max_age", max_age)
        for label, spec in (("inputs", inputs), ("outputs", outputs)):
            if spec is not None and not (isinstance(spec, str) or callable(spec)):
                msg = (
                    f"task {name!r}: {label} must be a params key (str) or a function of the"
                    f" work returning paths or artifacts, got {spec!r}"
                )
                raise TypeError(msg)

        def register(handler: F) -> F:
            if not callable(handler):
                msg = f"task {name!r}: the handler must be callable, got {handler!r}"
                raise TypeError(msg)
            self._tasks[name] = TaskSpec(
                name=name,
                handler=handler,
                is_async=is_async_callable(handler),
                service=uses,
                retry=retry,
                backoff=policy,
                retry_on=retry_on,
                timeout=limit,
                inputs=inputs,
                outputs=outputs,
                max_age=age,
                delete_on_error=delete_on_error,
                dedup=dedup,
            )
            if inputs is not None or outputs is not None:
                self._engine.checks.declarations = True
                self._engine.checks.refresh()
            return handler

        return register

    def get_task(self, name: str) -> TaskSpec | None:
        """The registration of task ``name``, or None."""
        return self._tasks.get(name)

    def _hook(self, slot: str, func: F) -> F:
        if not callable(func):
            msg = f"@cue.{slot} must decorate a function, got {func!r}"
            raise TypeError(msg)
        setattr(self._hooks, slot, func)
        self._engine.checks.refresh()
        self._engine.reports.refresh()
        return func

    def is_ready(self, func: F) -> F:
        """Register ``is_ready(work) -> bool``: are the inputs there? False keeps it pending."""
        return self._hook("is_ready", func)

    def is_stale(self, func: F) -> F:
        """Register ``is_stale(work) -> bool``: does it need to run? False skips it."""
        return self._hook("is_stale", func)

    def priority(self, func: F) -> F:
        """Register ``priority(ctx) -> float`` in 0.0..1.0, higher first (see PriorityContext).

        It must be a plain (sync) function: it is asked while the scheduler orders its queue.
        """
        if is_async_callable(func):
            msg = "@cue.priority must be a plain function (not async): it orders the queue inline"
            raise TypeError(msg)
        return self._hook("priority", func)

    def on_start(self, func: F) -> F:
        """Register ``on_start(work)``, called as each attempt starts."""
        return self._hook("on_start", func)

    def on_complete(self, func: F) -> F:
        """Register ``on_complete(work, result, duration)``."""
        return self._hook("on_complete", func)

    def on_failure(self, func: F) -> F:
        """Register ``on_failure(work, error)``, called once, after the last attempt."""
        return self._hook("on_failure", func)

    def on_skip(self, func: F) -> F:
        """Register ``on_skip(work)``, called when ``is_stale`` said the output is valid."""
        return self._hook("on_skip", func)

    def on_retry(self, func: F) -> F:
        """Register ``on_retry(work, error, delay)``, called before each retry."""
        return self._hook("on_retry", func)

    def on_cancel(self, func: F) -> F:
        """Register ``on_cancel(work)``, called when work ends cancelled."""
        return self._hook("on_cancel", func)

    def on_pending_warning(self, func: F) -> F:
        """Register ``on_pending_warning(work, seconds)`` (see ``pending_warn_after``)."""
        return self._hook("on_pending_warning", func)

    def on_stall_warning(self, func: F) -> F:
        """Register ``on_stall_warning(seconds_since_progress, pending_count)``."""
        return self._hook("on_stall_warning", func)

    # ------------------------------------------------------------------ lifecycle

    def _refuse_if_running(self, how: str) -> None:
        if self._state in (_RUNNING, _STOPPING) or self._launching:
            state = "starting" if self._launching else self._state
            msg = (
                f"cannot {how}: this Cue is {state}; a Cue runs one run at a time -- stop it"
                " first (leave 'async with', or 'await cue.stop()'), or create another"
                " runcue.Cue() to run beside it"
            )
            raise CueStateError(msg)

    def _prepare_run(self, mode: Literal["context", "run", "background"]) -> None:
        """Fresh per-run state: a stopped cue starts again with the same registrations."""
        self._mode = mode
        self._state = _NEW  # submissions wait for the run, as before a first start
        self._stop_requested = anyio.Event()
        self._closed = anyio.Event()
        self._entered = anyio.Event()
        self._background_error = None
        self._last_submit = self._burst_from = self._yield_at = -math.inf

    async def __aenter__(self) -> Cue:
        own, self._own_entry = self._own_entry, False
        if not own:
            self._refuse_if_running("enter it with 'async with'")
            self._prepare_run("context")
        self._launching = False
        self._state = _RUNNING
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        self._token = anyio.lowlevel.current_token()
        try:
            self._engine.bind(tg)
            fleet = self._engine.fleet
            if fleet is not None:
                owner = f"{socket.gethostname()}:{os.getpid()}:{self._id_prefix}"
                fleet.bind(self._engine.clock, owner)
                tg.start_soon(fleet.keep)
            await tg.start(self._run_loop)
        except BaseException:
            tg.cancel_scope.cancel()
            try:
                await tg.__aexit__(None, None, None)
            finally:
                self._engine.close()
                self._state = _STOPPED
                self._closed.set()
            raise
        self._entered.set()
        return self

    async def _run_loop(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self._loop_scope = scope
            await self._engine.loop(task_status=task_status)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._tg is not None
        try:
            if exc_type is None and self._state == _RUNNING:
                await self._engine.join()
                await self._shutdown(None)
        finally:
            if self._state == _RUNNING:
                # Leaving by an exception (or cancelled while joining): cancel everything.
                self._state = _STOPPING
                self._engine.closing = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self._engine.cancel_all_pending(
                        "the cue was left by an exception before this work ran"
                    )
            self._tg.cancel_scope.cancel()
            try:
                await self._tg.__aexit__(None, None, None)
            except BaseExceptionGroup as group:
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise
            finally:
                self._engine.stopped_at = self._engine.clock()
                self._engine.close()
                self._state = _STOPPED
                self._closed.set()
        return False

    def __enter__(self) -> None:
        msg = "a Cue is an async context manager: use 'async with runcue.Cue() as cue:'"
        raise CueStateError(msg)

    def __exit__(self, *args: object) -> None:  # pragma: no cover - __enter__ always raises
        return None

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run under the caller's task group (``await tg.start(cue.run)``) until ``stop()``."""
        self._refuse_if_running("run it")
        self._prepare_run("run")
        await self._serve(task_status)

    async def _serve(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        self._own_entry = True
        async with self:
            task_status.started()
            await self._stop_requested.wait()

    def start(self) -> None:
        """Start the cue in the background from async code (asyncio or trio); see ``stop()``.

        Calling it again while that background run goes on does nothing; a stopped cue
        starts again (its registrations, limits' history and finished work carry over).
        """
        if self._mode == "background" and (self._launching or self._state == _RUNNING):
            return
        self._refuse_if_running("start it")
        if _backend.current_backend() is None:
            msg = (
                "cue.start() needs a running event loop: call it from async code (asyncio or"
                " trio), or use 'async with runcue.Cue() as cue:'"
            )
            raise CueStateError(msg)
        self._prepare_run("background")
        self._launching = True
        _backend.spawn_background(self._background)

    async def _background(self) -> None:
        try:
            await self._serve(anyio.TASK_STATUS_IGNORED)
        except BaseException as exc:
            self._launching = self._own_entry = False
            self._background_error = exc
            self._entered.set()
            self._closed.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop: start nothing new, wait for running work, then close.

        Work still pending ends ``cancelled`` (``on_cancel`` fires, ``wait()`` raises
        ``WorkCancelled``, and the ``runcue`` logger warns with the count). Running work gets
        ``timeout`` seconds (None: as long as it takes), then is cancelled.
        """
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0
        ):
            msg = f"timeout must be a number of seconds >= 0 (or None: no limit), got {timeout!r}"
            raise ValueError(msg)
        limit = None if timeout is None else float(timeout)
        if self._state in (_NEW, _STOPPED) and not self._launching:
            self._state = _STOPPED
            self._engine.closing = True
            await self._engine.cancel_all_pending("the cue was stopped before it started")
            self._closed.set()
            return
        mode = self._mode
        if self._launching:
            await self._entered.wait()
        if self._state == _RUNNING:
            await self._shutdown(limit)
        self._stop_requested.set()
        if mode in ("background", "run") and not IN_RUNNER.get():
            await self._closed.wait()  # (a handler calling stop() must not wait for itself)
        error, self._background_error = self._background_error, None
        if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
            raise error

    async def _shutdown(self, timeout: float | None) -> None:
        self._state = _STOPPING
        engine = self._engine
        engine.closing = True
        engine.wake()
        if timeout == 0:
            engine.cancel_running()  # told first: on_cancel callbacks of pending work wait
        await engine.cancel_all_pending("the cue stopped before this work ran")
        if timeout is None:
            await engine.wait_no_running()
        else:
            with anyio.move_on_after(timeout) as patience:
                await engine.wait_no_running()
            if patience.cancelled_caught:
                engine.cancel_running()
                # Cancelled handlers end at once; callbacks still awaited end with the task
                # group, which the caller closes next.
                await engine.wait_no_running(reports=False)
        if self._loop_scope is not None:
            self._loop_scope.cancel()

    # ------------------------------------------------------------------ work

    async def submit(
        self,
        task: str,
        params: Mapping[str, Any] | None = None,
        *,
        priority: float | None = None,
        key: Any = None,
    ) -> str:
        """Queue work for ``task``; returns its id.

        Every call creates a new work unit with its own id, unless de-duplication was asked
        for: work with the same ``key`` as pending or running work of the same task, or, for
        a task declared ``dedup=True``, with equal params, is not queued twice: the existing
        id is returned.

        A lone call never waits. In a long burst of calls with no other ``await`` in between,
        one call in every ~2 ms first lets other tasks run (a checkpoint, where a cancelled
        caller gets its cancellation and nothing is submitted), so started work runs while the
        rest is still being submitted. A burst also lets the tasks of the loop's due timers
        run (within ~0.1 ms of the timer; shielded, so cancellation still comes only at a
        slice's end), where the loop tells when its next timer is due publicly (trio).

        :raises UnknownTaskError: for a task nobody registered.
        :raises TypeError: when params is not a mapping.
        :raises CueStateError: after ``stop()``.
        """
        now: float | None = None
        if self._state == _RUNNING:
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
        if self._state in (_STOPPING, _STOPPED):
            msg = (
                f"cannot submit to a {self._state} Cue; submit inside 'async with Cue() as cue:'"
                " or between cue.start() and cue.stop() (a stopped cue starts again)"
            )
            raise CueStateError(msg)
        spec = self._tasks.get(task)
        if spec is None:
            known = ", ".join(repr(name) for name in self._tasks) or "none"
            msg = (
                f"Unknown task {task!r} (registered: {known}); register it with @cue.task({task!r})"
            )
            raise UnknownTaskError(msg)
        if params is None:
            params = {}
        elif type(params) is not dict and not isinstance(params, Mapping):
            msg = (
                f"params must be a mapping such as a dict, got {type(params).__name__}: {params!r}"
            )
            raise TypeError(msg)
        else:
            params = dict(params)
        if priority is None:
            priority = 0.5
        elif (
            isinstance(priority, bool)
            or not isinstance(priority, (int, float))
            or not (0.0 <= priority <= 1.0)
        ):
            msg = f"priority must be a number from 0.0 to 1.0 (higher runs first), got {priority!r}"
            raise ValueError(msg)
        dedup_key: Any = None  # without key= or a dedup task, no index is kept at all
        if key is not None:
            dedup_key = ("key", task, key)
        elif spec.dedup:
            dedup_key = (task, _freeze_params(params))
        self._ids += 1
        work = WorkUnit(
            f"{self._id_prefix}-{self._ids}",
            task,
            params,
            priority=float(priority),
            key=key,
            created_at=time.time(),
        )
        work._task = spec
        if spec.declares:
            try:
                work._inputs = resolve(spec.inputs, work)
                work._outputs = resolve(spec.outputs, work)
                for item in (*work._inputs, *work._outputs):
                    hash(artifact_key(item))  # an artifact must be usable as a graph node
            except Exception as exc:
                msg = f"task {task!r}: its inputs/outputs could not be read for {params!r}: {exc}"
                raise TypeError(msg) from exc
        return self._engine.submit(work, dedup_key, now).id

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
    ) -> str:
        """``submit()`` from another thread (a sync handler, a GUI or a plain thread).

        Blocks that thread until the cue's event loop took the work; returns its id. Raises
        what ``submit()`` raises, and ``CueStateError`` when the cue is not running. Do not
        call it from the event loop's own thread: use ``await cue.submit()`` there.
        """
        token = self._token
        if token is None or self._state != _RUNNING:
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
            functools.partial(self.submit, task, params, priority=priority, key=key), token=token
        )

    def _find(self, work_id: str) -> WorkUnit | None:
        engine = self._engine
        return engine.works.get(work_id) or engine.finished.get(work_id)

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

    def stats(self) -> CueStats:
        """A frozen snapshot of every counter (see :class:`CueStats`)."""
        return _diagnosis.stats(self._engine, running=self._state in (_RUNNING, _STOPPING))

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
