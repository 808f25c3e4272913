"""Limits the way APIs count: cost windows settled on actual use, the budget the server
reports, and adaptive concurrency. Each is a limit of the one protocol (``_limits.py``)
over a pure part that does the counting:

- :class:`CostLimit` over ``_costs.CostLimiter``: ``costs={"tokens": "90000/min"}`` on a
  service, ``cost=`` on a task. A work's estimate is reserved in every window of every
  dimension at admission, counted from its handler's start, and settled after the handler
  on the actual cost (``work.charge(...)`` or the task's ``actual_cost``): a refund frees
  room at once, more than estimated is counted as debt.
- :class:`ObservedLimit` over ``_observed.ServerBudget``: ``work.observe(headers)`` tells what
  the server says is left until its reset; admission then also keeps within that (never
  looser than the declared windows, which stay in force). An observation that leaves more
  than the cue's own windows already allow changes nothing (a client alone costs nothing);
  one that leaves less -- the quota is shared with others -- tightens. ``retry-after``
  pauses the service.
- :class:`AdaptiveLimit` over ``_aimd.AimdController``: ``adaptive=True`` on a service with
  ``concurrent``: at most ``allowed`` handlers at once, halved (at most once per round trip)
  on a ``RateLimited`` or a timeout, grown by one per round of successes, never above
  ``concurrent``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ._aimd import AimdController
from ._costs import CostLimiter, HoldState
from ._errors import HandlerTimeout, RateLimited
from ._headers import read_rate_limit_headers
from ._hooks import logger
from ._limits import NO_HOLD, Limit, span
from ._observed import ServerBudget
from ._stats import LimitState

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = ["AdaptiveLimit", "CostLimit", "ObservedLimit", "actual_cost"]


def actual_cost(work: WorkUnit) -> dict[str, float] | None:
    """What the attempt reported with ``work.charge()`` (None: the estimate stands)."""
    extra = work._extra
    return None if extra is None else extra.charged


class CostLimit(Limit):
    """A service's cost windows, over every dimension it declares (see the module doc)."""

    kind = "cost"

    __slots__ = ("clock", "label", "limiter", "text")

    def __init__(
        self, limiter: CostLimiter, text: Mapping[str, str], label: str, clock: Callable[[], float]
    ) -> None:
        self.limiter = limiter
        self.text = dict(text)
        self.label = label
        self.clock = clock

    def reserve(self, work: WorkUnit) -> Any:
        estimate = work.cost
        if not estimate:
            return NO_HOLD  # nothing estimated: nothing held (charges are counted as debt)
        return self.limiter.try_reserve(estimate, self.clock())

    def commit(self, hold: Any, now: float) -> bool:
        if hold is NO_HOLD:
            return False
        return self.limiter.commit(hold, now)

    def release(self, hold: Any) -> None:
        if hold is not NO_HOLD:
            self.limiter.release(hold)

    def settle(self, hold: Any, work: WorkUnit, now: float, error: BaseException | None) -> None:
        charged = actual_cost(work)
        if hold is NO_HOLD:
            if charged:  # charged without an estimate: counted from now, as debt
                self.limiter.settle(self._debt(charged, now), charged)
            return
        if hold.state is HoldState.COMMITTED:
            self.limiter.settle(hold, charged)

    def _debt(self, charged: Mapping[str, float], now: float) -> Any:
        handle = self.limiter.reserve(dict.fromkeys(charged, 0.0))
        self.limiter.commit(handle, now)
        return handle

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        if work is None or not work.cost:
            return -math.inf
        ready = self.limiter.next_free(work.cost, now)
        return ready if ready > now else -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        if not work.cost:
            return None
        waits = self.limiter.waiting_for(work.cost, now)
        if not waits:
            return None
        first = waits[0]
        when = (
            "once works already admitted start"
            if math.isinf(first.frees_at)
            else f"in {span(first.frees_at - now)}"
        )
        return (
            "cost_limited",
            f"{self.label} is waiting for {first.dimension}: {first.used:g} of"
            f" {first.spec.limit} per {first.spec.period:g}s used, {first.needed:g} more"
            f" free {when}",
        )

    def states(self, now: float) -> list[LimitState]:
        # ready_in: until the window has room for one more unit (a token), as time decides
        # (a window in debt, or full, frees as its oldest amounts leave it; inf when only
        # reservations fill it). A work's own estimate may need longer: see blocked().
        return [
            LimitState(
                "cost",
                f"{dimension} {spec.limit}/{spec.period:g}s",
                window.committed(now) + window.reserved,
                spec.limit,
                max(0.0, window.next_free(min(1.0, spec.limit), now) - now),
            )
            for dimension, spec, window in self.limiter.windows()
        ]

    def left(self, dimension: str, now: float) -> float:
        """What the declared windows of ``dimension`` still admit now (inf: no window)."""
        left = math.inf
        for name, spec, window in self.limiter.windows():
            if name == dimension:
                left = min(left, spec.limit - window.used(now))
        return left


