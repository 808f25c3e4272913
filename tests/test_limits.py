"""Service limits in a running cue: concurrency, rates, worker threads, and unlimited tasks."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio.testing

import runcue

pytestmark = pytest.mark.anyio


def virtual_time_backends() -> list[Any]:
    """asyncio in real time, trio on a fresh virtual clock that jumps whenever all tasks wait."""
    return [
        pytest.param("asyncio", id="asyncio"),
        pytest.param(
            ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio-virtual"
        ),
    ]


def assert_window_respected(starts: list[float], limit: int, period: float, slack: float) -> None:
    """No window of length ``period - slack`` holds more than ``limit`` of the sorted starts."""
    starts = sorted(starts)
    for first, later in zip(starts, starts[limit:]):
        # `first + period`, as the limiter computes it: [first, first + period) is the window.
        assert later >= first + (period - slack), (
            f"{limit + 1} starts within {later - first:.6f}s, rate is {limit}/{period}s: {starts}"
        )


# ---------------------------------------------------------------------------- concurrency


async def test_concurrent_limit_is_reached_and_never_exceeded() -> None:
    """concurrent=M runs exactly M handlers at once while more wait, and never M + 1."""
    limit, total = 3, 12
    cue = runcue.Cue(seed=1)
    cue.service("api", concurrent=limit)
    in_flight = peak = 0
    full = anyio.Event()
    gate = anyio.Event()

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            if in_flight == limit:
                full.set()
            await gate.wait()
            for _ in range(3):  # let the scheduler run between start and end
                await anyio.lowlevel.checkpoint()
        finally:
            in_flight -= 1

    with anyio.fail_after(10):
        async with cue:
            for index in range(total):
                await cue.submit("t", {"i": index})
            await full.wait()
            await anyio.wait_all_tasks_blocked()
            assert in_flight == limit
            blocked = cue.debug_blocked()
            assert len(blocked) == total - limit
            assert {item["reason"] for item in blocked} == {"service_full"}
            gate.set()
    assert peak == limit
    stats = cue.stats()
    assert stats.completed == total
    assert stats.services["api"].max_running == limit
    assert stats.services["api"].running == 0


async def test_concurrent_one_is_serial_and_fifo() -> None:
    """concurrent=1 never lets two handlers of a service overlap; equals start in FIFO order."""
    cue = runcue.Cue(seed=1)
    cue.service("knife", concurrent=1)
    log: list[tuple[str, int]] = []

    @cue.task("slice", uses="knife")
    async def slice_(work: runcue.WorkUnit) -> None:
        log.append(("start", work.params["i"]))
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        log.append(("end", work.params["i"]))

    with anyio.fail_after(10):
        async with cue:
            for index in range(8):
                await cue.submit("slice", {"i": index})
    expected = [(event, i) for i in range(8) for event in ("start", "end")]
    assert log == expected
    assert cue.stats().services["knife"].max_running == 1


async def test_concurrent_one_is_serial_for_sync_handlers() -> None:
    """concurrent=1 keeps sync handlers (each in a worker thread) strictly one at a time."""
    cue = runcue.Cue(seed=1)
    cue.service("knife", concurrent=1)
    busy = threading.Lock()
    overlaps: list[int] = []
    threads: set[int] = set()

    @cue.task("slice", uses="knife")
    def slice_(work: runcue.WorkUnit) -> int:
        if not busy.acquire(blocking=False):
            overlaps.append(work.params["i"])
            return -1
        try:
            threads.add(threading.get_ident())
            threading.Event().wait(0.002)  # widen the window an overlap would need
            return int(work.params["i"])
        finally:
            busy.release()

    with anyio.fail_after(20):
        async with cue:
            ids = [await cue.submit("slice", {"i": index}) for index in range(10)]
            results = [await cue.wait(work_id) for work_id in ids]
    assert overlaps == []
    assert results == list(range(10))
    assert threading.get_ident() not in threads
    assert cue.stats().services["knife"].max_running == 1


async def test_full_service_does_not_hold_up_other_services() -> None:
    """A service at its limit blocks only its own work; other services and free tasks go on."""
    cue = runcue.Cue(seed=1)
    cue.service("narrow", concurrent=1)
    cue.service("wide", concurrent=4)
    release = anyio.Event()
    narrow_started = anyio.Event()

    @cue.task("narrow", uses="narrow")
    async def narrow(work: runcue.WorkUnit) -> None:
        narrow_started.set()
        await release.wait()

    @cue.task("wide", uses="wide")
    async def wide(work: runcue.WorkUnit) -> int:
        return int(work.params["i"])

    @cue.task("free")
    async def free(work: runcue.WorkUnit) -> str:
        return "free"

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("narrow", {"i": 0})
            queued = await cue.submit("narrow", {"i": 1})
            await narrow_started.wait()
            wide_ids = [await cue.submit("wide", {"i": i}) for i in range(6)]
            assert [await cue.wait(work_id) for work_id in wide_ids] == list(range(6))
            assert await cue.wait(await cue.submit("free")) == "free"
            work = await cue.get(queued)
            assert work is not None
            assert work.state is runcue.WorkState.PENDING
            release.set()


# ---------------------------------------------------------------------------- rates


class StartLog:
    """Start times two ways: read in the handler, and the scheduler's own "started" events."""

    def __init__(self, cue: runcue.Cue) -> None:
        self.in_handler: list[float] = []
        self.admitted: list[float] = []
        cue.subscribe(self._on_event)

    def _on_event(self, event: runcue.WorkEvent) -> None:
        if event.kind == "started":
            self.admitted.append(event.time)

    def mark(self) -> None:
        """Call first thing in the handler."""
        self.in_handler.append(anyio.current_time())

    def check(self, windows: list[tuple[int, float]], *, virtual: bool) -> None:
        """Every window holds; exactly on virtual time, with room for loop jitter on real time."""
        assert len(self.in_handler) == len(self.admitted)
        for limit, period in windows:
            if virtual:
                # No virtual time passes between admission and the handler's first line.
                assert sorted(self.in_handler) == sorted(self.admitted)
                assert_window_respected(self.in_handler, limit, period, 0.0)
            else:
                # Real time: a loaded machine delays handlers (and, less, events) by some ms;
                # a broken limiter still shows as starts bunched far closer than the period.
                assert_window_respected(self.admitted, limit, period, period / 5)
                assert_window_respected(self.in_handler, limit, period, period / 2)


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_rate_limit_holds_in_every_window_of_handler_starts(anyio_backend_name: str) -> None:
    """rate='N/period' never lets more than N handlers start in any window of that length."""
    virtual = anyio_backend_name == "trio"
    # trio runs on a virtual clock (exact, instant); asyncio in real time, kept short.
    limit, period, total = (5, 1.0, 23) if virtual else (3, 0.1, 10)
    cue = runcue.Cue(seed=1)
    cue.service("api", rate=f"{limit}/{period:g}s")
    log = StartLog(cue)

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        log.mark()

    with anyio.fail_after(30):
        async with cue:
            if virtual:
                await anyio.sleep(0.3)  # start off the period grid: a fixed window would show
            for index in range(total):
                await cue.submit("call", {"i": index})
    assert len(log.in_handler) == total
    log.check([(limit, period)], virtual=virtual)
    if virtual:
        # Throughput is the limit, not below it: start i comes at (i // limit) periods.
        starts = sorted(log.in_handler)
        for index, start in enumerate(starts):
            assert start - starts[0] == pytest.approx((index // limit) * period)


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_several_rate_windows_all_hold(anyio_backend_name: str) -> None:
    """rate='a/p;b/q' keeps handler starts inside both windows at once."""
    virtual = anyio_backend_name == "trio"
    if virtual:
        windows, total = [(4, 1.0), (6, 3.0)], 20
    else:
        windows, total = [(2, 0.05), (3, 0.15)], 9
    cue = runcue.Cue(seed=1)
    cue.service("api", rate=";".join(f"{n}/{p:g}s" for n, p in windows), concurrent=10)
    log = StartLog(cue)

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        log.mark()

    with anyio.fail_after(60):
        async with cue:
            if virtual:
                await anyio.sleep(0.3)  # start off the period grid: a fixed window would show
            for index in range(total):
                await cue.submit("call", {"i": index})
    assert len(log.in_handler) == total
    log.check(windows, virtual=virtual)
    if virtual:
        # The long window binds: 6 starts per 3 s -> the 20th start at 9 s, not later.
        assert max(log.in_handler) - min(log.in_handler) == pytest.approx(9.0)


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_every_attempt_counts_against_the_rate(anyio_backend_name: str) -> None:
    """Retried attempts are starts too: all attempts together respect the rate."""
    virtual = anyio_backend_name == "trio"
    limit, period = (2, 1.0) if virtual else (2, 0.1)
    cue = runcue.Cue(seed=1)
    cue.service("api", rate=f"{limit}/{period:g}s")
    log = StartLog(cue)

    @cue.task("flaky", uses="api", retry=3, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> int:
        log.mark()
        if work.attempt < 3:
            raise ConnectionError(f"attempt {work.attempt}")
        return work.attempt

    with anyio.fail_after(30):
        async with cue:
            ids = [await cue.submit("flaky", {"i": index}) for index in range(2)]
            assert [await cue.wait(work_id) for work_id in ids] == [3, 3]
    assert len(log.in_handler) == 6
    log.check([(limit, period)], virtual=virtual)
    stats = cue.stats().services["api"]
    assert stats.started == 6
    assert stats.retried == 4


@pytest.mark.parametrize("anyio_backend", virtual_time_backends())
async def test_rate_and_concurrency_apply_together(anyio_backend_name: str) -> None:
    """A service with both limits keeps both: N starts per window and at most M at once."""
    virtual = anyio_backend_name == "trio"
    limit, period, hold = (4, 1.0, 0.5) if virtual else (4, 0.1, 0.05)
    cue = runcue.Cue(seed=1)
    cue.service("api", rate=f"{limit}/{period:g}s", concurrent=2)
    log = StartLog(cue)
    in_flight = peak = 0

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        nonlocal in_flight, peak
        log.mark()
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await anyio.sleep(hold)  # occupies a slot; the outcome is decided by the counters
        finally:
            in_flight -= 1

    with anyio.fail_after(30):
        async with cue:
            for index in range(8):
                await cue.submit("call", {"i": index})
    assert len(log.in_handler) == 8
    assert peak == 2
    log.check([(limit, period)], virtual=virtual)


# ---------------------------------------------------------------------------- threads


async def test_sync_handlers_run_in_worker_threads_without_blocking_the_loop() -> None:
    """A blocked sync handler sits in a worker thread; async work keeps running meanwhile."""
    cue = runcue.Cue(seed=1)
    cue.service("disk", concurrent=2)
    unblock = threading.Event()
    entered = anyio.Event()
    handler_threads: list[int] = []

    @cue.task("blocking", uses="disk")
    def blocking(work: runcue.WorkUnit) -> str:
        handler_threads.append(threading.get_ident())
        anyio.from_thread.run_sync(entered.set)
        if not unblock.wait(10):
            raise TimeoutError("never unblocked")
        return "unblocked"

    @cue.task("quick")
    async def quick(work: runcue.WorkUnit) -> int:
        return int(work.params["i"]) + 1

    with anyio.fail_after(15):
        async with cue:
            slow = await cue.submit("blocking")
            await entered.wait()
            quick_ids = [await cue.submit("quick", {"i": i}) for i in range(5)]
            assert [await cue.wait(work_id) for work_id in quick_ids] == [1, 2, 3, 4, 5]
            work = await cue.get(slow)
            assert work is not None
            assert work.state is runcue.WorkState.RUNNING
            unblock.set()
            assert await cue.wait(slow) == "unblocked"
    assert handler_threads
    assert threading.get_ident() not in handler_threads


async def test_concurrent_fifty_runs_fifty_sync_handlers_at_once() -> None:
    """concurrent=50 really runs 50 sync handlers together (beyond AnyIO's default 40 threads)."""
    width = 50
    cue = runcue.Cue(seed=1)
    cue.service("pool", concurrent=width)
    barrier = threading.Barrier(width, timeout=5)  # breaks unless all 50 wait together
    threads: set[int] = set()
    lock = threading.Lock()

    @cue.task("meet", uses="pool")
    def meet(work: runcue.WorkUnit) -> int:
        with lock:
            threads.add(threading.get_ident())
        return barrier.wait()

    with anyio.fail_after(20):
        async with cue:
            ids = [await cue.submit("meet", {"i": index}) for index in range(width)]
            results = [await cue.wait(work_id) for work_id in ids]
    assert sorted(results) == list(range(width))
    assert len(threads) == width
    assert cue.stats().services["pool"].max_running == width


@pytest.mark.timeout(10)  # a scheduler that spins never yields, so fail_after cannot fire
async def test_sync_handlers_without_a_concurrency_share_max_threads() -> None:
    """Sync handlers of services without `concurrent` never use more than max_threads threads."""
    cue = runcue.Cue(seed=1, max_threads=3)
    lock = threading.Lock()
    in_flight = peak = 0
    three_in = threading.Event()
    release = threading.Event()

    @cue.task("sync")
    def sync(work: runcue.WorkUnit) -> None:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            if in_flight == 3:
                three_in.set()
        try:
            if not release.wait(10):
                raise TimeoutError("never released")
        finally:
            with lock:
                in_flight -= 1

    with anyio.fail_after(15):
        async with cue:
            for index in range(7):
                await cue.submit("sync", {"i": index})
            await anyio.to_thread.run_sync(three_in.wait, 10)
            await anyio.wait_all_tasks_blocked()
            blocked = cue.debug_blocked()
            assert len(blocked) == 4
            assert {item["reason"] for item in blocked} == {"threads_full"}
            release.set()
    assert peak == 3
    assert cue.stats().completed == 7


# ---------------------------------------------------------------------------- no service


async def test_tasks_without_a_service_are_not_limited() -> None:
    """A task with no service runs every submitted work at once, even next to a full service."""
    total = 100
    cue = runcue.Cue(seed=1)
    cue.service("narrow", concurrent=1, rate="1/day")
    in_flight = peak = 0
    all_in = anyio.Event()

    @cue.task("narrow", uses="narrow")
    async def narrow(work: runcue.WorkUnit) -> None:
        await all_in.wait()

    @cue.task("free")
    async def free(work: runcue.WorkUnit) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        if in_flight == total:
            all_in.set()
        await all_in.wait()
        in_flight -= 1

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("narrow")
            for index in range(total):
                await cue.submit("free", {"i": index})
    assert peak == total
    assert cue.stats().completed == total + 1
