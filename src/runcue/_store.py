"""Shared state for limits across processes and machines: the ``Store`` protocol.

A cue created with ``runcue.Cue(store=...)`` keeps the limits of every service declared with
``shared=True`` in the store instead of in process memory, so every process that uses the same
store (and namespace) shares one budget:

- **rate**: every window of the service's rate is an exact sliding window kept by the store,
  on the store's clock; a start is recorded in all windows or none;
- **concurrency**: each running handler holds a *lease* with a time-to-live, renewed while it
  runs; a process that dies (even ``kill -9``) loses its leases within the TTL;
- **pause**: ``RateLimited(retry_after=)`` pauses the service for every process;
- **costs** (a :class:`CostStore` only): every cost window of the service (``costs=``, e.g.
  tokens) is kept by the store too: a start is admitted only if each window has room for the
  work's estimate, the estimate is recorded at the store's time of the start, and
  :meth:`CostStore.settle` replaces it by the actual amount once the handler ended;
- **work claims**: work submitted with ``key=`` is claimed before its checks are asked, so
  the same keyed work submitted by several processes runs once; the others wait, then see it
  done through ``is_stale`` (or take it over when the claim expires because its holder died).

When the store cannot be reached, shared services start nothing (they fail closed), retry with
backoff, and say so in the log, ``debug_blocked()`` and ``stats()``; nothing queued is lost.
A lease or claim that cannot be renewed before it expires is lost: its handler is cancelled
first (see ``_fleet.py`` for exactly what holds, and the fencing tokens).
:class:`runcue.RedisStore` implements this protocol on a Redis server.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._rate import RateSpec

__all__ = ["CostStore", "Grant", "Store"]


class Grant(float):
    """What ``Store.acquire`` returns for a start granted with a lease: 0.0 (no wait) that
    carries the lease's ``fencing_token``."""

    fencing_token: int

    def __new__(cls, fencing_token: int) -> Grant:
        grant = super().__new__(cls, 0.0)
        grant.fencing_token = fencing_token
        return grant

    def __repr__(self) -> str:
        return f"Grant(fencing_token={self.fencing_token})"


@runtime_checkable
class Store(Protocol):
    """What a cue needs from shared storage. Every method may raise when the store is down.

    Keeping cost windows is optional: a store that can do it implements :class:`CostStore`
    (``acquire`` takes ``costs=``, and there is ``settle``). A cue passes ``costs=`` and calls
    ``settle`` only on such a store -- it asks ``isinstance(store, runcue.CostStore)`` (which
    looks for a ``settle`` method) -- so a store written before costs existed keeps working
    for every service without cost windows.
    """

    async def acquire(
        self,
        service: str,
        *,
        windows: tuple[RateSpec, ...],
        concurrent: int | None,
        lease: str,
        ttl: float,
    ) -> float:
        """Take one start of ``service`` if every limit allows it, atomically.

        Records the start in every rate window and, when ``concurrent`` is set, holds
        ``lease`` for ``ttl`` seconds. Returns 0.0 when granted -- or ``Grant(token)``, a 0.0
        that carries the lease's fencing token, greater than every token granted for this
        service before -- otherwise changes nothing and returns the seconds to wait before
        asking again (a pause, a full window, or all leases taken).
        """
        ...

    async def renew(self, service: str, leases: list[str], ttl: float) -> Collection[str] | None:
        """Extend these leases of ``service`` to ``ttl`` seconds from now; returns the leases
        that could not be renewed because they had expired (None: all renewed, or unknown).
        The cue treats those as lost: their handlers are cancelled."""
        ...

    async def release(self, service: str, lease: str) -> None:
        """Give a lease back (the handler finished)."""
        ...

    async def pause(self, service: str, seconds: float) -> None:
        """Start nothing of ``service`` anywhere for ``seconds`` (never shortens a pause)."""
        ...

    async def claim(self, key: str, owner: str, ttl: float) -> bool | int:
        """Claim keyed work for ``owner`` for ``ttl`` seconds. Falsy when another owner holds
        it; when ``owner`` holds it now: True, or the claim's fencing token (an int >= 1,
        greater than every token granted for a claim before)."""
        ...

    async def renew_claims(self, keys: list[str], owner: str, ttl: float) -> Collection[str] | None:
        """Extend the claims ``owner`` holds on ``keys``; returns the keys it no longer held
        (None: all renewed, or unknown)."""
        ...

    async def release_claim(self, key: str, owner: str) -> None:
        """Give up a claim (the work finished); only the holder's claim is removed."""
        ...

    async def aclose(self) -> None:
        """Release the connection(s)."""
        ...


@runtime_checkable
class CostStore(Store, Protocol):
    """A :class:`Store` that also keeps the cost windows of shared services (amounts such as
    tokens, counted in sliding windows like starts, settled on the actual amount).

    The cue recognises one with ``isinstance(store, CostStore)``: it then passes every cost
    window of a shared service to :meth:`acquire`, and calls :meth:`settle` once per granted
    start when the attempt ended (or when the start did not happen after all: actual 0).
    """

    async def acquire(
        self,
        service: str,
        *,
        windows: tuple[RateSpec, ...],
        concurrent: int | None,
        lease: str,
        ttl: float,
        costs: Sequence[tuple[str, RateSpec, float]] = (),
    ) -> float:
        """:meth:`Store.acquire`, and the cost windows admit together with the other limits.

        ``costs`` holds one ``(dimension, window, estimate)`` per cost window of the service
        (a dimension with several windows appears once per window, with the same estimate):
        the start is admitted only if, for every window whose estimate is above 0, the amounts
        recorded in the last ``window.period`` seconds plus the estimate stay within
        ``window.limit``. A dimension estimated at 0 holds nothing back. When admitted, the
        estimate of every dimension is recorded under ``lease`` at the store's time of the
        start, so that :meth:`settle` can replace it (each acquire with ``costs`` needs a
        lease name never used before, also without ``concurrent``); a refusal changes
        nothing and returns the seconds until every window has room for its estimate
        (amounts recorded before leave their windows; nothing else is assumed).

        :raises CostTooLargeError: an estimate above a window's limit (it could never fit).
        """
        ...

    async def settle(self, service: str, lease: str, actual: Mapping[str, float]) -> None:
        """Replace the amounts recorded for ``lease``'s start by ``actual``, at the start's
        original time, in every window that still counts it: a lower actual frees room at
        once, a higher one is debt that later admissions wait for. A dimension missing from
        ``actual`` keeps its recorded amount. Safe to repeat: settling again with the same
        ``actual`` changes nothing, and a lease whose start has left every window (or was
        never recorded, or was lost with the store's state) is ignored."""
        ...
