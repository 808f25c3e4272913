"""Scale and idleness: many submissions never mean many tasks, and a cue with nothing to do
costs no CPU."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
import trio.testing

import runcue

pytestmark = pytest.mark.anyio

VIRTUAL_TIME = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param("asyncio", id="asyncio"),
        pytest.param(
            ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio-virtual"
        ),
    ],
)
"""Override the backends for one test: trio on a virtual clock, asyncio in real time."""


async def test_twenty_thousand_works_run_in_at_most_a_hundred_tasks() -> None:
    """20,000 no-op handlers on a concurrent=100 service: never over ~100 tasks, all finish."""
    total, limit = 20_000, 100
    cue = runcue.Cue(seed=1)
    cue.service("api", concurrent=limit)
    in_flight = peak_in_flight = peak_tasks = done = 0

    @cue.task("noop", uses="api")
    async def noop(work: runcue.WorkUnit) -> None:
        nonlocal in_flight, peak_in_flight, peak_tasks, done
        in_flight += 1
        peak_in_flight = max(peak_in_flight, in_flight)
        if work.params["n"] % 97 == 0:
            peak_tasks = max(peak_tasks, len(anyio.get_running_tasks()))
        await anyio.sleep(0)
        in_flight -= 1
        done += 1

    begun = time.perf_counter()
    with anyio.fail_after(60):
        async with cue:
            baseline = len(anyio.get_running_tasks())  # the test, the scheduler, the runner
            for n in range(total):
                await cue.submit("noop", {"n": n})
    took = time.perf_counter() - begun

    assert done == total
    stats = cue.stats()
    assert (stats.completed, stats.pending, stats.running, stats.failed) == (total, 0, 0, 0)
    assert peak_in_flight == limit  # the limit was used ...
    assert stats.services["api"].max_running == limit  # ... and never exceeded
    assert peak_tasks <= baseline + limit + 2, f"{peak_tasks} tasks alive (baseline {baseline})"
    assert took < 20, f"20,000 no-op works took {took:.1f}s"


async def test_thousands_of_sync_works_never_use_more_threads_than_the_limit() -> None:
    """2,000 sync handlers on a concurrent=8 service never run more than 8 at once."""
    total, limit = 2_000, 8
    cue = runcue.Cue(seed=1)
    cue.service("disk", concurrent=limit)
    lock = threading.Lock()
    in_flight = peak = 0
    threads: set[int] = set()

    @cue.task("touch", uses="disk")
    def touch(work: runcue.WorkUnit) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            threads.add(threading.get_ident())
        with lock:
            in_flight -= 1
        return int(work.params["n"])

    with anyio.fail_after(60):
        async with cue:
            for n in range(total):
                await cue.submit("touch", {"n": n})
    assert cue.stats().completed == total
    assert 1 <= peak <= limit
    assert cue.stats().services["disk"].max_running <= limit


@VIRTUAL_TIME
async def test_an_idle_cue_does_not_wake_up(anyio_backend: object) -> None:
    """A started cue with nothing pending sleeps: no timer ticks, (almost) no CPU."""
    cue = runcue.Cue(
        seed=1,
        checks="inline",
        pending_warn_after=1,
        pending_timeout=5,
        stall_warn_after=1,
        stall_timeout=5,
    )
    cue.service("api", rate="10/s", concurrent=2)
    checked: list[str] = []

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        checked.append(work.id)
        return True

    async with cue:
        with anyio.fail_after(5):
            for n in range(10):  # use the rate up, so it has slots to free later
                await cue.submit("t", {"n": n})
            await cue.join()
        asked = len(checked)
        if isinstance(anyio_backend, tuple):
            # A day of virtual time: any periodic wake-up would cost real time to jump through.
            real = time.perf_counter()
            await anyio.sleep(86_400)
            assert time.perf_counter() - real < 1.0, "the idle cue kept waking up"
        else:
            cpu = time.process_time()
            await anyio.sleep(0.5)
            used = time.process_time() - cpu
            assert used < 0.05, f"the idle cue used {used:.3f}s of CPU in 0.5s"
        assert len(checked) == asked
        assert cue.stats().pending == 0
