"""Rate strings ("60/min", "100/15min;10/s") and the exact sliding-window limiter.

Everything here is plain synchronous code over an injected clock: it never awaits and never
sleeps, so it is tested without an event loop.

The invariant a :class:`SlidingWindow` keeps: in every half-open interval ``[t, t + period)``
at most ``limit`` admissions were recorded. A :class:`RateLimiter` holds several windows and
admits into all of them or none.

The scheduler decides to start a handler a moment before the handler really starts (another
task runs it). So that the limit holds on the handlers' own start times, it *reserves* a slot
when it decides (a reservation counts as a start inside every window, now) and *commits* it
with the clock read right before the handler is called. Any window then holds at most
``limit`` commit times: when the last of them was reserved, every other one was either
committed already inside that window or still reserved, and both were counted.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ._errors import InvalidRateError

__all__ = ["RateLimiter", "RateSpec", "SlidingWindow", "parse_rate"]

_UNIT_SECONDS = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}

_ONE_RATE = re.compile(
    r"""^\s*(?P<limit>\d+)\s*/\s*(?P<multiplier>\d+(?:\.\d+)?|\.\d+)?\s*(?P<unit>[A-Za-z]+)\s*$"""
)

_GRAMMAR = (
    "write 'N/unit' or 'N/<multiplier><unit>' with N >= 1, units s/sec/second(s), "
    "m/min/minute(s), h/hr/hour(s), d/day(s), several joined by ';' "
    "(e.g. '60/min', '100/15min', '60/min;10/10s')"
)


@dataclass(frozen=True)
class RateSpec:
    """One window of a rate: at most ``limit`` starts in any ``period`` seconds."""

    limit: int
    period: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.period:g}s"


def parse_rate(rate: str) -> tuple[RateSpec, ...]:
    """Parse a rate string into its windows.

    :raises InvalidRateError: (a ``ValueError``) naming the bad string and the grammar.
    """
    if not isinstance(rate, str):
        msg = f"Invalid rate format {rate!r}: a rate must be a string such as '60/min'; {_GRAMMAR}"
        raise InvalidRateError(msg)
    parts = [part for part in rate.split(";") if part.strip()]
    if not parts:
        msg = f"Invalid rate format {rate!r}: it is empty; {_GRAMMAR}"
        raise InvalidRateError(msg)
    specs: list[RateSpec] = []
    for part in parts:
        match = _ONE_RATE.match(part)
        if match is None:
            msg = f"Invalid rate format {rate!r}: cannot read {part.strip()!r}; {_GRAMMAR}"
            raise InvalidRateError(msg)
        unit = match["unit"].lower()
        if unit not in _UNIT_SECONDS:
            msg = f"Unknown rate unit {match['unit']!r} in rate {rate!r}; {_GRAMMAR}"
            raise InvalidRateError(msg)
        try:
            limit = int(match["limit"])
            multiplier = float(match["multiplier"]) if match["multiplier"] else 1.0
        except ValueError:  # a number with thousands of digits
            msg = (
                f"Invalid rate format {rate!r}: a number in {part.strip()!r} is too long;"
                f" {_GRAMMAR}"
            )
            raise InvalidRateError(msg) from None
        period = multiplier * _UNIT_SECONDS[unit]
        if not math.isfinite(period):
            msg = (
                f"Invalid rate format {rate!r}: the period of {part.strip()!r} is endless;"
                f" {_GRAMMAR}"
            )
            raise InvalidRateError(msg)
        if limit < 1 or multiplier <= 0:
            msg = (
                f"Invalid rate format {rate!r}: the count and the multiplier must be positive;"
                f" {_GRAMMAR}"
            )
            raise InvalidRateError(msg)
        specs.append(RateSpec(limit, period))
    return tuple(specs)


class SlidingWindow:
    """At most ``limit`` admissions in any window of ``period`` seconds; never awaits."""

    __slots__ = ("_clock", "_starts", "limit", "period", "reserved")

    def __init__(
        self,
        limit: int,
        period: float,
        *,
        clock: Callable[[], float],
        history: Iterable[float] = (),
    ) -> None:
        if limit < 1 or not period > 0:
            msg = f"need limit >= 1 and period > 0, got {limit!r}/{period!r}"
            raise ValueError(msg)
        self.limit = limit
        self.period = period
        self._clock = clock
        self._starts: deque[float] = deque(sorted(history))
        self.reserved = 0  # decided, not started yet: counted as starts happening now

    def _prune(self, now: float) -> None:
        starts, period = self._starts, self.period
        # `start + period <= now` is the same float expression next_free() returns, so waking
        # at exactly next_free() always frees the slot (no spin on rounding).
        while starts and starts[0] + period <= now:
            starts.popleft()

    def used(self) -> int:
        """Admissions inside the current window."""
        self._prune(self._clock())
        return len(self._starts) + self.reserved

    def next_free(self, now: float | None = None) -> float:
        """The earliest time at which one more admission keeps the invariant."""
        if now is None:
            now = self._clock()
        self._prune(now)
        excess = len(self._starts) + self.reserved - self.limit
        if excess < 0:
            return now
        if excess >= len(self._starts):
            return math.inf  # full of reservations: known once they commit
        return self._starts[excess] + self.period

    def admit(self, now: float | None = None) -> None:
        """Record an admission now. The caller checked :meth:`next_free` first."""
        self._starts.append(self._clock() if now is None else now)

    def reserve(self) -> None:
        """Hold a slot for a start about to happen (the caller checked :meth:`next_free`)."""
        self.reserved += 1

    def commit(self, now: float | None = None) -> None:
        """The reserved start happens now."""
        self.reserved = max(0, self.reserved - 1)
        self._starts.append(self._clock() if now is None else now)

    def release(self) -> None:
        """The reserved start will not happen."""
        self.reserved = max(0, self.reserved - 1)

    def history(self) -> Sequence[float]:
        """The admissions still inside the window, oldest first."""
        self._prune(self._clock())
        return tuple(self._starts)


class RateLimiter:
    """Several sliding windows that admit together or not at all."""

    __slots__ = ("_clock", "specs", "windows")

    def __init__(
        self,
        specs: Sequence[RateSpec],
        *,
        clock: Callable[[], float],
        history: Iterable[float] = (),
    ) -> None:
        if not specs:
            msg = "a rate limiter needs at least one window"
            raise ValueError(msg)
        self._clock = clock
        self.specs: tuple[RateSpec, ...] = ()
        self.windows: tuple[SlidingWindow, ...] = ()
        self._build(specs, tuple(history), 0)

    def _build(self, specs: Sequence[RateSpec], past: tuple[float, ...], reserved: int) -> None:
        now = self._clock() if past else 0.0
        windows = []
        for spec in specs:
            window = SlidingWindow(
                spec.limit,
                spec.period,
                clock=self._clock,
                history=[t for t in past if t + spec.period > now],
            )
            window.reserved = reserved
            windows.append(window)
        self.specs = tuple(specs)
        self.windows = tuple(windows)

    def reconfigure(self, specs: Sequence[RateSpec]) -> None:
        """Change the windows in place: past starts still count, and starts reserved under the
        old windows stay reserved in the new ones, so whoever holds such a reservation (an
        attempt awaiting its ``on_start``) commits or releases it here, where it counts."""
        if not specs:
            msg = "a rate limiter needs at least one window"
            raise ValueError(msg)
        self._build(specs, self.history(), self.reserved)

    def next_free(self, now: float | None = None) -> float:
        """The earliest time at which every window admits one more start."""
        if now is None:
            now = self._clock()
        return max(window.next_free(now) for window in self.windows)

    def try_admit(self) -> bool:
        """Admit now into every window if all have room; otherwise change nothing."""
        now = self._clock()
        if self.next_free(now) > now:
            return False
        for window in self.windows:
            window.admit(now)
        return True

    def try_reserve(self) -> bool:
        """Reserve a start in every window if all have room now; otherwise change nothing."""
        now = self._clock()
        if self.next_free(now) > now:
            return False
        for window in self.windows:
            window.reserve()
        return True

    def commit(self) -> bool:
        """A reserved start happens now. True when this tells a waiting scheduler something
        new (a window was full of reservations, so its next free time was unknown)."""
        now = self._clock()
        news = any(
            window.reserved and window.used() >= window.limit  # (O(1): no copy of the window)
            for window in self.windows
        )
        for window in self.windows:
            window.commit(now)
        return news

    def release(self) -> None:
        """A reserved start will not happen."""
        for window in self.windows:
            window.release()

    @property
    def reserved(self) -> int:
        """Starts reserved and not yet committed."""
        return self.windows[0].reserved

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Read time from ``clock`` from now on (the same timeline, read faster)."""
        self._clock = clock
        for window in self.windows:
            window._clock = clock

    def shift(self, seconds: float) -> None:
        """Move every remembered start by ``seconds`` (onto another clock's timeline)."""
        for window in self.windows:
            window._starts = deque(start + seconds for start in window._starts)

    def history(self) -> tuple[float, ...]:
        """The starts still remembered by the longest window (to carry over a reconfiguration)."""
        longest = max(self.windows, key=lambda window: window.period)
        return tuple(longest.history())

    def used(self) -> list[tuple[RateSpec, int]]:
        """Each window with the number of starts inside it now."""
        return [(spec, window.used()) for spec, window in zip(self.specs, self.windows)]
