"""Pending and stall limits: Cue(pending_warn_after=, pending_timeout=, stall_warn_after=,
stall_timeout=), their warnings (callback or log) and the TimeoutErrors they fail work with.

trio runs these on a virtual clock; asyncio runs them in real time, so every duration here is
a small fraction of a second and the assertions are about order and counts, not speed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
import trio.testing

import runcue

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio-virtual"])
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """asyncio in real time, and trio on a fresh virtual clock that jumps when all sleep."""
    if request.param == "trio-virtual":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return "asyncio"


def new_cue(**options: Any) -> runcue.Cue:
    """A cue whose sync checks stay on the loop (no thread hop for the virtual clock to skip)."""
    return runcue.Cue(seed=1, checks="inline", **options)


class Signal:
    """Counts calls and lets the test wait for the n-th one."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self._changed = anyio.Event()

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)
        self._changed.set()

    async def until(self, count: int = 1) -> None:
        while len(self.calls) < count:
            self._changed = anyio.Event()
            await self._changed.wait()


@contextmanager
def runcue_log(signal: Signal, needle: str) -> Iterator[None]:
    """Call ``signal(record)`` for each ``runcue`` log record whose message contains needle."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if needle in record.getMessage():
                signal(record)

    handler = Forward(level=logging.DEBUG)
    log = logging.getLogger("runcue")
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def never_ready(cue: runcue.Cue) -> None:
    """Register a task "blocked" whose work is never ready and never runs."""

    @cue.task("blocked")
    async def blocked(work: runcue.WorkUnit) -> None:
        raise AssertionError("a never-ready work ran")

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        return work.task != "blocked"


# ---------------------------------------------------------------------------- pending


async def test_pending_warning_calls_on_pending_warning_once() -> None:
    """pending_warn_after calls on_pending_warning(work, seconds) once per waiting work."""
    cue = new_cue(pending_warn_after=0.05, pending_timeout=0.2)
    never_ready(cue)
    warned, failed = Signal(), Signal()
    cue.on_pending_warning(warned)
    cue.on_failure(failed)

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("blocked")
            await warned.until(1)
            [(work, seconds)] = warned.calls
            assert work.id == work_id
            assert work.state is runcue.WorkState.PENDING
            assert seconds >= 0.05 - 1e-6
            await failed.until(1)  # the pending timeout ends it
    assert len(warned.calls) == 1


async def test_pending_warning_without_a_callback_is_logged() -> None:
    """Without on_pending_warning, a pending warning goes to the "runcue" logger."""
    cue = new_cue(pending_warn_after=0.05)
    never_ready(cue)
    logged = Signal()

    with anyio.fail_after(5), runcue_log(logged, "pending"):
        async with cue:
            work_id = await cue.submit("blocked")
            await logged.until(1)
            [(record,)] = logged.calls
            assert record.levelno == logging.WARNING
            assert work_id in record.getMessage()
            assert await cue.cancel(work_id)


async def test_pending_timeout_fails_the_work_with_pending_timeout() -> None:
    """pending_timeout fails waiting work with PendingTimeout (a TimeoutError) via on_failure."""
    cue = new_cue(pending_timeout=0.1)
    never_ready(cue)
    failed = Signal()
    cue.on_failure(failed)

    with anyio.fail_after(5):
        async with cue:
            begun = anyio.current_time()
            work_id = await cue.submit("blocked")
            with pytest.raises(runcue.PendingTimeout) as caught:
                await cue.wait(work_id)
            waited = anyio.current_time() - begun
    assert waited >= 0.1 - 1e-6
    [(work, error)] = failed.calls
    assert work.id == work_id
    assert error is caught.value
    assert isinstance(error, TimeoutError)
    assert isinstance(error, runcue.WorkTimeout)
    assert "pending_timeout" in str(error)
    assert work.state is runcue.WorkState.FAILED
    assert cue.stats().failed == 1


async def test_pending_timeout_also_covers_work_queued_behind_a_full_service() -> None:
    """Work waiting for a busy concurrent=1 service times out; the running work is untouched."""
    cue = new_cue(pending_timeout=0.1)
    cue.service("knife", concurrent=1)
    started, release = anyio.Event(), anyio.Event()

    @cue.task("cut", uses="knife")
    async def cut(work: runcue.WorkUnit) -> str:
        started.set()
        await release.wait()
        return "sliced"

    with anyio.fail_after(5):
        async with cue:
            first = await cue.submit("cut", {"n": 1})
            await started.wait()
            second = await cue.submit("cut", {"n": 2})
            with pytest.raises(runcue.PendingTimeout, match="pending"):
                await cue.wait(second)
            running = await cue.get(first)
            assert running is not None
            assert running.state is runcue.WorkState.RUNNING
            release.set()
            assert await cue.wait(first) == "sliced"


async def test_pending_timeout_still_fires_when_a_check_was_running_at_the_deadline() -> None:
    """Work whose (slow) check was being asked at its deadline still times out afterwards."""
    cue = new_cue(pending_timeout=0.1)
    cue.service("one", concurrent=1)
    asked: list[str] = []

    @cue.task("first", uses="one")
    async def first(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.05)

    @cue.task("second", uses="one")
    async def second(work: runcue.WorkUnit) -> None:
        raise AssertionError("never ready, never run")

    @cue.is_ready
    async def ready(work: runcue.WorkUnit) -> bool:
        if work.task == "first":
            return True
        asked.append(work.id)
        if len(asked) == 1:
            await anyio.sleep(0.2)  # still asking when the deadline (t=0.1) passes
        return False

    with anyio.fail_after(2):
        async with cue:
            await cue.submit("first")
            blocked = await cue.submit("second")
            with pytest.raises(runcue.PendingTimeout):
                await cue.wait(blocked)
    assert asked  # the slow check did run


async def test_running_longer_than_pending_timeout_is_fine() -> None:
    """pending_timeout limits waiting, not running: a long handler completes."""
    cue = new_cue(pending_timeout=0.05, pending_warn_after=0.02)
    warned = Signal()
    cue.on_pending_warning(warned)

    @cue.task("slow")
    async def slow(work: runcue.WorkUnit) -> str:
        await anyio.sleep(0.2)
        return "done"

    with anyio.fail_after(5):
        async with cue:
            assert await cue.wait(await cue.submit("slow")) == "done"
    assert warned.calls == []


# ---------------------------------------------------------------------------- stall


async def test_stall_warning_calls_on_stall_warning_once_per_stall() -> None:
    """stall_warn_after calls on_stall_warning(seconds, pending_count) once per stall."""
    cue = new_cue(stall_warn_after=0.05, stall_timeout=0.2)
    never_ready(cue)
    warned, failed = Signal(), Signal()
    cue.on_stall_warning(warned)
    cue.on_failure(failed)

    with anyio.fail_after(5):
        async with cue:
            for n in range(3):
                await cue.submit("blocked", {"n": n})
            await warned.until(1)
            [(seconds, pending)] = warned.calls
            assert seconds >= 0.05 - 1e-6
            assert pending == 3
            await failed.until(3)  # the stall timeout ends them
    assert len(warned.calls) == 1


async def test_a_new_stall_after_progress_warns_again() -> None:
    """After progress ends a stall, the next stall is warned about again."""
    cue = new_cue(stall_warn_after=0.05)
    never_ready(cue)
    warned = Signal()
    cue.on_stall_warning(warned)

    @cue.task("quick")
    async def quick(work: runcue.WorkUnit) -> str:
        return "progress"

    with anyio.fail_after(5):
        async with cue:
            blocked = await cue.submit("blocked")
            await warned.until(1)
            assert await cue.wait(await cue.submit("quick")) == "progress"
            assert len(warned.calls) == 1
            await warned.until(2)
            await cue.cancel(blocked)
    assert [pending for _, pending in warned.calls] == [1, 1]


async def test_stall_warning_without_a_callback_is_logged() -> None:
    """Without on_stall_warning, a stall warning goes to the "runcue" logger."""
    cue = new_cue(stall_warn_after=0.05)
    never_ready(cue)
    logged = Signal()

    with anyio.fail_after(5), runcue_log(logged, "no work started or finished"):
        async with cue:
            ids = [await cue.submit("blocked", {"n": n}) for n in range(2)]
            await logged.until(1)
            [(record,)] = logged.calls
            assert record.levelno == logging.WARNING
            assert "2 pending" in record.getMessage()
            for work_id in ids:
                await cue.cancel(work_id)


async def test_stall_timeout_fails_every_pending_work_with_stall_timeout() -> None:
    """stall_timeout fails all pending work with StallTimeout; running work runs on."""
    cue = new_cue(stall_timeout=0.1)
    never_ready(cue)
    failed = Signal()
    cue.on_failure(failed)
    started, release = anyio.Event(), anyio.Event()

    @cue.task("long")
    async def long(work: runcue.WorkUnit) -> str:
        started.set()
        await release.wait()
        return "finished"

    with anyio.fail_after(5):
        async with cue:
            runner = await cue.submit("long")
            await started.wait()
            blocked = [await cue.submit("blocked", {"n": n}) for n in range(3)]
            await failed.until(3)
            for work_id in blocked:
                with pytest.raises(runcue.StallTimeout):
                    await cue.wait(work_id)
            still = await cue.get(runner)
            assert still is not None
            assert still.state is runcue.WorkState.RUNNING
            release.set()
            assert await cue.wait(runner) == "finished"
    assert sorted(work.id for work, _ in failed.calls) == sorted(blocked)
    for _, error in failed.calls:
        assert isinstance(error, runcue.StallTimeout)
        assert isinstance(error, TimeoutError)
        assert "stall_timeout" in str(error)
    stats = cue.stats()
    assert (stats.failed, stats.completed) == (3, 1)


async def test_steady_progress_is_not_a_stall() -> None:
    """Work completing regularly keeps a long queue alive past stall_timeout."""
    cue = new_cue(stall_timeout=0.3, stall_warn_after=0.3)
    cue.service("one", concurrent=1)
    failed, warned = Signal(), Signal()
    cue.on_failure(failed)
    cue.on_stall_warning(warned)

    @cue.task("step", uses="one")
    async def step(work: runcue.WorkUnit) -> int:
        await anyio.sleep(0.03)
        return int(work.params["n"])

    with anyio.fail_after(5):
        async with cue:
            begun = anyio.current_time()
            ids = [await cue.submit("step", {"n": n}) for n in range(12)]
            await cue.join()
            took = anyio.current_time() - begun
            results = [await cue.wait(work_id) for work_id in ids]
    assert took > 0.3  # the queue outlived stall_timeout ...
    assert results == list(range(12))  # ... and nothing failed
    assert failed.calls == []
    assert warned.calls == []


async def test_a_stall_timeout_failure_reaches_wait_and_the_ledger() -> None:
    """After a stall timeout, the cue is idle again and its counts add up."""
    cue = new_cue(stall_timeout=0.05)
    never_ready(cue)

    with anyio.fail_after(5):
        async with cue:
            ids = [await cue.submit("blocked", {"n": n}) for n in range(4)]
            await cue.join()
    for work_id in ids:
        work = await cue.get(work_id)
        assert work is not None
        assert work.state is runcue.WorkState.FAILED
        assert isinstance(work.exception, runcue.StallTimeout)
    stats = cue.stats()
    assert stats.submitted == stats.pending + stats.running + stats.finished
    assert stats.failed == 4


async def test_async_warning_callbacks_are_awaited() -> None:
    """Async on_pending_warning and on_stall_warning run to their end."""
    cue = new_cue(pending_warn_after=0.05, stall_warn_after=0.05)
    never_ready(cue)
    pending, stall = Signal(), Signal()

    @cue.on_pending_warning
    async def on_pending(work: runcue.WorkUnit, seconds: float) -> None:
        await anyio.sleep(0.01)
        pending(work.id, seconds)

    @cue.on_stall_warning
    async def on_stall(seconds: float, count: int) -> None:
        await anyio.sleep(0.01)
        stall(seconds, count)

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("blocked")
            await pending.until(1)
            await stall.until(1)
            assert pending.calls[0][0] == work_id
            assert stall.calls[0][1] == 1
            await cue.cancel(work_id)


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "option", ["pending_warn_after", "pending_timeout", "stall_warn_after", "stall_timeout"]
)
@pytest.mark.parametrize("value", [0, -1, "60", True])
def test_a_bad_limit_is_refused_with_its_name(option: str, value: object) -> None:
    """Each limit must be a positive number of seconds; the error names the option."""
    with pytest.raises(ValueError, match=option):
        runcue.Cue(**{option: value})  # type: ignore[arg-type]


def test_timeout_errors_form_the_documented_tree() -> None:
    """PendingTimeout and StallTimeout are TimeoutErrors and RuncueErrors."""
    for error in (runcue.PendingTimeout, runcue.StallTimeout):
        assert issubclass(error, TimeoutError)
        assert issubclass(error, runcue.WorkTimeout)
        assert issubclass(error, runcue.RuncueError)
