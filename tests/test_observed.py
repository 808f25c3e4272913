"""Budgets observed from the server's responses, on a fake clock, and against a simulated server."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from runcue._costs import HoldState
from runcue._headers import read_rate_limit_headers
from runcue._observed import BudgetReservation, ObservedLimit, ServerBudget

ONE = {"requests": 1}


def _start(
    budget: ServerBudget, now: float, amounts: dict[str, float] | None = None
) -> BudgetReservation:
    """Reserve and commit one work at ``now`` (the budget must admit it)."""
    handle = budget.try_reserve(ONE if amounts is None else amounts, now)
    assert handle is not None
    budget.commit(handle, now)
    return handle


def test_without_observations_everything_is_admitted() -> None:
    """A budget that heard nothing holds nothing back."""
    budget = ServerBudget()
    assert budget.next_free({"requests": 1, "tokens": 10**9}, 5.0) == 5.0
    assert budget.describe(5.0) == ()


def test_no_more_than_remaining_until_the_reset() -> None:
    """After 'two left until t=10', two more start and the third waits for t=10."""
    budget = ServerBudget()
    budget.observe("requests", 2, 10.0, 0.0)
    _start(budget, 0.0)
    _start(budget, 1.0)
    assert budget.try_reserve(ONE, 2.0) is None
    assert budget.next_free(ONE, 2.0) == 10.0
    assert budget.next_free(ONE, 10.0) == 10.0
    assert budget.describe(10.0) == ()


def test_outstanding_reservations_count_against_an_observation() -> None:
    """Work reserved but not started when the response arrives still uses the budget."""
    budget = ServerBudget()
    held = budget.reserve(ONE)
    budget.observe("requests", 2, 10.0, 0.0)
    assert budget.describe(0.0) == (ObservedLimit("requests", 1, 10.0),)
    _start(budget, 0.0)
    assert budget.try_reserve(ONE, 0.0) is None
    budget.release(held)
    assert budget.try_reserve(ONE, 0.0) is not None


def test_works_started_after_the_answered_one_count_as_unseen() -> None:
    """Works committed after the answered one, or still running, count; earlier settled don't."""
    budget = ServerBudget()
    done = _start(budget, 0.0)
    budget.settle(done)
    first, second, third = _start(budget, 1.0), _start(budget, 1.0), _start(budget, 1.0)
    budget.observe("requests", 10, 60.0, 2.0, answered=first)
    assert budget.describe(2.0) == (ObservedLimit("requests", 8, 60.0),)  # second and third
    budget.settle(second)
    budget.settle(third)
    budget.observe("requests", 10, 60.0, 3.0, answered=first)
    assert budget.describe(3.0) == (ObservedLimit("requests", 8, 60.0),)  # settled after `first`


def test_a_work_running_since_before_the_answered_one_still_counts() -> None:
    """A work started before the answered one but still running may reach the server later."""
    budget = ServerBudget()
    slow = _start(budget, 0.0)
    fast = _start(budget, 1.0)
    budget.observe("requests", 5, 60.0, 2.0, answered=fast)
    assert budget.describe(2.0) == (ObservedLimit("requests", 4, 60.0),)
    budget.settle(slow)
    budget.settle(fast)


def test_without_answered_every_running_work_counts() -> None:
    """Without the answered work, all running ones (and those settled since) count as unseen."""
    budget = ServerBudget()
    running = [_start(budget, 0.0) for _ in range(3)]
    budget.settle(running[1])
    budget.observe("requests", 10, 60.0, 1.0)
    assert budget.describe(1.0) == (ObservedLimit("requests", 7, 60.0),)
    for handle in (running[0], running[2]):
        budget.settle(handle)
    budget.observe("requests", 10, 60.0, 2.0)
    assert [limit.left for limit in budget.describe(2.0)] == [7]  # nothing running: 10 kept out


def test_an_older_response_arriving_late_never_loosens() -> None:
    """A late response that says more is left does not lift a tighter, newer one."""
    budget = ServerBudget()
    works = [_start(budget, 0.0) for _ in range(3)]
    budget.observe("requests", 5, 60.0, 1.0, answered=works[2])  # 5 - 2 running = 3
    budget.settle(works[2])
    budget.observe("requests", 10, 60.0, 1.5, answered=works[0])  # 10 - 2 = 8
    assert [limit.left for limit in budget.describe(1.5)] == [3]
    for _ in range(3):
        _start(budget, 2.0)
    assert budget.try_reserve(ONE, 2.0) is None


