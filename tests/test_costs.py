"""Cost windows over amounts on a fake clock (no loop, no sleep), against a brute-force model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from runcue._costs import (
    CostLimiter,
    CostReservation,
    CostWindow,
    HoldState,
    parse_costs,
)
from runcue._errors import CostTooLargeError, InvalidRateError
from runcue._rate import RateSpec

# ---------------------------------------------------------------------------- parse_costs


def test_parse_costs_reads_each_dimension_with_the_rate_grammar() -> None:
    """Each dimension's windows parse like a rate string, several joined by ';'."""
    assert parse_costs({"tokens": "90000/min;2000000/day", "input_tokens": "10/s"}) == {
        "tokens": (RateSpec(90000, 60.0), RateSpec(2000000, 86400.0)),
        "input_tokens": (RateSpec(10, 1.0),),
    }


@pytest.mark.parametrize(
    ("costs", "needle"),
    [
        ({"tokens": "lots"}, "'tokens'"),
        ({"tokens": ""}, "'tokens'"),
        ({"tokens": 90000}, "'tokens'"),
        ({"tokens": "0/min"}, "'tokens'"),
        ({7: "10/min"}, "7"),
        ({"": "10/min"}, "''"),
        ({"input-tokens": "10/min"}, "'input-tokens'"),
        ({}, "empty"),
    ],
)
def test_parse_costs_names_the_bad_dimension_or_string(costs: object, needle: str) -> None:
    """A bad dimension name, window string or empty mapping raises a ValueError naming it."""
    with pytest.raises(InvalidRateError) as caught:
        parse_costs(costs)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    assert needle in str(caught.value)


def test_parse_costs_rejects_a_non_mapping() -> None:
    """A string instead of a mapping is refused with the expected shape in the message."""
    with pytest.raises(InvalidRateError, match="mapping"):
        parse_costs("90000/min")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- CostWindow


def test_empty_window_admits_up_to_the_limit_now() -> None:
    """An empty window admits any amount up to its limit at once."""
    window = CostWindow(100, 60.0)
    assert window.next_free(100, 5.0) == 5.0
    assert window.fits(100)
    assert not window.fits(101)


def test_amount_above_the_limit_never_fits() -> None:
    """An amount above the whole limit has no next free time."""
    window = CostWindow(100, 60.0)
    assert window.next_free(101, 0.0) == math.inf


def test_window_frees_when_enough_old_commits_leave() -> None:
    """The next free time is when the oldest commits whose amounts make room leave the window."""
    window = CostWindow(100, 10.0)
    for time, amount in [(0.0, 30), (2.0, 30), (4.0, 30)]:
        window.commit(window.reserve(amount), time)
    assert window.next_free(10, 5.0) == 5.0  # 90 + 10 <= 100
    assert window.next_free(11, 5.0) == 10.0  # the 30 at t=0 must leave
    assert window.next_free(40, 5.0) == 10.0  # 90 + 40 - 100 = 30: the first 30 suffices
    assert window.next_free(70, 5.0) == 12.0  # 30 + 30 must leave
    assert window.next_free(100, 5.0) == 14.0
    assert window.committed(10.0) == 60
    assert window.next_free(40, 10.0) == 10.0


def test_reservations_count_as_now_and_never_expire() -> None:
    """A window full of reservations has no known free time until they commit."""
    window = CostWindow(100, 10.0)
    hold = window.reserve(80)
    assert window.next_free(30, 0.0) == math.inf
    assert window.next_free(20, 50.0) == 50.0
    window.commit(hold, 1.0)
    assert window.next_free(30, 2.0) == 11.0


def test_release_gives_the_reservation_back() -> None:
    """A released reservation no longer counts."""
    window = CostWindow(100, 10.0)
    hold = window.reserve(80)
    window.release(hold)
    assert window.used(0.0) == 0
    assert window.next_free(100, 0.0) == 0.0


def test_settle_refunds_at_the_original_commit_time() -> None:
    """Settling below the estimate lowers the load at once, still counted at the commit time."""
    window = CostWindow(100, 10.0)
    hold = window.reserve(90)
    window.commit(hold, 1.0)
    assert window.next_free(50, 2.0) == 11.0
    window.settle(hold, 40)
    assert window.committed(2.0) == 40
    assert window.next_free(50, 2.0) == 2.0
    assert window.next_free(61, 2.0) == 11.0  # the 40 still leaves at 1 + 10


