"""What the server says is left: budgets observed from responses, enforced until they reset.

This module owns :class:`ServerBudget`: per dimension (``requests``, ``tokens``, ...) the
constraints "at most ``remaining`` more before ``reset_at``" that responses reported, and the
same reserve / commit / release / settle steps as the cost windows (``_costs.py``), so that
admission never starts more than the server said it would accept. It only ever adds
constraints: the windows the service declared stay in force separately, so an observation can
tighten the service but never loosen it. Plain synchronous code over ``now`` passed in.

**What an observation means.** A response to work ``A`` says: when the server answered ``A``,
``remaining`` was left until ``reset_at``. The server answered at some moment between ``A``'s
commit and the observation. Any work ``X`` the server receives after that answer uses the
budget, and every such ``X`` is one of these, all counted against ``remaining``:

* still reserved when the observation is made, or reserved later;
* committed and not yet settled (its response has not come back: it may arrive later);
* settled after ``A`` was committed (its response came back after ``A`` was sent, so the
  server may have received it after answering ``A``), counted at the larger of its estimate
  and its actual.

Only works settled before ``A`` was committed are known to have reached the server before it
answered ``A``. So responses may arrive in any order: an old response that says more is left
adds a looser constraint that the tighter ones still bound (all are kept until their reset),
and a response that says less tightens at once.

**A bound on transit time** (``ServerBudget(in_transit=d)``, opt-in). The reading above
assumes nothing about the network, so every work still running counts as unseen, although the
server usually counted it long ago: for an API whose latency is mostly the server's own work
(an LLM), that counts most of the running works twice and costs much of the throughput. Given
``d`` >= the longest a request takes to reach the server plus the longest a response takes to
come back (its headers read at ``now``), the server answered ``A`` no earlier than
``now - d_down`` and every work committed before ``now - d`` had reached it by then. So only
reservations and works committed at or after ``now - d`` (``A`` excepted) count as unseen.

**The invariant.** For every constraint ``C`` of a dimension in force at ``now``
(``reset_at > now``), let *left(C)* = ``remaining`` minus what was counted as above at the
observation, minus everything reserved since, minus debts charged since, plus reservations
released since. A work with amount ``a`` in the dimension is admitted only if
``a <= left(C)`` and ``left(C) > 0`` for every such ``C`` (a work estimated at 0 still waits
while nothing at all is left). Hence the server receives, after answering ``A`` and before
``reset_at``, at most ``max(remaining, what was already sent or reserved when the client
heard)``, in the server's measure as long as it does not exceed our counting (the estimate,
or the actual once larger).

*Settling* charges an actual above its estimate (debt) to every constraint; an actual below
its estimate refunds nothing here (the server may have counted the estimate).

**Memory.** Per dimension only the constraints that are not dominated (a later reset and no
more left than another) are kept, sorted by reset time, dropped at their reset. Committed
works are remembered, in commit order, while some work committed before them is still
running or they settled after such a work was committed: a few per running work.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from ._costs import HoldState, check_amount, misuse
from ._headers import ServerLimits

__all__ = ["BudgetReservation", "ObservedLimit", "ServerBudget"]

_NEVER = math.inf  # the settle sequence number of a work not settled yet


@dataclass(frozen=True)
class ObservedLimit:
    """One constraint in force: ``left`` more of ``dimension`` until ``reset_at``."""

    dimension: str
    left: float
    reset_at: float


class BudgetReservation:
    """One admission's hold on a :class:`ServerBudget`."""

    __slots__ = ("_owner", "actual", "amounts", "commit_seq", "commit_time", "settle_seq", "state")

    def __init__(self, owner: ServerBudget, amounts: dict[str, float]) -> None:
        self._owner = owner
        self.amounts = amounts
        self.actual: dict[str, float] | None = None
        self.state = HoldState.RESERVED
        self.commit_seq = 0  # set at commit
        self.commit_time = 0.0
        self.settle_seq: float = _NEVER

    def counted(self, dimension: str) -> float:
        """The amount counted as possibly unseen by the server: the larger of the estimate
        and (once settled) the actual."""
        amount = self.amounts.get(dimension, 0)
        if self.actual is not None:
            amount = max(amount, self.actual.get(dimension, 0))
        return amount

    def __repr__(self) -> str:
        return f"<BudgetReservation {self.state.value} {self.amounts!r}>"


class _Constraint:
    __slots__ = ("mark", "reset_at")

    def __init__(self, reset_at: float, mark: float) -> None:
        self.reset_at = reset_at
        self.mark = mark  # left = mark - spent[dimension]


