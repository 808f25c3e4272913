"""Running and stopping a cue: the three ways to run, shutdown, bad input and misuse."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import runcue

pytestmark = pytest.mark.anyio

Runner = Callable[[runcue.Cue], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def run_with_async_with(cue: runcue.Cue) -> AsyncIterator[None]:
    """Run the cue as `async with cue:` (leaving waits until idle)."""
    async with cue:
        yield


@asynccontextmanager
async def run_with_start_stop(cue: runcue.Cue) -> AsyncIterator[None]:
    """Run the cue with the seed's `cue.start()` / `await cue.stop()`, no task group."""
    cue.start()
    try:
        yield
        await cue.join()
    finally:
        await cue.stop()


@asynccontextmanager
async def run_under_task_group(cue: runcue.Cue) -> AsyncIterator[None]:
    """Run the cue under the caller's own task group with `await tg.start(cue.run)`."""
    async with anyio.create_task_group() as tg:
        await tg.start(cue.run)
        try:
            yield
            await cue.join()
        finally:
            await cue.stop()


RUNNERS = pytest.mark.parametrize(
    "runner",
    [run_with_async_with, run_with_start_stop, run_under_task_group],
    ids=["async-with", "start-stop", "task-group"],
)


def blocking_cue() -> tuple[runcue.Cue, anyio.Event, anyio.Event, list[str]]:
    """A cue with a serial service whose 'hold' task waits for `release`; `log` records events."""
    cue = runcue.Cue(seed=1)
    cue.service("serial", concurrent=1)
    started = anyio.Event()
    release = anyio.Event()
    log: list[str] = []

    @cue.task("hold", uses="serial")
    async def hold(work: runcue.WorkUnit) -> str:
        name = str(work.params["name"])
        log.append(f"start {name}")
        started.set()
        try:
            await release.wait()
        except BaseException:
            log.append(f"cancelled {name}")
            raise
        log.append(f"end {name}")
        return name

    @cue.on_cancel
    def cancelled(work: runcue.WorkUnit) -> None:
        log.append(f"on_cancel {work.params['name']}")

    return cue, started, release, log


# ---------------------------------------------------------------------------- ways to run


@RUNNERS
async def test_each_way_to_run_runs_sync_and_async_work(runner: Runner) -> None:
    """async with, start()/stop() and tg.start(cue.run) all run async and sync handlers."""
    cue = runcue.Cue(seed=1)
    cue.service("api", rate="1000/s", concurrent=3)

    @cue.task("async_double", uses="api")
    async def async_double(work: runcue.WorkUnit) -> int:
        await anyio.lowlevel.checkpoint()
        return int(work.params["n"]) * 2

    @cue.task("sync_square")
    def sync_square(work: runcue.WorkUnit) -> int:
        return int(work.params["n"]) ** 2

    with anyio.fail_after(10):
        async with runner(cue):
            doubles = [await cue.submit("async_double", {"n": n}) for n in range(5)]
            squares = [await cue.submit("sync_square", {"n": n}) for n in range(5)]
            assert [await cue.wait(i) for i in doubles] == [0, 2, 4, 6, 8]
            assert [await cue.wait(i) for i in squares] == [0, 1, 4, 9, 16]
    stats = cue.stats()
    assert (stats.completed, stats.failed, stats.cancelled, stats.pending) == (10, 0, 0, 0)
    with pytest.raises(runcue.CueStateError):
        await cue.submit("sync_square", {"n": 1})


@RUNNERS
async def test_work_submitted_before_the_cue_runs_is_kept(runner: Runner) -> None:
    """Work submitted before the cue starts waits and runs once it does."""
    cue = runcue.Cue(seed=1)
    ran: list[int] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        ran.append(int(work.params["n"]))

    early = [await cue.submit("t", {"n": n}) for n in range(3)]
    with anyio.fail_after(10):
        async with runner(cue):
            for work_id in early:
                await cue.wait(work_id)
    assert sorted(ran) == [0, 1, 2]  # unlimited work starts together, in any order