def test_settle_above_the_estimate_is_debt_that_delays_admissions() -> None:
    """An actual above the estimate is charged at the commit time and holds later work back."""
    window = CostWindow(100, 10.0)
    hold = window.reserve(50)
    window.commit(hold, 1.0)
    window.settle(hold, 130)
    assert window.committed(2.0) == 130
    assert window.next_free(1, 2.0) == 11.0
    assert window.next_free(1, 11.0) == 11.0


def test_settle_after_the_commit_left_the_window_changes_nothing() -> None:
    """A settlement arriving after its commit left the window does not count in it."""
    window = CostWindow(100, 10.0)
    hold = window.reserve(50)
    window.commit(hold, 0.0)
    assert window.committed(10.0) == 0
    window.settle(hold, 500)
    assert window.committed(10.0) == 0
    assert window.next_free(100, 10.0) == 10.0


def test_commits_at_the_same_time_share_one_bucket() -> None:
    """Commits with the same timestamp are merged: one bucket, settled separately."""
    window = CostWindow(100, 10.0)
    first, second = window.reserve(30), window.reserve(30)
    window.commit(first, 1.0)
    window.commit(second, 1.0)
    assert window.buckets() == 1
    window.settle(first, 10)
    assert window.committed(1.0) == 40
    window.commit(window.reserve(5), 1.5)
    assert window.buckets() == 2


def test_resolution_merges_nearby_commits_and_frees_no_earlier() -> None:
    """With a resolution, commits close together share a bucket counted at the latest of them."""
    window = CostWindow(100, 10.0, resolution=1.0)
    window.commit(window.reserve(50), 0.0)
    window.commit(window.reserve(50), 0.75)
    assert window.buckets() == 1
    assert window.next_free(1, 1.0) == 10.75  # exact would say 10.0: conservative
    window.commit(window.reserve(0), 1.5)  # more than 1 s after the bucket's first commit
    assert window.buckets() == 2


def test_resolution_bounds_the_buckets_of_a_window() -> None:
    """A window never holds more than period / resolution + 1 buckets, however many commits."""
    window = CostWindow(1_000_000, 60.0, resolution=1.0)
    for step in range(10_000):
        window.commit(window.reserve(1), step * 0.05)
        window.committed(step * 0.05)
        assert window.buckets() <= 61 + 1


def test_a_commit_time_before_the_latest_is_counted_at_the_latest() -> None:
    """A clock read that went backwards is recorded at the latest commit time (conservative)."""
    window = CostWindow(100, 10.0)
    window.commit(window.reserve(60), 5.0)
    window.commit(window.reserve(40), 4.0)
    assert window.next_free(40, 6.0) == 15.0


def test_reserved_returns_to_exactly_zero() -> None:
    """Float rounding never leaves a phantom reservation once nothing is outstanding."""
    window = CostWindow(1.0, 10.0)
    holds = [window.reserve(0.1) for _ in range(7)]
    for hold in holds:
        window.release(hold)
    assert window.reserved == 0


@pytest.mark.parametrize(
    ("steps", "fails", "message"),
    [
        (["release"], "release", "released already"),
        (["commit"], "commit", "committed"),
        (["commit", "settle"], "settle", "settled already"),
        (["commit"], "release", "settle it"),
        ([], "settle", "commit it"),
        (["release"], "settle", "released already"),
    ],
)
def test_a_hold_takes_each_step_at_most_once(steps: list[str], fails: str, message: str) -> None:
    """Commit, settle and release follow one order, once each; a wrong step raises RuntimeError."""
    window = CostWindow(100, 10.0)
    hold = window.reserve(10)
    actions = {
        "commit": lambda: window.commit(hold, 0.0),
        "release": lambda: window.release(hold),
        "settle": lambda: window.settle(hold, 5),
    }
    for step in steps:
        actions[step]()
    with pytest.raises(RuntimeError, match=message):
        actions[fails]()


@pytest.mark.parametrize("amount", [-1, math.nan, math.inf, True, "5"])
def test_window_refuses_bad_amounts(amount: object) -> None:
    """Amounts are finite numbers >= 0."""
    window = CostWindow(100, 10.0)
    with pytest.raises(ValueError, match="number"):
        window.reserve(amount)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("limit", "period", "resolution"),
    [(0, 1.0, 0.0), (10, 0.0, 0.0), (10, math.inf, 0.0), (math.nan, 1.0, 0.0), (10, 1.0, -1.0)],
)
def test_window_refuses_bad_shapes(limit: float, period: float, resolution: float) -> None:
    """A window needs a positive limit and period and a resolution >= 0."""
    with pytest.raises(ValueError, match=">"):
        CostWindow(limit, period, resolution=resolution)


