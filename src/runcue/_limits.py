"""Admission: a service's limits, each one object of one protocol, admitting together or not.

A service holds a list of **limits**. A limit is either a *gate*, which holds nothing and
only says whether a start may happen now (``admits``: the pause after a ``RateLimited``), or a
*holder*: to start a work, :class:`Admission` asks each holder to ``reserve`` a place for it,
all or none -- a hold (anything but None) or None (not now). Then, for each hold, exactly one
of:

- ``commit(hold, now)`` when the handler really starts (a rate window stamps the start here,
  right before the call), and later ``settle(hold, work, now, error)`` once the handler ended
  (a concurrency slot is given back; a cost known only after the call is counted);
- ``release(hold)`` when the work will not start after all (cancelled, the cue stopping, the
  service paused meanwhile).

Gates are asked at admission and again right before the handler, after every await or
hand-over in between; so is every hold (``fits``), so a limit lowered meanwhile is not
overrun by work admitted under the old one and not started yet. Every limit also says when
it could next admit as far as time decides (``ready_at``: a time, or ``inf`` when only an
event frees it -- a finishing handler wakes the scheduler itself), why it refuses a work now
(``blocked``, for ``debug_blocked()`` and ``explain()``), and what it holds (``state``, for
``stats()``). A limit whose ``awaits`` is set (the shared store) takes a round trip to
reserve and to settle: the scheduler awaits ``reserve_async`` / ``settle_async`` after the
local limits admitted -- the same path, one flag. Limits read time from the clock they are
given (the loop's), so the hot path passes none. A kind of limit is one class here; the
scheduler never names one.

Today's kinds: :class:`PauseLimit` (after a ``RateLimited``), ``ConcurrencyLimit`` (a real
:class:`anyio.CapacityLimiter`, borrowed on behalf of each work; app code may share it) and
``ThreadLimit`` (worker threads for sync handlers of services without ``concurrent``) in
``_slots.py``, :class:`RateLimit` (exact sliding windows) and :class:`StoreLimit` (limits kept
in a shared store, for every process).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ._rate import RateLimiter
from ._stats import LimitState

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from ._fleet import Fleet
    from ._work import WorkUnit

__all__ = [
    "NO_HOLD",
    "Admission",
    "Limit",
    "LimitState",
    "PauseLimit",
    "RateLimit",
    "StoreLimit",
    "bind_limits",
    "span",
]

NO_HOLD = True  # the hold of a limit that reserved nothing for this work (but admits it)


class Limit:
    """The protocol every limit follows (see the module docstring); defaults do nothing."""

    __slots__ = ()

    kind: ClassVar[str] = "limit"
    gate: ClassVar[bool] = False  # holds nothing: admits() at admission and before the handler
    awaits: ClassVar[bool] = False  # reserve/settle need a round trip (the async methods)
    held_while_running: ClassVar[bool] = False  # settled only once the handler really ended

    def admits(self) -> bool:
        """A gate: may a start happen now?"""
        return True

    def reserve(self, work: WorkUnit) -> Any:
        """A holder: a hold for this work, or None when it has no room now."""
        return NO_HOLD

    def commit(self, hold: Any, now: float) -> bool:
        """The handler starts now. True when that is news for a waiting scheduler."""
        return False

    def release(self, hold: Any) -> None:
        return None

    def fits(self, hold: Any) -> bool:
        """After an await (or a hand-over) between admission and the handler: does the hold
        still fit the limit as it is configured now? (A limit lowered meanwhile below what
        its holders use: work that has not started yet gives its place back.)"""
        return True

    def settle(self, hold: Any, work: WorkUnit, now: float, error: BaseException | None) -> None:
        return None

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        return -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        return None

    def state(self, now: float) -> LimitState | None:
        return None

    def states(self, now: float) -> list[LimitState]:
        """What ``stats()`` shows of this limit: one entry per window it keeps."""
        state = self.state(now)
        return [] if state is None else [state]

    async def reserve_async(self, work: WorkUnit) -> Any:  # pragma: no cover - store only
        return NO_HOLD

    async def settle_async(self, hold: Any, work: WorkUnit, error: BaseException | None) -> None:
        return None

    def unused(self) -> None:
        """A dispatch turn ended: give back what was taken in advance and not used."""
        return None

    def bind(self, spawn: Callable[..., Any], wake: Callable[[], None]) -> None:
        """A run starts: the cue's task group's ``start_soon`` and the scheduler's wake-up,
        for a limit that waits for something itself or frees room for others."""
        return None


def span(seconds: float) -> str:
    """A duration in words a person reads at a glance: ``0.25s``, ``42s``, ``5m 12s``,
    ``3h 20m``, ``2d 4h``."""
    if seconds == math.inf:
        return "an unknown time"
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    days, rest = divmod(whole, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"


def _label(service_name: str | None) -> str:
    return "work without a service" if service_name is None else f"service {service_name!r}"


class PauseLimit(Limit):
    """A gate: nothing of the service starts until ``until`` (a handler raised
    ``RateLimited``)."""

    kind = "pause"
    gate = True

    __slots__ = ("clock", "label", "until")

    def __init__(self, label: str, clock: Callable[[], float]) -> None:
        self.label = label
        self.clock = clock
        self.until = -math.inf

    def pause(self, until: float) -> None:
        """Pause until then (never shortens a pause)."""
        self.until = max(self.until, until)

    def admits(self) -> bool:
        until = self.until
        return until == -math.inf or until <= self.clock()

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        return self.until if self.until > now else -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        if self.until > now:
            left = self.until - now
            return ("paused", f"{self.label} is paused (RateLimited) for another {span(left)}")
        return None

    def state(self, now: float) -> LimitState | None:
        left = max(0.0, self.until - now)
        return LimitState("pause", "RateLimited pause", left, math.inf, left)


class RateLimit(Limit):
    """At most N starts in any window (several windows admit together): a slot is reserved
    when a start is decided and stamped right before the handler is called."""

    kind = "rate"

    __slots__ = ("label", "rate", "text")

    def __init__(self, rate: RateLimiter, text: str, label: str) -> None:
        self.rate = rate
        self.text = text
        self.label = label

    def reserve(self, work: WorkUnit) -> Any:
        rate = self.rate
        return rate if rate.try_reserve() else None

    def commit(self, hold: Any, now: float) -> bool:
        # The hold is the limiter itself: reconfiguring changes it in place, so a reservation
        # made under the old windows is committed (or released) where it counts.
        return bool(hold.commit())

    def release(self, hold: Any) -> None:
        hold.release()

    def fits(self, hold: Any) -> bool:
        # Reserved slots count as starts: more than a window's limit only after a lowering.
        return all(window.used() <= window.limit for window in hold.windows)

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        return self.rate.next_free(now)

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        next_free = self.rate.next_free(now)
        if next_free > now:
            return (
                "rate_limited",
                f"{self.label} used its rate {self.text!r}; next slot in {span(next_free - now)}",
            )
        return None

    def states(self, now: float) -> list[LimitState]:
        ready = max(0.0, self.rate.next_free(now) - now)
        return [
            LimitState("rate", f"{spec.limit}/{spec.period:g}s", used, spec.limit, ready)
            for spec, used in self.rate.used()
        ]


class StoreLimit(Limit):
    """The service's limits kept in the cue's store, shared by every process: a start is a
    store round trip (after the local limits admitted), and so is giving its lease back."""

    kind = "store"
    awaits = True

    __slots__ = ("fleet", "label", "service")

    def __init__(self, fleet: Fleet, service: Any, label: str) -> None:
        self.fleet = fleet
        self.service = service
        self.label = label

    async def reserve_async(self, work: WorkUnit) -> Any:
        if self.service.shared_wait_until > self.fleet.clock():
            return None  # the store said when to ask again: not before
        wait = await self.fleet.acquire(self.service, work)
        if wait > 0:
            self.service.shared_wait_until = self.fleet.clock() + wait
            return None
        return NO_HOLD

    async def settle_async(self, hold: Any, work: WorkUnit, error: BaseException | None) -> None:
        refund = _refunds(work)
        await self.fleet.after_attempt(work, error)
        if refund:  # room came back: this process's waiting work asks again at once
            self.service.shared_wait_until = -math.inf

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        until: float = self.service.shared_wait_until
        return until if until > now else -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        service = self.service
        if service.store_error is not None:
            return (
                "store_unreachable",
                f"{self.label} keeps its limits in the store, which does not answer"
                f" ({service.store_error}); nothing starts until it does",
            )
        if service.shared_wait_until > now:
            kept = [f"rate={service.rate_text}"] if service.rate_text else []
            if service.concurrent is not None:
                kept.append(f"concurrent={service.concurrent}")
            if service.cost is not None and self.fleet.costs:
                kept.extend(f"{dim}={text}" for dim, text in service.cost.text.items())
            return (
                "shared_limit",
                f"{self.label}'s shared limits ({', '.join(kept)}; all processes) are used up;"
                f" asking again in {span(service.shared_wait_until - now)}",
            )
        return None


def _refunds(work: WorkUnit) -> bool:
    """The attempt charged less than its estimate in some dimension."""
    extra = work._extra
    if extra is None or extra.charged is None or not extra.cost:
        return False
    charged = extra.charged
    return any(charged.get(dimension, amount) < amount for dimension, amount in extra.cost.items())


class Admission:
    """A service's limits, admitting a work by all of them or by none.

    The holds of an admission are a tuple whose first item is the admission that made them,
    then one hold per holder, in order: a work admitted before its service was reconfigured
    is committed, released and settled by the limits that admitted it.
    """

    __slots__ = (
        "awaiting",
        "committers",
        "fitters",
        "gates",
        "held",
        "holders",
        "limits",
        "order",
        "single",
    )

    def __init__(self, limits: Sequence[Limit]) -> None:
        self.limits: tuple[Limit, ...] = tuple(limits)
        self.gates = tuple(limit for limit in self.limits if limit.gate)
        self.holders = tuple(limit for limit in self.limits if not limit.gate and not limit.awaits)
        # The common shape, one holder (a concurrency slot): no loop, no list.
        self.single = self.holders[0] if len(self.holders) == 1 else None
        # Indexes into the holds (the admission itself is at 0).
        self.committers = tuple(
            i + 1 for i, limit in enumerate(self.holders) if type(limit).commit is not Limit.commit
        )
        self.fitters = tuple(
            i + 1 for i, limit in enumerate(self.holders) if type(limit).fits is not Limit.fits
        )
        self.held = any(limit.held_while_running for limit in self.holders)
        self.awaiting = tuple(limit for limit in self.limits if limit.awaits)
        self.order = sorted(self.limits, key=_describe_rank)  # for blocked(): the first reason

    def admit(self, work: WorkUnit) -> tuple[Any, ...] | None:
        """The holds of every holder, or None (and nothing held) when a limit refuses."""
        for gate in self.gates:
            if not gate.admits():
                return None
        single = self.single
        if single is not None:
            hold = single.reserve(work)
            return None if hold is None else (self, hold)
        holds: list[Any] = [self]
        for limit in self.holders:
            hold = limit.reserve(work)
            if hold is None:
                for taken, held in zip(self.holders, holds[1:]):
                    taken.release(held)
                return None
            holds.append(hold)
        return tuple(holds)

    async def admit_awaiting(self, work: WorkUnit) -> bool:
        """The round trips of the awaiting limits, after :meth:`admit`; False when one refused
        (the caller then releases the holds)."""
        for limit in self.awaiting:
            if await limit.reserve_async(work) is None:
                return False
        return True

    def still(self, holds: tuple[Any, ...]) -> bool:
        """After an await (or a hand-over) between admission and the handler: do the gates
        of the service as it is now admit a start, and do the holds (made by the admission
        ``holds[0]``, maybe before a reconfiguration) still fit their limits?"""
        for gate in self.gates:
            if not gate.admits():
                return False
        made: Admission = holds[0]
        holders = made.holders
        for index in made.fitters:  # noqa: SIM110 - a loop costs less than all() per start
            if not holders[index - 1].fits(holds[index]):
                return False
        return True

    def commit(self, holds: tuple[Any, ...], now: float) -> bool:
        """The handler starts now; True when a limit has news for a waiting scheduler."""
        news = False
        holders = self.holders
        for index in self.committers:
            if holders[index - 1].commit(holds[index], now):
                news = True
        return news

    def release(self, holds: tuple[Any, ...]) -> None:
        """The work will not start: every hold goes back."""
        single = self.single
        if single is not None:
            single.release(holds[1])
            return
        for index, limit in enumerate(self.holders, 1):
            limit.release(holds[index])

    def settle(
        self,
        holds: tuple[Any, ...],
        work: WorkUnit,
        now: float,
        error: BaseException | None,
        *,
        still_running: bool = False,
    ) -> None:
        """The handler ended (``still_running``: its thread runs on, so what it holds while
        running is settled later by :meth:`settle_held`)."""
        single = self.single
        if single is not None:
            if not (still_running and single.held_while_running):
                single.settle(holds[1], work, now, error)
            return
        for index, limit in enumerate(self.holders, 1):
            if not (still_running and limit.held_while_running):
                limit.settle(holds[index], work, now, error)

    def settle_held(self, holds: tuple[Any, ...], work: WorkUnit, now: float) -> None:
        """A handler's thread that outlived its attempt returned: its slots go back."""
        for index, limit in enumerate(self.holders, 1):
            if limit.held_while_running:
                limit.settle(holds[index], work, now, None)

    async def settle_async(self, work: WorkUnit, error: BaseException | None) -> None:
        for limit in self.awaiting:
            await limit.settle_async(None, work, error)

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        """When time lets one more work start (inf: only an event will)."""
        ready = -math.inf
        for limit in self.limits:
            at = limit.ready_at(work, now)
            if at > ready:
                ready = at
                if ready == math.inf:
                    break
        return ready

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        """The first reason a limit refuses this work now, or None."""
        for limit in self.order:
            reason = limit.blocked(work, now)
            if reason is not None:
                return reason
        return None

    def unused(self) -> None:
        """A dispatch turn ended: what a limit took in advance and nobody used goes back."""
        for limit in self.holders:
            limit.unused()


_RANK = {"store": 0, "pause": 1, "concurrency": 2, "threads": 3, "rate": 4}


def _describe_rank(limit: Limit) -> int:
    return _RANK.get(limit.kind, len(_RANK))


def bind_limits(limits: Sequence[Limit], tg: TaskGroup, wake: Callable[[], None]) -> None:
    """Give the limits the cue's task group and its scheduler's wake-up."""
    for limit in limits:
        limit.bind(tg.start_soon, wake)