async def test_start_twice_is_harmless() -> None:
    """A second cue.start() while the cue runs does nothing."""
    cue = runcue.Cue(seed=1)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return 1

    with anyio.fail_after(10):
        cue.start()
        cue.start()
        assert await cue.wait(await cue.submit("t")) == 1
        await cue.stop()


async def test_stop_returns_only_after_the_cue_has_closed() -> None:
    """After `await cue.stop()` the background cue is fully stopped: nothing runs any more."""
    cue, started, release, log = blocking_cue()
    with anyio.fail_after(10):
        cue.start()
        await cue.submit("hold", {"name": "a"})
        await started.wait()
        release.set()
        await cue.stop()
    assert log == ["start a", "end a"]
    assert "stopped" in repr(cue)
    with pytest.raises(runcue.CueStateError):
        await cue.submit("hold", {"name": "late"})


# ---------------------------------------------------------------------------- leaving / stopping


async def test_leaving_async_with_waits_for_work_submitted_by_work() -> None:
    """Leaving `async with` waits until idle, including work that running work submits."""
    cue = runcue.Cue(seed=1)
    chain: list[int] = []

    @cue.task("step")
    async def step(work: runcue.WorkUnit) -> None:
        n = int(work.params["n"])
        chain.append(n)
        await anyio.lowlevel.checkpoint()
        if n < 5:
            await cue.submit("step", {"n": n + 1})

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("step", {"n": 0})
    assert chain == [0, 1, 2, 3, 4, 5]
    assert cue.stats().completed == 6


async def test_leaving_async_with_waits_for_work_that_becomes_ready() -> None:
    """Work held by is_ready is waited for when leaving `async with` once another makes it ready."""
    cue = runcue.Cue(seed=1)
    artifacts: set[str] = set()
    order: list[str] = []

    @cue.task("produce")
    async def produce(work: runcue.WorkUnit) -> None:
        order.append("produce")
        artifacts.add("input")

    @cue.task("consume")
    async def consume(work: runcue.WorkUnit) -> None:
        order.append("consume")

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return work.task != "consume" or "input" in artifacts

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("consume")
            await cue.submit("produce")
    assert order == ["produce", "consume"]


async def test_stop_starts_nothing_new_and_waits_for_running_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stop() cancels pending work at once (on_cancel, a warning) and lets running work finish."""
    cue, started, release, log = blocking_cue()
    with anyio.fail_after(10):
        cue.start()
        running = await cue.submit("hold", {"name": "a"})
        queued = [await cue.submit("hold", {"name": n}) for n in ("b", "c")]
        await started.wait()
        stopped = anyio.Event()

        async def stop() -> None:
            await cue.stop()
            stopped.set()

        with caplog.at_level(logging.WARNING, logger="runcue"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stop)
                for work_id in queued:
                    with pytest.raises(runcue.WorkCancelled):
                        await cue.wait(work_id)
                await anyio.wait_all_tasks_blocked()
                assert not stopped.is_set()  # stop() still waits for "a"
                work = await cue.get(running)
                assert work is not None
                assert work.state is runcue.WorkState.RUNNING
                release.set()
                await stopped.wait()
    assert log == ["start a", "on_cancel b", "on_cancel c", "end a"]
    assert await cue.wait(running) == "a"
    for work_id in queued:
        work = await cue.get(work_id)
        assert work is not None
        assert work.state is runcue.WorkState.CANCELLED
    warnings = [r for r in caplog.records if r.name == "runcue" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 work units still pending" in warnings[0].getMessage()
    stats = cue.stats()
    assert (stats.completed, stats.cancelled, stats.running, stats.pending) == (1, 2, 0, 0)


async def test_stop_with_timeout_cancels_running_async_work() -> None:
    """stop(timeout=...) cancels work still running when the timeout ends; it ends cancelled."""
    cue, started, _release, log = blocking_cue()
    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("hold", {"name": "a"})
        await started.wait()
        await cue.stop(timeout=0.05)
        with pytest.raises(runcue.WorkCancelled):
            await cue.wait(work_id)
    assert log == ["start a", "cancelled a", "on_cancel a"]
    work = await cue.get(work_id)
    assert work is not None
    assert work.state is runcue.WorkState.CANCELLED
    stats = cue.stats()
    assert (stats.completed, stats.cancelled, stats.running) == (0, 1, 0)
    assert stats.services["serial"].running == 0


async def test_stop_with_timeout_leaves_a_running_sync_handler_cancelled() -> None:
    """stop(timeout=...) ends a stuck sync handler's work cancelled; its late result is dropped."""
    cue = runcue.Cue(seed=1)
    cue.service("disk", concurrent=1)
    entered = threading.Event()
    unblock = threading.Event()
    finished = threading.Event()

    @cue.task("stuck", uses="disk")
    def stuck(work: runcue.WorkUnit) -> str:
        entered.set()
        try:
            unblock.wait(10)
            return "late"
        finally:
            finished.set()

    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("stuck")
        await anyio.to_thread.run_sync(entered.wait, 5)
        await cue.stop(timeout=0.05)
        work = await cue.get(work_id)
        assert work is not None
        assert work.state is runcue.WorkState.CANCELLED
        unblock.set()
        assert await anyio.to_thread.run_sync(finished.wait, 5)
    assert work.result is None
    assert cue.stats().cancelled == 1