# ---------------------------------------------------------------------------- CostLimiter


def test_limiter_admits_all_windows_or_none() -> None:
    """One full window refuses the whole reservation and changes nothing anywhere."""
    costs = CostLimiter({"tokens": "100/10s;150/min", "images": "2/min"})
    first = costs.try_reserve({"tokens": 90, "images": 1}, 0.0)
    assert first is not None
    costs.commit(first, 0.0)
    before = costs.describe(1.0)
    assert costs.try_reserve({"tokens": 20, "images": 1}, 1.0) is None
    assert costs.describe(1.0) == before
    assert costs.next_free({"tokens": 20}, 1.0) == 10.0
    assert costs.try_reserve({"tokens": 61}, 10.0) is None  # the minute window: 90 + 61 > 150
    assert costs.next_free({"tokens": 61}, 10.0) == 60.0


def test_a_dimension_estimated_at_zero_does_not_hold_the_work_back() -> None:
    """Debt in one dimension does not delay a work that uses none of it."""
    costs = CostLimiter({"tokens": "100/min", "images": "2/min"})
    heavy = costs.reserve({"images": 1})
    costs.commit(heavy, 0.0)
    costs.settle(heavy, {"images": 5})
    assert costs.next_free({"tokens": 10}, 1.0) == 1.0
    assert costs.next_free({"tokens": 10, "images": 1}, 1.0) == 60.0


def test_check_fails_at_submit_when_an_estimate_exceeds_a_whole_window() -> None:
    """An estimate above a window's limit raises CostTooLargeError naming dimension and window."""
    costs = CostLimiter({"tokens": "90000/min;2000000/day"})
    assert costs.check({"tokens": 90000}) == {"tokens": 90000}
    with pytest.raises(CostTooLargeError, match=r"120000 tokens.*90000/60s") as caught:
        costs.check({"tokens": 120000})
    assert isinstance(caught.value, ValueError)
    assert not costs.fits({"tokens": 120000})
    assert costs.next_free({"tokens": 120000}, 0.0) == math.inf
    with pytest.raises(CostTooLargeError):
        costs.reserve({"tokens": 120000})


@pytest.mark.parametrize(
    ("estimate", "message"),
    [
        ({"dollars": 1}, "'dollars' is not declared"),
        ({"tokens": -1}, ">= 0"),
        ({"tokens": math.nan}, "finite"),
        ({"tokens": True}, "number"),
        ([("tokens", 1)], "mapping"),
    ],
)
def test_estimates_are_validated_with_clear_errors(estimate: object, message: str) -> None:
    """Unknown dimensions, negative or non-finite amounts and non-mappings raise ValueError."""
    costs = CostLimiter({"tokens": "100/min"})
    with pytest.raises(ValueError, match=message):
        costs.check(estimate)  # type: ignore[arg-type]


def test_settle_keeps_the_estimate_of_a_dimension_it_does_not_name() -> None:
    """A dimension missing from the actual cost keeps its estimate; a refund says so."""
    costs = CostLimiter({"tokens": "100/min", "calls": "10/min"})
    handle = costs.reserve({"tokens": 50, "calls": 1})
    assert costs.commit(handle, 0.0)
    assert costs.settle(handle, {"tokens": 20})
    assert handle.actual == {"tokens": 20, "calls": 1}
    assert handle.estimate == {"tokens": 50, "calls": 1}
    assert [use.committed for use in costs.describe(1.0)] == [20, 1]


def test_settle_without_actual_keeps_every_estimate() -> None:
    """settle(handle) with no actual keeps the estimate (a failed call whose use is unknown)."""
    costs = CostLimiter({"tokens": "100/min"})
    handle = costs.reserve({"tokens": 50})
    costs.commit(handle, 0.0)
    assert not costs.settle(handle)
    assert costs.describe(1.0)[0].committed == 50


def test_settle_rejects_bad_actuals_and_changes_nothing() -> None:
    """A bad actual raises before anything is settled, so a good one can follow."""
    costs = CostLimiter({"tokens": "100/min"})
    handle = costs.reserve({"tokens": 50})
    costs.commit(handle, 0.0)
    with pytest.raises(ValueError, match="not declared"):
        costs.settle(handle, {"dollars": 1})
    with pytest.raises(ValueError, match=">= 0"):
        costs.settle(handle, {"tokens": -5})
    with pytest.raises(ValueError, match="mapping"):
        costs.settle(handle, 5)  # type: ignore[arg-type]
    assert handle.state is HoldState.COMMITTED
    costs.settle(handle, {"tokens": 10})
    assert costs.describe(1.0)[0].committed == 10


