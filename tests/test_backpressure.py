"""Backpressure (``Cue(max_pending=N)``): submit() waits in order while N works are pending,
submit_nowait() raises CueFull, submit_threadsafe() blocks its thread, and a producer that
waits for room nothing can make gets SubmitDeadlock instead of hanging."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import pytest

import runcue
from runcue._backpressure import PendingBound
from test_cancel import assert_consistent as assert_ledger

pytestmark = pytest.mark.anyio


async def until(condition: Callable[[], bool]) -> None:
    """Wait (bounded by the caller's fail_after) until ``condition()`` holds."""
    while not condition():
        await anyio.sleep(0.001)


def waiting(cue: runcue.Cue) -> int:
    """Submitters waiting for room."""
    bound = cue._engine.bound
    assert bound is not None
    return len(bound.waiters)


def assert_consistent(cue: runcue.Cue) -> None:
    """The ledger adds up, and no place is granted or waited for."""
    assert_ledger(cue)
    bound = cue._engine.bound
    assert bound is not None
    assert bound.granted == 0
    assert not bound.waiters


class Held:
    """A cue whose "hold" handlers run ``concurrent`` at once and wait for ``release``."""

    def __init__(self, cue: runcue.Cue, concurrent: int = 1) -> None:
        self.cue = cue
        self.ran: list[object] = []
        self.release = anyio.Event()
        self.running = 0
        cue.service("held", concurrent=concurrent)

        @cue.task("hold", uses="held")
        async def hold(work: runcue.WorkUnit) -> object:
            self.ran.append(work.params.get("n"))
            self.running += 1
            try:
                await self.release.wait()
            finally:
                self.running -= 1
            return work.params.get("n")

    async def fill(self) -> str:
        """One work running, one pending (max_pending=1, concurrent=1): the cue is full.
        Returns the pending one's id."""
        await self.cue.submit("hold", {"n": "running"})
        return await self.cue.submit("hold", {"n": "pending"})

    async def line_up(
        self, tg: anyio.abc.TaskGroup, submit: Callable[[int], Any], count: int
    ) -> None:
        """Start ``submit(n)`` for n in range(count), each once the one before waits."""
        for n in range(count):
            tg.start_soon(submit, n)
            await until(lambda n=n: waiting(self.cue) == n + 1)  # type: ignore[misc]


async def test_submit_waits_while_max_pending_works_are_pending(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """With max_pending=2, a third pending work waits until one starts; running ones do not
    count (stats().pending is what is bounded)."""
    held = Held(make_cue(max_pending=2), concurrent=2)
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            for n in range(4):  # two start at once, two pending: no wait
                await cue.submit("hold", {"n": n})
            assert cue.stats().running == 2
            assert cue.stats().pending == 2
            returned: list[str] = []

            async def one_more() -> None:
                returned.append(await cue.submit("hold", {"n": 4}))

            async with anyio.create_task_group() as tg:
                tg.start_soon(one_more)
                await until(lambda: waiting(cue) == 1)
                await anyio.wait_all_tasks_blocked()
                assert returned == []
                assert cue.stats().pending == 2
                held.release.set()
            assert len(returned) == 1
            await cue.join()
    assert sorted(held.ran) == [0, 1, 2, 3, 4]  # type: ignore[type-var]
    assert_consistent(cue)


async def test_waiting_submitters_go_in_the_order_they_came(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Submitters blocked on max_pending submit first-come first-served, and a newcomer does
    not overtake them even when it finds room."""
    held = Held(make_cue(max_pending=1))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            await held.fill()
            async with anyio.create_task_group() as tg:
                await held.line_up(tg, lambda n: cue.submit("hold", {"n": n}), 4)
                with pytest.raises(runcue.CueFull, match="max_pending=1"):
                    cue.submit_nowait("hold", {"n": "newcomer"})
                held.release.set()
            await cue.join()
    assert held.ran == ["running", "pending", 0, 1, 2, 3]
    assert_consistent(cue)


@pytest.mark.parametrize("max_pending", [4, 32])
async def test_submitters_let_in_together_still_go_in_the_order_they_came(
    make_cue: Callable[..., runcue.Cue], max_pending: int
) -> None:
    """Several waiting submitters granted room in one go (or one after another in one tick)
    submit, queue and run in the order they came, although trio may wake them last first."""
    held = Held(make_cue(max_pending=max_pending))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("hold", {"n": "running"})
            for n in range(max_pending):
                await cue.submit("hold", {"n": f"pending {n}"})
            async with anyio.create_task_group() as tg:
                await held.line_up(tg, lambda n: cue.submit("hold", {"n": n}), 8)
                held.release.set()
            await cue.join()
    assert [n for n in held.ran if isinstance(n, int)] == list(range(8))
    assert_consistent(cue)


async def test_a_cancelled_waiting_submitter_submits_nothing_and_keeps_the_order(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Cancelling a submitter that waits for room leaves no work behind, and the others
    still go in their order."""
    held = Held(make_cue(max_pending=1))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            await held.fill()
            scopes = [anyio.CancelScope() for _ in range(3)]

            async def submit(n: int) -> None:
                with scopes[n]:
                    await cue.submit("hold", {"n": n})

            async with anyio.create_task_group() as tg:
                await held.line_up(tg, submit, 3)
                scopes[1].cancel()
                await until(lambda: waiting(cue) == 2)
                held.release.set()
            await cue.join()
            assert cue.stats().submitted == 4
    assert held.ran == ["running", "pending", 0, 2]
    assert_consistent(cue)


async def test_a_granted_submitter_cancelled_before_it_submits_passes_its_place_on(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Room given to a waiting submitter that is cancelled before it could use it goes to the
    next one in line: no place is lost (or the cancelled one did submit, on trio, where the
    cancellation comes at its next checkpoint)."""
    held = Held(make_cue(max_pending=1))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            pending = await held.fill()
            first_scope = anyio.CancelScope()
            submitted: list[int] = []

            async def first() -> None:
                with first_scope:
                    await cue.submit("hold", {"n": 0})
                    submitted.append(0)

            async def second() -> None:
                await cue.submit("hold", {"n": 1})
                submitted.append(1)

            async with anyio.create_task_group() as tg:
                tg.start_soon(first)
                await until(lambda: waiting(cue) == 1)
                tg.start_soon(second)
                await until(lambda: waiting(cue) == 2)
                # Room for one: granted to the first waiter, which is cancelled at once.
                assert await cue.cancel(pending)
                first_scope.cancel()
                # One of them submitted before anything ran again: the place was not lost.
                await until(lambda: len(submitted) == 1)
                held.release.set()
            await cue.join()
    assert held.ran == ["running", *submitted]
    assert_consistent(cue)


async def test_submit_nowait_raises_cue_full_and_names_the_fix(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """submit_nowait() submits while there is room and raises CueFull (naming max_pending
    and the waiting submit) when there is none; a plain cue never raises it."""
    held = Held(make_cue(max_pending=2))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            cue.submit_nowait("hold", {"n": 0})  # runs
            cue.submit_nowait("hold", {"n": 1})
            cue.submit_nowait("hold", {"n": 2})
            with pytest.raises(runcue.CueFull) as raised:
                cue.submit_nowait("hold", {"n": 3})
            assert "max_pending=2" in str(raised.value)
            assert "await cue.submit" in str(raised.value)
            assert cue.stats().submitted == 3
            held.release.set()
            await cue.join()
    unbounded = Held(make_cue())
    async with unbounded.cue:
        unbounded.release.set()
        for n in range(50):
            unbounded.cue.submit_nowait("hold", {"n": n})
    assert unbounded.cue.stats().completed == 50


async def test_submit_that_deduplicates_into_live_work_never_waits(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A full cue still answers a submission whose key matches pending or running work:
    with that work's id, at once (submit and submit_nowait)."""
    held = Held(make_cue(max_pending=1))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            running = await cue.submit("hold", {"n": 0}, key="a")
            pending = await cue.submit("hold", {"n": 1}, key="b")
            assert await cue.submit("hold", {"n": 9}, key="b") == pending
            assert cue.submit_nowait("hold", {"n": 9}, key="a") == running
            with pytest.raises(runcue.CueFull):
                cue.submit_nowait("hold", {"n": 2}, key="c")
            held.release.set()
            await cue.join()
    assert held.ran == [0, 1]


async def test_submit_threadsafe_blocks_its_thread_until_there_is_room(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """submit_threadsafe() from a plain thread blocks that thread while the cue is full and
    returns the id once there is room."""
    held = Held(make_cue(max_pending=1))
    cue = held.cue
    with anyio.fail_after(10):
        async with cue:
            await held.fill()
            returned: list[str] = []

            async def from_a_thread() -> None:
                returned.append(
                    await anyio.to_thread.run_sync(cue.submit_threadsafe, "hold", {"n": 2})
                )

            async with anyio.create_task_group() as tg:
                tg.start_soon(from_a_thread)
                await until(lambda: waiting(cue) == 1)
                assert returned == []
                held.release.set()
            assert len(returned) == 1
            assert await cue.wait(returned[0]) == 2
    assert_consistent(cue)


async def test_a_producer_blocked_by_work_waiting_for_it_gets_submit_deadlock(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Every pending work waits for an input that only later submissions would make, and
    nothing runs: the blocked submit() raises SubmitDeadlock (a CueFull) that explains."""
    cue = make_cue(max_pending=2, deadlock_timeout=0.1, recheck_interval=0.02)
    cue.service("s", concurrent=2)
    made: set[int] = set()

    @cue.task("consume", uses="s")
    async def consume(work: runcue.WorkUnit) -> None:
        return None

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return work.task != "consume" or int(work.params["n"]) in made

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("consume", {"n": 0})
            await cue.submit("consume", {"n": 1})
            with pytest.raises(runcue.SubmitDeadlock) as raised:
                await cue.submit("consume", {"n": 2})  # their inputs would come later: never
            assert isinstance(raised.value, runcue.CueFull)
            message = str(raised.value)
            assert "max_pending=2" in message
            assert "not_ready" in message
            assert "deadlock_timeout=None" in message
            # The cue is intact: once the inputs exist, the waiting work runs.
            made.update({0, 1})
            cue.poke()
            await cue.join()
            await cue.submit("consume", {"n": 0})
    assert cue.stats().completed == 3
    assert_consistent(cue)


async def test_no_deadlock_is_declared_while_work_runs(
    make_cue: Callable[..., runcue.Cue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer blocked while pending work waits for a *running* producer waits on, long
    past deadlock_timeout, and goes on once that work finished."""
    looks = 0
    look = PendingBound._look_for_deadlock

    def counted(self: PendingBound, *args: object) -> None:
        nonlocal looks
        looks += 1
        look(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(PendingBound, "_look_for_deadlock", counted)
    held = Held(make_cue(max_pending=1, deadlock_timeout=0.02, recheck_interval=0.01), 2)
    cue = held.cue

    @cue.task("consume", uses="held")
    async def consume(work: runcue.WorkUnit) -> None:
        return None

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return work.task != "consume" or held.release.is_set()

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("hold", {"n": 0})  # runs until released
            await cue.submit("consume")  # parked until then
            async with anyio.create_task_group() as tg:
                tg.start_soon(cue.submit, "consume")
                await until(lambda: looks >= 12)  # three deadlock_timeouts of looking
                assert waiting(cue) == 1
                held.release.set()
            await cue.join()
    assert cue.stats().completed == 3
    assert_consistent(cue)


async def test_without_deadlock_timeout_a_producer_waits_for_inputs_from_outside(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """deadlock_timeout=None: a producer blocked by parked work waits for inputs made outside
    the cue (here a flag, then poke()) instead of raising."""
    cue = make_cue(max_pending=1, deadlock_timeout=None, recheck_interval=0.01)
    cue.service("s", concurrent=1)
    outside = {"ready": False}

    @cue.task("consume", uses="s")
    async def consume(work: runcue.WorkUnit) -> None:
        return None

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return outside["ready"]

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("consume")
            async with anyio.create_task_group() as tg:
                tg.start_soon(cue.submit, "consume")
                await until(lambda: waiting(cue) == 1)
                sweeps = cue._engine.sweeps.last_sweep
                await until(lambda: cue._engine.sweeps.last_sweep > sweeps + 0.05)
                assert waiting(cue) == 1
                outside["ready"] = True
                cue.poke()
            await cue.join()
    assert cue.stats().completed == 2


async def test_stopping_the_cue_wakes_waiting_submitters_with_cue_state_error(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A submit() waiting for room when the cue stops raises CueStateError; nothing leaks."""
    held = Held(make_cue(max_pending=1))
    cue = held.cue
    errors: list[BaseException] = []

    async def submit(n: int) -> None:
        try:
            await cue.submit("hold", {"n": n})
        except runcue.CueStateError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        cue.start()
        await held.fill()
        async with anyio.create_task_group() as tg:
            await held.line_up(tg, submit, 2)
            await cue.stop(timeout=0)
    assert len(errors) == 2
    assert "stopp" in str(errors[0])
    assert held.ran == ["running"]
    assert_consistent(cue)


async def test_a_full_cue_that_has_not_started_refuses_at_once(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Before the cue starts nothing can make room: submit() raises CueFull instead of
    waiting forever; after the start the queued work runs."""
    held = Held(make_cue(max_pending=2))
    cue = held.cue
    with anyio.fail_after(10):
        await cue.submit("hold", {"n": 0})
        await cue.submit("hold", {"n": 1})
        with pytest.raises(runcue.CueFull, match="has not started"):
            await cue.submit("hold", {"n": 2})
        held.release.set()
        async with cue:
            await cue.submit("hold", {"n": 2})
    assert sorted(held.ran) == [0, 1, 2]  # type: ignore[type-var]


async def test_pending_stays_bounded_through_a_long_burst(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """2,000 submissions under max_pending=20: stats().pending never exceeds 20 (retries
    aside), and every work runs."""
    cue = make_cue(max_pending=20)
    cue.service("s", concurrent=4)
    most = 0

    @cue.task("t", uses="s")
    async def t(work: runcue.WorkUnit) -> None:
        nonlocal most
        most = max(most, cue.stats().pending)
        await anyio.sleep(0)

    with anyio.fail_after(30):
        async with cue:
            for n in range(2_000):
                await cue.submit("t", {"n": n})
                most = max(most, cue.stats().pending)
    assert cue.stats().completed == 2_000
    assert 0 < most <= 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_pending": 0}, "max_pending must be a whole number >= 1"),
        ({"max_pending": -3}, "max_pending must be a whole number >= 1"),
        ({"max_pending": 2.5}, "max_pending must be a whole number >= 1"),
        ({"max_pending": True}, "max_pending must be a whole number >= 1"),
        ({"max_pending": 5, "deadlock_timeout": -1}, "deadlock_timeout"),
        ({"deadlock_timeout": "soon"}, "deadlock_timeout"),
    ],
)
def test_bad_backpressure_options_are_refused(options: dict[str, object], message: str) -> None:
    """max_pending and deadlock_timeout are checked where the cue is made."""
    with pytest.raises(ValueError, match=message):
        runcue.Cue(**options)  # type: ignore[arg-type]
