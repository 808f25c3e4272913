"""The cue shares the event loop: long bursts of submissions and long walks over waiting work
let other tasks run, an idle service keeps one runner for its next work, and a sweep that
completions asked for waits only while work runs."""

from __future__ import annotations

import contextvars

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

import runcue
from runcue import _backend

pytestmark = pytest.mark.anyio


async def test_a_long_burst_of_submissions_lets_work_start_before_it_ends() -> None:
    """20,000 submissions in one loop (no other await): the first works run meanwhile."""
    burst_over = False
    started_during_burst = 0

    async with runcue.Cue() as cue:

        @cue.task("noop")
        async def noop(work: runcue.WorkUnit) -> None:
            nonlocal started_during_burst
            if not burst_over:
                started_during_burst += 1

        for index in range(20_000):
            await cue.submit("noop", {"i": index})
        burst_over = True
        await cue.join()
        assert cue.stats().completed == 20_000
    assert started_during_burst > 0


async def test_a_submission_after_a_pause_does_not_wait() -> None:
    """A lone submit() is not a checkpoint: even in a cancelled scope it goes through."""
    async with runcue.Cue() as cue:
        ran = anyio.Event()

        @cue.task("noop")
        async def noop(work: runcue.WorkUnit) -> None:
            ran.set()

        with anyio.CancelScope() as scope:
            scope.cancel()
            work_id = await cue.submit("noop")
        with anyio.fail_after(5):
            await ran.wait()
        assert work_id


async def _ticks_during_burst(cue: runcue.Cue, submissions: int, step: float) -> int:
    """How often another task ran during ``submissions`` submit() calls, each ``step``
    seconds of the engine's (fake) clock after the previous one."""
    now = [cue._engine.clock()]
    cue._engine.clock = lambda: now[0]
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.lowlevel.checkpoint()  # the ticker is running
        now[0] += 1.0  # a pause: a new burst
        ticks = 0
        for index in range(submissions):
            await cue.submit("noop", {"i": index})
            now[0] += step
        done = True
    return ticks


async def test_a_due_timer_ends_a_burst_slice_early() -> None:
    """Where the loop says a timer is due (trio), a burst yields at once, not after its
    2 ms slice: 100 submissions 10 µs apart (1 ms) let other tasks run about every 0.1 ms."""
    async with runcue.Cue() as cue:
        cue.task("noop")(_noop)
        cue._engine.next_timer_in = lambda: 0.0  # always due
        ticks = await _ticks_during_burst(cue, 100, 0.00001)
        await cue.stop(timeout=0)
    assert ticks >= 5


async def test_a_burst_without_due_timers_yields_once_per_slice() -> None:
    """No timer due: one checkpoint per 2 ms slice; a loop that does not say when its next
    timer is due (asyncio): one per 0.5 ms slice, so a due timer waits at most that."""
    async with runcue.Cue() as cue:
        cue.task("noop")(_noop)
        cue._engine.next_timer_in = lambda: 1_000.0
        ticks_far = await _ticks_during_burst(cue, 100, 0.00001)  # 1 ms: within one slice
        cue._engine.next_timer_in = None
        ticks_unknown = await _ticks_during_burst(cue, 300, 0.00001)  # 3 ms: six blind slices
        await cue.stop(timeout=0)
    assert ticks_far <= 1
    assert 3 <= ticks_unknown <= 6  # (the last yield's tick may come after the burst)


async def test_a_due_timer_is_not_where_a_cancelled_caller_is_stopped() -> None:
    """The early yield for a due timer is shielded: a cancelled caller's submit within the
    burst's 2 ms slice still goes through; at the slice's end it gets its cancellation."""
    async with runcue.Cue() as cue:
        cue.task("noop")(_noop)
        engine = cue._engine
        now = [engine.clock() + 1.0]
        engine.clock = lambda: now[0]
        engine.next_timer_in = lambda: 0.0  # always due
        await cue.submit("noop", {"i": 0})  # starts a burst
        now[0] += 0.0005  # past a look at the timers, within the slice
        with anyio.CancelScope() as scope:
            scope.cancel()
            assert await cue.submit("noop", {"i": 1})
        now[0] += 0.0018  # the slice is over
        with anyio.CancelScope() as scope:
            scope.cancel()
            await cue.submit("noop", {"i": 2})
        assert scope.cancelled_caught
        assert cue.stats().submitted == 2
        await cue.stop(timeout=0)