class ObservedLimit(Limit):
    """What the server says is left, from the responses' headers (see the module doc)."""

    kind = "observed"

    __slots__ = ("budget", "clock", "label", "left_of", "pause")

    def __init__(
        self,
        label: str,
        clock: Callable[[], float],
        left_of: Callable[[str, float], float],
        pause: Callable[[float], None],
    ) -> None:
        self.budget = ServerBudget()
        self.label = label
        self.clock = clock
        self.left_of = left_of  # what the cue's own windows still admit, per dimension
        self.pause = pause

    def _amounts(self, work: WorkUnit) -> dict[str, float]:
        amounts = {"requests": 1.0}
        if work.cost:
            amounts.update(work.cost)
        return amounts

    def reserve(self, work: WorkUnit) -> Any:
        return self.budget.try_reserve(self._amounts(work), self.clock())

    def commit(self, hold: Any, now: float) -> bool:
        return self.budget.commit(hold, now)

    def release(self, hold: Any) -> None:
        self.budget.release(hold)

    def settle(self, hold: Any, work: WorkUnit, now: float, error: BaseException | None) -> None:
        if hold.state is HoldState.COMMITTED:
            self.budget.settle(hold, actual_cost(work))

    def observe(self, hold: Any, headers: Any) -> None:
        """The response to the work holding ``hold`` carried these headers."""
        try:
            limits = read_rate_limit_headers(headers, now_wall=time.time())
        except TypeError:
            logger.warning(
                "runcue: work.observe() needs the response's headers (a mapping or a list of"
                " pairs), got %r; ignored",
                type(headers).__name__,
            )
            return
        now = self.clock()
        answered = hold if hold is not None and hold.state is HoldState.COMMITTED else None
        for limit in limits.limits:
            if limit.remaining is None or limit.reset_after is None:
                continue
            # The cue's own windows already keep within this: nothing to learn.
            if limit.remaining >= self.left_of(limit.dimension, now):
                continue
            self.budget.observe(
                limit.dimension, limit.remaining, now + limit.reset_after, now, answered=answered
            )
        if limits.retry_after is not None and limits.retry_after > 0:
            self.pause(now + limits.retry_after)

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        if work is None:
            return -math.inf
        ready = self.budget.next_free(self._amounts(work), now)
        return ready if ready > now else -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        ready = self.budget.next_free(self._amounts(work), now)
        if ready <= now:
            return None
        said = ", ".join(
            f"{limit.dimension} {limit.left:g} left" for limit in self.budget.describe(now)
        )
        return (
            "server_limited",
            f"{self.label}'s server said {said}; the next start fits in {span(ready - now)}",
        )

    def states(self, now: float) -> list[LimitState]:
        return [
            LimitState(
                "observed",
                f"{limit.dimension} (server)",
                0.0,
                max(0.0, limit.left),
                max(0.0, limit.reset_at - now),
            )
            for limit in self.budget.describe(now)
        ]


class AdaptiveLimit(Limit):
    """At most ``allowed`` handlers at once, learned between 1 and ``concurrent``."""

    kind = "adaptive"
    held_while_running = True

    __slots__ = ("controller", "label", "running", "wake")

    def __init__(self, ceiling: int, label: str) -> None:
        self.controller = AimdController(ceiling)
        self.label = label
        self.running = 0
        self.wake: Callable[[], None] | None = None

    def bind(self, spawn: Callable[..., Any], wake: Callable[[], None]) -> None:
        self.wake = wake

    def reserve(self, work: WorkUnit) -> Any:
        if self.running >= self.controller.allowed:
            return None
        self.running += 1
        return self.controller.started(self.running)

    def release(self, hold: Any) -> None:
        self.running -= 1
        self.controller.ended(hold)

    def settle(self, hold: Any, work: WorkUnit, now: float, error: BaseException | None) -> None:
        self.running -= 1
        if isinstance(error, (RateLimited, HandlerTimeout, TimeoutError)):
            self.controller.backed_off(hold)
        elif error is None:
            if self.controller.succeeded(hold) and self.wake is not None:
                self.wake()  # one more may run now
        else:
            self.controller.ended(hold)

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        return math.inf if self.running >= self.controller.allowed else -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        allowed = self.controller.allowed
        if self.running < allowed:
            return None
        return (
            "service_full",
            f"{self.label} runs {self.running} of the {allowed} it adapted to (of"
            f" {self.controller.ceiling} declared)",
        )

    def state(self, now: float) -> LimitState | None:
        allowed = self.controller.allowed
        return LimitState(
            "adaptive", f"{allowed} of {self.controller.ceiling} at once", self.running, allowed
        )