def test_limiter_handles_take_each_step_once() -> None:
    """A second settle or release of one handle raises; so does settling a reservation."""
    costs = CostLimiter({"tokens": "100/min"})
    handle = costs.reserve({"tokens": 10})
    with pytest.raises(RuntimeError, match="commit it"):
        costs.settle(handle, {"tokens": 1})
    costs.release(handle)
    with pytest.raises(RuntimeError, match="released already"):
        costs.release(handle)
    other = costs.reserve({"tokens": 10})
    costs.commit(other, 0.0)
    costs.settle(other)
    with pytest.raises(RuntimeError, match="settled already"):
        costs.settle(other)
    with pytest.raises(RuntimeError, match="settled"):
        costs.release(other)


def test_a_handle_belongs_to_its_limiter() -> None:
    """A handle from another limiter is refused."""
    one, two = CostLimiter({"tokens": "100/min"}), CostLimiter({"tokens": "100/min"})
    handle = one.reserve({"tokens": 1})
    with pytest.raises(ValueError, match="another cost limiter"):
        two.commit(handle, 0.0)


def test_waiting_for_names_each_blocking_window_and_when_it_frees() -> None:
    """waiting_for lists the windows that hold a work back, for 'waiting for tokens'."""
    costs = CostLimiter({"tokens": "100/10s;1000/day", "calls": "5/s"})
    handle = costs.reserve({"tokens": 80, "calls": 1})
    costs.commit(handle, 0.0)
    (wait,) = costs.waiting_for({"tokens": 30, "calls": 1}, 1.0)
    assert (wait.dimension, wait.spec, wait.needed, wait.used, wait.frees_at) == (
        "tokens",
        RateSpec(100, 10.0),
        30,
        80,
        10.0,
    )
    assert str(wait) == "waiting for tokens: 80 of 100 used in 10s, 30 more frees at 10"
    assert costs.waiting_for({"tokens": 20}, 1.0) == ()
    pending = costs.reserve({"tokens": 20})
    (unknown,) = costs.waiting_for({"tokens": 100}, 20.0)
    assert "once running works start" in str(unknown)
    costs.release(pending)


def test_commit_release_and_settle_say_when_waiting_work_may_move() -> None:
    """The return values tell the scheduler when a waiting work's next free time may change."""
    costs = CostLimiter({"tokens": "100/min"})
    nothing = costs.reserve({})
    assert not costs.commit(nothing, 0.0)
    some = costs.reserve({"tokens": 5})
    assert costs.release(some)
    debt = costs.reserve({"tokens": 5})
    costs.commit(debt, 0.0)
    assert not costs.settle(debt, {"tokens": 9})


def test_describe_lists_every_window_with_its_use() -> None:
    """describe() shows committed and reserved amounts per dimension and window."""
    costs = CostLimiter({"tokens": "100/10s;1000/min"})
    held = costs.reserve({"tokens": 30})
    done = costs.reserve({"tokens": 40})
    costs.commit(done, 0.0)
    uses = costs.describe(5.0)
    assert [(u.dimension, u.spec.period, u.committed, u.reserved, u.used) for u in uses] == [
        ("tokens", 10.0, 40, 30, 70),
        ("tokens", 60.0, 40, 30, 70),
    ]
    assert [use.committed for use in costs.describe(10.0)] == [0, 40]
    costs.release(held)
    assert [dimension for dimension, _, _ in costs.windows()] == ["tokens", "tokens"]


# ---------------------------------------------------------------------------- properties


@dataclass
class _Record:
    """The model's view of one reservation."""

    handle: CostReservation
    estimate: dict[str, float]
    state: str = "reserved"
    commit_time: float = 0.0
    amount: dict[str, float] = field(default_factory=dict)


def _model_load(
    records: list[_Record], dimension: str, period: float, now: float, *, reserved: bool = True
) -> float:
    """The load a window ending at ``now`` holds, computed from scratch."""
    total = 0.0
    for record in records:
        if record.state == "reserved" and reserved:
            total += record.estimate[dimension]
        elif record.state in ("committed", "settled") and now - period < record.commit_time <= now:
            total += record.amount[dimension]
    return total


