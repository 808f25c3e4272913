"""Bad input: each mistake raises a clear error at the call that made it, naming the bad
value, and disturbs nothing already queued. The rate parser is fuzzed with hypothesis."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import runcue
from runcue._rate import _UNIT_SECONDS

UNITS = sorted(_UNIT_SECONDS)
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---------------------------------------------------------------------- the rate parser


def check_rate(rate: object) -> tuple[runcue.RateSpec, ...] | None:
    """Parse; either sane windows come back, or InvalidRateError naming the input."""
    error: runcue.InvalidRateError | None = None
    specs: tuple[runcue.RateSpec, ...] = ()
    try:
        specs = runcue.parse_rate(rate)  # type: ignore[arg-type]
    except runcue.InvalidRateError as exc:
        error = exc
    if error is not None:
        assert isinstance(error, ValueError)
        assert repr(rate) in str(error), str(error)
        return None
    assert isinstance(rate, str)
    assert specs, "a rate parsed into no window at all"
    for spec in specs:
        assert isinstance(spec.limit, int)
        assert spec.limit >= 1, spec
        assert spec.period > 0, spec
        assert math.isfinite(spec.period), f"{rate!r} parsed into an endless window {spec}"
    return specs


@FUZZ
@given(st.text())
@example("0/s")
@example("1/0s")
@example("1/0.0min")
@example(";;")
@example("")
@example("60/min;")
@example("\u0663/s")  # a non-ASCII digit
def test_parse_rate_on_any_text_returns_sane_windows_or_raises_naming_it(rate: str) -> None:
    """Any text gives windows (limit >= 1, 0 < period < inf) or InvalidRateError naming it."""
    check_rate(rate)


def test_parse_rate_names_a_count_too_long_to_read() -> None:
    """A count with more digits than int() reads raises InvalidRateError, not a bare ValueError."""
    rate = "9" * 5000 + "/s"
    with pytest.raises(runcue.InvalidRateError) as info:
        runcue.parse_rate(rate)
    assert repr(rate) in str(info.value)


def test_parse_rate_rejects_a_multiplier_that_overflows_to_an_endless_window() -> None:
    """A multiplier too large for a float raises instead of becoming an infinite period."""
    rate = "1/" + "9" * 400 + "s"
    with pytest.raises(runcue.InvalidRateError) as info:
        runcue.parse_rate(rate)
    assert repr(rate) in str(info.value)


RATE_PIECES = st.tuples(
    st.sampled_from(["", " ", "  "]),
    st.one_of(
        st.integers(-3, 10**9).map(str), st.from_regex(r"\A[0-9]{0,4}\Z"), st.text(max_size=3)
    ),
    st.sampled_from(["/", " / ", "//", "", "-"]),
    st.one_of(
        st.just(""),
        st.from_regex(r"\A[0-9]{0,3}(\.[0-9]{0,3})?\Z"),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    ),
    st.one_of(
        st.sampled_from(UNITS), st.sampled_from([u.upper() for u in UNITS]), st.text(max_size=4)
    ),
).map("".join)


@FUZZ
@given(st.lists(RATE_PIECES, min_size=1, max_size=3).map(";".join))
def test_parse_rate_on_near_miss_rates_returns_sane_windows_or_raises_naming_it(
    rate: str,
) -> None:
    """Strings shaped almost like rates parse sanely or raise InvalidRateError naming them."""
    check_rate(rate)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(1, 10**6),
            st.one_of(st.none(), st.integers(1, 999), st.decimals("0.001", "999", places=3)),
            st.sampled_from(UNITS),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_parse_rate_reads_every_valid_rate_exactly(
    windows: list[tuple[int, Any, str]],
) -> None:
    """Valid 'N/<multiplier><unit>' windows, joined by ';', parse into exactly those windows."""
    text = ";".join(
        f"{limit}/{'' if mult is None else mult}{unit}" for limit, mult, unit in windows
    )
    specs = check_rate(text)
    assert specs is not None, text
    assert [spec.limit for spec in specs] == [limit for limit, _, _ in windows]
    expected = [
        (1.0 if mult is None else float(mult)) * _UNIT_SECONDS[unit] for _, mult, unit in windows
    ]
    assert [spec.period for spec in specs] == pytest.approx(expected)


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(), st.lists(st.text())))
def test_parse_rate_on_a_non_string_raises_naming_it(rate: object) -> None:
    """A rate that is not a string raises InvalidRateError naming it."""
    assert check_rate(rate) is None


# ---------------------------------------------------------------------- fuzzed arguments

BAD_LIMITS = st.one_of(
    st.integers(max_value=0),
    st.floats().filter(lambda x: not (isinstance(x, float) and x.is_integer() and x >= 1)),
    st.booleans(),
    st.text(max_size=5),
    st.just([2]),
)


@FUZZ
@given(concurrent=BAD_LIMITS)
def test_a_bad_concurrent_limit_raises_naming_it_and_changes_nothing(concurrent: object) -> None:
    """concurrent= must be a whole number >= 1: anything else raises and keeps the old limit."""
    cue = runcue.Cue()
    cue.service("api", concurrent=2, rate="5/s")
    with pytest.raises(ValueError, match="concurrent") as info:
        cue.service("api", concurrent=concurrent, rate="9/s")  # type: ignore[arg-type]
    assert repr(concurrent) in str(info.value)
    service = cue._services["api"]
    assert (service.concurrent, service.rate_text) == (2, "5/s")


@FUZZ
@given(priority=st.one_of(st.floats().filter(lambda p: not 0.0 <= p <= 1.0), st.booleans()))
def test_a_priority_out_of_range_raises_naming_it(priority: float) -> None:
    """submit(priority=) outside 0.0..1.0 (or NaN, or a bool) raises naming the value."""

    async def main() -> None:
        cue = runcue.Cue()

        @cue.task("t")
        async def handler(work: runcue.WorkUnit) -> None:
            return None

        with pytest.raises(ValueError, match="priority") as info:
            await cue.submit("t", priority=priority)
        assert repr(priority) in str(info.value)
        assert cue.stats().submitted == 0

    anyio.run(main)


@FUZZ
@given(
    params=st.one_of(
        st.lists(st.integers()),
        st.text(),
        st.integers(),
        st.tuples(st.text(), st.integers()),
        st.sets(st.integers()),
        st.binary(),
    )
)
def test_params_that_are_not_a_mapping_raise_naming_them(params: object) -> None:
    """submit(params=) that is not a mapping raises TypeError naming its type and value."""

    async def main() -> None:
        cue = runcue.Cue()

        @cue.task("t")
        async def handler(work: runcue.WorkUnit) -> None:
            return None

        with pytest.raises(TypeError, match="mapping") as info:
            await cue.submit("t", params)  # type: ignore[arg-type]
        assert type(params).__name__ in str(info.value)
        assert repr(params) in str(info.value)
        assert cue.stats().submitted == 0

    anyio.run(main)


# ---------------------------------------------------------------------- bad Cue options

BAD_OPTIONS: list[tuple[str, object]] = [
    ("pending_warn_after", -1),
    ("pending_timeout", -1.5),
    ("pending_timeout", 0),
    ("pending_timeout", "10"),
    ("stall_warn_after", float("nan")),
    ("stall_timeout", -3),
    ("stall_timeout", True),
    ("check_timeout", 0),
    ("check_timeout", -1.0),
    ("recheck_interval", 0),
    ("recheck_interval", None),
    ("priority_aging", -300),
    ("keep_finished", -1),
    ("keep_finished", 1.5),
    ("keep_finished", True),
    ("keep_finished", "1000"),
    ("max_threads", 0),
    ("max_threads", 2.5),
    ("checks", "nope"),
    ("checks", None),
    ("lease_ttl", 0),
    ("store", "redis://localhost"),
]


@pytest.mark.parametrize(
    ("option", "value"), BAD_OPTIONS, ids=[f"{o}={v!r}" for o, v in BAD_OPTIONS]
)
def test_a_bad_cue_option_raises_naming_the_option_and_value(option: str, value: object) -> None:
    """runcue.Cue(option=bad) raises ValueError/TypeError naming both the option and the value."""
    with pytest.raises((ValueError, TypeError)) as info:
        runcue.Cue(**{option: value})  # type: ignore[arg-type]
    message = str(info.value)
    assert repr(value) in message, message
    if option != "store":
        assert option in message, message


# ---------------------------------------------------------------------- bad calls on a running cue


async def _call(action: Callable[[runcue.Cue], Any], cue: runcue.Cue) -> Any:
    """Run one bad call; await it when it is a coroutine."""
    result = action(cue)
    if isinstance(result, Awaitable):
        return await result
    return result


def _register(cue: runcue.Cue, name: object, **options: Any) -> None:
    async def handler(work: runcue.WorkUnit) -> None:
        return None

    cue.task(name, **options)(handler)  # type: ignore[arg-type]


BadCall = tuple[str, Callable[[runcue.Cue], Any], type[BaseException], str]

BAD_CALLS: list[BadCall] = [
    # services
    ("service name ''", lambda c: c.service(""), ValueError, "''"),
    ("service name None", lambda c: c.service(None), ValueError, "None"),  # type: ignore[arg-type]
    ("service name 42", lambda c: c.service(42), ValueError, "42"),  # type: ignore[arg-type]
    ("concurrent=0", lambda c: c.service("api", concurrent=0), ValueError, "0"),
    ("concurrent=-2", lambda c: c.service("api", concurrent=-2), ValueError, "-2"),
    ("concurrent=1.5", lambda c: c.service("api", concurrent=1.5), ValueError, "1.5"),  # type: ignore[arg-type]
    ("concurrent=True", lambda c: c.service("api", concurrent=True), ValueError, "True"),
    ("concurrent='3'", lambda c: c.service("api", concurrent="3"), ValueError, "'3'"),  # type: ignore[arg-type]
    ("rate='0/s'", lambda c: c.service("api", rate="0/s"), runcue.InvalidRateError, "'0/s'"),
    ("rate='-1/s'", lambda c: c.service("api", rate="-1/s"), runcue.InvalidRateError, "'-1/s'"),
    ("rate='fast'", lambda c: c.service("api", rate="fast"), runcue.InvalidRateError, "'fast'"),
    (
        "rate='5/fortnight'",
        lambda c: c.service("api", rate="5/fortnight"),
        runcue.InvalidRateError,
        "fortnight",
    ),
    ("rate=5", lambda c: c.service("api", rate=5), runcue.InvalidRateError, "5"),  # type: ignore[arg-type]
    (
        "bad rate with a good concurrent",
        lambda c: c.service("api", rate="x/min", concurrent=9),
        runcue.InvalidRateError,
        "'x/min'",
    ),
    ("shared without a store", lambda c: c.service("api", shared=True), ValueError, "store"),
    # tasks
    ("task name ''", lambda c: _register(c, ""), ValueError, "''"),
    ("task name None", lambda c: _register(c, None), ValueError, "None"),
    ("task name twice", lambda c: _register(c, "work"), ValueError, "'work'"),
    (
        "unknown service",
        lambda c: _register(c, "new", uses="nope"),
        runcue.UnknownServiceError,
        "'nope'",
    ),
    ("retry=0", lambda c: _register(c, "new", retry=0), ValueError, "0"),
    ("retry=True", lambda c: _register(c, "new", retry=True), ValueError, "True"),
    ("backoff='fast'", lambda c: _register(c, "new", backoff="fast"), TypeError, "'fast'"),
    ("retry_on=5", lambda c: _register(c, "new", retry_on=5), TypeError, "5"),
    ("timeout=-1", lambda c: _register(c, "new", timeout=-1), ValueError, "-1"),
    ("timeout=0", lambda c: _register(c, "new", timeout=0), ValueError, "0"),
    ("inputs=5", lambda c: _register(c, "new", inputs=5), TypeError, "5"),
    ("handler 42", lambda c: c.task("new")(42), TypeError, "42"),  # type: ignore[type-var]
    ("handler None", lambda c: c.task("new")(None), TypeError, "None"),  # type: ignore[type-var]
    # hooks and listeners
    ("is_ready 'yes'", lambda c: c.is_ready("yes"), TypeError, "'yes'"),  # type: ignore[type-var]
    ("is_stale None", lambda c: c.is_stale(None), TypeError, "None"),  # type: ignore[type-var]
    ("on_complete 1", lambda c: c.on_complete(1), TypeError, "1"),  # type: ignore[type-var]
    ("on_failure []", lambda c: c.on_failure([]), TypeError, "[]"),  # type: ignore[type-var]
    ("priority 0.5", lambda c: c.priority(0.5), TypeError, "0.5"),  # type: ignore[type-var]
    ("subscribe None", lambda c: c.subscribe(None), TypeError, "None"),  # type: ignore[arg-type]
    # submissions
    ("unknown task", lambda c: c.submit("nope"), runcue.UnknownTaskError, "'nope'"),
    ("params list", lambda c: c.submit("work", [1, 2]), TypeError, "[1, 2]"),  # type: ignore[arg-type]
    ("params str", lambda c: c.submit("work", "n=1"), TypeError, "'n=1'"),  # type: ignore[arg-type]
    ("priority 1.5", lambda c: c.submit("work", {"n": 9}, priority=1.5), ValueError, "1.5"),
    ("priority -0.1", lambda c: c.submit("work", {"n": 9}, priority=-0.1), ValueError, "-0.1"),
    ("priority nan", lambda c: c.submit("work", {"n": 9}, priority=math.nan), ValueError, "nan"),
    (
        "priority 'high'",
        lambda c: c.submit("work", {"n": 9}, priority="high"),  # type: ignore[arg-type]
        ValueError,
        "'high'",
    ),
    ("wait unknown id", lambda c: c.wait("no-such-id"), runcue.WorkNotFound, "'no-such-id'"),
    ("list bad state", lambda c: c.list(state="lost"), ValueError, "'lost'"),
    ("stop timeout=-1", lambda c: c.stop(timeout=-1), ValueError, "-1"),
    ("stop timeout=nan", lambda c: c.stop(timeout=math.nan), ValueError, "nan"),
    ("stop timeout='5'", lambda c: c.stop(timeout="5"), ValueError, "'5'"),  # type: ignore[arg-type]
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("label", "action", "error", "names"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS]
)
async def test_a_bad_call_raises_at_the_call_and_disturbs_nothing_queued(
    label: str,
    action: Callable[[runcue.Cue], Any],
    error: type[BaseException],
    names: str,
) -> None:
    """With work running and queued, a bad call raises naming the value; all work still ends."""
    cue = runcue.Cue(seed=1)
    cue.service("api", concurrent=1, rate="100/s")
    release = anyio.Event()
    started = anyio.Event()

    @cue.task("work", uses="api")
    async def work(unit: runcue.WorkUnit) -> int:
        started.set()
        await release.wait()
        return int(unit.params["n"])

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("work", {"n": n}) for n in range(5)]
            await started.wait()
            before = cue.stats()
            with pytest.raises(error) as info:
                await _call(action, cue)
            assert names in str(info.value), str(info.value)
            after = cue.stats()
            assert (after.submitted, after.pending, after.running) == (
                before.submitted,
                before.pending,
                before.running,
            )
            service = after.services["api"]
            assert (service.concurrent, service.rate) == (1, "100/s"), "the limits changed"
            assert "running" in repr(cue), "the bad call stopped the cue"
            release.set()
            assert [await cue.wait(work_id) for work_id in ids] == list(range(5))
    stats = cue.stats()
    assert (stats.submitted, stats.completed, stats.failed, stats.cancelled) == (5, 5, 0, 0)
    for service_state in cue._services.values():
        assert service_state.limiter is not None
        assert service_state.limiter.borrowed_tokens == 0


@pytest.mark.anyio
async def test_misuse_of_the_lifecycle_raises_naming_the_fix() -> None:
    """submit_threadsafe() before start and after stop, and submit() after stop, name the fix."""
    cue = runcue.Cue(seed=1)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return 1

    with pytest.raises(runcue.CueStateError, match="start it first"):
        cue.submit_threadsafe("t")
    with anyio.fail_after(10):
        async with cue:
            assert await cue.wait(await cue.submit("t")) == 1
    with pytest.raises(runcue.CueStateError, match="async with"):
        await cue.submit("t")
    with pytest.raises(runcue.CueStateError, match="running cue"):
        await anyio.to_thread.run_sync(cue.submit_threadsafe, "t")
    assert cue.stats().submitted == 1


@pytest.mark.anyio
async def test_an_unhashable_key_raises_naming_it_and_queues_nothing() -> None:
    """submit(key=[1]) raises a TypeError that names key= and the value, at the call."""
    cue = runcue.Cue()

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        return None

    with pytest.raises(TypeError, match=r"key must be hashable .* got \[1\]"):
        await cue.submit("t", {}, key=[1])
    assert cue.stats().submitted == 0


@pytest.mark.parametrize("retry_after", ["x", math.inf, math.nan, -1.0, True, None])
def test_a_bad_retry_after_raises_naming_it(retry_after: object) -> None:
    """RateLimited(retry_after=) takes a finite number of seconds >= 0 and names anything else."""
    with pytest.raises(ValueError, match="retry_after must be a finite number") as info:
        runcue.RateLimited(retry_after=retry_after)  # type: ignore[arg-type]
    assert repr(retry_after) in str(info.value)
