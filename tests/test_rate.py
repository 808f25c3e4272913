"""Rate strings and the exact sliding-window limiter, tested on a fake clock (no loop, no sleep)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import runcue
from runcue._rate import RateLimiter, RateSpec, SlidingWindow


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------------- parse_rate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5/s", 1.0),
        ("5/sec", 1.0),
        ("5/second", 1.0),
        ("5/seconds", 1.0),
        ("5/m", 60.0),
        ("5/min", 60.0),
        ("5/minute", 60.0),
        ("5/minutes", 60.0),
        ("5/h", 3600.0),
        ("5/hr", 3600.0),
        ("5/hour", 3600.0),
        ("5/hours", 3600.0),
        ("5/d", 86400.0),
        ("5/day", 86400.0),
        ("5/days", 86400.0),
    ],
)
def test_every_unit_spelling_parses_to_its_period(text: str, seconds: float) -> None:
    """Each accepted unit spelling means its number of seconds."""
    assert runcue.parse_rate(text) == (RateSpec(5, seconds),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/15min", RateSpec(100, 900.0)),
        ("10/10s", RateSpec(10, 10.0)),
        ("3/2h", RateSpec(3, 7200.0)),
        ("1/7days", RateSpec(1, 7 * 86400.0)),
        ("4/0.5s", RateSpec(4, 0.5)),
        ("60/MIN", RateSpec(60, 60.0)),
        (" 60 / min ", RateSpec(60, 60.0)),
        ("1/s", RateSpec(1, 1.0)),
        ("100000/day", RateSpec(100000, 86400.0)),
    ],
)
def test_a_multiplier_scales_the_period(text: str, expected: RateSpec) -> None:
    """'N/<k><unit>' means N per k units; case and spaces around the parts do not matter."""
    assert runcue.parse_rate(text) == (expected,)


def test_several_windows_joined_by_semicolons_parse_in_order() -> None:
    """'60/min;10/10s' is two windows, both enforced, in the order written."""
    assert runcue.parse_rate("60/min;10/10s") == (RateSpec(60, 60.0), RateSpec(10, 10.0))
    assert runcue.parse_rate("1000/day; 100/h; 5/s") == (
        RateSpec(1000, 86400.0),
        RateSpec(100, 3600.0),
        RateSpec(5, 1.0),
    )


BAD_RATES = [
    "",
    "   ",
    ";",
    "60",
    "min",
    "60/",
    "/min",
    "0/min",
    "-1/min",
    "1.5/min",
    "60/0min",
    "60/0.0s",
    "60/-1min",
    "60/fortnight",
    "60/ms",
    "60/min/s",
    "60 per min",
    "6 0/min",
    "sixty/min",
    "60/1e3s",
    "60/min;abc",
    "60/min;0/s",
]


@pytest.mark.parametrize("text", BAD_RATES)
def test_a_bad_rate_raises_invalid_rate_error_naming_the_string(text: str) -> None:
    """A rate that does not parse raises InvalidRateError (a ValueError) quoting it."""
    with pytest.raises(runcue.InvalidRateError) as info:
        runcue.parse_rate(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, runcue.RuncueError)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [60, 1.5, None, b"60/min"])
def test_a_rate_that_is_not_a_string_raises_invalid_rate_error(value: object) -> None:
    """A non-string rate is refused with InvalidRateError naming the value."""
    with pytest.raises(runcue.InvalidRateError, match="rate must be a string") as info:
        runcue.parse_rate(value)  # type: ignore[arg-type]
    assert repr(value) in str(info.value)


# ---------------------------------------------------------------------------- cue.service()


@pytest.mark.parametrize("text", ["60/fortnight", "0/min", "", "60"])
def test_service_with_a_bad_rate_raises_at_the_call(text: str) -> None:
    """cue.service() refuses a bad rate at once, naming it, and declares nothing."""
    cue = runcue.Cue()
    with pytest.raises(runcue.InvalidRateError) as info:
        cue.service("api", rate=text)
    assert repr(text) in str(info.value)
    assert "api" not in cue.stats().services
    with pytest.raises(runcue.UnknownServiceError):
        cue.task("t", uses="api")


@pytest.mark.parametrize("concurrent", [0, -1, 1.5, True, False, "2"])
def test_service_with_a_bad_concurrent_raises_at_the_call(concurrent: object) -> None:
    """cue.service() refuses concurrent that is not a whole number >= 1, naming it."""
    cue = runcue.Cue()
    with pytest.raises(ValueError, match="concurrent") as info:
        cue.service("api", concurrent=concurrent)  # type: ignore[arg-type]
    assert repr(concurrent) in str(info.value)
    assert "api" not in cue.stats().services


@pytest.mark.parametrize(
    ("rate", "concurrent"),
    [("bad", 2), ("10/s", 0), ("10/s", 1.5), ("0/s", None), ("1/s;x", 4)],
)
def test_a_rejected_reconfiguration_leaves_the_service_unchanged(
    rate: str, concurrent: object
) -> None:
    """A failed cue.service() call on an existing service keeps its old limits."""
    cue = runcue.Cue()
    cue.service("api", rate="5/s", concurrent=3)
    with pytest.raises(ValueError, match=r"rate|concurrent"):
        cue.service("api", rate=rate, concurrent=concurrent)  # type: ignore[arg-type]
    stats = cue.stats().services["api"]
    assert stats.rate == "5/s"
    assert stats.concurrent == 3
    assert [(w.limit, w.period) for w in stats.windows] == [(5, 1.0)]


def test_service_accepts_both_limits_and_either_alone() -> None:
    """A service may declare a rate, a concurrency, both, or neither."""
    cue = runcue.Cue()
    cue.service("both", rate="60/min;10/10s", concurrent=5)
    cue.service("rate", rate="100/15min")
    cue.service("conc", concurrent=1)
    cue.service("free")
    services = cue.stats().services
    assert services["both"].concurrent == 5
    assert [(w.limit, w.period) for w in services["both"].windows] == [(60, 60.0), (10, 10.0)]
    assert [(w.limit, w.period) for w in services["rate"].windows] == [(100, 900.0)]
    assert services["rate"].concurrent is None
    assert services["conc"].concurrent == 1
    assert services["conc"].windows == ()
    assert services["free"].concurrent is None
    assert services["free"].windows == ()


# ---------------------------------------------------------------------------- SlidingWindow


def test_window_admits_exactly_limit_then_refuses() -> None:
    """A fresh window admits `limit` starts at one instant and not one more."""
    clock = FakeClock(10.0)
    window = SlidingWindow(3, 1.0, clock=clock)
    for _ in range(3):
        assert window.next_free() == 10.0
        window.admit()
    assert window.used() == 3
    assert window.next_free() > 10.0


def test_window_frees_its_first_slot_one_period_after_the_oldest() -> None:
    """A full window frees one slot exactly `period` after its oldest start, then the next."""
    clock = FakeClock(0.0)
    window = SlidingWindow(2, 1.0, clock=clock)
    window.admit()
    clock.now = 0.4
    window.admit()
    assert window.next_free() == pytest.approx(1.0)
    clock.now = 0.999
    assert window.next_free() == pytest.approx(1.0)
    assert window.used() == 2
    clock.now = 1.0
    assert window.next_free() == 1.0
    assert window.used() == 1
    window.admit()
    assert window.next_free() == pytest.approx(1.4)
    clock.now = 1.4
    assert window.next_free() == pytest.approx(1.4)
    assert window.history() == (1.0,)


def test_window_next_free_accepts_an_explicit_now() -> None:
    """next_free(now) answers for the given instant, not the clock's."""
    clock = FakeClock(0.0)
    window = SlidingWindow(1, 5.0, clock=clock)
    window.admit()
    assert window.next_free(2.0) == 5.0
    assert window.next_free(7.0) == 7.0


