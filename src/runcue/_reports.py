"""Reporting: the user's event callbacks, the event listeners, and who waits for what.

A sync callback is called right where its event happens, inside a ``try`` (an exception is
logged, never raised): it costs what the callback costs, no coroutine and no task. An async
callback is awaited by the part that reports it (``report``), or runs in a task of the cue's
own (``report_soon``) when the reporter must not wait (the scheduler); either way it is
bounded by ``check_timeout`` and counted, so ``join()`` and ``stop()`` wait for it. Listeners
(``cue.subscribe``) get every :class:`WorkEvent`, synchronously, after the cue's bookkeeping.

It also keeps the cue's waiting points: ``join()`` (nothing pending, running or being
reported), ``wait()`` on one work, ``stop()``'s wait for running handlers, and the watchers
(``cue.map()``'s streams), told synchronously of every work that ends.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._events import WorkEvent
from ._hooks import Hooks, call_hook, logger
from ._task import is_async_callable
from ._work import WorkState

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._work import WorkUnit

__all__ = ["IN_REPORT", "IN_RUNNER", "Reports"]

IN_RUNNER: contextvars.ContextVar[bool] = contextvars.ContextVar("runcue_in_runner", default=False)
IN_REPORT: contextvars.ContextVar[bool] = contextvars.ContextVar("runcue_in_report", default=False)

Watcher = Callable[["WorkUnit"], None]

_new_event = tuple.__new__
_END_KINDS = {state: state.value for state in WorkState}

_EVENT_HOOKS = (
    "on_start",
    "on_complete",
    "on_failure",
    "on_retry",
    "on_cancel",
    "on_skip",
    "on_pending_warning",
    "on_stall_warning",
)


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} (repr failed)>"


class Reports:
    """Callbacks, listeners, and the events the cue's waiters wait on."""

    def __init__(self, engine: Scheduler, hooks: Hooks) -> None:
        self.engine = engine
        self.hooks = hooks
        # A tuple, replaced on (un)subscribe: emitting never copies it.
        self.listeners: tuple[Callable[[WorkEvent], object], ...] = ()
        self.async_hooks: frozenset[str] = frozenset()  # the names of async event callbacks
        self.reporting = 0  # async callbacks being awaited; join() and stop() wait for them
        self.waiters: dict[int, anyio.Event] = {}  # by work._seq
        # Called with every work that ends, in finish() (cue.map's streams): a tuple too.
        self.watchers: tuple[Watcher, ...] = ()
        self.idle = anyio.Event()
        self.idle.set()
        self.is_idle = True  # mirrors idle.is_set(), cheaper to read per submit
        self.no_running: anyio.Event | None = None

    def subscribe(self, listener: Callable[[WorkEvent], object]) -> Callable[[], None]:
        """Add a listener; returns the function that removes it (once)."""
        return self._join("listeners", listener)

    def watch(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(work)`` for every work that ends, synchronously in ``finish()``
        before the listeners (quick, and never raising); returns the function that stops it."""
        return self._join("watchers", watcher)

    def _join(self, name: str, member: Callable[..., object]) -> Callable[[], None]:
        """Add ``member`` to the tuple ``name``; returns the function that removes it (once)."""
        setattr(self, name, (*getattr(self, name), member))

        def leave() -> None:
            members = list(getattr(self, name))
            if member in members:
                members.remove(member)
                setattr(self, name, tuple(members))

        return leave

    def refresh(self) -> None:
        """A callback was registered: note which are async."""
        hooks = self.hooks
        self.async_hooks = frozenset(
            name for name in _EVENT_HOOKS if is_async_callable(getattr(hooks, name))
        )

    def rebind(self) -> None:
        """A run starts: events made on an earlier run's loop are made anew where unused."""
        self.no_running = None
        if self.idle.is_set():  # (an unset one may have a join() waiting on it already)
            self.idle = anyio.Event()
            self.idle.set()

    # ------------------------------------------------------------------ events

    def emit(
        self,
        kind: str,
        work: WorkUnit,
        details: str = "",
        duration: float | None = None,
        now: float | None = None,
    ) -> None:
        """Tell every listener (only called when there is one); ``now``: the loop's time,
        when the caller just read it."""
        if now is None:
            now = self.engine.clock()
        # (WorkEvent(...) with its defaults checked, in one C call)
        event = _new_event(WorkEvent, (kind, work, now, work._task.service, details, duration))
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                logger.exception(
                    "runcue: the event listener %r raised; it stays subscribed", listener
                )

    def emit_end(self, work: WorkUnit, duration: float | None, now: float | None) -> None:
        """The terminal event of a work."""
        kind = "skipped" if work.skipped else _END_KINDS[work.state]
        exception = work.exception
        details = "" if exception is None else _safe_repr(exception)
        self.emit(kind, work, details, duration, now)

    # ------------------------------------------------------------------ callbacks

    def call(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Call a sync callback here; an exception is logged."""
        try:
            hook(*args)
        except Exception:
            logger.exception("runcue: the %s callback %r raised; the cue goes on", name, hook)

    async def report(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Call an event callback and wait for it; join() and stop() wait for it too."""
        if name not in self.async_hooks:
            self.call(name, hook, *args)
            return
        self.reporting += 1
        await self._counted(name, hook, *args)

    def report_soon(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Call an event callback without holding up the caller: a sync one right here, an
        async one in its own task (join() and stop() still wait for it)."""
        tg = self.engine.tg
        if name not in self.async_hooks:
            self.call(name, hook, *args)
            return
        if tg is None:  # (not running: a caller that may meet this awaits run_all instead)
            return
        self.reporting += 1
        tg.start_soon(self._counted, name, hook, *args)

    async def run_all(
        self, name: str, hook: Callable[..., Any], args: list[tuple[Any, ...]]
    ) -> None:
        """Await one async callback per argument tuple, concurrently, right here."""
        async with anyio.create_task_group() as tg:
            for one in args:
                self.reporting += 1
                tg.start_soon(self._counted, name, hook, *one)

    async def _counted(self, name: str, hook: Callable[..., Any], *args: Any) -> None:
        """Await a callback already counted in ``reporting`` (stop() from inside it knows)."""
        token = IN_REPORT.set(True)
        try:
            timeout = self.engine.checks.timeout
            if name == "on_cancel":
                # Often reported while the cue is being cancelled: let it finish (bounded).
                with anyio.CancelScope(shield=True):
                    await call_hook(name, hook, *args, timeout=min(timeout, 5.0))
            else:
                await call_hook(name, hook, *args, timeout=timeout)
        finally:
            IN_REPORT.reset(token)
            self.reporting -= 1
            self.check_idle()

    # ------------------------------------------------------------------ waiting

    def busy(self) -> None:
        """Work exists: join() waits from now on."""
        if self.is_idle:
            self.is_idle = False
            self.idle = anyio.Event()

    def check_idle(self) -> None:
        # Waiters re-check their own condition: waking them early is harmless.
        engine = self.engine
        if engine.running <= 1 and self.no_running is not None:
            self.no_running.set()
        if not self.reporting and not engine.works:
            self.is_idle = True
            self.idle.set()

    def finished(self, seq: int) -> None:
        """A work reached its end: wake its wait()ers (``seq``: its ``_seq``)."""
        waiter = self.waiters.pop(seq, None)
        if waiter is not None:
            waiter.set()

    async def wait_no_running(self, *, reports: bool = True) -> None:
        """Until no handler runs (and, with ``reports``, no callback is being awaited) -- but
        for the caller's own, when a handler or a callback is the caller."""
        own = 1 if IN_RUNNER.get() and not IN_REPORT.get() else 0
        own_report = 1 if IN_REPORT.get() else 0
        engine = self.engine
        while engine.running > own or (reports and self.reporting > own_report):
            self.no_running = anyio.Event()
            await self.no_running.wait()

    async def join(self) -> None:
        engine = self.engine
        while engine.works or self.reporting:
            if self.idle.is_set():
                self.is_idle = False
                self.idle = anyio.Event()
            await self.idle.wait()

    async def wait_for(self, work: WorkUnit) -> None:
        if work.state.finished:
            return
        event = self.waiters.get(work._seq)
        if event is None:
            event = self.waiters[work._seq] = anyio.Event()
        await event.wait()
