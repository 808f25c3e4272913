"""The three ways to run a cue, end to end, on both backends."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio


async def test_async_with_runs_submitted_work(make_cue: Callable[..., runcue.Cue]) -> None:
    """Leaving `async with` waits until every submitted work finished."""
    cue = make_cue()
    done: list[int] = []

    @cue.task("double")
    async def double(work: runcue.WorkUnit) -> int:
        done.append(work.params["n"])
        return int(work.params["n"]) * 2

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("double", {"n": n}) for n in range(10)]
            assert await cue.wait(ids[3]) == 6
    assert sorted(done) == list(range(10))
    assert cue.stats().completed == 10


async def test_start_and_stop_without_a_task_group(make_cue: Callable[..., runcue.Cue]) -> None:
    """The seed's cue.start() / await cue.stop() form works on asyncio and trio alike."""
    cue = make_cue()

    @cue.task("sync")
    def sync(work: runcue.WorkUnit) -> str:
        return "ok"

    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("sync")
        assert await cue.wait(work_id) == "ok"
        await cue.stop()
    work = await cue.get(work_id)
    assert work is not None
    assert work.state is runcue.WorkState.COMPLETED


async def test_run_under_the_callers_task_group(make_cue: Callable[..., runcue.Cue]) -> None:
    """`await tg.start(cue.run)` runs the cue until stop()."""
    cue = make_cue()

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return 7

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(cue.run)
            assert await cue.wait(await cue.submit("t")) == 7
            await cue.stop()
