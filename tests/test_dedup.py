"""De-duplication on request (``key=``, or a task declared ``dedup=True``): identical work in
flight is queued once; finished work can run again. Without either, every submit is new work."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio


class Counting:
    """A cue with a concurrent=1 service, a "gate" that holds it, and a counting task."""

    def __init__(self, cue: runcue.Cue) -> None:
        self.cue = cue
        self.calls: list[dict[str, object]] = []
        self.gate_started = anyio.Event()
        self.release = anyio.Event()
        self.job_started = anyio.Event()
        self.job_release = anyio.Event()
        self.job_release.set()
        cue.service("serial", concurrent=1)

        @cue.task("gate", uses="serial")
        async def gate(work: runcue.WorkUnit) -> None:
            self.gate_started.set()
            await self.release.wait()

        @cue.task("job", uses="serial", dedup=True)
        async def job(work: runcue.WorkUnit) -> object:
            self.calls.append(dict(work.params))
            self.job_started.set()
            await self.job_release.wait()
            return work.params.get("n")

        @cue.task("other", uses="serial", dedup=True)
        async def other(work: runcue.WorkUnit) -> object:
            self.calls.append({"other": dict(work.params)})
            return work.params.get("n")


async def test_equal_params_while_pending_share_one_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Submitting equal work while the first is pending returns its id; it runs once."""
    c = Counting(make_cue())
    cue = c.cue
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("gate")
            await c.gate_started.wait()
            first = await cue.submit("job", {"n": 1, "tags": ["a", "b"], "opts": {"x": 1}})
            # Same content, other key order: still the same work.
            again = await cue.submit("job", {"opts": {"x": 1}, "tags": ["a", "b"], "n": 1})
            twice = await cue.submit("job", {"n": 1, "tags": ["a", "b"], "opts": {"x": 1}})
            assert again == first
            assert twice == first
            assert cue.stats().submitted == 2  # the gate and one job
            c.release.set()
            assert await cue.wait(first) == 1
    assert c.calls == [{"n": 1, "tags": ["a", "b"], "opts": {"x": 1}}]
    assert cue.stats().completed == 2


async def test_equal_params_while_running_share_one_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Submitting equal work while the first runs returns its id; the handler runs once."""
    c = Counting(make_cue())
    cue = c.cue
    c.job_release = anyio.Event()
    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("job", {"n": 2})
            await c.job_started.wait()
            work = await cue.get(first)
            assert work is not None
            assert work.state is runcue.WorkState.RUNNING
            assert await cue.submit("job", {"n": 2}) == first
            c.job_release.set()
            assert await cue.wait(first) == 2
    assert c.calls == [{"n": 2}]


async def test_different_params_or_tasks_are_different_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Other params, a list instead of a tuple, or another task make separate work."""
    c = Counting(make_cue())
    cue = c.cue
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("gate")
            await c.gate_started.wait()
            ids = [
                await cue.submit("job", {"n": 1}),
                await cue.submit("job", {"n": 2}),
                await cue.submit("job", {"n": 1, "extra": None}),
                await cue.submit("job", {"n": [1, 2]}),
                await cue.submit("job", {"n": (1, 2)}),
                await cue.submit("other", {"n": 1}),
            ]
            assert len(set(ids)) == len(ids)
            c.release.set()
    assert len(c.calls) == len(ids)


async def test_the_same_key_dedups_whatever_the_params(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Work submitted with a key equal to in-flight work's key is that work."""
    c = Counting(make_cue())
    cue = c.cue
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("gate")
            await c.gate_started.wait()
            first = await cue.submit("job", {"n": 1}, key="invoice-42")
            assert await cue.submit("job", {"n": 99}, key="invoice-42") == first
            assert await cue.submit("job", {"n": 1}, key="invoice-43") != first
            c.release.set()
            assert await cue.wait(first) == 1
    assert [call["n"] for call in c.calls] == [1, 1]  # key 42 once, key 43 once


async def test_finished_work_is_not_a_duplicate(make_cue: Callable[..., runcue.Cue]) -> None:
    """Once work completed, failed or was cancelled, equal work is new work and runs again."""
    cue = make_cue()
    runs: list[int] = []

    @cue.task("job", dedup=True)
    async def job(work: runcue.WorkUnit) -> int:
        runs.append(int(work.params["n"]))
        if work.params.get("fail"):
            raise ValueError("failed once")
        return len(runs)

    @cue.task("hang", dedup=True)
    async def hang(work: runcue.WorkUnit) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("job", {"n": 1})
            assert await cue.wait(first) == 1
            second = await cue.submit("job", {"n": 1})
            assert second != first
            assert await cue.wait(second) == 2

            failed = await cue.submit("job", {"n": 2, "fail": True})
            with pytest.raises(ValueError, match="failed once"):
                await cue.wait(failed)
            retried = await cue.submit("job", {"n": 2, "fail": True})
            assert retried != failed
            with pytest.raises(ValueError, match="failed once"):
                await cue.wait(retried)

            hung = await cue.submit("hang", {"n": 3})
            await cue.cancel(hung)
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(hung)
            again = await cue.submit("hang", {"n": 3})
            assert again != hung
            await cue.cancel(again)

            keyed = await cue.submit("job", {"n": 4}, key="k")
            await cue.wait(keyed)
            assert await cue.submit("job", {"n": 4}, key="k") != keyed
    assert runs == [1, 1, 2, 2, 4, 4]
    stats = cue.stats()
    assert stats.submitted == 8
    assert (stats.completed, stats.failed, stats.cancelled) == (4, 2, 2)


async def test_a_duplicate_waits_for_the_same_result(make_cue: Callable[..., runcue.Cue]) -> None:
    """wait() on the id a duplicate submit returned gives the one run's result."""
    c = Counting(make_cue())
    cue = c.cue
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("gate")
            await c.gate_started.wait()
            ids = [await cue.submit("job", {"n": 5}) for _ in range(5)]
            assert len(set(ids)) == 1
            c.release.set()
            results = [await cue.wait(work_id) for work_id in ids]
    assert results == [5] * 5
    assert c.calls == [{"n": 5}]


async def test_work_waiting_for_its_retry_is_still_in_flight(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Equal work submitted during the first one's retry backoff is that same work."""
    cue = make_cue()
    attempts: list[int] = []
    retrying = anyio.Event()
    go_on = anyio.Event()

    @cue.task("flaky", retry=2, backoff=runcue.Backoff(base=0.0, jitter=False), dedup=True)
    async def flaky(work: runcue.WorkUnit) -> int:
        attempts.append(work.attempt)
        if work.attempt == 1:
            raise ConnectionError("once")
        return work.attempt

    @cue.on_retry
    async def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retrying.set()
        await go_on.wait()

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("flaky", {"n": 1})
            await retrying.wait()
            assert await cue.submit("flaky", {"n": 1}) == first
            go_on.set()
            assert await cue.wait(first) == 2
            assert await cue.submit("flaky", {"n": 1}) != first
    assert attempts == [1, 2, 1, 2]
