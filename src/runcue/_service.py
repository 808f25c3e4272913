"""A service: its limits (concurrency slots and a sliding-window rate), its queue, its counts."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._rate import RateLimiter, RateSpec, parse_rate

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = ["Service", "Slots", "validate_concurrent"]


class Slots:
    """A service's concurrency slots: a counter with a CapacityLimiter's attribute names.

    Only the scheduler takes and gives slots, and it never waits for one (a full service
    leaves its work queued), so a limiter's per-borrower bookkeeping and waiter queue would be
    pure cost on every start. ``total_tokens`` may drop below ``borrowed_tokens`` when a live
    reconfiguration lowers ``concurrent``: no new start happens until enough have finished.
    """

    __slots__ = ("borrowed_tokens", "total_tokens")

    def __init__(self, total_tokens: float) -> None:
        self.total_tokens = total_tokens
        self.borrowed_tokens = 0

    @property
    def available_tokens(self) -> float:
        """Slots free right now (at most 0 when full)."""
        return self.total_tokens - self.borrowed_tokens


def validate_concurrent(name: str, concurrent: object) -> int | None:
    """Check ``concurrent=`` for service ``name``; None means unlimited."""
    if concurrent is None:
        return None
    if isinstance(concurrent, bool) or not isinstance(concurrent, int) or concurrent < 1:
        msg = (
            f"service {name!r}: concurrent must be a whole number >= 1 (or None for no limit),"
            f" got {concurrent!r}"
        )
        raise ValueError(msg)
    return concurrent


class Service:
    """A named bucket of limits. It executes nothing; the scheduler asks it for room."""

    __slots__ = (
        "_clock",
        "abandoned",
        "completed",
        "concurrent",
        "failed",
        "limiter",
        "max_running",
        "name",
        "paused_until",
        "queue",
        "queued",
        "rate",
        "rate_text",
        "retried",
        "running",
        "shared",
        "shared_wait_until",
        "skipped",
        "spares",
        "started",
        "store_backoff",
        "store_error",
        "waking",
    )

    def __init__(self, name: str, *, clock: Callable[[], float]) -> None:
        self.name = name
        self._clock = clock
        self.concurrent: int | None = None
        self.rate_text: str | None = None
        self.rate: RateLimiter | None = None
        self.limiter: Slots | None = None  # made once the loop runs
        self.paused_until = -math.inf
        # Candidates waiting for room: a heap of (order key, sequence, token, work).
        self.queue: list[tuple[float, int, int, WorkUnit]] = []
        self.queued = 0  # live entries in `queue` (stale ones are dropped lazily)
        self.running = 0
        self.abandoned = 0  # sync handlers past their timeout or cancel: their threads still run
        self.max_running = 0
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.skipped = 0
        self.retried = 0
        self.spares: list[Any] = []  # idle runners of this service waiting for work (scheduler's)
        self.waking = 0  # spares handed a work that have not resumed yet
        self.shared = False  # limits kept in the cue's store, for every process
        self.shared_wait_until = -math.inf
        self.store_error: str | None = None
        self.store_backoff = 0.0

    def configure(self, *, rate: str | None, concurrent: int | None) -> None:
        """Set (or change, while running) the limits. Past starts still count."""
        specs: tuple[RateSpec, ...] = parse_rate(rate) if rate is not None else ()
        concurrent = validate_concurrent(self.name, concurrent)
        if not specs:
            self.rate = None
        elif self.rate is None:
            self.rate = RateLimiter(specs, clock=self._clock)
        else:
            # In place: attempts holding a reservation keep a reference to this limiter.
            self.rate.reconfigure(specs)
        self.rate_text = rate
        self.concurrent = concurrent
        if self.limiter is not None:
            self.limiter.total_tokens = math.inf if concurrent is None else concurrent

    def bind(self, clock: Callable[[], float], shift: float = 0.0) -> None:
        """Adopt the loop's clock once a run starts (and the slots, the first time).

        ``shift`` moves times kept from an earlier run onto this run's clock.
        """
        self._clock = clock
        if self.rate is not None:
            self.rate.set_clock(clock)
            if shift:
                self.rate.shift(shift)
        if shift and self.paused_until != -math.inf:
            self.paused_until += shift
        self.shared_wait_until = -math.inf
        self.spares.clear()
        self.waking = 0
        if self.limiter is None:
            self.limiter = Slots(math.inf if self.concurrent is None else self.concurrent)

    def free_slots(self, clock: Callable[[], float]) -> float:
        """How many more starts the limits allow right now (inf when unlimited).

        Reads ``clock`` only when a pause or a rate makes time matter.
        """
        free = math.inf if self.limiter is None else self.limiter.available_tokens
        if free <= 0:
            return 0
        if self.paused_until != -math.inf and self.paused_until > clock():
            return 0
        rate = self.rate
        if rate is not None:
            free = min(free, min(spec.limit - used for spec, used in rate.used()))
        return max(free, 0)