class ServerBudget:
    """The constraints responses reported, enforced on admission (see the module docstring)."""

    __slots__ = (
        "_fronts",
        "_last_now",
        "_log",
        "_outstanding",
        "_reserved",
        "_seq",
        "_spent",
        "in_transit",
    )

    def __init__(self, *, in_transit: float | None = None) -> None:
        if in_transit is not None and not (in_transit >= 0 and math.isfinite(in_transit)):
            msg = f"in_transit must be a finite number of seconds >= 0, got {in_transit!r}"
            raise ValueError(msg)
        self.in_transit = in_transit
        self._last_now = -math.inf  # the latest time seen, to forget old commits
        # Per dimension: reservations + debts - releases since the dimension was last free of
        # constraints. A constraint stores `mark` = its left + spent at creation, so every
        # later change to spent changes every constraint's left alike.
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}
        self._outstanding = 0
        self._seq = 0  # one counter for commits and settles: their order
        self._log: deque[BudgetReservation] = deque()  # committed works, commit order
        # Per dimension, the non-dominated constraints by reset_at: marks strictly increase.
        self._fronts: dict[str, list[_Constraint]] = {}

    # ------------------------------------------------------------------ observations

    def observe(
        self,
        dimension: str,
        remaining: float,
        reset_at: float,
        now: float,
        *,
        answered: BudgetReservation | None = None,
        limit: float | None = None,
        refill_steps: int = 0,
    ) -> None:
        """The server said ``remaining`` of ``dimension`` is left until ``reset_at``, in its
        answer to ``answered`` (the running work whose response this is).

        Without ``answered``, every running work and every work settled since the oldest
        running one started counts as unseen (with ``in_transit``: every work committed
        within it). An observation whose reset is past is ignored.

        By default nothing more is allowed until ``reset_at`` (a fixed window: exact for
        GitHub-style limits, conservative for any). With ``refill_steps=k`` and the server's
        ``limit``, the budget is read as refilling linearly from ``remaining`` to ``limit`` by
        ``reset_at`` (a token bucket, as OpenAI's "time until the rate limit resets to its
        initial state" describes), followed from below by ``k`` steps: in the ``j``-th
        ``k``-th of the time, ``remaining + (limit - remaining) * (j - 1) / k``. Looser than
        the fixed reading, so only for servers known to refill.

        :raises RuntimeError: if ``answered`` is not running (commit it first; observe a
            response before settling its work).
        """
        check_amount(remaining, "remaining")
        if not reset_at > now:
            return
        if answered is not None:
            self._own(answered)
            if answered.state is not HoldState.COMMITTED:
                msg = (
                    f"cannot observe a response to a {answered.state.value} reservation: "
                    f"observe it while the work runs (after commit, before settle)"
                )
                raise RuntimeError(msg)
            after = answered.commit_seq
        else:
            oldest = next((w.commit_seq for w in self._log if w.settle_seq == _NEVER), None)
            after = oldest - 1 if oldest is not None else self._seq
        unseen = self._reserved.get(dimension, 0)
        if self.in_transit is not None:
            self._last_now = max(self._last_now, now)
            horizon = now - self.in_transit
            for work in self._log:
                if work is not answered and work.commit_time >= horizon:
                    unseen += work.counted(dimension)
        else:
            for work in self._log:
                if work is not answered and work.settle_seq > after:
                    unseen += work.counted(dimension)
        front = self._prune(dimension, now)  # first: it may restart `spent` from 0
        base = remaining - unseen + self._spent.get(dimension, 0)
        if refill_steps > 0 and limit is not None and limit > remaining:
            span, growth = reset_at - now, limit - remaining
            for step in range(1, refill_steps + 1):
                mark = base + growth * (step - 1) / refill_steps
                self._insert(front, _Constraint(now + span * step / refill_steps, mark))
        else:
            self._insert(front, _Constraint(reset_at, base))

    def observe_limits(
        self,
        limits: ServerLimits,
        now: float,
        *,
        answered: BudgetReservation | None = None,
        retry_after: bool = True,
        refill_steps: int = 0,
    ) -> None:
        """Observe every limit of :func:`~runcue._headers.read_rate_limit_headers`'s result
        that says what is left and when it resets (``now`` on the same clock as admission).

        With ``retry_after``, a ``Retry-After`` reads as no ``requests`` left until then.
        ``refill_steps`` reads each limit that reports its size as refilling (see
        :meth:`observe`).
        """
        for limit in limits.limits:
            if limit.remaining is not None and limit.reset_after is not None:
                self.observe(
                    limit.dimension,
                    limit.remaining,
                    now + limit.reset_after,
                    now,
                    answered=answered,
                    limit=limit.limit,
                    refill_steps=refill_steps,
                )
        if retry_after and limits.retry_after is not None:
            self.observe("requests", 0, now + limits.retry_after, now, answered=answered)

    @staticmethod
    def _insert(front: list[_Constraint], new: _Constraint) -> None:
        for old in front:
            if old.reset_at >= new.reset_at and old.mark <= new.mark:
                return  # dominated: another says no more is left, for at least as long
        front[:] = [
            old for old in front if not (old.reset_at <= new.reset_at and old.mark >= new.mark)
        ]
        position = bisect.bisect_left([old.reset_at for old in front], new.reset_at)
        front.insert(position, new)

    def _prune(self, dimension: str, now: float) -> list[_Constraint]:
        front = self._fronts.setdefault(dimension, [])
        expired = 0
        while expired < len(front) and front[expired].reset_at <= now:
            expired += 1
        if expired:
            del front[:expired]
        if not front and self._spent.get(dimension):
            self._spent[dimension] = 0  # nothing refers to it: start again from 0
        return front

    # ------------------------------------------------------------------ admission

    def _amounts(self, amounts: Mapping[str, float]) -> dict[str, float]:
        if not isinstance(amounts, Mapping):
            msg = f"amounts must be a mapping such as {{'requests': 1}}, got {amounts!r}"
            raise ValueError(msg)
        return {
            dimension: check_amount(amount, f"the amount of {dimension!r}")
            for dimension, amount in amounts.items()
        }

    def next_free(self, amounts: Mapping[str, float], now: float) -> float:
        """The earliest time every constraint admits ``amounts`` (a dimension left out counts
        as 0): ``now``, or the reset of the last constraint that holds it back."""
        wanted = self._amounts(amounts)
        latest = now
        for dimension in list(self._fronts):
            front = self._prune(dimension, now)
            amount = wanted.get(dimension, 0)
            spent = self._spent.get(dimension, 0)
            for constraint in front:  # left grows along the front: the blocking ones lead
                left = constraint.mark - spent
                if left > 0 and amount <= left:
                    break
                latest = max(latest, constraint.reset_at)
        return latest

    def describe(self, now: float) -> tuple[ObservedLimit, ...]:
        """Every constraint in force, with what is left of it."""
        return tuple(
            ObservedLimit(
                dimension, constraint.mark - self._spent.get(dimension, 0), constraint.reset_at
            )
            for dimension in list(self._fronts)
            for constraint in self._prune(dimension, now)
        )

    def reserve(self, amounts: Mapping[str, float]) -> BudgetReservation:
        """Hold ``amounts`` against every constraint (the caller checked :meth:`next_free`)."""
        wanted = self._amounts(amounts)
        for dimension, amount in wanted.items():
            self._spent[dimension] = self._spent.get(dimension, 0) + amount
            self._reserved[dimension] = self._reserved.get(dimension, 0) + amount
        self._outstanding += 1
        return BudgetReservation(self, wanted)

    def try_reserve(self, amounts: Mapping[str, float], now: float) -> BudgetReservation | None:
        """Reserve if every constraint admits ``amounts`` at ``now``; otherwise change nothing."""
        if self.next_free(amounts, now) > now:
            return None
        return self.reserve(amounts)

    def _own(self, handle: BudgetReservation) -> None:
        if handle._owner is not self:
            msg = f"{handle!r} was reserved on another server budget"
            raise ValueError(msg)

    def _unreserve(self, handle: BudgetReservation) -> None:
        self._outstanding -= 1
        if not self._outstanding:
            self._reserved.clear()  # exactly zero, whatever float rounding did
            return
        for dimension, amount in handle.amounts.items():
            self._reserved[dimension] -= amount

    def commit(self, handle: BudgetReservation, now: float) -> bool:
        """The reserved work starts at ``now``. Never changes what is left: False."""
        self._own(handle)
        if handle.state is not HoldState.RESERVED:
            raise misuse("commit", handle.state)
        self._unreserve(handle)
        self._seq += 1
        handle.commit_seq = self._seq
        handle.commit_time = now
        self._last_now = max(self._last_now, now)
        handle.state = HoldState.COMMITTED
        self._log.append(handle)
        return False

    def release(self, handle: BudgetReservation) -> bool:
        """The reserved work will not start: its amounts are given back. True if any."""
        self._own(handle)
        if handle.state is not HoldState.RESERVED:
            raise misuse("release", handle.state)
        self._unreserve(handle)
        for dimension, amount in handle.amounts.items():
            self._spent[dimension] = self._spent.get(dimension, 0) - amount
        handle.state = HoldState.RELEASED
        return any(amount > 0 for amount in handle.amounts.values())

    def settle(self, handle: BudgetReservation, actual: Mapping[str, float] | None = None) -> bool:
        """The work ended; an actual above its estimate is charged as debt (a dimension left
        out keeps its estimate). Refunds nothing, so always False."""
        self._own(handle)
        if handle.state is not HoldState.COMMITTED:
            raise misuse("settle", handle.state)
        actuals = dict(handle.amounts)
        if actual is not None:
            actuals.update(self._amounts(actual))
        for dimension, amount in actuals.items():
            debt = amount - handle.amounts.get(dimension, 0)
            if debt > 0:
                self._spent[dimension] = self._spent.get(dimension, 0) + debt
        self._seq += 1
        handle.actual = actuals
        handle.settle_seq = self._seq
        handle.state = HoldState.SETTLED
        self._forget_settled()
        return False

    def _forget_settled(self) -> None:
        """Drop committed works no future observation can count: settled before every
        running work (and every work committed later) was committed; with ``in_transit``,
        committed longer than that before the latest time seen."""
        log = self._log
        if self.in_transit is not None:
            horizon = self._last_now - self.in_transit
            while log and log[0].commit_time < horizon:
                log.popleft()
            return
        oldest = next((work.commit_seq for work in log if work.settle_seq == _NEVER), _NEVER)
        while log and log[0].settle_seq < oldest:
            log.popleft()

    def remembered(self) -> int:
        """Committed works remembered (the budget's memory besides its constraints). Not
        ``__len__``: a budget is never falsy."""
        return len(self._log)
