"""Cost windows: budgets counted in amounts (tokens, bytes, dollars), held on an estimate and
settled on the actual.

This module owns three things: reading a service's ``costs=`` mapping
(:func:`parse_costs`), the exact sliding window over amounts (:class:`CostWindow`), and the
limiter over several dimensions times windows that admits all or nothing
(:class:`CostLimiter`). It is plain synchronous code: whatever needs the time takes ``now``
(any monotonic clock, the same for every call); nothing awaits or sleeps.

One admission goes through the same steps as a start in a rate window (``_rate.py``):

``reserve(estimate)``
    decided: the estimate counts in every window as if it happened now, and keeps counting
    (it never expires) until it is committed or released.
``commit(handle, now)``
    the handler really starts: the estimate counts at ``now``, its commit time.
``release(handle)``
    it will not start: the reservation is dropped.
``settle(handle, actual)``
    the handler ended: the committed amount becomes the actual, still at the commit time, so
    the difference is refunded (or charged) in exactly the windows that counted the start.

A handle is committed at most once and then settled at most once, or released at most once;
any second step raises ``RuntimeError``.

**The invariant.** For a window of limit ``L`` and period ``P``, let *load(now)* be the sum of
the current amounts (the estimate until settled, the actual after) of the commits whose commit
time lies in ``(now - P, now]``, plus every outstanding reservation. An admission of a work
whose estimate in this dimension is ``e > 0`` happens only if

    load(now) + e <= L            (for every window of every dimension with e > 0)

A dimension in which the work's estimate is 0 does not hold it back.

*Consequence.* If no actual exceeds its estimate, then in every interval ``(t - P, t]`` the
committed amounts sum to at most ``L``. Proof: take the commits in the interval and the one
among them reserved last, at time ``r <= t``. At ``r`` every other one was either still
reserved (counted) or committed at a time in ``(t - P, r]``, inside ``r``'s window (counted),
with an amount at least its final one (settling only lowers it); the check at ``r`` bounded
their sum plus the last estimate by ``L``.

*Debt.* An actual above its estimate is charged in full at its commit time, so a window can
hold more than ``L`` until that commit leaves it. Nothing is forgiven: every later admission
sees the higher load and waits until the window has room again.

**Memory.** A window keeps one bucket per distinct commit time still inside its period (a
slotted object of four fields, about 80 bytes with its deque slot); commits at the same time
share a bucket. With ``resolution > 0``, commits less than ``resolution`` seconds after a
bucket's first commit join it, and the bucket counts as happening at its latest commit: that
only ever counts a commit longer than its own time would (conservative, the invariant still
holds on the real commit times), frees room at most ``resolution`` late, and bounds a window
to ``period / resolution + 1`` buckets whatever the rate. Each reservation holds one small
object per window until it is settled or released.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._errors import CostTooLargeError, InvalidRateError
from ._rate import RateSpec, parse_rate

__all__ = [
    "CostLimiter",
    "CostReservation",
    "CostWait",
    "CostWindow",
    "CostWindowUse",
    "HoldState",
    "WindowHold",
    "check_amount",
    "misuse",
    "parse_costs",
]


def parse_costs(costs: Mapping[str, str]) -> dict[str, tuple[RateSpec, ...]]:
    """Read a ``costs=`` mapping such as ``{"tokens": "90000/min;2000000/day"}``.

    Each value uses the rate grammar of :func:`runcue.parse_rate`, the count being the amount
    allowed in the window. Dimension names are keyword arguments of ``work.charge()``, so each
    must be a Python identifier.

    :raises InvalidRateError: (a ``ValueError``) naming the bad dimension or string.
    """
    if not isinstance(costs, Mapping):
        msg = (
            f"costs must be a mapping of dimension to windows such as "
            f"{{'tokens': '90000/min'}}, got {costs!r}"
        )
        raise InvalidRateError(msg)
    if not costs:
        msg = "costs is empty: name at least one dimension, e.g. {'tokens': '90000/min'}"
        raise InvalidRateError(msg)
    parsed: dict[str, tuple[RateSpec, ...]] = {}
    for dimension, windows in costs.items():
        if not isinstance(dimension, str) or not dimension.isidentifier():
            msg = (
                f"cost dimension {dimension!r} is not a valid name: dimensions are keyword "
                f"arguments of work.charge(), so each must be an identifier such as 'tokens'"
            )
            raise InvalidRateError(msg)
        try:
            parsed[dimension] = parse_rate(windows)
        except InvalidRateError as error:
            msg = f"invalid cost windows for {dimension!r}: {error}"
            raise InvalidRateError(msg) from None
    return parsed


def check_amount(amount: object, what: str) -> float:
    """``amount`` as a number if it is a finite number >= 0; otherwise ``ValueError``."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        msg = f"{what} must be a number >= 0, got {amount!r}"
        raise ValueError(msg)
    if not (math.isfinite(amount) and amount >= 0):
        msg = f"{what} must be a finite number >= 0, got {amount!r}"
        raise ValueError(msg)
    return amount