def _fits(
    records: list[_Record], limits: CostLimiter, estimate: dict[str, float], now: float
) -> bool:
    """Whether the brute-force model admits the estimate at ``now``."""
    return all(
        _model_load(records, dimension, spec.period, now) + estimate[dimension] <= spec.limit
        for dimension, spec, _ in limits.windows()
        if estimate[dimension] > 0
    )


_COSTS = st.fixed_dictionaries(
    {"tokens": st.sampled_from(["20/2s", "20/2s;50/5s", "7/1s;30/10s"])},
    optional={"calls": st.sampled_from(["3/1s", "5/3s"])},
)


@settings(max_examples=300, deadline=None)
@given(
    costs=_COSTS,
    resolution=st.sampled_from([0.0, 0.0, 0.5]),
    honest=st.booleans(),
    data=st.data(),
)
def test_property_admissions_keep_every_window_within_its_limit(
    costs: dict[str, str], resolution: float, honest: bool, data: st.DataObject
) -> None:
    """Under random use no window exceeds its limit and every hold ends exactly once."""
    # Random estimates, actuals, timings and releases. At every admission the load plus the
    # estimate fits every window (exactly as a brute-force model says, without resolution);
    # with actuals <= estimates no window ever holds more than its limit of committed cost.
    limits = CostLimiter(costs, resolution=resolution)
    records: list[_Record] = []
    now = 0.0
    amount = st.integers(min_value=0, max_value=25)
    for _ in range(data.draw(st.integers(min_value=1, max_value=60))):
        now += data.draw(st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 3.0]))
        action = data.draw(
            st.sampled_from(["reserve", "reserve", "commit", "commit", "release", "settle"])
        )
        if action == "reserve":
            estimate = limits.normalize({d: data.draw(amount) for d in limits.dimensions})
            model_fits = _fits(records, limits, estimate, now) and limits.fits(estimate)
            next_free = limits.next_free(estimate, now)
            handle = limits.try_reserve(estimate, now)
            event("refused" if handle is None else "admitted")
            if handle is None:
                event("refused until a known time" if math.isfinite(next_free) else "refused")
                assert resolution or not model_fits
                assert next_free > now
                if resolution == 0 and math.isfinite(next_free):
                    # The returned time is the earliest one at which the model admits it.
                    assert _fits(records, limits, estimate, next_free)
                    assert not _fits(records, limits, estimate, next_free - 0.125)
            else:
                assert model_fits  # the invariant, checked at the admission
                assert resolution or next_free == now
                records.append(_Record(handle, estimate))
                if data.draw(st.booleans()):  # most handlers start right away
                    limits.commit(handle, now)
                    records[-1].state, records[-1].commit_time = "committed", now
                    records[-1].amount = dict(estimate)
        elif action == "commit":
            waiting = [r for r in records if r.state == "reserved"]
            if waiting:
                record = data.draw(st.sampled_from(waiting))
                limits.commit(record.handle, now)
                record.state, record.commit_time = "committed", now
                record.amount = dict(record.estimate)
        elif action == "release":
            waiting = [r for r in records if r.state == "reserved"]
            if waiting:
                record = data.draw(st.sampled_from(waiting))
                limits.release(record.handle)
                record.state = "released"
                with pytest.raises(RuntimeError):
                    limits.release(record.handle)
        else:
            running = [r for r in records if r.state == "committed"]
            if running:
                record = data.draw(st.sampled_from(running))
                actual = {
                    d: data.draw(st.integers(0, int(e) if honest else int(2 * e + 5)))
                    for d, e in record.estimate.items()
                }
                limits.settle(record.handle, actual)
                record.state, record.amount = "settled", {**actual}
                with pytest.raises(RuntimeError):
                    limits.settle(record.handle, actual)
    # Everything still open ends exactly once.
    for record in records:
        if record.state == "reserved":
            limits.release(record.handle)
            record.state = "released"
        elif record.state == "committed":
            limits.settle(record.handle)
            record.state = "settled"
            record.amount = dict(record.estimate)
    assert all(r.handle.state in (HoldState.SETTLED, HoldState.RELEASED) for r in records)
    assert all(window.reserved == 0 for _, _, window in limits.windows())
    if honest:
        # No window (t - P, t] holds more than its limit of committed cost, at any t; the
        # heaviest windows end at a commit time.
        for dimension, spec, _ in limits.windows():
            for record in records:
                if record.state == "settled":
                    end = record.commit_time
                    load = _model_load(records, dimension, spec.period, end, reserved=False)
                    assert load <= spec.limit
