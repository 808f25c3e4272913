"""Introspection: stats() snapshots, explain() sentences, debug_blocked() reasons."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio


def assert_ledger(stats: runcue.CueStats) -> None:
    """Every submitted work is in exactly one state."""
    assert stats.submitted == (
        stats.pending
        + stats.running
        + stats.completed
        + stats.failed
        + stats.skipped
        + stats.cancelled
    )


def assert_one_sentence(text: str) -> None:
    """A single line that ends like a sentence."""
    assert text
    assert "\n" not in text
    assert text.endswith(".")


def test_stats_before_the_cue_runs_lists_every_service() -> None:
    """Before it starts, stats() shows each declared service with its limits and zero counts."""
    cue = runcue.Cue()
    cue.service("api", rate="3/10s;100/hour", concurrent=2)
    stats = cue.stats()
    api = stats.services["api"]
    assert (api.concurrent, api.rate) == (2, "3/10s;100/hour")
    assert [(w.limit, w.period, w.used, w.left) for w in api.windows] == [
        (3, 10.0, 0, 3),
        (100, 3600.0, 0, 100),
    ]
    assert (api.running, api.pending, api.completed, api.paused_for) == (0, 0, 0, 0.0)
    assert (stats.submitted, stats.elapsed, stats.throughput) == (0, 0.0, 0.0)


async def test_stats_is_a_frozen_snapshot(make_cue: Callable[..., runcue.Cue]) -> None:
    """stats() refuses assignment and does not change when the cue moves on."""
    cue = make_cue()
    cue.service("api", rate="100/s")

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    with anyio.fail_after(10):
        async with cue:
            before = cue.stats()
            await cue.wait(await cue.submit("t"))
            after = cue.stats()
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.completed = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.services["api"].running = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.services["api"].windows[0].used = 5  # type: ignore[misc]
    assert (before.submitted, before.completed) == (0, 0)
    assert before.services["api"].completed == 0
    assert before.services["api"].windows[0].used == 0
    assert (after.submitted, after.completed) == (1, 1)
    assert after.services["api"].windows[0].used == 1


async def test_stats_count_every_outcome_per_service_and_overall(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Per service: running, pending, completed, failed, skipped, retried; overall the same."""
    cue = make_cue()
    cue.service("api", concurrent=2)
    cue.service("idle")
    both_running = anyio.Event()
    release = anyio.Event()
    holding = 0

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return not work.params.get("fresh", False)

    @cue.task("ok", uses="api")
    async def ok(work: runcue.WorkUnit) -> str:
        return "ok"

    @cue.task("bad", uses="api")
    async def bad(work: runcue.WorkUnit) -> None:
        raise ValueError("bad")

    @cue.task("flaky", uses="api", retry=2, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> str:
        if work.attempt == 1:
            raise ConnectionError("once")
        return "flaky ok"

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        nonlocal holding
        holding += 1
        if holding == 2:
            both_running.set()
        await release.wait()

    with anyio.fail_after(10):
        async with cue:
            await cue.wait(await cue.submit("ok", {"n": 1}))
            await cue.wait(await cue.submit("ok", {"n": 2}))
            await cue.wait(await cue.submit("ok", {"n": 3, "fresh": True}))  # skipped
            with pytest.raises(ValueError, match="bad"):
                await cue.wait(await cue.submit("bad"))
            await cue.wait(await cue.submit("flaky"))
            held = [await cue.submit("hold", {"n": n}) for n in range(3)]
            await both_running.wait()
            stats = cue.stats()
            explained = cue.explain(held[2])
            blocked = cue.debug_blocked()
            release.set()
    api = stats.services["api"]
    assert (api.running, api.pending) == (2, 1)
    assert (api.completed, api.failed, api.skipped, api.retried) == (3, 1, 1, 1)
    assert api.started == 7  # ok x2, bad, flaky x2 attempts, hold x2
    assert api.max_running == 2
    assert (api.windows, api.next_free_slot, api.paused_for) == ((), 0.0, 0.0)
    idle = stats.services["idle"]
    assert (idle.running, idle.pending, idle.completed, idle.started) == (0, 0, 0, 0)
    assert (stats.submitted, stats.running, stats.pending) == (8, 2, 1)
    assert (stats.completed, stats.failed, stats.skipped, stats.cancelled) == (3, 1, 1, 0)
    assert stats.retried == 1
    assert stats.finished == 5
    assert_ledger(stats)
    assert stats.elapsed > 0.0
    assert stats.throughput == pytest.approx(4 / stats.elapsed)
    assert [(item["work"].id, item["reason"]) for item in blocked] == [(held[2], "service_full")]
    assert_one_sentence(explained)
    assert "'api'" in explained
    assert "full" in explained
    assert "2 of 2" in explained
    final = cue.stats()
    assert (final.completed, final.running, final.pending) == (6, 0, 0)
    assert_ledger(final)


async def test_stats_show_rate_windows_used_left_and_the_next_free_slot(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A full window shows used == limit, left 0, and next_free_slot within one period."""
    cue = make_cue()
    cue.service("api", rate="2/10s;5/min")

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    with anyio.fail_after(10):
        async with cue:
            for n in range(2):
                await cue.wait(await cue.submit("t", {"n": n}))
            waiting = await cue.submit("t", {"n": 2})
            while [item["reason"] for item in cue.debug_blocked()] != ["rate_limited"]:
                await anyio.sleep(0)  # until the scheduler looked at it
            stats = cue.stats()
            explained = cue.explain(waiting)
            await cue.cancel(waiting)
    api = stats.services["api"]
    assert [(w.limit, w.period, w.used, w.left) for w in api.windows] == [
        (2, 10.0, 2, 0),
        (5, 60.0, 2, 3),
    ]
    assert 5.0 < api.next_free_slot <= 10.0  # the oldest start leaves the 10 s window
    assert api.pending == 1
    assert_one_sentence(explained)
    assert "rate" in explained
    assert "'api'" in explained


async def test_explain_says_where_work_stands(make_cue: Callable[..., runcue.Cue]) -> None:
    """explain() gives one sentence for running, completed, skipped, failed, cancelled work."""
    cue = make_cue()
    started = anyio.Event()
    release = anyio.Event()

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return work.task != "fresh"

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return work.task != "never"

    @cue.task("hold")
    async def hold(work: runcue.WorkUnit) -> None:
        started.set()
        await release.wait()

    @cue.task("ok")
    async def ok(work: runcue.WorkUnit) -> None:
        pass

    @cue.task("fresh")
    async def fresh(work: runcue.WorkUnit) -> None:
        pass

    @cue.task("never")
    async def never(work: runcue.WorkUnit) -> None:
        pass

    @cue.task("bad")
    async def bad(work: runcue.WorkUnit) -> None:
        raise ValueError("the disk is full")

    with anyio.fail_after(10):
        async with cue:
            running = await cue.submit("hold")
            await started.wait()
            assert "running" in cue.explain(running)
            done = await cue.submit("ok")
            await cue.wait(done)
            assert "completed" in cue.explain(done)
            skipped = await cue.submit("fresh")
            await cue.wait(skipped)
            assert "skipped" in cue.explain(skipped)
            failed = await cue.submit("bad")
            with pytest.raises(ValueError, match="disk"):
                await cue.wait(failed)
            assert "failed" in cue.explain(failed)
            assert "the disk is full" in cue.explain(failed)
            waiting = await cue.submit("never")
            while [item["reason"] for item in cue.debug_blocked()] != ["not_ready"]:
                await anyio.sleep(0)  # until its is_ready was asked
            assert "not_ready" in cue.explain(waiting)
            await cue.cancel(waiting)
            assert "cancelled" in cue.explain(waiting)
            texts = [cue.explain(work_id) for work_id in (running, done, skipped, failed)]
            release.set()
    texts.append(cue.explain("nope"))
    assert "not known" in texts[-1]
    for text in texts:
        assert_one_sentence(text)
