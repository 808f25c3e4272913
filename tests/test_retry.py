"""Retries: attempts, backoff (with and without jitter), retry_on, and what a retry holds."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import anyio
import pytest
import trio.testing

import runcue

pytestmark = pytest.mark.anyio

EPSILON = 1e-3  # asyncio runs in real time here: its timers may fire a hair early


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, object]]:
    """asyncio in real time; trio on a virtual clock that jumps whenever every task waits."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


def assert_consistent(cue: runcue.Cue) -> None:
    """The ledger adds up and no service still lends a concurrency token."""
    stats = cue.stats()
    assert stats.submitted == (
        stats.pending
        + stats.running
        + stats.completed
        + stats.failed
        + stats.skipped
        + stats.cancelled
    )
    for service in cue._services.values():
        assert service.limiter is None or service.limiter.borrowed_tokens == 0


# ---------------------------------------------------------------------- the policy, pure


def test_backoff_ceiling_grows_geometrically_up_to_max_delay() -> None:
    """The delay before jitter is min(max_delay, base * factor ** (attempt - 1))."""
    backoff = runcue.Backoff(base=0.5, factor=3.0, max_delay=10.0, jitter=False)
    rng = random.Random(0)
    assert [backoff.delay(attempt, rng) for attempt in range(1, 6)] == [
        0.5,
        1.5,
        4.5,
        10.0,
        10.0,
    ]


def test_full_jitter_draws_uniformly_between_zero_and_the_ceiling() -> None:
    """With jitter the delay is a uniform draw from 0 to the ceiling, not near a fixed value."""
    backoff = runcue.Backoff(base=1.0, factor=2.0, max_delay=10.0, jitter=True)
    rng = random.Random(42)
    draws = [backoff.delay(3, rng) for _ in range(2000)]  # ceiling 4.0
    assert all(0.0 <= draw <= 4.0 for draw in draws)
    assert min(draws) < 0.2
    assert max(draws) > 3.8
    assert sum(draws) / len(draws) == pytest.approx(2.0, abs=0.15)
    assert [backoff.delay(9, rng) <= 10.0 for _ in range(100)] == [True] * 100


def test_bad_retry_and_backoff_are_refused_at_registration() -> None:
    """retry < 1 and a negative backoff are errors at the call that made them."""
    cue = runcue.Cue()
    with pytest.raises(ValueError, match="retry"):
        cue.task("t", retry=0)
    with pytest.raises(ValueError, match="Backoff"):
        runcue.Backoff(base=-1.0)


# ---------------------------------------------------------------------- attempts