@pytest.mark.parametrize(("limit", "period"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -2.0)])
def test_window_refuses_a_nonsense_shape(limit: int, period: float) -> None:
    """A window needs limit >= 1 and period > 0."""
    with pytest.raises(ValueError, match="limit >= 1"):
        SlidingWindow(limit, period, clock=FakeClock())


# ---------------------------------------------------------------------------- RateLimiter


def test_limiter_with_several_windows_admits_all_or_none() -> None:
    """A refused attempt is recorded in no window, so a short window is not used up for nothing."""
    clock = FakeClock(0.0)
    limiter = RateLimiter(runcue.parse_rate("3/10s;2/1s"), clock=clock)
    assert limiter.try_admit()
    assert limiter.try_admit()
    assert not limiter.try_admit()  # the 1 s window is full
    assert [used for _, used in limiter.used()] == [2, 2]
    assert limiter.next_free() == pytest.approx(1.0)
    clock.now = 1.0
    assert limiter.try_admit()  # third of the 10 s window
    assert not limiter.try_admit()  # the 10 s window is full, the 1 s window is not
    assert [used for _, used in limiter.used()] == [3, 1]
    assert limiter.next_free() == pytest.approx(10.0)
    clock.now = 5.0
    assert not limiter.try_admit()
    assert [used for _, used in limiter.used()] == [3, 0]
    clock.now = 10.0  # both starts at 0.0 have left the 10 s window
    assert limiter.try_admit()
    assert limiter.try_admit()
    assert not limiter.try_admit()
    assert [used for _, used in limiter.used()] == [3, 2]


