"""Shared state for limits across processes and machines: the ``Store`` protocol.

A cue created with ``runcue.Cue(store=...)`` keeps the limits of every service declared with
``shared=True`` in the store instead of in process memory, so every process that uses the same
store (and namespace) shares one budget:

- **rate**: every window of the service's rate is an exact sliding window kept by the store,
  on the store's clock; a start is recorded in all windows or none;
- **concurrency**: each running handler holds a *lease* with a time-to-live, renewed while it
  runs; a process that dies (even ``kill -9``) loses its leases within the TTL;
- **pause**: ``RateLimited(retry_after=)`` pauses the service for every process;
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

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._rate import RateSpec

__all__ = ["Grant", "Store"]


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
    """What a cue needs from shared storage. Every method may raise when the store is down."""

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