def test_a_tighter_short_constraint_then_a_looser_long_one() -> None:
    """Work waits for the tight constraint's reset, then the longer one governs."""
    budget = ServerBudget()
    budget.observe("tokens", 100, 10.0, 0.0)
    budget.observe("tokens", 1000, 60.0, 0.0)
    assert len(budget.describe(0.0)) == 2
    assert budget.next_free({"tokens": 500}, 0.0) == 10.0
    assert budget.try_reserve({"tokens": 500}, 10.0) is not None
    assert budget.next_free({"tokens": 600}, 10.0) == 60.0


def test_dominated_constraints_are_dropped() -> None:
    """A constraint with more left that resets no later than another is forgotten."""
    budget = ServerBudget()
    budget.observe("requests", 50, 30.0, 0.0)
    budget.observe("requests", 10, 60.0, 0.0)  # tighter and longer: replaces the first
    budget.observe("requests", 20, 45.0, 0.0)  # looser and shorter than the second: ignored
    assert budget.describe(0.0) == (ObservedLimit("requests", 10, 60.0),)


def test_nothing_left_holds_back_even_a_work_estimated_at_zero() -> None:
    """With nothing left in a dimension, a work that does not mention it waits too."""
    budget = ServerBudget()
    budget.observe("tokens", 0, 20.0, 0.0)
    assert budget.next_free(ONE, 0.0) == 20.0
    assert budget.next_free({"requests": 1, "tokens": 0}, 0.0) == 20.0
    budget.observe("images", 5, 20.0, 0.0)
    assert budget.next_free({"images": 0}, 20.0) == 20.0


def test_a_stale_observation_is_ignored() -> None:
    """An observation whose reset is already past says nothing."""
    budget = ServerBudget()
    budget.observe("requests", 0, 5.0, 5.0)
    assert budget.describe(5.0) == ()


def test_settle_charges_debt_and_refunds_nothing() -> None:
    """An actual above the estimate lowers what is left; one below does not raise it."""
    budget = ServerBudget()
    budget.observe("tokens", 1000, 60.0, 0.0)
    over = _start(budget, 0.0, {"tokens": 100})
    under = _start(budget, 0.0, {"tokens": 100})
    assert not budget.settle(over, {"tokens": 300})
    assert budget.describe(1.0) == (ObservedLimit("tokens", 600, 60.0),)
    assert not budget.settle(under, {"tokens": 10})
    assert budget.describe(1.0) == (ObservedLimit("tokens", 600, 60.0),)


def test_a_settled_work_counts_at_the_larger_of_estimate_and_actual() -> None:
    """A work settled after the answered one counts as unseen at max(estimate, actual)."""
    budget = ServerBudget()
    answered = _start(budget, 0.0, {"tokens": 10})
    big = _start(budget, 0.0, {"tokens": 50})
    small = _start(budget, 0.0, {"tokens": 50})
    budget.settle(big, {"tokens": 80})
    budget.settle(small, {"tokens": 5})
    budget.observe("tokens", 1000, 60.0, 1.0, answered=answered)
    # big at its actual, small at its estimate; big's debt was charged before, not twice.
    assert budget.describe(1.0)[0].left == 1000 - 80 - 50


def test_release_gives_the_amount_back() -> None:
    """A released reservation is given back to every constraint."""
    budget = ServerBudget()
    budget.observe("requests", 1, 60.0, 0.0)
    handle = budget.try_reserve(ONE, 0.0)
    assert handle is not None
    assert budget.try_reserve(ONE, 0.0) is None
    assert budget.release(handle)
    assert budget.try_reserve(ONE, 0.0) is not None


def test_observe_limits_reads_a_response() -> None:
    """observe_limits applies each reported limit and a retry-after as no requests left."""
    headers = {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-requests": "20s",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "1m",
        "retry-after": "5",
    }
    budget = ServerBudget()
    running = _start(budget, 100.0)
    limits = read_rate_limit_headers(headers, now_wall=1.7e9)
    budget.observe_limits(limits, 100.0, answered=running, retry_after=False)
    assert set(budget.describe(100.0)) == {
        ObservedLimit("requests", 3, 120.0),
        ObservedLimit("tokens", 500, 160.0),
    }
    budget.observe_limits(limits, 101.0, answered=running)
    assert budget.next_free({"requests": 1, "tokens": 100}, 101.0) == 106.0
    assert budget.next_free({"requests": 1, "tokens": 100}, 106.0) == 106.0
    assert budget.next_free({"tokens": 600}, 106.0) == 161.0  # the newer reset replaced 160