def test_limiter_needs_at_least_one_window() -> None:
    """A RateLimiter without windows is a programming error."""
    with pytest.raises(ValueError, match="at least one window"):
        RateLimiter((), clock=FakeClock())


def test_limiter_history_carries_over_past_starts() -> None:
    """A limiter built from another's history still counts the old starts."""
    clock = FakeClock(0.0)
    first = RateLimiter(runcue.parse_rate("2/s"), clock=clock)
    assert first.try_admit()
    clock.now = 0.5
    assert first.try_admit()
    second = RateLimiter(runcue.parse_rate("2/s;3/10s"), clock=clock, history=first.history())
    assert not second.try_admit()
    clock.now = 1.0
    assert second.try_admit()
    assert not second.try_admit()  # 3 starts in the 10 s window now


# ---------------------------------------------------------------------------- the invariant

times = st.one_of(
    st.integers(min_value=0, max_value=40).map(float),
    st.floats(min_value=0.0, max_value=40.0, allow_nan=False, allow_infinity=False),
)
specs = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=5),
        st.one_of(
            st.integers(min_value=1, max_value=10).map(float),
            st.floats(min_value=0.01, max_value=10.0, allow_nan=False),
        ),
    ),
    min_size=1,
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(specs=specs, attempts=st.lists(times, max_size=60))
def test_limiter_keeps_every_window_exact(
    specs: list[tuple[int, float]], attempts: list[float]
) -> None:
    """No [t, t+period) holds more than `limit` admissions; a refusal happens only when needed."""
    clock = FakeClock()
    limiter = RateLimiter([RateSpec(limit, period) for limit, period in specs], clock=clock)
    admitted: list[float] = []
    for now in sorted(attempts):
        clock.now = now
        # Admitting at `now` breaks a window exactly when `limit` earlier admissions lie in
        # (now - period, now] -- written as `start + period > now`, the limiter's own test.
        would_break = any(
            sum(1 for start in admitted if start + period > now) >= limit for limit, period in specs
        )
        free_at = limiter.next_free()
        if limiter.try_admit():
            assert not would_break, f"admitted at {now} although a window was full"
            assert free_at == now
            admitted.append(now)
        else:
            assert would_break, f"refused at {now} although every window had room"
            assert free_at > now
    for limit, period in specs:
        for start in admitted:
            inside = [t for t in admitted if start <= t < start + period]
            assert len(inside) <= limit, (limit, period, start, inside)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_limiter_is_exact_at_the_window_edges(data: st.DataObject) -> None:
    """Attempts just before, at and just after a window's edge are admitted exactly right."""
    windows = data.draw(specs, label="windows")
    nudges = [0.0, 1e-9, -1e-9, 1e-6, -1e-6, 1e-3, -1e-3]
    gap = st.one_of(
        st.just(0.0),
        st.sampled_from([period + nudge for _, period in windows for nudge in nudges]),
        st.floats(min_value=0.0, max_value=2.0, allow_nan=False),
    )
    gaps = data.draw(st.lists(gap, max_size=50), label="gaps")
    clock = FakeClock()
    limiter = RateLimiter([RateSpec(limit, period) for limit, period in windows], clock=clock)
    admitted: list[float] = []
    burst_start = 0.0
    for step in gaps:
        # Gaps are measured from the start of the current burst, so "one period later,
        # give or take a hair" lands right on the edge of the burst's windows.
        now = max(clock.now, burst_start + step)
        if step == 0.0:
            burst_start = now
        clock.now = now
        full = any(
            sum(1 for start in admitted if start + period > now) >= limit
            for limit, period in windows
        )
        if limiter.try_admit():
            assert not full, f"admitted at {now!r} into a full window"
            admitted.append(now)
        else:
            assert full, f"refused at {now!r} although every window had room"
    for limit, period in windows:
        for start in admitted:
            assert sum(1 for t in admitted if start <= t < start + period) <= limit


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(min_value=1, max_value=6),
    period=st.floats(min_value=0.01, max_value=5.0, allow_nan=False),
    attempts=st.lists(times, max_size=60),
)
def test_window_admitting_at_next_free_keeps_the_invariant(
    limit: int, period: float, attempts: list[float]
) -> None:
    """Admitting whenever next_free() <= now never overfills a single window."""
    clock = FakeClock()
    window = SlidingWindow(limit, period, clock=clock)
    admitted: list[float] = []
    for now in sorted(attempts):
        clock.now = now
        recent = sum(1 for start in admitted if start + period > now)
        if window.next_free() <= now:
            assert recent < limit
            window.admit()
            admitted.append(now)
        else:
            assert recent >= limit
        assert window.used() == min(limit, sum(1 for s in admitted if s + period > now))
    for start in admitted:
        assert sum(1 for t in admitted if start <= t < start + period) <= limit
