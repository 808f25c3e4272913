"""Service limits at work: RateLimited pauses, several rate windows, live reconfiguration."""

from __future__ import annotations

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


def most_in_any_window(starts: list[float], period: float, slack: float) -> int:
    """The most starts inside any half-open window [t, t + period - slack) opened at a start."""
    return max(
        sum(1 for other in starts if start <= other < start + period - slack) for start in starts
    )


# ---------------------------------------------------------------------- RateLimited


async def test_rate_limited_pauses_the_whole_service(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """After RateLimited(retry_after) no work of the service starts until the pause ends."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    cue.service("other")
    retry_after = 0.2
    starts: dict[str, list[float]] = {}
    paused_at: list[float] = []
    paused = anyio.Event()
    other_started_at: list[float] = []

    @cue.task("call", uses="api", retry=1)
    async def call(work: runcue.WorkUnit) -> str:
        name = str(work.params["name"])
        starts.setdefault(name, []).append(anyio.current_time())
        if name == "a" and len(starts["a"]) == 1:
            raise runcue.RateLimited(retry_after=retry_after)
        return name

    @cue.task("elsewhere", uses="other")
    async def elsewhere(work: runcue.WorkUnit) -> None:
        other_started_at.append(anyio.current_time())

    def listen(event: runcue.WorkEvent) -> None:
        if event.kind == "paused":
            paused_at.append(event.time)
            paused.set()

    cue.subscribe(listen)
    with anyio.fail_after(10):
        async with cue:
            a = await cue.submit("call", {"name": "a"})
            b = await cue.submit("call", {"name": "b"})
            await paused.wait()
            c = await cue.submit("call", {"name": "c"})
            # Another service is not paused: its work runs at once.
            await cue.wait(await cue.submit("elsewhere"))
            blocked = {item["work"].id: item for item in cue.debug_blocked()}
            assert set(blocked) >= {a, b}
            for item in blocked.values():
                assert item["reason"] == "paused"
                assert "paused" in item["details"]
            assert "paused" in cue.explain(b)
            paused_for = cue.stats().services["api"].paused_for
            assert 0.0 < paused_for <= retry_after
            assert cue.stats().services["other"].paused_for == 0.0
            assert [await cue.wait(work_id) for work_id in (a, b, c)] == ["a", "b", "c"]
    end = paused_at[0] + retry_after
    assert other_started_at[0] < end
    assert starts["a"][1] >= end - EPSILON
    assert starts["b"][0] >= end - EPSILON
    assert starts["c"][0] >= end - EPSILON
    assert cue.stats().services["api"].paused_for == 0.0
    assert cue.stats().failed == 0
    assert_consistent(cue)


async def test_rate_limited_does_not_count_against_retry(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A work with retry=2 survives three RateLimited and one real failure, then succeeds."""
    cue = make_cue()
    cue.service("api")
    calls: list[str] = []
    retries: list[BaseException] = []

    @cue.task("call", uses="api", retry=2, backoff=runcue.Backoff(base=0.01, jitter=False))
    async def call(work: runcue.WorkUnit) -> str:
        calls.append("call")
        if len(calls) <= 3:
            raise runcue.RateLimited(retry_after=0.01)
        if len(calls) == 4:
            raise ConnectionError("a real failure")
        return "done"

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retries.append(error)

    with anyio.fail_after(10):
        async with cue:
            assert await cue.wait(await cue.submit("call")) == "done"
    assert len(calls) == 5
    assert len(retries) == 1
    assert isinstance(retries[0], ConnectionError)
    assert cue.stats().failed == 0
    assert_consistent(cue)


# ---------------------------------------------------------------------- several windows


async def test_every_rate_window_holds(
    make_cue: Callable[..., runcue.Cue], anyio_backend_name: str
) -> None:
    """With "5/sec;8/2s" both windows bound the starts: 5 in any second, 8 in any two."""
    virtual = anyio_backend_name == "trio"
    # asyncio runs in real time: the same shape, ten times faster.
    scale = 1.0 if virtual else 0.1
    slack = 0.0 if virtual else 0.005  # real handler starts lag their admission a little
    cue = make_cue()
    cue.service("api", rate=f"5/{scale:g}s;8/{2 * scale:g}s")
    starts: list[float] = []
    admitted: list[float] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        starts.append(anyio.current_time())

    def listen(event: runcue.WorkEvent) -> None:
        if event.kind == "started":
            admitted.append(event.time)

    cue.subscribe(listen)
    with anyio.fail_after(20):
        async with cue:
            for n in range(20):
                await cue.submit("call", {"n": n})
    assert len(starts) == len(admitted) == 20
    if not virtual:
        # A handler starts a little after its admission; on a loaded machine that lag can
        # exceed any fixed allowance, so allow exactly the largest lag seen in this run.
        lags = [start - admit for start, admit in zip(sorted(starts), sorted(admitted))]
        assert min(lags) >= 0
        slack = max(slack, max(lags) + 1e-9)
    # The moments the limiter admitted the starts keep both windows exactly ...
    assert most_in_any_window(admitted, 1 * scale, 0.0) <= 5
    assert most_in_any_window(admitted, 2 * scale, 0.0) <= 8
    # ... and so do the handlers' own clocks (in real time, give or take their lag).
    assert most_in_any_window(starts, 1 * scale, slack) <= 5
    assert most_in_any_window(starts, 2 * scale, slack) <= 8
    first = starts[0]
    # Both windows bind: 5 go at once, only 3 more within the next two periods.
    assert sum(1 for t in starts if t < first + 0.5 * scale) == 5
    assert sum(1 for t in starts if t < first + 2 * scale - slack) == 8
    if virtual:
        # Every start as early as both windows allow: 5, then 3 (8/2s), 5, 3, and the last 4.
        counts = {second: starts.count(second) for second in sorted(set(starts))}
        assert counts == {0.0: 5, 1.0: 3, 2.0: 5, 3.0: 3, 4.0: 4}
    stats = cue.stats()
    assert [(w.limit, w.period) for w in stats.services["api"].windows] == [
        (5, 1 * scale),
        (8, 2 * scale),
    ]


# ---------------------------------------------------------------------- live reconfiguration


async def test_raising_concurrent_while_running_lets_more_run(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Changing concurrent from 1 to 3 while work waits lets three run at once."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    running = 0
    peak = 0
    first_started = anyio.Event()
    three_running = anyio.Event()
    release = anyio.Event()

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        first_started.set()
        if running == 3:
            three_running.set()
        await release.wait()
        running -= 1

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("hold", {"n": n}) for n in range(4)]
            await first_started.wait()
            blocked = cue.debug_blocked()
            assert len(blocked) == 3
            assert cue.stats().services["api"].running == 1
            cue.service("api", concurrent=3)
            await three_running.wait()
            assert cue.stats().services["api"].running == 3
            assert [item["reason"] for item in cue.debug_blocked()] == ["service_full"]
            release.set()
            for work_id in ids:
                await cue.wait(work_id)
    assert peak == 3
    assert cue.stats().services["api"].max_running == 3
    assert cue.stats().services["api"].concurrent == 3
    assert_consistent(cue)


async def test_raising_the_rate_while_running_starts_waiting_work_now(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A work held back by "1/10s" starts at once when the rate becomes "10/s"."""
    cue = make_cue()
    cue.service("api", rate="1/10s", concurrent=5)
    started: list[int] = []
    second_started = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        started.append(int(work.params["n"]))
        if len(started) == 2:
            second_started.set()

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("call", {"n": 1})
            await cue.wait(first)
            second = await cue.submit("call", {"n": 2})
            while [item["reason"] for item in cue.debug_blocked()] != ["rate_limited"]:
                await anyio.sleep(0)  # a checkpoint: until the scheduler has queued it
            cue.service("api", rate="10/s", concurrent=5)
            # The old window would hold it for ten seconds; this bound is five.
            with anyio.fail_after(5):
                await second_started.wait()
            await cue.wait(second)
    assert started == [1, 2]
    assert cue.stats().services["api"].rate == "10/s"


async def test_a_new_rate_still_counts_the_starts_already_made(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Raising "2/10s" to "3/10s" after two starts admits exactly one more in that window."""
    cue = make_cue()
    cue.service("api", rate="2/10s")
    starts: list[float] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        starts.append(anyio.current_time())

    with anyio.fail_after(30):
        async with cue:
            for n in range(2):
                await cue.wait(await cue.submit("call", {"n": n}))
            cue.service("api", rate="3/10s")
            third = await cue.submit("call", {"n": 2})
            fourth = await cue.submit("call", {"n": 3})
            await cue.wait(third)
            assert cue.stats().services["api"].windows[0].used == 3
            [blocked] = cue.debug_blocked()
            assert blocked["work"].id == fourth
            assert blocked["reason"] == "rate_limited"
            await cue.cancel(fourth)
    assert len(starts) == 3
    assert starts[2] - starts[0] < 10
    assert_consistent(cue)
