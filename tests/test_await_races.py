"""Decisions taken before an await and acted on after it: limits reconfigured while an async
``on_start`` is awaited, a stop while checks or callbacks are awaited, a pause that lands while
admitted work waits in ``on_start``, and bookkeeping of work that waited for outside inputs."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]


# ---------------------------------------------------------------------------- 1: reconfigure


@pytest.mark.parametrize(("before", "after"), [("2/0.3s", "2/0.3s"), ("1/0.3s", "10/0.3s")])
async def test_a_rate_redeclared_while_on_start_is_awaited_keeps_the_service_going(
    make_cue: CueFactory, before: str, after: str
) -> None:
    """Re-declaring the rate while starts sit in an async on_start: later work still starts,
    and the window counts only real starts once they left it."""
    cue = make_cue()
    cue.service("api", rate=before)
    in_on_start = anyio.Event()
    go_on = anyio.Event()
    entered = 0
    done: list[int] = []

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        done.append(int(work.params["n"]))

    @cue.on_start
    async def on_start(work: runcue.WorkUnit) -> None:
        nonlocal entered
        entered += 1
        if work.params["n"] < 2:
            if entered == (2 if before == "2/0.3s" else 1):
                in_on_start.set()
            await go_on.wait()

    with anyio.fail_after(10):
        async with cue:
            first = [await cue.submit("t", {"n": n}) for n in range(2)]
            await in_on_start.wait()
            cue.service("api", rate=after)  # while admitted starts await on_start
            go_on.set()
            for work_id in first:
                await cue.wait(work_id)
            later = [await cue.submit("t", {"n": n}) for n in range(2, 6)]
            for work_id in later:
                await cue.wait(work_id)
            # Once every start left the window, it reads empty (no reservation stuck in it).
            while cue.stats().services["api"].windows[0].used:
                await anyio.sleep(0.05)
    assert sorted(done) == list(range(6))


class HeldStarts:
    """An async on_start that holds every start until ``go_on`` is set; ``all_in`` is set
    once ``count`` starts wait there."""

    def __init__(self, cue: runcue.Cue, count: int) -> None:
        self.all_in = anyio.Event()
        self.go_on = anyio.Event()
        self.entered = 0
        self.count = count
        cue.on_start(self.on_start)

    async def on_start(self, work: runcue.WorkUnit) -> None:
        self.entered += 1
        if self.entered == self.count:
            self.all_in.set()
        await self.go_on.wait()


async def test_a_concurrency_lowered_while_on_start_is_awaited_holds_for_unstarted_work(
    make_cue: CueFactory,
) -> None:
    """Three starts admitted under concurrent=3 wait in an async on_start; the limit falls to
    1: they run one at a time, not three at once, and all of them run."""
    cue = make_cue()
    cue.service("api", concurrent=3)
    held = HeldStarts(cue, 3)
    running = 0
    most = 0
    done: list[int] = []

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        for _ in range(5):  # overlap with any other handler let in at the same time
            await anyio.lowlevel.checkpoint()
        running -= 1
        done.append(int(work.params["n"]))

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("t", {"n": n}) for n in range(3)]
            await held.all_in.wait()
            cue.service("api", concurrent=1)  # while admitted starts await on_start
            held.go_on.set()
            for work_id in ids:
                await cue.wait(work_id)
    assert most == 1
    assert sorted(done) == [0, 1, 2]
    assert cue.limiter("api").borrowed_tokens == 0


async def test_a_rate_lowered_while_on_start_is_awaited_holds_for_unstarted_work(
    make_cue: CueFactory,
) -> None:
    """Three starts reserved under ``5/10s`` wait in an async on_start; the rate falls to
    ``1/10s``: one of them starts, the other two wait for the window (they end cancelled when
    the cue stops), and the window never holds more than one."""
    cue = make_cue()
    cue.service("api", rate="5/10s")
    held = HeldStarts(cue, 3)
    finished = anyio.Event()
    handled: list[int] = []

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        handled.append(int(work.params["n"]))
        for _ in range(5):  # the others, let go at the same time, decide meanwhile
            await anyio.lowlevel.checkpoint()
        finished.set()

    with anyio.fail_after(10):
        async with cue:
            for n in range(3):
                await cue.submit("t", {"n": n})
            await held.all_in.wait()
            cue.service("api", rate="1/10s")  # while reserved starts await on_start
            held.go_on.set()
            await finished.wait()
            stats = cue.stats()
            assert stats.services["api"].windows[0].used == 1
            assert stats.pending == 2
            await cue.stop()
    assert len(handled) == 1
    assert cue.stats().cancelled == 2


def test_reconfigure_keeps_a_reservation_where_it_is_committed() -> None:
    """A rate limiter changed in place keeps its outstanding reservation: commit settles it."""
    from runcue._rate import RateLimiter, parse_rate

    now = [0.0]
    limiter = RateLimiter(parse_rate("1/s"), clock=lambda: now[0])
    assert limiter.try_reserve()
    limiter.reconfigure(parse_rate("10/s;100/min"))
    assert [window.reserved for window in limiter.windows] == [1, 1]
    limiter.commit()
    assert [window.reserved for window in limiter.windows] == [0, 0]
    assert [used for _, used in limiter.used()] == [1, 1]
    now[0] = 1.0
    assert [used for _, used in limiter.used()] == [0, 1]


# ---------------------------------------------------------------------------- 2: outside inputs


async def test_work_that_waited_for_outside_inputs_is_not_kept_past_keep_finished(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """Declared work whose inputs appear from outside the cue is forgotten like any other."""
    cue = make_cue(keep_finished=10, recheck_interval=0.01)
    (tmp_path / "in").mkdir()

    @cue.task(
        "copy",
        inputs=lambda work: [tmp_path / "in" / f"{work.params['n']}.txt"],
        outputs=lambda work: [tmp_path / f"{work.params['n']}.out"],
    )
    def copy(work: runcue.WorkUnit) -> None:
        n = work.params["n"]
        (tmp_path / f"{n}.out").write_text((tmp_path / "in" / f"{n}.txt").read_text())

    early: list[str] = []  # the first work of each wave, long past keep_finished at the end
    with anyio.fail_after(30):
        async with cue:
            for wave in range(3):
                ids = [await cue.submit("copy", {"n": wave * 100 + i}) for i in range(100)]
                early.append(ids[0])
                while cue.stats().pending and not all(
                    b["reason"] == "not_ready" for b in cue.debug_blocked()
                ):
                    await anyio.sleep(0.01)
                for i in range(100):  # made outside the cue
                    (tmp_path / "in" / f"{wave * 100 + i}.txt").write_text("x")
                cue.poke()
                await cue.join()
            engine = cue._engine
            assert engine.parking.waiting_on == {}
            assert engine.parking.waits_for == {}
    gc.collect()
    alive = [o.id for o in gc.get_objects() if isinstance(o, runcue.WorkUnit) and o.id in early]
    assert alive == []
    assert cue.stats().completed == 300


# ---------------------------------------------------------------------------- 3: stop and on_cancel


async def test_stop_timeout_zero_cancels_running_work_before_slow_on_cancels(
    make_cue: CueFactory,
) -> None:
    """stop(timeout=0) with 10 pending works and a 0.3 s async on_cancel: the running handler
    is cancelled at once, and the callbacks run together (well under 10 x 0.3 s)."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    running = anyio.Event()
    cancelled_at: list[float] = []
    callbacks: list[str] = []

    @cue.task("t", uses="serial")
    async def handler(work: runcue.WorkUnit) -> None:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled_at.append(time.monotonic())

    @cue.on_cancel
    async def on_cancel(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.3)
        callbacks.append(work.id)

    with anyio.fail_after(10):
        cue.start()
        for n in range(11):
            await cue.submit("t", {"n": n})
        await running.wait()
        begun = time.monotonic()
        await cue.stop(timeout=0)
        took = time.monotonic() - begun
    assert cancelled_at[0] - begun < 0.25
    assert len(callbacks) == 11  # the ten pending and the running one
    assert took < 2.0  # concurrently, not 11 x 0.3 s


