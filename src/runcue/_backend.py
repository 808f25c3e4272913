"""The one place that tells asyncio from trio: running a cue in the background for ``start()``.

``cue.start()`` is a plain function called from async code with no task group at hand. On
asyncio the cue runs in a task created on the running loop; on trio in a system task (trio's
own home for tasks that no user nursery owns). Either way the background task only runs
``async with cue`` until ``stop()``; everything inside it is AnyIO.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

__all__ = [
    "RunnerScope",
    "current_backend",
    "fast_clock",
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
    tasks waiting on file descriptors, so it costs more with many sockets); asyncio only
    through its private timer heap, so there it is None.
    """
    if current_backend() != "trio":
        return None
    import trio

    statistics = trio.lowlevel.current_statistics

    def seconds() -> float:
        return statistics().seconds_to_next_deadline

    return seconds


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