class HoldState(enum.Enum):
    """Where a reservation is in its one-way life."""

    RESERVED = "reserved"
    COMMITTED = "committed"
    SETTLED = "settled"
    RELEASED = "released"


def misuse(what: str, state: HoldState) -> RuntimeError:
    """The error for a step a reservation in ``state`` cannot take (the message names the fix)."""
    fixes = {
        HoldState.RESERVED: "commit it when the handler starts, or release it",
        HoldState.COMMITTED: "settle it once the handler ends",
        HoldState.SETTLED: "it was settled already; settle each reservation exactly once",
        HoldState.RELEASED: "it was released already; release each reservation exactly once",
    }
    return RuntimeError(f"cannot {what} a {state.value} reservation: {fixes[state]}")


class _Bucket:
    """Commits counted at one time (their latest) in one window."""

    __slots__ = ("amount", "first", "live", "time")

    def __init__(self, time: float, amount: float) -> None:
        self.time = time
        self.first = time
        self.amount = amount
        self.live = True


class WindowHold:
    """One reservation's share of one :class:`CostWindow`."""

    __slots__ = ("_bucket", "amount", "state")

    def __init__(self, amount: float) -> None:
        self.amount = amount
        self.state = HoldState.RESERVED
        self._bucket: _Bucket | None = None