async def test_retry_counts_attempts_including_the_first(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """retry=3 runs the handler three times, attempt 1, 2, 3, then fails once."""
    cue = make_cue()
    attempts: list[int] = []
    raised: list[BaseException] = []
    events: list[str] = []
    failures: list[tuple[str, BaseException]] = []

    @cue.task("flaky", retry=3, backoff=runcue.Backoff(base=0.01, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> None:
        attempts.append(work.attempt)
        events.append(f"start {work.attempt}")
        error = ValueError(f"attempt {work.attempt} broke")
        raised.append(error)
        raise error

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        events.append(f"retry after {work.attempt}")

    @cue.on_failure
    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        events.append("failure")
        failures.append((work.id, error))

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("flaky")
            with pytest.raises(ValueError, match="attempt 3 broke") as caught:
                await cue.wait(work_id)
    assert attempts == [1, 2, 3]
    assert events == [
        "start 1",
        "retry after 1",
        "start 2",
        "retry after 2",
        "start 3",
        "failure",
    ]
    assert failures == [(work_id, raised[-1])]
    assert caught.value is raised[-1]
    stats = cue.stats()
    assert (stats.failed, stats.retried, stats.completed) == (1, 2, 0)
    assert stats.services[None].retried == 2
    assert_consistent(cue)


async def test_a_later_attempt_may_succeed(make_cue: Callable[..., runcue.Cue]) -> None:
    """Work that fails twice and then succeeds completes with the third attempt's result."""
    cue = make_cue()
    failures: list[BaseException] = []
    retries: list[tuple[int, str]] = []

    @cue.task("flaky", retry=5, backoff=runcue.Backoff(base=0.01, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> str:
        if work.attempt < 3:
            raise ConnectionError(f"try {work.attempt}")
        return f"ok on {work.attempt}"

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retries.append((work.attempt, str(error)))

    @cue.on_failure
    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        failures.append(error)

    with anyio.fail_after(10):
        async with cue:
            assert await cue.wait(await cue.submit("flaky")) == "ok on 3"
    assert retries == [(1, "try 1"), (2, "try 2")]
    assert failures == []
    assert (cue.stats().completed, cue.stats().retried) == (1, 2)
    assert_consistent(cue)


async def test_backoff_delays_follow_the_policy_without_jitter(
    make_cue: Callable[..., runcue.Cue], anyio_backend_name: str
) -> None:
    """Without jitter each retry waits exactly min(max_delay, base * factor**(attempt-1))."""
    cue = make_cue()
    starts: list[float] = []
    delays: list[float] = []

    @cue.task(
        "flaky",
        retry=5,
        backoff=runcue.Backoff(base=0.01, factor=2.0, max_delay=0.03, jitter=False),
    )
    async def flaky(work: runcue.WorkUnit) -> None:
        starts.append(anyio.current_time())
        raise RuntimeError("always")

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        delays.append(delay)

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(RuntimeError):
                await cue.wait(await cue.submit("flaky"))
    assert delays == pytest.approx([0.01, 0.02, 0.03, 0.03])
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert len(gaps) == 4
    for gap, delay in zip(gaps, delays):
        assert gap >= delay - EPSILON
        if anyio_backend_name == "trio":  # virtual time: the retry starts right on time
            assert gap == pytest.approx(delay, abs=1e-9)


async def test_jittered_delays_stay_under_the_ceiling_and_repeat_with_a_seed(
    anyio_backend_name: str,
) -> None:
    """Full jitter waits a draw in 0..ceiling (the one on_retry reports); a seed repeats it."""
    backoff = runcue.Backoff(base=0.02, factor=2.0, max_delay=0.05, jitter=True)

    async def run_once() -> tuple[list[float], list[float]]:
        cue = runcue.Cue(seed=7)
        starts: list[float] = []
        delays: list[float] = []

        @cue.task("flaky", retry=6, backoff=backoff)
        async def flaky(work: runcue.WorkUnit) -> None:
            starts.append(anyio.current_time())
            raise RuntimeError("always")

        @cue.on_retry
        def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
            assert 0.0 <= delay <= backoff.ceiling(work.attempt)
            delays.append(delay)

        async with cue:
            with pytest.raises(RuntimeError):
                await cue.wait(await cue.submit("flaky"))
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        return delays, gaps

    with anyio.fail_after(10):
        delays, gaps = await run_once()
        again, _ = await run_once()
    assert len(delays) == 5
    assert delays == again
    assert len(set(delays)) == 5  # drawn, not the fixed ceilings 0.02, 0.04, 0.05, 0.05, 0.05
    for gap, delay in zip(gaps, delays):
        assert gap >= delay - EPSILON
        if anyio_backend_name == "trio":
            assert gap == pytest.approx(delay, abs=1e-9)


# ---------------------------------------------------------------------- retry_on


async def test_an_error_not_in_retry_on_fails_at_once(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """An exception outside retry_on fails the work on its first attempt."""
    cue = make_cue()
    attempts: list[int] = []
    retries: list[int] = []
    failures: list[BaseException] = []

    @cue.task("t", retry=5, backoff=0.01, retry_on=(ConnectionError, TimeoutError))
    async def handler(work: runcue.WorkUnit) -> None:
        attempts.append(work.attempt)
        raise KeyError("not transient")

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retries.append(work.attempt)

    @cue.on_failure
    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        failures.append(error)

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(KeyError):
                await cue.wait(await cue.submit("t"))
    assert attempts == [1]
    assert retries == []
    assert len(failures) == 1
    assert isinstance(failures[0], KeyError)
    assert cue.stats().retried == 0


async def test_retry_on_types_retry_matching_errors(make_cue: Callable[..., runcue.Cue]) -> None:
    """An exception that is an instance of a retry_on type is retried; then another fails."""
    cue = make_cue()
    attempts: list[int] = []

    @cue.task("t", retry=5, backoff=0.01, retry_on=(ConnectionError,))
    async def handler(work: runcue.WorkUnit) -> None:
        attempts.append(work.attempt)
        if work.attempt < 3:
            raise ConnectionResetError("a subclass of ConnectionError")
        raise LookupError("not retried")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(LookupError):
                await cue.wait(await cue.submit("t"))
    assert attempts == [1, 2, 3]


async def test_retry_on_predicate_decides(make_cue: Callable[..., runcue.Cue]) -> None:
    """A retry_on predicate is asked about each error: True retries, False fails at once."""
    cue = make_cue()
    asked: list[str] = []

    def transient(error: BaseException) -> bool:
        asked.append(str(error))
        return "transient" in str(error)

    @cue.task("t", retry=10, backoff=0.01, retry_on=transient)
    async def handler(work: runcue.WorkUnit) -> None:
        if work.attempt < 3:
            raise ValueError(f"transient {work.attempt}")
        raise ValueError("fatal")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(ValueError, match="fatal"):
                await cue.wait(await cue.submit("t"))
    assert asked == ["transient 1", "transient 2", "fatal"]
    assert cue.stats().retried == 2


# ---------------------------------------------------------------------- what a retry holds


async def test_waiting_for_a_rate_slot_never_uses_an_attempt(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Work that waits long for rate slots still gets all its attempts, numbered 1 and 2."""
    cue = make_cue()
    cue.service("api", rate="1/0.02s")
    attempts: dict[int, list[int]] = {}

    @cue.task("call", uses="api", retry=2, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def call(work: runcue.WorkUnit) -> int:
        n = int(work.params["n"])
        attempts.setdefault(n, []).append(work.attempt)
        if work.attempt == 1:
            raise ConnectionError("first attempt always fails")
        return n

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("call", {"n": n}) for n in range(6)]
            results = [await cue.wait(work_id) for work_id in ids]
    assert results == list(range(6))
    assert attempts == {n: [1, 2] for n in range(6)}
    stats = cue.stats()
    assert (stats.completed, stats.failed, stats.retried) == (6, 0, 6)
    assert stats.services["api"].started == 12
    assert_consistent(cue)


async def test_backoff_does_not_hold_the_concurrency_slot(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """During a retry's backoff another work of a concurrent=1 service runs."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    order: list[str] = []
    reasons: list[str] = []

    @cue.task("first", uses="serial", retry=2, backoff=runcue.Backoff(base=0.05, jitter=False))
    async def first(work: runcue.WorkUnit) -> None:
        order.append(f"first {work.attempt}")
        if work.attempt == 1:
            raise ConnectionError("retry me")

    @cue.task("second", uses="serial")
    async def second(work: runcue.WorkUnit) -> None:
        order.append("second")
        reasons.extend(
            str(item["reason"]) for item in cue.debug_blocked() if item["work"].task == "first"
        )

    with anyio.fail_after(10):
        async with cue:
            first_id = await cue.submit("first")
            second_id = await cue.submit("second")
            await cue.wait(first_id)
            await cue.wait(second_id)
    assert order == ["first 1", "second", "first 2"]
    assert reasons == ["retry_wait"]
    assert cue.stats().services["serial"].max_running == 1
    assert_consistent(cue)


async def test_every_attempt_takes_a_new_rate_slot(
    make_cue: Callable[..., runcue.Cue], anyio_backend_name: str
) -> None:
    """With rate 1/0.05s and no backoff, consecutive attempts start a full period apart."""
    cue = make_cue()
    cue.service("api", rate="1/0.05s")
    starts: list[float] = []

    @cue.task("call", uses="api", retry=3, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def call(work: runcue.WorkUnit) -> None:
        starts.append(anyio.current_time())
        raise ConnectionError("again")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(ConnectionError):
                await cue.wait(await cue.submit("call"))
    assert len(starts) == 3
    for earlier, later in itertools.pairwise(starts):
        assert later - earlier >= 0.05 - EPSILON
        if anyio_backend_name == "trio":
            assert later - earlier == pytest.approx(0.05, abs=1e-9)
    assert cue.stats().services["api"].started == 3