async def test_stop_before_start_cancels_submitted_work() -> None:
    """stop() on a cue that never ran cancels what was submitted and closes it."""
    cue = runcue.Cue(seed=1)
    cancelled: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        raise AssertionError("never runs")

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        cancelled.append(work.id)

    work_id = await cue.submit("t")
    with anyio.fail_after(5):
        await cue.stop()
        with pytest.raises(runcue.WorkCancelled):
            await cue.wait(work_id)
    assert cancelled == [work_id]
    with pytest.raises(runcue.CueStateError):
        await cue.submit("t")


async def test_an_exception_in_the_body_comes_out_as_itself_and_cancels_work() -> None:
    """An error raised inside `async with` propagates unwrapped and cancels running work."""
    cue, started, _release, log = blocking_cue()
    error = KeyError("boom")
    ids: list[str] = []

    async def body() -> None:
        async with cue:
            ids.append(await cue.submit("hold", {"name": "a"}))
            ids.append(await cue.submit("hold", {"name": "b"}))
            await started.wait()
            raise error

    with anyio.fail_after(10), pytest.raises(KeyError) as info:
        await body()
    assert info.value is error
    assert sorted(log) == sorted(["start a", "cancelled a", "on_cancel a", "on_cancel b"])
    for work_id in ids:
        work = await cue.get(work_id)
        assert work is not None
        assert work.state is runcue.WorkState.CANCELLED
    stats = cue.stats()
    assert (stats.running, stats.pending, stats.cancelled) == (0, 0, 2)


async def test_an_exception_in_the_body_does_not_wait_for_a_stuck_sync_handler() -> None:
    """Leaving by an exception returns without waiting for a blocked sync handler's thread."""
    cue = runcue.Cue(seed=1)
    entered = threading.Event()
    unblock = threading.Event()
    finished = threading.Event()

    @cue.task("stuck")
    def stuck(work: runcue.WorkUnit) -> None:
        entered.set()
        try:
            unblock.wait(10)
        finally:
            finished.set()

    ids: list[str] = []

    async def body() -> None:
        async with cue:
            ids.append(await cue.submit("stuck"))
            await anyio.to_thread.run_sync(entered.wait, 5)
            raise LookupError("leave now")

    try:
        with anyio.fail_after(5), pytest.raises(LookupError, match="leave now"):
            await body()
        work = await cue.get(ids[0])
        assert work is not None
        assert work.state is runcue.WorkState.CANCELLED
        assert not finished.is_set()
    finally:
        unblock.set()
        await anyio.to_thread.run_sync(finished.wait, 5)


