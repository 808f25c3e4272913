"""The fleet: what this cue holds in a shared store, kept alive, and given up when it is lost.

With ``Cue(store=...)``, work can hold two things in the store while it runs: a **lease** (a
slot of a ``shared=True`` service with ``concurrent``) and a **claim** (keyed work). Both live
``lease_ttl`` seconds on the store's clock unless renewed; the keeper renews them once the
oldest has used a third of that (at once for a grant whose request took that long to answer),
and after a round the store did not answer, tries again within a tenth of the TTL rather than
a third, so one lost round trip does not cost a holding granted just after an outage.

**What holds when the store cannot be reached.** Each holding has a local deadline: the time
the request that granted (or last renewed) it was *sent*, plus ``lease_ttl``. The store set
its expiry after it received that request, so the holding surely lives until then, whatever
happened since. A holding not renewed by ``LEASE_MARGIN`` of the TTL before that deadline is
lost: its running handler is cancelled and the attempt fails with :class:`LeaseLost` (retried
if the task's ``retry`` allows, after claiming and leasing again) -- before the store frees
the slot or the claim for anyone else, as long as the handler can be cancelled (an async
handler, at its next await) and this process is not itself stopped. Neither a sync handler
(a thread cannot be stopped) nor a paused process can be held back by a client-side timer:
for those, every grant carries a **fencing token**, an integer that grows with every grant of
the same service's lease or of any claim (also across a store restart: it never falls below
the store's clock in microseconds), given to the handler as ``work.fencing_token``. A system
the handler writes to can refuse writes that carry a token older than one it has seen.

**Shared cost windows.** A shared service with ``costs=`` on a :class:`CostStore` keeps its
cost windows in the store too: each grant records the work's estimate (every dimension, 0
where the task estimates none) under the start's own name, and the attempt's end settles it
to what the handler charged (``work.charge``, ``actual_cost``) before the lease is given
back, so the process that gets the freed slot already sees the charge. Nothing charged: the
estimate stands (no round trip). A grant whose work never started settles to 0. A settlement
the store did not take (unreachable) is retried with every renewal round -- settling is
safe to repeat -- until it lands or its start has left the longest cost window, when it no
longer matters; until then the estimate counts everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import CostTooLargeError, LeaseLost, RateLimited
from ._hooks import logger
from ._store import CostStore, Store

if TYPE_CHECKING:
    from ._service import Service
    from ._work import WorkUnit

__all__ = ["LEASE_MARGIN", "Fleet", "Holding"]

LEASE_MARGIN = 0.1  # a holding not renewed this share of the TTL before it expires is lost


class Holding:
    """What one work holds in the store: a lease of its service, a claim on its key."""

    __slots__ = (
        "claim",
        "claimed_until",
        "costed",
        "lease",
        "leased_until",
        "lost",
        "scope",
        "service",
        "started",
    )

    def __init__(self) -> None:
        self.service: str | None = None  # the shared service of the start (None: none)
        self.lease: str | None = None  # the start's lease in the store (with `concurrent`)
        self.costed: tuple[str, float] | None = None  # (the start's name, its cost horizon)
        self.started = False  # the granted start's handler was called
        self.leased_until = math.inf  # the local deadline of its lease (inf: no lease held)
        self.claim: str | None = None  # the claim key
        self.claimed_until = math.inf
        self.scope: anyio.CancelScope | None = None  # around the running handler
        self.lost: str | None = None  # why the holding was lost

    @property
    def until(self) -> float:
        return min(self.leased_until, self.claimed_until)


def _charged(work: WorkUnit) -> dict[str, float] | None:
    """What the attempt charged (``work.charge``, ``actual_cost``); None: the estimate stands."""
    extra = work._extra
    return None if extra is None or extra.charged is None else dict(extra.charged)


def _answer(result: float) -> tuple[float, int | None]:
    """A store's ``acquire`` answer: seconds to wait, and the lease's fencing token if any."""
    token = getattr(result, "fencing_token", None)
    return float(result), (None if token is None else int(token))


class Fleet:
    """Leases, claims, their renewal and their loss, for one cue with a store."""

    def __init__(self, store: Store, *, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock
        self.owner = ""  # this cue's identity in the store (set when it starts)
        self.ttl = 10.0
        self.holdings: dict[int, Holding] = {}  # work._seq -> what it holds
        # Settlements the store did not take yet: (service, start name) -> (actual, horizon).
        self.unsettled: dict[tuple[str, str], tuple[dict[str, float], float]] = {}
        self.costs = isinstance(store, CostStore)  # the store keeps cost windows
        self._keeper_event: anyio.Event | None = None
        self.seq = 0

    def bind(self, clock: Callable[[], float], owner: str) -> None:
        self.clock = clock
        self.owner = owner
        self._keeper_event = None

    def _holding(self, work: WorkUnit) -> Holding:
        holding = self.holdings.get(work._seq)
        if holding is None:
            holding = self.holdings[work._seq] = Holding()
        return holding

    def claimed(self, work: WorkUnit) -> bool:
        holding = self.holdings.get(work._seq)
        return holding is not None and holding.claim is not None

    def _wanted(self) -> None:
        if self._keeper_event is not None:
            self._keeper_event.set()

    # ------------------------------------------------------------------ taking

    async def claim(self, work: WorkUnit) -> bool:
        """Claim keyed work for this cue; True when it holds the claim now."""
        key = f"{work.task}:{work.key!r}"
        sent_at = self.clock()
        try:
            result = await self.store.claim(key, self.owner, self.ttl)
        except Exception as exc:
            logger.warning("runcue: could not claim %s in the store (%r); retrying", work, exc)
            return False
        if not result:
            return False
        holding = self._holding(work)
        holding.claim = key
        holding.claimed_until = sent_at + self.ttl
        holding.lost = None
        if not isinstance(result, bool):
            work.fencing_token = int(result)
        self._wanted()
        return True

    async def acquire(self, service: Service, work: WorkUnit) -> float:
        """Ask the store for one start of a shared service; 0.0 when granted (the work then
        holds it), else seconds to wait (refused, or the store is unreachable)."""
        assert service.name is not None
        self.seq += 1
        lease = f"{self.owner}:{work.id}:{work.attempt}:{self.seq}"
        windows = service.rate.specs if service.rate is not None else ()
        costs = self._costs(service, work)
        sent_at = self.clock()
        try:
            # (costs= only to a CostStore: a Store written before costs takes no such keyword)
            extra: dict[str, Any] = {"costs": costs} if costs else {}
            answer = await self.store.acquire(
                service.name,
                windows=windows,
                concurrent=service.concurrent,
                lease=lease,
                ttl=self.ttl,
                **extra,
            )
            wait, token = _answer(answer)
        except CostTooLargeError as exc:
            # Only after the service's cost windows were made smaller than this estimate
            # (submit() refuses such work): it waits, as it would in one process, and says why.
            logger.warning("runcue: %s cannot start: %s", work, exc)
            return 1.0
        except Exception as exc:
            service.store_backoff = min(5.0, max(0.05, service.store_backoff * 2))
            if service.store_error is None:
                logger.warning(
                    "runcue: the store is unreachable for shared service %r (%r); it starts"
                    " nothing until the store answers again (retrying with backoff)",
                    service.name,
                    exc,
                )
            service.store_error = repr(exc)
            return service.store_backoff
        if service.store_error is not None:
            logger.warning(
                "runcue: the store answers again; shared service %r resumes", service.name
            )
        service.store_error = None
        service.store_backoff = 0.0
        if wait > 0:
            return wait
        holding = self._holding(work)
        holding.service = service.name
        holding.lost = None
        if costs:
            horizon = sent_at + max(spec.period for _, spec, _ in costs)
            holding.costed = (lease, horizon)
            holding.started = False
        if service.concurrent is not None:  # a lease only exists with a concurrency limit
            holding.lease = lease
            holding.leased_until = sent_at + self.ttl
            self._wanted()
            if token is not None and holding.claim is None:
                work.fencing_token = token
        return 0.0

    def _costs(self, service: Service, work: WorkUnit) -> list[tuple[str, Any, float]]:
        """``(dimension, window, estimate)`` for each cost window of a shared service, when
        the store keeps them (else empty)."""
        cost = service.cost
        if cost is None or not self.costs:
            return []
        estimate = work.cost or {}
        return [
            (dimension, spec, float(estimate.get(dimension, 0.0)))
            for dimension, spec, _ in cost.limiter.windows()
        ]

    async def _settle(
        self, service: str, lease: str, actual: dict[str, float], horizon: float
    ) -> None:
        """Settle one start's cost in the store; kept for the next renewal if it fails."""
        assert isinstance(self.store, CostStore)
        try:
            await self.store.settle(service, lease, actual)
        except Exception as exc:
            if horizon > self.clock():
                if not self.unsettled:
                    logger.warning(
                        "runcue: settling the cost of a start of shared service %r failed"
                        " (%r); its estimate counts until a retry lands",
                        service,
                        exc,
                    )
                self.unsettled[(service, lease)] = (actual, horizon)
                self._wanted()
        else:
            self.unsettled.pop((service, lease), None)

    async def settle_pending(self) -> None:
        """Retry the settlements the store did not take; drop those past their horizon."""
        now = self.clock()
        for (service, lease), (actual, horizon) in list(self.unsettled.items()):
            if horizon <= now:
                del self.unsettled[(service, lease)]
                logger.warning(
                    "runcue: the cost of start %s of shared service %r was never settled in"
                    " the store; its estimate counted instead",
                    lease,
                    service,
                )
                continue
            await self._settle(service, lease, actual, horizon)

    # ------------------------------------------------------------------ keeping

    async def keep(self) -> None:
        """Renew every lease and claim held before a third of its TTL is used (a task of the
        cue); after a failed round, again within a tenth of the TTL."""
        failed = False
        while True:
            if not self.unsettled and not any(h.lease or h.claim for h in self.holdings.values()):
                self._keeper_event = anyio.Event()
                await self._keeper_event.wait()
            await anyio.sleep(self.pause(failed))
            failed = not await self.renew()
            if self.unsettled:
                await self.settle_pending()

    def pause(self, failed: bool) -> float:
        """Seconds until the next renewal round: a tenth of the TTL after a failed round,
        else when the oldest holding has used a third of its TTL (at most a third of the TTL
        from now, at least a hundredth: never a busy loop)."""
        if failed:
            return self.ttl / 10
        until = min((h.until for h in self.holdings.values() if h.lost is None), default=math.inf)
        return max(self.ttl / 100, min(self.ttl / 3, until - self.ttl * 2 / 3 - self.clock()))

    async def renew(self) -> bool:
        """One round of renewals; a holding the store no longer has is lost at once. False
        when the store could not be reached."""
        leases: dict[str, dict[str, Holding]] = {}
        claims: dict[str, Holding] = {}
        for holding in list(self.holdings.values()):
            if holding.lost is not None:
                continue
            if holding.lease is not None and holding.service is not None:
                leases.setdefault(holding.service, {})[holding.lease] = holding
            if holding.claim is not None:
                claims[holding.claim] = holding
        try:
            for service_name, held in leases.items():
                sent_at = self.clock()
                gone = await self.store.renew(service_name, list(held), self.ttl)
                for lease, holding in held.items():
                    if gone and lease in gone:
                        self._lose(holding, f"its lease of shared service {service_name!r} expired")
                    elif holding.lease == lease:
                        holding.leased_until = sent_at + self.ttl
            if claims:
                sent_at = self.clock()
                gone = await self.store.renew_claims(list(claims), self.owner, self.ttl)
                for key, holding in claims.items():
                    if gone and key in gone:
                        self._lose(holding, f"its claim on {key!r} expired")
                    elif holding.claim == key:
                        holding.claimed_until = sent_at + self.ttl
        except Exception as exc:
            logger.warning("runcue: renewing leases in the store failed (%r)", exc)
            return False
        return True

    def next_deadline(self) -> float:
        """When the first holding runs out unless renewed first (the scheduler wakes then)."""
        margin = LEASE_MARGIN * self.ttl
        until = min((h.until for h in self.holdings.values() if h.lost is None), default=math.inf)
        return until - margin

    def expire(self, now: float) -> None:
        """Give up every holding not renewed in time: its handler is cancelled."""
        margin = LEASE_MARGIN * self.ttl
        for holding in list(self.holdings.values()):
            if holding.lost is None and holding.until - margin <= now:
                self._lose(
                    holding,
                    f"the store could not be reached to renew it within lease_ttl={self.ttl:g}s",
                )

    def _lose(self, holding: Holding, why: str) -> None:
        if holding.lost is not None:
            return
        holding.lost = why
        logger.warning("runcue: a store holding was lost (%s)", why)
        if holding.scope is not None:
            holding.scope.cancel()
        else:  # not running: forget it, so the work claims and leases again before it runs
            holding.claim = holding.lease = None
            holding.claimed_until = holding.leased_until = math.inf

    # ------------------------------------------------------------------ running

    def guard(self, work: WorkUnit) -> anyio.CancelScope | None:
        """A cancel scope for the handler of work that holds something (else None)."""
        holding = self.holdings.get(work._seq)
        if holding is None:
            return None
        holding.started = True
        if holding.lease is None and holding.claim is None:
            return None
        holding.scope = anyio.CancelScope()
        return holding.scope

    def lost(self, work: WorkUnit, scope: anyio.CancelScope) -> LeaseLost | None:
        """After the handler: the error when its holding was lost (and its scope cancelled)."""
        holding = self.holdings.get(work._seq)
        if holding is None:
            return None
        holding.scope = None
        if holding.lost is None or not scope.cancel_called:
            return None
        why = holding.lost
        holding.claim = None  # retried: claimed again first
        holding.claimed_until = math.inf
        return LeaseLost(
            f"lease lost: {work} was cancelled because {why}; another process may hold its"
            " slot or claim now (pass work.fencing_token to what the handler writes)"
        )

    async def after_attempt(self, work: WorkUnit, error: BaseException | None) -> None:
        """Give the attempt's lease back (and pause the service for every process after a
        ``RateLimited``); shielded and bounded, like every store call at an attempt's end."""
        holding = self.holdings.get(work._seq)
        if holding is None or holding.service is None:
            return
        service_name, lease, costed = holding.service, holding.lease, holding.costed
        holding.service = holding.lease = holding.costed = None
        holding.leased_until = math.inf
        if holding.claim is None:
            del self.holdings[work._seq]
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            if costed is not None:
                charged = _charged(work)
                if charged is not None:  # nothing charged: the estimate stands
                    await self._settle(service_name, costed[0], charged, costed[1])
            try:
                if lease is not None:
                    await self.store.release(service_name, lease)
                if isinstance(error, RateLimited):
                    await self.store.pause(service_name, error.retry_after)
            except Exception as exc:
                logger.warning("runcue: giving lease %s back failed (%r)", lease, exc)

    def holds(self, work: WorkUnit) -> bool:
        return work._seq in self.holdings

    async def give_back(self, work: WorkUnit) -> None:
        """Return a finished (or cancelled) work's lease and claim (shielded, bounded)."""
        holding = self.holdings.pop(work._seq, None)
        if holding is None:
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            if holding.costed is not None and holding.service is not None:
                # A start that ended without after_attempt (cancelled, the cue stopped): what
                # it charged; nothing if its handler was never called; else the estimate.
                lease, horizon = holding.costed
                actual = _charged(work)
                if actual is None and not holding.started:
                    actual = dict.fromkeys(work.cost or {}, 0.0)
                if actual:
                    await self._settle(holding.service, lease, actual, horizon)
            try:
                if holding.lease is not None and holding.service is not None:
                    await self.store.release(holding.service, holding.lease)
                if holding.claim is not None:
                    await self.store.release_claim(holding.claim, self.owner)
            except Exception as exc:
                logger.warning(
                    "runcue: giving %s's lease back to the store failed (%r); it expires"
                    " within %gs",
                    work,
                    exc,
                    self.ttl,
                )
