"""The one place that tells asyncio from trio.

- Running a cue in the background for ``start()``: a plain function called from async code
  with no task group at hand. On asyncio the cue runs in a task created on the running loop;
  on trio in a system task (trio's own home for tasks that no user nursery owns). Either way
  the background task only runs ``async with cue`` until ``stop()``; everything inside it is
  AnyIO.
- The loop's own clock and cheapest cancel scope, which the scheduler uses once per work.
- When the loop's next timer is due, and a yield that lets the due timers' tasks run: a
  burst of ``submit()`` calls uses them so that it never holds up timed work.
- Handing a callback to the loop from another thread without waiting for the loop (a
  thread may outlive its loop).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = [
    "RunnerScope",
    "current_backend",
    "notifier_from_thread",
    "fast_clock",
    "let_due_timers_run",
    "next_timer_in",
    "runner_scope",
    "spawn_background",
]

_background_tasks: set[Any] = set()  # asyncio keeps only weak references to tasks


def current_backend() -> str | None:
    """ "asyncio", "trio", or None when no event loop runs in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            return None
        return "trio"
    return None


async def _as_coroutine(run: Callable[[], Awaitable[None]]) -> None:
    await run()


def fast_clock() -> Callable[[], float]:
    """The running backend's own clock function: what ``anyio.current_time()`` reads, without
    looking the backend up on every call (the scheduler reads the clock several times per work).
    """
    backend = current_backend()
    if backend == "asyncio":
        return asyncio.get_running_loop().time
    if backend == "trio":
        import trio

        # What trio.current_time() returns, without its two layers of lookup.
        return trio.lowlevel.current_clock().current_time
    import anyio

    return anyio.current_time


def next_timer_in() -> Callable[[], float] | None:
    """A function giving the seconds until the loop's earliest timer is due (a sleep, a
    cancel scope's deadline; 0 or less when one is due now, inf when none), or None where
    the loop does not say.

    trio says it publicly (``trio.lowlevel.current_statistics()``; that call also counts the
    tasks waiting on file descriptors, so it costs more with many sockets). asyncio keeps its
    timers private (``loop._scheduled``): runcue does not read them, so there the answer is
    None and a burst of ``submit()`` calls yields only every ``SUBMIT_SLICE``.
    """
    if current_backend() == "trio":
        import trio

        statistics = trio.lowlevel.current_statistics

        def trio_seconds() -> float:
            return statistics().seconds_to_next_deadline

        return trio_seconds
    return None


async def let_due_timers_run() -> None:
    """Yield (shielded from cancellation) until the tasks whose timers are due have run.

    On trio the loop wakes them at its next pass, into the same batch as the caller, in an
    order it may shuffle: two passes. On asyncio a due timer's callback only schedules its
    task, behind the caller's own next step: three passes (the callback runs after the first,
    its task before the caller's third).
    """
    import anyio.lowlevel

    for _ in range(_YIELDS_FOR_TIMERS.get(current_backend() or "", 1)):
        await anyio.lowlevel.cancel_shielded_checkpoint()


_YIELDS_FOR_TIMERS = {"asyncio": 3, "trio": 2}


class RunnerScope(Protocol):
    """What the scheduler uses of a cancel scope around a runner's attempts."""

    @property
    def cancel_called(self) -> bool: ...

    def cancel(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any, /) -> bool: ...


def runner_scope() -> Callable[[], RunnerScope]:
    """The cheapest cancel scope the running backend offers, for the scope every runner opens.

    On trio, AnyIO's ``CancelScope`` wraps trio's own, and the wrapper costs about as much as
    the scope: a runner that runs one work pays it once per work, so trio's scope is used
    directly (AnyIO's scopes on trio are trio's, so the two nest as one). On asyncio it is
    AnyIO's.
    """
    if current_backend() == "trio":
        import trio

        return trio.CancelScope
    import anyio

    return anyio.CancelScope


def notifier_from_thread() -> Callable[[Callable[[], object]], bool]:
    """A function that another thread calls to have ``callback()`` run on this event loop
    soon, *without waiting* for the loop: it returns at once, True when the callback was
    handed over, False when the loop is gone (closed, or the trio run finished).

    ``anyio.from_thread.run_sync`` waits for the loop to run the call; a thread that outlived
    its loop (an abandoned sync handler returning after ``stop()``, when the loop has stopped
    but is not closed) would wait there forever, and interpreter shutdown with it.
    """
    backend = current_backend()
    if backend == "asyncio":
        loop = asyncio.get_running_loop()

        def asyncio_soon(callback: Callable[[], object]) -> bool:
            try:
                loop.call_soon_threadsafe(callback)
            except RuntimeError:  # the loop is closed
                return False
            return True

        return asyncio_soon
    import trio

    token = trio.lowlevel.current_trio_token()

    def trio_soon(callback: Callable[[], object]) -> bool:
        try:
            token.run_sync_soon(callback)
        except trio.RunFinishedError:
            return False
        return True

    return trio_soon


def spawn_background(run: Callable[[], Awaitable[None]]) -> str | None:
    """Start ``run()`` as a task no user task group owns; returns the backend or None."""
    backend = current_backend()
    if backend == "asyncio":
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(_as_coroutine(run))
        _background_tasks.add(task)
        task.add_done_callback(_background_tasks.discard)
    elif backend == "trio":
        import trio

        trio.lowlevel.spawn_system_task(run, name="runcue.Cue.start")
    return backend