async def test_failing_handlers_do_not_break_the_block() -> None:
    """A handler's exception fails its work only; `async with` still leaves normally."""
    cue = runcue.Cue(seed=1)

    @cue.task("t")
    def handler(work: runcue.WorkUnit) -> int:
        if work.params["n"] % 2:
            raise ValueError(f"odd {work.params['n']}")
        return int(work.params["n"])

    with anyio.fail_after(5):
        async with cue:
            for n in range(6):
                await cue.submit("t", {"n": n})
    stats = cue.stats()
    assert (stats.completed, stats.failed) == (3, 3)


async def test_cancelling_the_surrounding_scope_cancels_the_cue() -> None:
    """A cancel scope around `async with` that is cancelled stops the cue and its work."""
    cue, started, _release, log = blocking_cue()
    with anyio.fail_after(10):
        with anyio.CancelScope() as scope:
            async with cue:
                await cue.submit("hold", {"name": "a"})
                await started.wait()
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
    assert "cancelled a" in log
    assert cue.stats().running == 0


async def test_stop_inside_async_with_stops_the_cue_and_leaving_is_fine() -> None:
    """`await cue.stop()` inside the block stops the cue; submit then raises; leaving is clean."""
    cue = runcue.Cue(seed=1)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return 3

    with anyio.fail_after(5):
        async with cue:
            assert await cue.wait(await cue.submit("t")) == 3
            await cue.stop()
            with pytest.raises(runcue.CueStateError):
                await cue.submit("t")
    assert "stopped" in repr(cue)
    assert cue.stats().completed == 1


async def test_a_cancelled_stop_leaves_the_cue_consistent_and_stop_can_be_repeated() -> None:
    """stop() cancelled while it waits leaves the cue stopping; a second stop() finishes the job."""
    cue, started, release, log = blocking_cue()
    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("hold", {"name": "a"})
        await started.wait()
        with anyio.CancelScope() as scope:
            scope.cancel()
            await cue.stop()
        with pytest.raises(runcue.CueStateError):
            await cue.submit("hold", {"name": "late"})
        release.set()
        await cue.stop()
        await cue.stop()  # stopping a stopped cue is harmless
        assert await cue.wait(work_id) == "a"
    assert log == ["start a", "end a"]
    stats = cue.stats()
    assert (stats.running, stats.pending, stats.completed) == (0, 0, 1)
    assert "stopped" in repr(cue)


async def test_stop_called_from_a_handler_does_not_deadlock() -> None:
    """A handler that calls `await cue.stop()` must not wait forever for itself to finish."""
    cue = runcue.Cue(seed=1)
    outcome: list[str] = []

    @cue.task("fatal")
    async def fatal(work: runcue.WorkUnit) -> str:
        try:
            await cue.stop()
        except runcue.CueStateError:
            outcome.append("refused")  # also acceptable: a clear error instead of a hang
            raise
        outcome.append("stopped")
        return "done"

    with anyio.move_on_after(2) as deadline:
        async with cue:
            work_id = await cue.submit("fatal")
            with contextlib.suppress(runcue.CueStateError, runcue.WorkCancelled):
                await cue.wait(work_id)
    assert not deadline.cancelled_caught, "cue.stop() inside a handler waited for itself"
    assert outcome in (["stopped"], ["refused"])


# ---------------------------------------------------------------------------- misuse


async def test_entering_a_running_cue_raises_naming_the_fix() -> None:
    """A second `async with` on a running cue raises CueStateError; once left, it enters again."""
    cue = runcue.Cue(seed=1)
    with anyio.fail_after(5):
        async with cue:
            with pytest.raises(runcue.CueStateError, match=r"runcue\.Cue\(\)") as info:
                async with cue:
                    pass  # pragma: no cover
            assert isinstance(info.value, RuntimeError)
            assert "running" in str(info.value)
        async with cue:  # stopped: it starts again
            pass


def test_plain_with_raises_naming_async_with() -> None:
    """`with cue:` raises CueStateError telling the user to write `async with`."""
    cue = runcue.Cue()
    with pytest.raises(runcue.CueStateError, match="async with") as info, cue:
        pass  # pragma: no cover
    assert isinstance(info.value, RuntimeError)


