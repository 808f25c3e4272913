"""Fair shares of a service between tenants: the queue served round robin, and each tenant's
own rate.

A service whose works carry a tenant (``submit(..., tenant="acme")``, or the ``key`` of its
:class:`Tenants`) keeps its waiting work in a :class:`TenantQueue`: per-tenant priority heaps
served by weighted round robin (``_fair.FairQueue``), so priority orders work *within* a
tenant and a tenant with 50,000 works queued delays another tenant's first work by at most one
free slot. A tenant's own rate (``Tenants(rate="10/min")``, or per tenant) is a limit of the
one protocol, :class:`TenantRateLimit`: a start is reserved at admission, counted from the
handler's start, released if the work does not start; a tenant whose rate is spent is left
out of the round until its next slot, and the others are served meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._fair import Entry, FairQueue
from ._limits import NO_HOLD, Limit, span
from ._queues import NOWHERE, QUEUED, WorkQueue
from ._rate import parse_rate

if TYPE_CHECKING:
    from ._work import WorkUnit

__all__ = ["TenantQueue", "TenantRateLimit", "Tenants"]


@dataclass(frozen=True)
class Tenants:
    """How a service shares its limits between tenants.

    :param key: ``work -> tenant`` for works submitted without ``tenant=`` (None: those
        works share the tenant ``None``).
    :param weights: a tenant's share relative to the others (default 1.0): a tenant of
        weight 2 gets two starts for every one of a tenant of weight 1 while both wait.
    :param rate: every tenant's own rate, ``"N/period"`` (None: no per-tenant rate).
    :param rates: rates for particular tenants, instead of ``rate``.
    """

    key: Callable[[WorkUnit], Any] | None = None
    weights: Mapping[Any, float] = field(default_factory=dict)
    rate: str | None = None
    rates: Mapping[Any, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.key is not None and not callable(self.key):
            msg = f"Tenants(key=...) must be a function of the work, got {self.key!r}"
            raise TypeError(msg)
        for tenant, weight in self.weights.items():
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not (weight > 0 and math.isfinite(weight))
            ):
                msg = (
                    f"Tenants(weights=...): the weight of {tenant!r} must be a number > 0,"
                    f" got {weight!r}"
                )
                raise ValueError(msg)
        if self.rate is not None:
            parse_rate(self.rate)
        for rate in self.rates.values():
            parse_rate(rate)

    def queue(self, clock: Callable[[], float]) -> TenantQueue:
        return TenantQueue(
            FairQueue(weights=self.weights, rates=self.rates, default_rate=self.rate), clock
        )


def _is_live(entry: Entry[WorkUnit]) -> bool:
    work = entry[3]
    return work._where == QUEUED and work._token == entry[2]


class TenantQueue(WorkQueue):
    """A service's waiting work, round robin across tenants (the :class:`WorkQueue` API)."""

    __slots__ = ("clock", "fair")

    def __init__(self, fair: FairQueue[WorkUnit], clock: Callable[[], float]) -> None:
        super().__init__()
        self.fair = fair
        self.clock = clock

    def push(self, work: WorkUnit, key: float) -> None:
        work._token += 1
        work._where = QUEUED
        self.fair.push(work.tenant, (key, work._seq, work._token, work))
        self.live += 1

    def pop(self) -> WorkUnit | None:
        """The next work in the round (None also while every tenant waits for its rate)."""
        entry = self.fair.pop(self.clock(), _is_live, reserve=False)
        if entry is None:
            return None
        self.live -= 1
        return entry[3]

    def head(self) -> WorkUnit | None:
        entry = self.fair.peek(self.clock(), _is_live)
        return None if entry is None else entry[3]

    def discard(self, work: WorkUnit) -> None:
        work._where = NOWHERE
        self.live -= 1

    def _live_entries(self) -> list[Entry[WorkUnit]]:
        fair = self.fair
        return [
            entry
            for tenant in list(fair.tenants())
            for entry in fair._tenants[tenant].entries
            if _is_live(entry)
        ]

    def entries(self) -> Iterator[WorkUnit]:
        for entry in self._live_entries():
            yield entry[3]

    def drain(self) -> list[tuple[float, WorkUnit]]:
        live = [(entry[0], entry[3]) for entry in self._live_entries()]
        self.fair.clear()
        self.live = 0
        for _, work in live:
            work._where = NOWHERE
        return live

    def ready_at(self, now: float) -> float:
        """When a tenant held back by its rate may be served again (-inf: one may now)."""
        if not self.live or self.fair.peek(now, _is_live) is not None:
            return -math.inf
        return self.fair.next_ready_at(now)


class TenantRateLimit(Limit):
    """Each tenant's own rate: a holder reserving a start of the work's tenant."""

    kind = "tenant_rate"

    __slots__ = ("clock", "label", "queue", "wake")

    def __init__(self, queue: TenantQueue, label: str, clock: Callable[[], float]) -> None:
        self.queue = queue
        self.label = label
        self.clock = clock
        self.wake: Callable[[], None] | None = None

    def bind(self, spawn: Callable[..., Any], wake: Callable[[], None]) -> None:
        self.wake = wake

    def reserve(self, work: WorkUnit) -> Any:
        tenant = work.tenant
        if self.queue.fair.rate_of(tenant) is None and not self._rated(tenant):
            return NO_HOLD
        return (tenant,) if self.queue.fair.reserve(tenant, self.clock()) else None

    def _rated(self, tenant: Any) -> bool:
        fair = self.queue.fair
        return fair._rates.get(tenant, fair._default_rate) is not None

    def commit(self, hold: Any, now: float) -> bool:
        if hold is NO_HOLD:
            return False
        return self.queue.fair.commit(hold[0], now)

    def release(self, hold: Any) -> None:
        freed = hold is not NO_HOLD and self.queue.fair.release(hold[0], self.clock())
        if freed and self.wake is not None:
            self.wake()

    def ready_at(self, work: WorkUnit | None, now: float) -> float:
        if work is None:
            return -math.inf
        rate = self.queue.fair.rate_of(work.tenant)
        if rate is None:
            return -math.inf
        ready = rate.next_free(now)
        return ready if ready > now else -math.inf

    def blocked(self, work: WorkUnit, now: float) -> tuple[str, str] | None:
        rate = self.queue.fair.rate_of(work.tenant)
        if rate is None:
            return None
        ready = rate.next_free(now)
        if ready <= now:
            return None
        return (
            "tenant_rate_limited",
            f"tenant {work.tenant!r} used its rate on {self.label}; next slot in"
            f" {span(ready - now)}",
        )