def test_memory_forgets_works_no_observation_can_count() -> None:
    """Settled works are forgotten once nothing running started before they settled."""
    budget = ServerBudget()
    slow = _start(budget, 0.0)
    quick = [_start(budget, 1.0) for _ in range(5)]
    for handle in quick:
        budget.settle(handle)
    assert budget.remembered() == 6  # slow still runs: the quick ones may still count
    budget.settle(slow)
    assert budget.remembered() == 0
    for _ in range(100):
        budget.settle(_start(budget, 2.0))
    assert budget.remembered() == 0


def test_steps_happen_once_each_in_order() -> None:
    """Second settles and releases raise; observing needs a running work of this budget."""
    budget, other = ServerBudget(), ServerBudget()
    handle = budget.reserve(ONE)
    with pytest.raises(RuntimeError, match="after commit"):
        budget.observe("requests", 1, 9.0, 0.0, answered=handle)
    with pytest.raises(RuntimeError, match="commit it"):
        budget.settle(handle)
    budget.commit(handle, 0.0)
    with pytest.raises(RuntimeError, match="committed"):
        budget.commit(handle, 0.0)
    with pytest.raises(ValueError, match="another server budget"):
        other.observe("requests", 1, 9.0, 0.0, answered=handle)
    budget.settle(handle)
    assert handle.state is HoldState.SETTLED
    with pytest.raises(RuntimeError, match="settled already"):
        budget.settle(handle)
    with pytest.raises(RuntimeError, match="before settle"):
        budget.observe("requests", 1, 9.0, 0.0, answered=handle)
    released = budget.reserve(ONE)
    budget.release(released)
    with pytest.raises(RuntimeError, match="released already"):
        budget.release(released)


def test_in_transit_counts_only_recent_commits_as_unseen() -> None:
    """With a transit bound, works committed longer ago than it reached the server already."""
    budget = ServerBudget(in_transit=1.0)
    old = [_start(budget, 0.0) for _ in range(5)]
    recent = _start(budget, 9.5)
    answered = _start(budget, 9.8)
    budget.observe("requests", 10, 60.0, 10.0, answered=answered)
    assert budget.describe(10.0) == (ObservedLimit("requests", 9, 60.0),)  # only `recent`
    for handle in [*old, recent, answered]:
        budget.settle(handle)
    assert budget.remembered() == 2  # committed within 1 s of the latest time seen
    budget.observe("requests", 10, 60.0, 20.0)
    assert budget.remembered() == 2
    budget.settle(_start(budget, 20.0))
    assert budget.remembered() == 1


def test_refill_steps_read_a_budget_that_refills() -> None:
    """With the limit, refill steps allow more as the reset nears, under the line to the limit."""
    budget = ServerBudget()
    budget.observe("tokens", 0, 40.0, 0.0, limit=1000, refill_steps=4)
    assert budget.describe(0.0) == (
        ObservedLimit("tokens", 0, 10.0),
        ObservedLimit("tokens", 250, 20.0),
        ObservedLimit("tokens", 500, 30.0),
        ObservedLimit("tokens", 750, 40.0),
    )
    assert budget.next_free({"tokens": 300}, 0.0) == 20.0
    assert budget.next_free({"tokens": 800}, 0.0) == 40.0
    budget.observe("tokens", 900, 5.0, 1.0, limit=1000, refill_steps=4)
    assert len(budget.describe(1.0)) == 4  # looser and shorter: every step dominated
    budget.observe("tokens", 0, 51.0, 1.0, limit=1000, refill_steps=2)
    assert budget.describe(1.0) == (  # tighter for longer: replaces every old step
        ObservedLimit("tokens", 0, 26.0),
        ObservedLimit("tokens", 500, 51.0),
    )


def test_observe_limits_can_read_refilling_limits() -> None:
    """observe_limits passes each limit's size on when asked to read refills."""
    headers = {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "40s",
    }
    budget = ServerBudget()
    budget.observe_limits(read_rate_limit_headers(headers, now_wall=0.0), 0.0, refill_steps=2)
    assert budget.describe(0.0) == (
        ObservedLimit("tokens", 0, 20.0),
        ObservedLimit("tokens", 500, 40.0),
    )


@pytest.mark.parametrize("in_transit", [-1.0, math.inf, math.nan])
def test_a_bad_transit_bound_is_refused(in_transit: float) -> None:
    """in_transit is a finite number of seconds >= 0."""
    with pytest.raises(ValueError, match="in_transit"):
        ServerBudget(in_transit=in_transit)