def test_start_outside_an_event_loop_raises_and_leaves_the_cue_usable() -> None:
    """cue.start() from sync code raises CueStateError naming the fix; the cue still runs later."""
    cue = runcue.Cue()

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return 5

    with pytest.raises(runcue.CueStateError, match="event loop") as info:
        cue.start()
    assert "async with" in str(info.value)
    assert isinstance(info.value, RuntimeError)

    async def main() -> int:
        with anyio.fail_after(5):
            async with cue:
                result = await cue.wait(await cue.submit("t"))
        return int(result)

    assert anyio.run(main) == 5


@pytest.mark.parametrize("how", ["async-with", "stop"])
async def test_submit_after_stop_raises_naming_the_fix(how: str) -> None:
    """submit() on a stopped cue raises CueStateError saying where submitting works."""
    cue = runcue.Cue(seed=1)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    with anyio.fail_after(5):
        if how == "async-with":
            async with cue:
                await cue.submit("t")
        else:
            cue.start()
            await cue.submit("t")
            await cue.stop()
    with pytest.raises(runcue.CueStateError, match="async with") as info:
        await cue.submit("t")
    assert "cue.start()" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert cue.stats().submitted == 1


async def test_bad_submissions_raise_and_lose_nothing_queued() -> None:
    """Unknown tasks and non-mapping params raise at submit(); queued work still all runs."""
    cue, started, release, log = blocking_cue()

    @cue.task("other")
    async def other(work: runcue.WorkUnit) -> None:
        pass

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("hold", {"name": n}) for n in ("a", "b", "c")]
            await started.wait()
            with pytest.raises(runcue.UnknownTaskError) as unknown:
                await cue.submit("nope", {"name": "x"})
            assert isinstance(unknown.value, ValueError)
            message = str(unknown.value)
            assert "'nope'" in message
            assert "'hold'" in message
            assert "'other'" in message
            bad_params: Any = ["name", "x"]
            with pytest.raises(TypeError, match="mapping"):
                await cue.submit("hold", bad_params)
            with pytest.raises(TypeError, match="mapping"):
                await cue.submit("hold", "name=x")  # type: ignore[arg-type]
            assert [item["work"].id for item in cue.debug_blocked()] == ids[1:]
            release.set()
            assert [await cue.wait(work_id) for work_id in ids] == ["a", "b", "c"]
    assert log == ["start a", "end a", "start b", "end b", "start c", "end c"]
    assert cue.stats().submitted == 3


async def test_submit_accepts_any_mapping_and_copies_it() -> None:
    """params may be any Mapping (or omitted); the work keeps its own copy."""
    cue = runcue.Cue(seed=1)
    seen: list[dict[str, Any]] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        seen.append(dict(work.params))

    params = {"n": 1}
    with anyio.fail_after(5):
        async with cue:
            await cue.submit("t", params)
            params["n"] = 2
            await cue.submit("t", params)
            await cue.submit("t")
    assert sorted(seen, key=repr) == sorted([{"n": 1}, {"n": 2}, {}], key=repr)


def test_task_using_an_undeclared_service_raises_at_registration() -> None:
    """@cue.task(uses='nope') raises UnknownServiceError naming the service and the fix."""
    cue = runcue.Cue()
    cue.service("openai", rate="60/min")
    with pytest.raises(runcue.UnknownServiceError) as info:

        @cue.task("extract", uses="nope")
        def extract(work: runcue.WorkUnit) -> None:  # pragma: no cover
            pass

    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "'nope'" in message
    assert "'openai'" in message
    assert "cue.service('nope'" in message
    assert cue.get_task("extract") is None


def test_registering_a_task_name_twice_raises() -> None:
    """A second @cue.task with the same name is refused; the first handler stays."""
    cue = runcue.Cue()

    @cue.task("t")
    def first(work: runcue.WorkUnit) -> int:
        return 1

    with pytest.raises(ValueError, match="already registered"):

        @cue.task("t")
        def second(work: runcue.WorkUnit) -> int:  # pragma: no cover
            return 2

    spec = cue.get_task("t")
    assert spec is not None
    assert spec.handler is first
