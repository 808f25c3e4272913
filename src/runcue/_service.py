"""A service: its limits (see ``_limits.py``), its queue of waiting work, the stream its idle
runners wait on, and its counts. It executes nothing; the scheduler asks its admission for room.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from . import _backend
from ._budgets import AdaptiveLimit, CostLimit, ObservedLimit
from ._costs import CostLimiter
from ._limits import Admission, Limit, PauseLimit, RateLimit, StoreLimit
from ._queues import WorkQueue
from ._rate import RateLimiter, RateSpec, parse_rate
from ._slots import ConcurrencyLimit, ThreadLimit
from ._tenants import TenantRateLimit, Tenants

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from ._fleet import Fleet
    from ._work import WorkUnit

__all__ = ["MAX_IDLE", "Service", "validate_concurrent"]

MAX_IDLE = 128  # most idle runners a service keeps


def validate_concurrent(name: str | None, concurrent: object) -> int | None:
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
    """A named bucket of limits, with the work that waits for them."""

    __slots__ = (
        "_clock",
        "_fleet",
        "_limiter_backend",
        "_threads",
        "abandoned",
        "adaptive",
        "admission",
        "completed",
        "concurrency",
        "concurrent",
        "cost",
        "costs_text",
        "failed",
        "handing",
        "idle_runners",
        "label",
        "limiter",
        "max_running",
        "max_wait",
        "name",
        "observed",
        "pause",
        "queue",
        "rate",
        "rate_text",
        "receive",
        "retried",
        "running",
        "send",
        "shared",
        "shared_wait_until",
        "skipped",
        "started",
        "store_backoff",
        "store_error",
        "tenant_rate",
        "tenants",
    )

    def __init__(self, name: str | None, *, clock: Callable[[], float]) -> None:
        self.name = name
        self.label = "work without a service" if name is None else f"service {name!r}"
        self._clock = clock
        self.concurrent: int | None = None
        self.rate_text: str | None = None
        self.rate: RateLimiter | None = None
        self.limiter: anyio.CapacityLimiter | None = None  # made on first need (see capacity)
        self._limiter_backend: str | None = None
        self.pause = PauseLimit(self.label, clock)
        self.concurrency: ConcurrencyLimit | None = None
        self.costs_text: dict[str, str] | None = None
        self.cost: CostLimit | None = None  # the cost windows (costs=)
        self.observed: ObservedLimit | None = None  # what the server said (work.observe)
        self.adaptive: AdaptiveLimit | None = None  # adaptive=True
        self.tenants: Tenants | None = None
        self.tenant_rate: TenantRateLimit | None = None
        self.max_wait: float | None = None
        self._threads: ThreadLimit | None = None  # (kept from bind, for a rebuild)
        self._fleet: Fleet | None = None
        self.admission = Admission(())
        self.queue = WorkQueue()
        # To idle runners: admitted work (its holds on it); made in bind().
        self.send: MemoryObjectSendStream[WorkUnit] | None = None
        self.receive: MemoryObjectReceiveStream[WorkUnit] | None = None
        self.idle_runners = 0  # runners waiting on the stream
        self.handing = 0  # works sent to idle runners that have not resumed yet
        self.running = 0
        self.abandoned = 0  # sync handlers past their timeout or cancel: their threads still run
        self.max_running = 0
        self.started = 0
        self.completed = 0
        self.failed = 0
        self.skipped = 0
        self.retried = 0
        self.shared = False  # limits kept in the cue's store, for every process
        self.shared_wait_until = -math.inf
        self.store_error: str | None = None
        self.store_backoff = 0.0

    # ------------------------------------------------------------------ limits

    @property
    def paused_until(self) -> float:
        return self.pause.until

    def configure(
        self,
        *,
        rate: str | None,
        concurrent: int | None,
        costs: Mapping[str, str] | None = None,
        adaptive: bool = False,
        tenants: Tenants | None = None,
        max_wait: float | None = None,
    ) -> None:
        """Set (or change, while running) the limits. Past starts still count; validates
        everything before it changes anything."""
        specs: tuple[RateSpec, ...] = parse_rate(rate) if rate is not None else ()
        concurrent = validate_concurrent(self.name, concurrent)
        cost_limiter = self._cost_limiter(costs)
        if not isinstance(adaptive, bool):
            msg = f"{self.label}: adaptive must be True or False, got {adaptive!r}"
            raise TypeError(msg)
        if adaptive and concurrent is None:
            msg = (
                f"{self.label}: adaptive=True learns how many calls may run at once between 1"
                " and concurrent=; give the service a concurrent= ceiling"
            )
            raise ValueError(msg)
        if tenants is not None and not isinstance(tenants, Tenants):
            msg = f"{self.label}: tenants must be a runcue.Tenants(...), got {tenants!r}"
            raise TypeError(msg)
        if cost_limiter is not self._unchanged:
            self.costs_text = None if costs is None else dict(costs)
            self.cost = (
                None
                if cost_limiter is None
                else CostLimit(cost_limiter, dict(costs or {}), self.label, self._now)
            )
        if adaptive and concurrent is not None:
            if self.adaptive is None:
                self.adaptive = AdaptiveLimit(concurrent, self.label)
            else:
                self.adaptive.controller.resize(concurrent)
        else:
            self.adaptive = None
        self.max_wait = max_wait
        if tenants is not None:
            self.use_tenants(tenants)
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
            self.limiter.total_tokens = self._tokens()

    _unchanged: Any = object()

    def _cost_limiter(self, costs: Mapping[str, str] | None) -> Any:
        """The cost windows for ``costs=`` (validated), or ``_unchanged`` when they are the
        ones the service has (their history then stays)."""
        if costs is None:
            return None
        if self.costs_text is not None and dict(costs) == self.costs_text:
            return self._unchanged
        return CostLimiter(costs)

    def _now(self) -> float:
        return self._clock()

    def use_tenants(self, tenants: Tenants | None = None) -> None:
        """Serve the waiting work round robin across tenants (from now on)."""
        if tenants is None:
            if self.tenants is not None:
                return
            tenants = Tenants()
        waiting = self.queue.drain()
        self.tenants = tenants
        self.queue = queue = tenants.queue(self._now)
        self.tenant_rate = TenantRateLimit(queue, self.label, self._now)
        for key, work in waiting:  # (in their order: priority, then submission)
            queue.push(work, key)
        if self._threads is not None:
            self.rebuild(self._threads, self._fleet)

    def observe(self, work: WorkUnit, headers: Any) -> None:
        """``work.observe(headers)``: tighten to what the server says is left."""
        if self.observed is None:
            self.observed = ObservedLimit(self.label, self._now, self.left, self._pause_until)
            if self._threads is not None:
                self.rebuild(self._threads, self._fleet)
        hold = None
        holds = work._holds
        if holds is not None:
            admission = holds[0]
            for index, limit in enumerate(admission.holders, 1):
                if limit is self.observed:
                    hold = holds[index]
        self.observed.observe(hold, headers)

    def _pause_until(self, until: float) -> None:
        self.pause.pause(until)

    def left(self, dimension: str, now: float) -> float:
        """What the service's own windows still admit of ``dimension`` now (inf: none)."""
        if dimension == "requests":
            rate = self.rate
            if rate is None:
                return math.inf
            return float(min(spec.limit - used for spec, used in rate.used()))
        cost = self.cost
        return math.inf if cost is None else cost.left(dimension, now)

    def _tokens(self) -> float:
        return math.inf if self.concurrent is None else self.concurrent

    def capacity(self) -> anyio.CapacityLimiter:
        """The service's concurrency limiter (``cue.limiter(name)``), made on first need."""
        if self.limiter is None:
            self.limiter = anyio.CapacityLimiter(self._tokens())
            self._limiter_backend = _backend.current_backend()
        return self.limiter

    def rebuild(self, threads: ThreadLimit | None, fleet: Fleet | None) -> None:
        """Put the admission together from the current configuration."""
        limits: list[Limit] = [self.pause]
        if self.concurrency is None or self.concurrency.limiter is not self.capacity():
            self.concurrency = ConcurrencyLimit(self.capacity(), self.label)
            self.concurrency.wanted = self._wanted
        limits.append(self.concurrency)
        if self.adaptive is not None:
            limits.append(self.adaptive)
        if self.concurrent is None and threads is not None:
            limits.append(threads)
        if self.tenant_rate is not None:
            limits.append(self.tenant_rate)
        if self.shared and fleet is not None:
            limits.append(StoreLimit(fleet, self, self.label))
        elif self.rate is not None:
            assert self.rate_text is not None
            limits.append(RateLimit(self.rate, self.rate_text, self.label))
        if self.cost is not None and not (self.shared and fleet is not None and fleet.costs):
            limits.append(self.cost)  # (a store that keeps cost windows holds them instead)
        if self.observed is not None:
            limits.append(self.observed)
        self.admission = Admission(limits)

    def bind(
        self,
        clock: Callable[[], float],
        shift: float,
        threads: ThreadLimit,
        fleet: Fleet | None,
    ) -> None:
        """A run starts: adopt the loop's clock (``shift`` moves times kept from an earlier
        run onto it), make the dispatch stream, and build the admission."""
        self._clock = self.pause.clock = clock
        if self.rate is not None:
            self.rate.set_clock(clock)
            if shift:
                self.rate.shift(shift)
        if shift and self.pause.until != -math.inf:
            self.pause.until += shift
        self.shared_wait_until = -math.inf
        backend = _backend.current_backend()
        if self.limiter is not None and self._limiter_backend not in (None, backend):
            self.limiter = None  # made for another backend in an earlier run
        self.capacity()
        self._limiter_backend = backend
        # A buffer as large as the idle runners may be: a runner counts itself idle a moment
        # before the stream lists it as waiting (its receive() lets others run first), and
        # a work sent in that moment waits in the buffer for it. Nothing else is buffered:
        # a work is sent only to a runner counted idle and not yet given one.
        self.send, self.receive = anyio.create_memory_object_stream["WorkUnit"](MAX_IDLE)
        self.idle_runners = self.handing = 0
        self._threads, self._fleet = threads, fleet
        self.rebuild(threads, fleet)

    def close(self) -> None:
        if self.send is not None:
            self.send.close()
        if self.receive is not None:
            self.receive.close()
        self.send = self.receive = None

    def _wanted(self) -> bool:
        return self.queue.live > 0

    def free_slots(self) -> float:
        """A quick upper bound of how many more starts the limits may allow right now."""
        concurrency = self.concurrency
        free = math.inf if concurrency is None else concurrency.free()
        if free <= 0:
            return 0
        if not self.pause.admits():
            return 0
        if self.shared and self.shared_wait_until > self._clock():
            return 0
        rate = self.rate
        if rate is not None and not self.shared:
            free = min(free, min(spec.limit - used for spec, used in rate.used()))
        return max(free, 0)

    def ready_at(self, now: float) -> float:
        """When queued work may start, as far as time decides it (inf: only an event will)."""
        queue = self.queue
        return max(queue.ready_at(now), self.admission.ready_at(queue.head(), now))