async def test_the_loop_tells_when_its_next_timer_is_due(anyio_backend: str) -> None:
    """trio says it publicly; asyncio keeps its timers private, and runcue does not read them."""
    peek = _backend.next_timer_in()
    if anyio_backend == "asyncio":
        assert peek is None
        return
    assert peek is not None

    async def sleeper(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        task_status.started()
        await anyio.sleep(10)  # registered before the parent resumes

    async with anyio.create_task_group() as tg:
        await tg.start(sleeper)
        assert 0 < peek() <= 10
        tg.cancel_scope.cancel()


async def test_a_due_timers_task_runs_before_the_yield_returns() -> None:
    """let_due_timers_run() is enough for the task of a due timer to run (asyncio needs
    three passes of its loop for that, trio two: it may run the woken task after the
    caller in the same pass), and it is shielded from cancellation. Twenty rounds, so
    that a pass too few on trio fails (it passes a single round about half the time)."""
    peek = _backend.next_timer_in()
    woke = False

    async def sleeper(*, task_status: anyio.abc.TaskStatus[float]) -> None:
        nonlocal woke
        due = anyio.current_time() + 0.001
        task_status.started(due)
        await anyio.sleep_until(due)
        woke = True

    for _ in range(20):
        woke = False
        async with anyio.create_task_group() as tg:
            due = await tg.start(sleeper)
            # Hold the loop, as a burst does, until the timer is due (by the loop's word, where
            # it says; by its clock on asyncio, with a margin: asyncio's timer was set a few
            # microseconds after ``due`` was read, so it falls due a little after ``due``).
            while (peek() if peek is not None else due + 0.001 - anyio.current_time()) > 0:
                assert anyio.current_time() < due + 5.0, "the sleeper's timer never came due"
            with anyio.CancelScope() as scope:
                scope.cancel()
                await _backend.let_due_timers_run()
            assert not scope.cancelled_caught
            assert woke


async def _noop(work: runcue.WorkUnit) -> None:
    return None


async def test_an_idle_service_reuses_its_runner() -> None:
    """Works submitted one at a time on an idle service run in the same task: a context
    variable set by the first handler is still set for the later ones."""
    marker: contextvars.ContextVar[int] = contextvars.ContextVar("marker", default=0)
    seen: list[int] = []
    async with runcue.Cue() as cue:
        cue.service("api", concurrent=3)

        @cue.task("probe", uses="api")
        async def probe(work: runcue.WorkUnit) -> None:
            seen.append(marker.get())
            marker.set(marker.get() + 1)

        for index in range(5):
            await cue.submit("probe", {"i": index})
            with anyio.fail_after(5):
                await cue.join()
    assert seen == [0, 1, 2, 3, 4]


class _Gate:
    """A "wait" task on a service of 100 slots whose handlers wait until released."""

    def __init__(self, cue: runcue.Cue) -> None:
        cue.service("svc", concurrent=100)
        cue.task("wait", uses="svc")(self._wait)
        self.cue = cue
        self.rounds = 0
        self._arm()

    def _arm(self) -> None:
        self.release = anyio.Event()
        self.all_started = anyio.Event()
        self.started = 0

    async def _wait(self, work: runcue.WorkUnit) -> None:
        self.started += 1
        if self.started == 100:
            self.all_started.set()
        await self.release.wait()

    async def fill(self, works: int) -> None:
        """Submit ``works`` waiting works; return once 100 run at once."""
        self.rounds += 1
        self._arm()
        for index in range(works):
            await self.cue.submit("wait", {"round": self.rounds, "i": index})
        with anyio.fail_after(10):
            await self.all_started.wait()


async def test_idle_runners_are_woken_one_by_another() -> None:
    """With 100 idle runners, a burst of work that never waits is run by a few of them (the
    first drains the queue; each woken runner wakes at most one more), while work that
    waits still spreads over every free slot."""
    async with runcue.Cue() as cue:
        gate = _Gate(cue)
        runners: set[object] = set()

        @cue.task("quick", uses="svc")
        async def quick(work: runcue.WorkUnit) -> None:
            runners.add(anyio.get_current_task().id)

        await gate.fill(100)  # 100 runners, all idle afterwards
        gate.release.set()
        await cue.join()

        for index in range(2_000):
            await cue.submit("quick", {"i": index})
        await cue.join()
        assert len(runners) < 50

        await gate.fill(100)  # waiting work again: every idle runner is woken
        assert cue.stats().services["svc"].max_running == 100
        gate.release.set()


async def test_the_scheduler_leaves_the_queue_to_runners_being_woken() -> None:
    """While idle runners wake one another, the scheduler does not pop and re-queue the
    waiting work on every pass (each re-queue also asks the priority callback)."""
    async with runcue.Cue() as cue:
        gate = _Gate(cue)
        asked = 0

        @cue.priority
        def priority(context: runcue.PriorityContext) -> float:
            nonlocal asked
            asked += 1
            return 0.5

        await gate.fill(100)  # 100 runners, idle afterwards
        gate.release.set()
        await cue.join()

        asked = 0
        await gate.fill(1_000)
        assert asked < 1_500  # about one per work queued (5,850 when the scheduler spun)
        gate.release.set()


async def test_a_spare_runner_ends_with_the_cue() -> None:
    """The idle runner does not keep the cue open, on exit or on stop()."""
    with anyio.fail_after(5):
        async with runcue.Cue() as cue:

            @cue.task("noop")
            async def noop(work: runcue.WorkUnit) -> None:
                return None

            await cue.submit("noop")
            await cue.join()
        cue2 = runcue.Cue()
        cue2.task("noop")(noop)
        cue2.start()
        await cue2.submit("noop")
        await cue2.join()
        await cue2.stop()
    assert cue.stats().completed == cue2.stats().completed == 1


async def test_a_long_walk_over_waiting_work_lets_other_tasks_run() -> None:
    """5,000 not-ready works, submitted before the cue starts, are all asked in its first
    dispatch; a ticking task runs in between."""
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    cue = runcue.Cue()

    @cue.task("wait")
    async def wait(work: runcue.WorkUnit) -> None:
        return None

    @cue.is_ready
    def never(work: runcue.WorkUnit) -> bool:
        seen.append(ticks)
        return False

    for index in range(5_000):
        await cue.submit("wait", {"i": index})  # before start: they wait in the intake
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        async with cue:
            with anyio.fail_after(10):
                while len(seen) < 5_000:
                    await anyio.sleep(0.01)
            await cue.stop()
        tg.cancel_scope.cancel()
    first_walk = seen[:5_000]
    assert first_walk[-1] > first_walk[0], "the walk held the loop from start to end"


async def test_a_completion_sweep_comes_sooner_when_nothing_runs() -> None:
    """Once a handler finished and nothing runs, the sweep it asked for waits out only the
    last sweep's own cost (at most half the time spent re-asking), not three times it."""
    produced = anyio.Event()
    async with runcue.Cue(recheck_interval=3600) as cue:

        @cue.task("produce")
        async def produce(work: runcue.WorkUnit) -> None:
            produced.set()

        @cue.task("consume")
        async def consume(work: runcue.WorkUnit) -> None:
            return None

        @cue.is_ready
        def ready(work: runcue.WorkUnit) -> bool:
            return work.task != "consume" or produced.is_set()

        consumer = await cue.submit("consume")
        with anyio.fail_after(5):
            while not cue._engine.parking.swept:
                await anyio.sleep(0.001)
        # As if the last sweep, 15 s ago, had taken 10 s: while work runs, the next one
        # would wait until 30 s after it; with nothing running, it is due already.
        engine = cue._engine
        engine.sweeps.last_sweep = engine.clock() - 15.0
        engine.sweeps.last_cost = 10.0
        await cue.submit("produce")
        with anyio.fail_after(5):
            await cue.wait(consumer)
