"""The cue's lifecycle: the three ways to run it, stopping, and starting again.

- ``async with cue:`` -- enter starts the cue's task group, the scheduler task (and, with a
  store, the lease keeper); leaving waits until nothing is pending or running, then stops.
  Leaving by an exception (or a cancellation) cancels everything, and the exception comes
  out as itself.
- ``cue.start()`` / ``await cue.stop()`` -- the same ``async with`` run in a background task
  that no user task group owns (``_backend.spawn_background``), from asyncio or trio.
- ``await task_group.start(cue.run)`` -- under the caller's task group, until ``stop()``.

A run is one ``async with`` of the cue. A stopped cue starts again: every run prepares its
own events (``_prepare_run``) and binds the scheduler to its own task group and loop; the
registrations, the rate windows' history and the finished work carry over. Starting a cue
that is running is refused with a message that says what to do.
"""

from __future__ import annotations

import os
import socket
import sys
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from . import _backend
from ._errors import CueStateError
from ._reports import IN_RUNNER

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._scheduler import Scheduler

__all__ = ["Lifecycle"]

NEW, RUNNING, STOPPING, STOPPED = "new", "running", "stopping", "stopped"


class Lifecycle:
    """Running, stopping and starting again; the base of :class:`runcue.Cue`."""

    _engine: Scheduler
    _id_prefix: str

    def _init_lifecycle(self) -> None:
        self._state = NEW
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
        self._new_run()

    def _new_run(self) -> None:
        """Per-run state of the facade (the submission bursts); see Cue."""

    def _refuse_if_running(self, how: str) -> None:
        if self._state in (RUNNING, STOPPING) or self._launching:
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
        self._state = NEW  # submissions wait for the run, as before a first start
        self._stop_requested = anyio.Event()
        self._closed = anyio.Event()
        self._entered = anyio.Event()
        self._background_error = None
        self._new_run()

    async def __aenter__(self) -> Self:
        own, self._own_entry = self._own_entry, False
        if not own:
            self._refuse_if_running("enter it with 'async with'")
            self._prepare_run("context")
        self._launching = False
        self._state = RUNNING
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
                self._state = STOPPED
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
            if exc_type is None and self._state == RUNNING:
                await self._engine.join()
                await self._shutdown(None)
        finally:
            if self._state == RUNNING:
                # Leaving by an exception (or cancelled while joining): cancel everything.
                self._state = STOPPING
                self._engine.closing = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    await self._engine.outcomes.cancel_all_pending(
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
                self._state = STOPPED
                self._closed.set()
                fatal, self._engine.fatal = self._engine.fatal, None
                if fatal is not None:
                    raise fatal  # a handler's KeyboardInterrupt or SystemExit stopped the cue
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
        if self._mode == "background" and (self._launching or self._state == RUNNING):
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
        if self._state in (NEW, STOPPED) and not self._launching:
            self._state = STOPPED
            self._engine.closing = True
            await self._engine.outcomes.cancel_all_pending("the cue was stopped before it started")
            self._closed.set()
            # A background run that already ended by itself (a handler's KeyboardInterrupt
            # or SystemExit stopped it) hands its error to this stop(), as to a later one.
            self._raise_background_error()
            return
        mode = self._mode
        if self._launching:
            await self._entered.wait()
        if self._state == RUNNING:
            await self._shutdown(limit)
        self._stop_requested.set()
        if mode in ("background", "run") and not IN_RUNNER.get():
            await self._closed.wait()  # (a handler calling stop() must not wait for itself)
        self._raise_background_error()

    def _raise_background_error(self) -> None:
        error, self._background_error = self._background_error, None
        if error is not None and not isinstance(error, anyio.get_cancelled_exc_class()):
            raise error

    async def _shutdown(self, timeout: float | None) -> None:
        self._state = STOPPING
        engine = self._engine
        engine.closing = True
        engine.wake()
        if timeout == 0:
            engine.outcomes.cancel_running()  # told first: on_cancel callbacks of pending work wait
        await engine.outcomes.cancel_all_pending("the cue stopped before this work ran")
        if timeout is None:
            await engine.wait_no_running()
        else:
            with anyio.move_on_after(timeout) as patience:
                await engine.wait_no_running()
            if patience.cancelled_caught:
                engine.outcomes.cancel_running()
                # Cancelled handlers end at once; callbacks still awaited end with the task
                # group, which the caller closes next.
                await engine.wait_no_running(reports=False)
        if self._loop_scope is not None:
            self._loop_scope.cancel()
