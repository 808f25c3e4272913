"""Order: higher priority first, FIFO among equals, the priority callback, and aging."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest
import trio.testing

import runcue

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str | tuple[str, dict[str, object]]:
    """asyncio in real time; trio on a virtual clock that jumps whenever every task waits."""
    if request.param == "trio":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


class Gate:
    """A concurrent=1 service whose first work holds it until released; records run order."""

    def __init__(self, cue: runcue.Cue) -> None:
        self.cue = cue
        self.order: list[str] = []
        self.started = anyio.Event()
        self.release = anyio.Event()
        cue.service("serial", concurrent=1)

        @cue.task("gate", uses="serial")
        async def gate(work: runcue.WorkUnit) -> None:
            self.started.set()
            await self.release.wait()

        @cue.task("job", uses="serial")
        async def job(work: runcue.WorkUnit) -> None:
            self.order.append(str(work.params["name"]))

    async def run(
        self,
        jobs: Sequence[tuple[str, float | None]],
        *,
        between: Callable[[int], Any] | None = None,
    ) -> list[str]:
        """Hold the service, submit the jobs (name, priority), release, return the run order."""
        with anyio.fail_after(30):
            async with self.cue:
                await self.cue.submit("gate")
                await self.started.wait()
                for index, (name, priority) in enumerate(jobs):
                    await self.cue.submit("job", {"name": name}, priority=priority)
                    if between is not None:
                        await between(index)
                # Let the scheduler queue every job behind the full service before the release.
                while any(item["reason"] != "service_full" for item in self.cue.debug_blocked()):
                    await anyio.sleep(0)
                self.release.set()
        return self.order


async def test_higher_priority_runs_first_fifo_among_equals(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Waiting work runs by priority, highest first, and in submission order among equals."""
    gate = Gate(make_cue())
    order = await gate.run(
        [
            ("low-1", 0.2),
            ("high-1", 0.8),
            ("mid-1", 0.5),
            ("high-2", 0.8),
            ("low-2", 0.2),
            ("default", None),
            ("mid-2", 0.5),
            ("top", 1.0),
            ("bottom", 0.0),
        ]
    )
    assert order == [
        "top",
        "high-1",
        "high-2",
        "mid-1",
        "default",
        "mid-2",
        "low-1",
        "low-2",
        "bottom",
    ]


async def test_equal_priority_is_fifo(make_cue: Callable[..., runcue.Cue]) -> None:
    """Twenty works of one priority run exactly in the order they were submitted."""
    gate = Gate(make_cue())
    names = [f"w{n:02d}" for n in range(20)]
    assert await gate.run([(name, 0.3) for name in names]) == names


async def test_the_priority_callback_decides(make_cue: Callable[..., runcue.Cue]) -> None:
    """@cue.priority's answer orders the work, over the priority given to submit()."""
    cue = make_cue()
    gate = Gate(cue)
    seen: list[tuple[str, float, int]] = []

    @cue.priority
    def rank(ctx: runcue.PriorityContext) -> float:
        assert isinstance(ctx.work, runcue.WorkUnit)
        if ctx.work.task == "gate":
            return 0.5
        name = str(ctx.work.params["name"])
        seen.append((name, ctx.wait_time, ctx.queue_depth))
        return {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.7}[name]

    # submit() asks for the opposite order; the callback wins.
    order = await gate.run([("a", 1.0), ("b", 0.0), ("c", 0.2), ("d", 0.1)])
    assert order == ["b", "d", "c", "a"]
    assert sorted(name for name, _, _ in seen) == ["a", "b", "c", "d"]
    for _, wait_time, queue_depth in seen:
        assert wait_time >= 0.0
        assert 1 <= queue_depth <= 4  # pending work in the whole cue (the gate runs)


