"""Slots held while a handler runs: a service's concurrency, and the worker threads of sync
handlers. Both are :class:`anyio.CapacityLimiter` tokens borrowed on behalf of each work from
its admission until its handler ended (its thread returned); see ``_limits.py`` for the
protocol they follow.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._limits import NO_HOLD, Limit
from ._stats import LimitState

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = ["ConcurrencyLimit", "ThreadLimit"]


class ConcurrencyLimit(Limit):
    """At most ``concurrent`` handlers at once: an :class:`anyio.CapacityLimiter`, borrowed on
    behalf of each work from its admission until its handler ended (its thread returned).

    App code may borrow from the same limiter (``cue.limiter(name)``): those tokens count
    against the service like its own handlers. runcue never waits on the limiter while only
    its own handlers hold tokens (they wake the scheduler when they end). Once other code is
    seen holding tokens while work of the service waits, one *gate* task waits in the
    limiter's queue, FIFO among the app's waiters, for as long as that lasts: the token it
    gets (an app's release, or a handler's) goes to the next work, so a release by app code
    wakes the service like a finishing handler would.
    """

    kind = "concurrency"
    held_while_running = True

    __slots__ = (
        "_acquire",
        "_adopted",
        "_gate_waiting",
        "_release",
        "_shared",
        "label",
        "limiter",
        "ours",
        "spawn",
        "wake",
        "wanted",
    )

    def __init__(self, limiter: anyio.CapacityLimiter, label: str) -> None:
        self.limiter = limiter
        # (bound once: they run twice per start)
        self._acquire = limiter.acquire_on_behalf_of_nowait
        self._release = limiter.release_on_behalf_of
        self.label = label
        self.ours = 0  # tokens borrowed for this cue's work
        self._adopted: list[object] = []  # tokens a gate waited for, not handed on yet
        self._gate_waiting = False
        self._shared = False  # other code was seen holding tokens: watch for its releases
        self.spawn: Callable[..., Any] | None = None  # the cue's task group's start_soon
        self.wake: Callable[[], None] | None = None
        self.wanted: Callable[[], bool] | None = None  # does work of the service wait?

    def free(self) -> float:
        """Tokens this service could take right now."""
        return self.limiter.available_tokens + len(self._adopted)

    def reserve(self, work: WorkUnit) -> Any:
        if self._adopted:
            self.ours += 1
            return self._adopted.pop()
        try:
            self._acquire(work)
        except anyio.WouldBlock:
            if self.ours < self.limiter.borrowed_tokens:
                self._shared = True
                self._wait_at_gate()  # tokens held by app code: their release wakes nobody
            return None
        self.ours += 1
        return work

    def release(self, hold: Any) -> None:
        self.ours -= 1
        self._release(hold)  # (no gate for this: another limit refused, not this one)

    def fits(self, hold: Any) -> bool:
        limiter = self.limiter  # lowered below what is borrowed: the unstarted give way
        return bool(limiter.borrowed_tokens <= limiter.total_tokens)

    def settle(self, hold: Any, work: WorkUnit, now: float, error: BaseException | None) -> None:
        self.ours -= 1
        self._release(hold)
        if self._shared:
            self._watch_others()

    def _watch_others(self) -> None:
        """A handler ended: while others hold tokens and work waits, keep a gate in the
        limiter's queue (not after a refusal by another limit: the gate would take a token
        that limit still refuses, again and again)."""
        if self.ours + len(self._adopted) < self.limiter.borrowed_tokens:
            if self.wanted is None or self.wanted():
                self._wait_at_gate()
        elif not self._gate_waiting:
            self._shared = False  # nobody else holds a token now: their slots are free again
            if self.wake is not None:
                self.wake()

    def bind(self, spawn: Callable[..., Any], wake: Callable[[], None]) -> None:
        self.spawn = spawn
        self.wake = wake

    def _wait_at_gate(self) -> None:
        if self._gate_waiting or self.spawn is None:
            return
        self._gate_waiting = True
        self.spawn(self._gate, name="runcue concurrency gate")

    async def _gate(self) -> None:
        token = object()
        try:
            await self.limiter.acquire_on_behalf_of(token)
        finally:
            self._gate_waiting = False
        if self.wanted is not None and not self.wanted():
            self._release(token)  # nothing waits any more: the token goes back at once
            self._watch_others()
            return
        self._adopted.append(token)
        if self.wake is not None:
            self.wake()

    def unused(self) -> None:
        """A dispatch turn ended: tokens a gate waited for and nobody took go back."""
        while self._adopted:
            self._release(self._adopted.pop())

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        if self._adopted or self.limiter.available_tokens > 0:
            return -math.inf
        return math.inf  # a finishing handler (or the gate) wakes the scheduler

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        limiter = self.limiter
        if limiter.available_tokens > 0 or self._adopted:
            return None
        others = limiter.borrowed_tokens - self.ours
        shared = f", {others} of them borrowed by other code" if others > 0 else ""
        return (
            "service_full",
            f"{self.label} runs {limiter.borrowed_tokens} of {limiter.total_tokens:g} at"
            f" once{shared}",
        )

    def state(self, now: float) -> LimitState | None:
        limiter = self.limiter
        total = limiter.total_tokens
        name = "unlimited" if total == math.inf else f"{total:g} at once"
        return LimitState("concurrency", name, limiter.borrowed_tokens, total)


class ThreadLimit(Limit):
    """Sync handlers of services without ``concurrent`` share ``max_threads`` worker threads
    (one :class:`anyio.CapacityLimiter` for the whole cue); async handlers pass freely."""

    kind = "threads"
    held_while_running = True

    __slots__ = ("limiter", "max_threads", "wake")

    def __init__(self, limiter: anyio.CapacityLimiter, max_threads: int) -> None:
        self.limiter = limiter
        self.max_threads = max_threads
        self.wake: Callable[[], None] | None = None

    def reserve(self, work: WorkUnit) -> Any:
        if work._task.is_async:
            return NO_HOLD
        try:
            self.limiter.acquire_on_behalf_of_nowait(work)
        except anyio.WouldBlock:
            return None
        return work

    def bind(self, spawn: Callable[..., Any], wake: Callable[[], None]) -> None:
        self.wake = wake

    def _give(self, hold: Any) -> None:
        if hold is not NO_HOLD:
            self.limiter.release_on_behalf_of(hold)
            if self.wake is not None:
                self.wake()  # the threads are shared by every service without `concurrent`

    def release(self, hold: Any) -> None:
        self._give(hold)

    def settle(self, hold: Any, work: WorkUnit, now: float, error: BaseException | None) -> None:
        self._give(hold)

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        if work is None or work._task.is_async or self.limiter.available_tokens > 0:
            return -math.inf
        return math.inf  # a thread that returns wakes the scheduler

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        if work._task.is_async or self.limiter.available_tokens > 0:
            return None
        return ("threads_full", f"all max_threads={self.max_threads} worker threads busy")