@pytest.mark.parametrize("amounts", [{"requests": -1}, {"tokens": math.nan}, [("requests", 1)]])
def test_bad_amounts_are_refused(amounts: object) -> None:
    """Amounts are a mapping of finite numbers >= 0."""
    with pytest.raises(ValueError, match="must be"):
        ServerBudget().reserve(amounts)  # type: ignore[arg-type]


def test_reserved_returns_to_exactly_zero() -> None:
    """Once nothing is outstanding, reservations count exactly nothing in a new observation."""
    budget = ServerBudget()
    handles = [budget.reserve({"tokens": 0.1}) for _ in range(7)]
    for handle in handles:
        budget.release(handle)
    budget.observe("tokens", 1, 9.0, 0.0)
    assert budget.describe(0.0) == (ObservedLimit("tokens", 1, 9.0),)


# ---------------------------------------------------------------------------- simulation


DELAYS = [0.0, 0.1, 0.5, 1.5]  # one way, each way
MAX_TRANSIT = 2 * max(DELAYS)


@dataclass
class _Observation:
    """One response the client read: when the server answered, what it said."""

    answered_at: float
    remaining: int
    reset_at: float
    heard_at: float


@dataclass
class _Sim:
    """A server with fixed windows of ``quota`` requests, and what it received."""

    quota: int
    window: float
    arrivals: list[float] = field(default_factory=list)
    counts: dict[int, int] = field(default_factory=dict)

    def answer(self, at: float) -> tuple[int, float]:
        """Count a request arriving at ``at``; return (remaining, reset time)."""
        self.arrivals.append(at)
        index = int(at // self.window)
        self.counts[index] = self.counts.get(index, 0) + 1
        return max(0, self.quota - self.counts[index]), (index + 1) * self.window


@settings(max_examples=200, deadline=None)
@given(
    quota=st.integers(min_value=1, max_value=6),
    window=st.sampled_from([2.0, 5.0]),
    with_answered=st.booleans(),
    in_transit=st.sampled_from([None, MAX_TRANSIT]),
    data=st.data(),
)
def test_property_the_server_never_receives_more_than_it_said_was_left(
    quota: int, window: float, with_answered: bool, in_transit: float | None, data: st.DataObject
) -> None:
    """After an answer the server gets at most what it said was left, or what was already sent."""
    # A server with fixed windows, network delays both ways (responses out of order) and random
    # releases; with no assumption on the network, and with in_transit bounding the delays.
    sim = _Sim(quota, window)
    budget = ServerBudget(in_transit=in_transit)
    events: list[tuple[float, int, str, object]] = []
    sequence = 0
    observations: list[_Observation] = []
    delays = st.sampled_from(DELAYS)

    def schedule(at: float, kind: str, payload: object) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (at, sequence, kind, payload))

    for tick in range(data.draw(st.integers(min_value=1, max_value=40))):
        schedule(tick * 0.5, "try", None)
    sent: list[tuple[float, float]] = []  # (reserved at, arrived at) of every request
    while events:
        now, _, kind, payload = heapq.heappop(events)
        if kind == "try":
            for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
                handle = budget.try_reserve(ONE, now)
                if handle is None:
                    event("held back")
                    break
                schedule(now + data.draw(delays), "start", (handle, now))
        elif kind == "start":  # the handler starts a moment after the decision, or never
            assert isinstance(payload, tuple)
            handle, reserved = payload
            if data.draw(st.integers(0, 5)) == 0:
                budget.release(handle)
                continue
            budget.commit(handle, now)
            schedule(now + data.draw(delays), "arrive", (handle, reserved))
        elif kind == "arrive":
            assert isinstance(payload, tuple)
            handle, reserved = payload
            remaining, reset_at = sim.answer(now)
            sent.append((reserved, now))
            schedule(now + data.draw(delays), "respond", (handle, now, remaining, reset_at))
        else:
            assert isinstance(payload, tuple)
            handle, answered_at, remaining, reset_at = payload
            budget.observe(
                "requests",
                remaining,
                reset_at,
                now,
                answered=handle if with_answered else None,
            )
            budget.settle(handle)
            if reset_at > now:
                observations.append(_Observation(answered_at, remaining, reset_at, now))
    for seen in observations:
        after = [(r, a) for r, a in sent if seen.answered_at < a < seen.reset_at]
        already = sum(1 for r, _ in after if r <= seen.heard_at)
        assert len(after) <= max(seen.remaining, already)
    if in_transit is None:
        assert budget.remembered() == 0  # nothing runs: every commit forgotten
    else:
        assert budget.remembered() <= len(sent)  # only commits within in_transit of the last time