async def test_a_priority_callback_answer_out_of_range_is_clamped(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Callback answers above 1 or below 0 count as 1 and 0, NaN as the middle."""
    cue = make_cue()
    gate = Gate(cue)

    @cue.priority
    def rank(ctx: runcue.PriorityContext) -> float:
        if ctx.work.task == "gate":
            return 0.5
        return {"huge": 7.0, "one": 1.0, "nan": math.nan, "neg": -3.0, "zero": 0.0}[
            str(ctx.work.params["name"])
        ]

    order = await gate.run([(name, None) for name in ("neg", "nan", "huge", "zero", "one")])
    assert order == ["huge", "one", "nan", "neg", "zero"]


@pytest.mark.parametrize("priority", [-0.01, 1.01, math.nan, math.inf, True, "high"])
async def test_priority_out_of_range_is_refused_at_submit(
    make_cue: Callable[..., runcue.Cue], priority: Any
) -> None:
    """submit(priority=...) outside 0.0..1.0 raises ValueError and loses nothing queued."""
    cue = make_cue()
    ran: list[int] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        ran.append(int(work.params["n"]))

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("t", {"n": 1}, priority=0.0)
            with pytest.raises(ValueError, match="priority"):
                await cue.submit("t", {"n": 2}, priority=priority)
            await cue.submit("t", {"n": 3}, priority=1.0)
    assert sorted(ran) == [1, 3]
    assert cue.stats().submitted == 2


async def test_old_low_priority_work_overtakes_newer_high_priority(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """With priority_aging=0.1, low work that waited 0.2 s runs before newer high work."""
    gate = Gate(make_cue(priority_aging=0.1))

    async def wait_after_first(index: int) -> None:
        if index == 0:
            await anyio.sleep(0.2)  # the age the low work gains (virtual on trio)

    order = await gate.run(
        [("old-low", 0.0), ("new-high-1", 1.0), ("new-high-2", 1.0)],
        between=wait_after_first,
    )
    assert order == ["old-low", "new-high-1", "new-high-2"]


async def test_without_enough_aging_high_priority_still_wins(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """With the default aging the same 0.2 s wait does not let low work overtake."""
    gate = Gate(make_cue())

    async def wait_after_first(index: int) -> None:
        if index == 0:
            await anyio.sleep(0.2)

    order = await gate.run(
        [("old-low", 0.0), ("new-high-1", 1.0), ("new-high-2", 1.0)],
        between=wait_after_first,
    )
    assert order == ["new-high-1", "new-high-2", "old-low"]


async def test_aging_lets_waiting_work_through_a_steady_stream_of_high_priority(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """No starvation: low work runs although higher work keeps arriving faster than it drains."""
    cue = make_cue(priority_aging=0.1)
    cue.service("serial", concurrent=1)
    order: list[str] = []
    low_done = anyio.Event()
    pending_when_low_ran = 0

    @cue.task("job", uses="serial")
    async def job(work: runcue.WorkUnit) -> None:
        nonlocal pending_when_low_ran
        order.append(str(work.params["name"]))
        if work.params["name"] == "low":
            pending_when_low_ran = cue.stats().pending
            low_done.set()
        await anyio.sleep(0.01)

    with anyio.fail_after(30):
        async with cue:
            await cue.submit("job", {"name": "low"}, priority=0.0)
            n = 0
            while not low_done.is_set():
                # Two high works per handler duration: the queue only grows.
                for _ in range(2):
                    n += 1
                    await cue.submit("job", {"name": f"high-{n}"}, priority=1.0)
                await anyio.sleep(0.005)
                assert n < 1000, "the low-priority work starved"
            for work in await cue.list(state="pending", limit=None):
                await cue.cancel(work.id)
    assert "low" in order
    assert pending_when_low_ran > 0  # it ran while higher-priority work still waited


async def test_work_submitted_before_a_slot_frees_competes_for_it(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """High work submitted (submit returned) before the slot frees runs before older low work."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    order: list[str] = []
    low_queued = anyio.Event()

    @cue.task("gate", uses="serial")
    async def gate(work: runcue.WorkUnit) -> None:
        await low_queued.wait()
        # A pipeline step queues urgent follow-up work as it finishes.
        await cue.submit("job", {"name": "urgent"}, priority=1.0)

    @cue.task("job", uses="serial")
    async def job(work: runcue.WorkUnit) -> None:
        order.append(str(work.params["name"]))

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("gate")
            await cue.submit("job", {"name": "low"}, priority=0.0)
            while [item["reason"] for item in cue.debug_blocked()] != ["service_full"]:
                await anyio.sleep(0)  # until the scheduler queued the low work
            low_queued.set()
    assert order == ["urgent", "low"]