class CostWindow:
    """At most ``limit`` of an amount committed in any window of ``period`` seconds.

    The window ending at ``now`` is ``(now - period, now]``, as in ``_rate.SlidingWindow``.
    """

    __slots__ = ("_buckets", "_committed", "_holds", "limit", "period", "reserved", "resolution")

    def __init__(self, limit: float, period: float, *, resolution: float = 0.0) -> None:
        if not (limit > 0 and math.isfinite(limit)) or not (period > 0 and math.isfinite(period)):
            msg = f"need a finite limit > 0 and period > 0, got {limit!r}/{period!r}"
            raise ValueError(msg)
        if not (resolution >= 0 and math.isfinite(resolution)):
            msg = f"resolution must be a finite number of seconds >= 0, got {resolution!r}"
            raise ValueError(msg)
        self.limit = limit
        self.period = period
        self.resolution = resolution
        self.reserved: float = 0  # outstanding reservations, counted as happening now
        self._holds = 0  # how many reservations are outstanding
        self._buckets: deque[_Bucket] = deque()
        self._committed: float = 0  # the sum of the buckets' amounts

    def fits(self, amount: float) -> bool:
        """Whether ``amount`` could ever be admitted (it is not above the whole limit)."""
        return amount <= self.limit

    def _prune(self, now: float) -> None:
        buckets, period = self._buckets, self.period
        # `time + period <= now` is the expression next_free() returns: waking at exactly
        # that time always frees the bucket (no spin on rounding).
        while buckets and buckets[0].time + period <= now:
            bucket = buckets.popleft()
            bucket.live = False
            self._committed -= bucket.amount
        if not buckets:
            self._committed = 0

    def committed(self, now: float) -> float:
        """The amount committed inside the window ending at ``now``."""
        self._prune(now)
        return self._committed

    def used(self, now: float) -> float:
        """Committed inside the window plus outstanding reservations: the load admission sees."""
        return self.committed(now) + self.reserved

    def next_free(self, amount: float, now: float) -> float:
        """The earliest time at which ``amount`` more keeps the invariant.

        ``now`` if it fits already; ``math.inf`` if it never fits (:meth:`fits` is false) or
        only once outstanding reservations commit or release (then the time is not known yet).
        """
        if amount > self.limit:
            return math.inf
        self._prune(now)
        excess = self._committed + self.reserved + amount - self.limit
        if excess <= 0:
            return now
        freed: float = 0
        for bucket in self._buckets:
            freed += bucket.amount
            if freed >= excess:
                return bucket.time + self.period
        return math.inf

    def reserve(self, amount: float) -> WindowHold:
        """Hold ``amount`` for a start about to happen (the caller checked :meth:`next_free`)."""
        check_amount(amount, "a reserved amount")
        self.reserved += amount
        self._holds += 1
        return WindowHold(amount)

    def _unreserve(self, hold: WindowHold) -> None:
        self._holds -= 1
        # Exactly zero once nothing is outstanding, whatever float rounding did meanwhile.
        self.reserved = self.reserved - hold.amount if self._holds else 0

    def commit(self, hold: WindowHold, now: float) -> None:
        """The reserved start happens at ``now``.

        Commit times are taken as non-decreasing: a time before the latest commit is counted
        at the latest commit instead (later, so conservative).
        """
        if hold.state is not HoldState.RESERVED:
            raise misuse("commit", hold.state)
        self._unreserve(hold)
        hold.state = HoldState.COMMITTED
        buckets = self._buckets
        last = buckets[-1] if buckets else None
        if last is not None and now - last.first <= self.resolution:
            last.time = max(last.time, now)
            last.amount += hold.amount
        else:
            last = _Bucket(max(now, last.time) if last is not None else now, hold.amount)
            buckets.append(last)
        self._committed += hold.amount
        hold._bucket = last

    def release(self, hold: WindowHold) -> None:
        """The reserved start will not happen."""
        if hold.state is not HoldState.RESERVED:
            raise misuse("release", hold.state)
        self._unreserve(hold)
        hold.state = HoldState.RELEASED

    def settle(self, hold: WindowHold, actual: float) -> None:
        """Replace the committed amount by ``actual``, at the original commit time.

        Once the commit has left the window, nothing changes: it no longer counts there.
        """
        if hold.state is not HoldState.COMMITTED:
            raise misuse("settle", hold.state)
        check_amount(actual, "an actual amount")
        hold.state = HoldState.SETTLED
        bucket = hold._bucket
        hold._bucket = None
        if bucket is not None and bucket.live:
            bucket.amount += actual - hold.amount
            self._committed += actual - hold.amount
        hold.amount = actual

    def buckets(self) -> int:
        """Buckets held (the window's memory; pruned lazily on the next read). Not
        ``__len__``: a window is never falsy."""
        return len(self._buckets)


@dataclass(frozen=True)
class CostWindowUse:
    """One window of one dimension, as ``stats()`` and ``debug_blocked()`` show it."""

    dimension: str
    spec: RateSpec
    committed: float
    """Committed inside the window now (estimates until settled, actuals after)."""
    reserved: float
    """Held for starts decided but not started yet."""

    @property
    def used(self) -> float:
        """What admission counts: committed plus reserved."""
        return self.committed + self.reserved


@dataclass(frozen=True)
class CostWait:
    """A window that holds a work back: ``"waiting for tokens"`` until ``frees_at``."""

    dimension: str
    spec: RateSpec
    needed: float
    """The work's estimate in this dimension."""
    used: float
    """Committed plus reserved in the window now."""
    frees_at: float
    """When the window has room for the estimate (``math.inf``: once reservations settle)."""

    def __str__(self) -> str:
        when = "once running works start" if math.isinf(self.frees_at) else f"at {self.frees_at:g}"
        return (
            f"waiting for {self.dimension}: {self.used:g} of {self.spec.limit} used in "
            f"{self.spec.period:g}s, {self.needed:g} more frees {when}"
        )