async def test_an_outer_cancel_scope_is_not_held_by_pending_on_cancels(
    make_cue: CueFactory,
) -> None:
    """move_on_after(0.3) around `async with cue` with 20 pending works and a 0.5 s async
    on_cancel exits within about one callback's time, not 20 of them."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    calls: list[str] = []

    @cue.task("t", uses="serial")
    async def handler(work: runcue.WorkUnit) -> None:
        await anyio.sleep_forever()

    @cue.on_cancel
    async def on_cancel(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.5)
        calls.append(work.id)

    begun = time.monotonic()
    with anyio.fail_after(15), anyio.move_on_after(0.3):
        async with cue:
            for n in range(21):
                await cue.submit("t", {"n": n})
            await anyio.sleep_forever()
    took = time.monotonic() - begun
    assert took < 3.0
    assert len(calls) == 21
    assert cue.stats().cancelled == 21


# ------------------------------------------------------------------- 4: stop starts nothing


async def test_stop_while_an_async_is_ready_is_awaited_starts_no_handler(
    make_cue: CueFactory,
) -> None:
    """An async is_ready answering True after stop() began (with a slow on_cancel) starts
    nothing: every pending work ends cancelled, no handler runs."""
    cue = make_cue()
    cue.service("api", concurrent=4)
    asked = anyio.Event()
    answer = anyio.Event()
    handled: list[str] = []

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        handled.append(work.id)

    @cue.is_ready
    async def is_ready(work: runcue.WorkUnit) -> bool:
        asked.set()
        await answer.wait()
        return True

    @cue.on_cancel
    async def on_cancel(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.05)

    with anyio.fail_after(10):
        cue.start()
        for n in range(4):
            await cue.submit("t", {"n": n})
        await asked.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(cue.stop)
            await anyio.sleep(0.01)  # stop() has begun
            answer.set()
    assert handled == []
    assert cue.stats().cancelled == 4


async def test_closing_refuses_every_admission(make_cue: CueFactory) -> None:
    """Once the cue is stopping, no path admits work, whatever its checks said before."""
    cue = make_cue()

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass  # pragma: no cover

    with anyio.fail_after(5):
        async with cue:
            engine = cue._engine
            engine.closing = True
            work = runcue.WorkUnit("probe", "t", {})
            work._task = cue.get_task("t")
            work._where = 5  # CHECKING: as the dispatch leaves it before admission
            service = engine.services[None]
            assert engine.dispatch.start(work, service) is False
            assert await engine.dispatch._admit(work, service) is None
            assert service.running == 0
            engine.closing = False


# ---------------------------------------------------------------- 7: pause after admission


async def test_a_pause_that_lands_during_an_async_on_start_holds_admitted_work(
    make_cue: CueFactory,
) -> None:
    """Work admitted before a RateLimited pause, still in its async on_start, does not start
    its handler until the pause has ended."""
    cue = make_cue()
    cue.service("api", concurrent=3)
    others_in_on_start = anyio.Event()
    paused = anyio.Event()
    starts: dict[int, float] = {}
    waiting = 0
    pause = 0.5

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        n = int(work.params["n"])
        starts.setdefault(n, time.monotonic())
        if n == 0 and work.attempt == 1 and not paused.is_set():
            await others_in_on_start.wait()
            paused_at.append(time.monotonic())
            paused.set()
            raise runcue.RateLimited(retry_after=pause)

    @cue.on_start
    async def on_start(work: runcue.WorkUnit) -> None:
        nonlocal waiting
        if work.params["n"] > 0 and not paused.is_set():
            waiting += 1
            if waiting == 2:
                others_in_on_start.set()
            await paused.wait()

    paused_at: list[float] = []
    with anyio.fail_after(10):
        async with cue:
            for n in range(3):
                await cue.submit("t", {"n": n})
    assert set(starts) == {0, 1, 2}
    for n in (1, 2):
        assert starts[n] >= paused_at[0] + pause * 0.9, f"work {n} started inside the pause"
    assert cue.stats().completed == 3


# ---------------------------------------------------------------------------- 5: threads


ABANDONED_THREAD_PROGRAM = """
import asyncio, sys, time
import anyio
import runcue

cue = runcue.Cue()

@cue.task("slow")
def slow(work):
    time.sleep(0.5)
    return 1

async def main():
    cue.start()
    await cue.submit("slow")
    await anyio.sleep(0.1)
    await cue.stop(timeout=0)  # the handler's thread is abandoned and runs on

if sys.argv[1] == "run_until_complete":
    loop = asyncio.new_event_loop()
    loop.run_until_complete(main())  # the loop stops, and is never closed
else:
    anyio.run(main, backend=sys.argv[1])
time.sleep(1.0)  # the thread returns while the loop is gone
print("exiting")
"""


@pytest.mark.parametrize("how", ["run_until_complete", "asyncio", "trio"])
def test_a_thread_that_outlives_the_loop_does_not_keep_the_process_alive(how: str) -> None:
    """An abandoned sync handler returning after its loop stopped never blocks the exit."""
    program = textwrap.dedent(ABANDONED_THREAD_PROGRAM)
    finished = subprocess.run(
        [sys.executable, "-c", program, how],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "exiting"
