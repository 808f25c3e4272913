"""Frozen snapshots of a cue's counters, as ``cue.stats()`` returns them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["CueStats", "LimitState", "RateWindowStats", "ServiceStats"]


@dataclass(frozen=True)
class LimitState:
    """One limit of a service at the moment of the snapshot (see ``ServiceStats.limits``)."""

    kind: str
    """``"pause"``, ``"concurrency"``, ``"rate"``, ... (the kind of limit)."""
    name: str
    """What it limits, in words: ``"60/60s"``, ``"5 at once"``."""
    used: float
    """What it holds now: starts in the window, slots taken, seconds of pause left."""
    limit: float
    """Its capacity (``inf`` when unlimited)."""
    ready_in: float = 0.0
    """Seconds until it admits one more start as far as time decides (0.0: now)."""

    @property
    def left(self) -> float:
        """What it still admits right now."""
        return max(0.0, self.limit - self.used)


@dataclass(frozen=True)
class RateWindowStats:
    """One window of a service's rate: its limit, its period, and the starts inside it now."""

    limit: int
    period: float
    used: int

    @property
    def left(self) -> int:
        """Starts the window still admits right now."""
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class ServiceStats:
    """One service at the moment of the snapshot. ``name`` is None for tasks without one."""

    name: str | None
    concurrent: int | None
    rate: str | None
    pending: int
    running: int
    """Handlers running now, counting threads that outlived a timeout or cancel."""
    started: int
    completed: int
    failed: int
    skipped: int
    retried: int
    max_running: int
    """The most handlers of this service seen running at once."""
    windows: tuple[RateWindowStats, ...]
    next_free_slot: float
    """Seconds until the rate admits one more start (0.0 when it does now or has no rate)."""
    paused_for: float
    """Seconds the service stays paused after a ``RateLimited`` (0.0 when not paused)."""
    shared: bool = False
    """True when the limits live in the cue's store (shared by every process)."""
    store_error: str | None = None
    """The last error from the store while it is unreachable (None when it answers)."""
    limits: tuple[LimitState, ...] = ()
    """Every limit of the service and what it holds (while the cue runs)."""
    blocked: tuple[str, str] | None = None
    """Why its next queued work waits, as ``debug_blocked()`` says it (None: it does not)."""


@dataclass(frozen=True)
class CueStats:
    """The whole cue at the moment of the snapshot.

    The ledger always adds up: ``submitted == pending + running + completed + failed +
    skipped + cancelled`` (``completed`` does not include skipped work).
    """

    submitted: int
    pending: int
    running: int
    completed: int
    failed: int
    skipped: int
    cancelled: int
    retried: int
    elapsed: float
    """Seconds since the cue started (0.0 before; the whole run once it stopped)."""
    throughput: float
    """Finished handlers (completed + failed) per second since the cue started."""
    services: Mapping[str | None, ServiceStats]

    @property
    def finished(self) -> int:
        """Work that reached a terminal state."""
        return self.completed + self.failed + self.skipped + self.cancelled