class CostReservation:
    """One admission's hold on every window of a :class:`CostLimiter`."""

    __slots__ = ("_holds", "_owner", "actual", "estimate", "state")

    def __init__(
        self,
        owner: CostLimiter,
        estimate: dict[str, float],
        holds: list[tuple[str, CostWindow, WindowHold]],
    ) -> None:
        self._owner = owner
        self.estimate = estimate
        self.actual: dict[str, float] | None = None  # once settled
        self.state = HoldState.RESERVED
        self._holds = holds

    def __repr__(self) -> str:
        return f"<CostReservation {self.state.value} {self.estimate!r}>"


class CostLimiter:
    """Cost windows over several dimensions that admit a work into all of them or none.

    ``CostLimiter({"tokens": "90000/min;2000000/day", "requests_cost": "10/s"})``
    """

    __slots__ = ("_windows", "dimensions", "specs")

    def __init__(self, costs: Mapping[str, str], *, resolution: float = 0.0) -> None:
        self.specs = parse_costs(costs)
        self.dimensions = tuple(self.specs)
        self._windows: dict[str, tuple[CostWindow, ...]] = {
            dimension: tuple(
                CostWindow(spec.limit, spec.period, resolution=resolution) for spec in specs
            )
            for dimension, specs in self.specs.items()
        }

    # ------------------------------------------------------------------ estimates

    def normalize(self, estimate: Mapping[str, float]) -> dict[str, float]:
        """Every dimension's amount (0 where the estimate is silent), validated.

        :raises ValueError: not a mapping, an undeclared dimension, or an amount that is not
            a finite number >= 0.
        """
        if not isinstance(estimate, Mapping):
            msg = f"a cost estimate must be a mapping such as {{'tokens': 1200}}, got {estimate!r}"
            raise ValueError(msg)
        return self._put(dict.fromkeys(self.dimensions, 0.0), estimate, "the cost")

    def _put(
        self, amounts: dict[str, float], given: Mapping[str, float], what: str
    ) -> dict[str, float]:
        """``amounts`` with ``given``'s amounts put in, each checked (a declared dimension,
        a finite number >= 0)."""
        for dimension, amount in given.items():
            if dimension not in self._windows:
                msg = (
                    f"cost {dimension!r} is not declared by the service "
                    f"(it declares {', '.join(map(repr, self.dimensions))})"
                )
                raise ValueError(msg)
            amounts[dimension] = check_amount(amount, f"{what} {dimension!r}")
        return amounts

    def fits(self, estimate: Mapping[str, float]) -> bool:
        """Whether the estimate could ever be admitted (no amount above a window's limit)."""
        amounts = self.normalize(estimate)
        return all(
            window.fits(amounts[dimension])
            for dimension, windows in self._windows.items()
            for window in windows
        )

    def check(self, estimate: Mapping[str, float]) -> dict[str, float]:
        """:meth:`normalize`, and fail if the estimate can never be admitted (at ``submit()``).

        :raises CostTooLargeError: (a ``ValueError``) naming the dimension and the window.
        """
        amounts = self.normalize(estimate)
        for dimension, windows in self._windows.items():
            for spec, window in zip(self.specs[dimension], windows):
                if not window.fits(amounts[dimension]):
                    msg = (
                        f"a work estimated at {amounts[dimension]:g} {dimension} can never "
                        f"start: the window {spec.limit}/{spec.period:g}s allows at most "
                        f"{spec.limit} {dimension} in any {spec.period:g}s; lower the "
                        f"estimate or raise the limit"
                    )
                    raise CostTooLargeError(msg)
        return amounts

    # ------------------------------------------------------------------ admission

    def next_free(self, estimate: Mapping[str, float], now: float) -> float:
        """The earliest time every window admits the estimate (``math.inf``: see
        :meth:`CostWindow.next_free`). Dimensions estimated at 0 do not hold it back."""
        amounts = self.normalize(estimate)
        latest = now
        for dimension, windows in self._windows.items():
            amount = amounts[dimension]
            if amount > 0:
                for window in windows:
                    latest = max(latest, window.next_free(amount, now))
        return latest

    def waiting_for(self, estimate: Mapping[str, float], now: float) -> tuple[CostWait, ...]:
        """Every window that holds the estimate back now, with when it frees."""
        amounts = self.normalize(estimate)
        waits: list[CostWait] = []
        for dimension, windows in self._windows.items():
            amount = amounts[dimension]
            if amount <= 0:
                continue
            for spec, window in zip(self.specs[dimension], windows):
                frees_at = window.next_free(amount, now)
                if frees_at > now:
                    waits.append(CostWait(dimension, spec, amount, window.used(now), frees_at))
        return tuple(waits)

    def reserve(self, estimate: Mapping[str, float]) -> CostReservation:
        """Hold the estimate in every window (the caller checked :meth:`next_free`).

        :raises CostTooLargeError: if it could never be admitted.
        """
        amounts = self.check(estimate)
        holds = [
            (dimension, window, window.reserve(amounts[dimension]))
            for dimension, windows in self._windows.items()
            for window in windows
        ]
        return CostReservation(self, amounts, holds)

    def try_reserve(self, estimate: Mapping[str, float], now: float) -> CostReservation | None:
        """Reserve if every window admits the estimate at ``now``; otherwise change nothing."""
        if self.next_free(estimate, now) > now:
            return None
        return self.reserve(estimate)

    def _own(self, handle: CostReservation) -> None:
        if handle._owner is not self:
            msg = f"{handle!r} was reserved on another cost limiter"
            raise ValueError(msg)

    def commit(self, handle: CostReservation, now: float) -> bool:
        """The reserved work starts at ``now``.

        True when this may tell waiting work something new: a window counted the estimate as
        a reservation, which never expires, and now counts it from ``now``.
        """
        self._own(handle)
        if handle.state is not HoldState.RESERVED:
            raise misuse("commit", handle.state)
        for _, window, hold in handle._holds:
            window.commit(hold, now)
        handle.state = HoldState.COMMITTED
        return any(amount > 0 for amount in handle.estimate.values())

    def release(self, handle: CostReservation) -> bool:
        """The reserved work will not start. True when this gave room back."""
        self._own(handle)
        if handle.state is not HoldState.RESERVED:
            raise misuse("release", handle.state)
        for _, window, hold in handle._holds:
            window.release(hold)
        handle.state = HoldState.RELEASED
        return any(amount > 0 for amount in handle.estimate.values())

    def settle(self, handle: CostReservation, actual: Mapping[str, float] | None = None) -> bool:
        """The work ended: its actual cost replaces the estimate where it was counted.

        A dimension missing from ``actual`` (or ``actual=None``) keeps its estimate. True when
        some amount went down (a refund: waiting work may start sooner).
        """
        self._own(handle)
        if handle.state is not HoldState.COMMITTED:
            raise misuse("settle", handle.state)
        amounts = dict(handle.estimate)
        if actual is not None:
            if not isinstance(actual, Mapping):
                msg = f"an actual cost must be a mapping such as {{'tokens': 950}}, got {actual!r}"
                raise ValueError(msg)
            self._put(amounts, actual, "the actual cost")
        for dimension, window, hold in handle._holds:
            window.settle(hold, amounts[dimension])
        refund = any(amounts[d] < handle.estimate[d] for d in self.dimensions)
        handle.actual = amounts
        handle.state = HoldState.SETTLED
        return refund

    # ------------------------------------------------------------------ reporting

    def describe(self, now: float) -> tuple[CostWindowUse, ...]:
        """Every window with what it holds now."""
        return tuple(
            CostWindowUse(dimension, spec, window.committed(now), window.reserved)
            for dimension, windows in self._windows.items()
            for spec, window in zip(self.specs[dimension], windows)
        )

    def windows(self) -> Iterable[tuple[str, RateSpec, CostWindow]]:
        """Every (dimension, spec, window), for callers that need the raw windows."""
        for dimension, windows in self._windows.items():
            for spec, window in zip(self.specs[dimension], windows):
                yield dimension, spec, window
