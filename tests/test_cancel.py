"""Cancellation and timeouts: each path ends the work cleanly and leaves the cue consistent."""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

import runcue

pytestmark = pytest.mark.anyio


def assert_consistent(cue: runcue.Cue) -> None:
    """The ledger adds up and each service lends exactly one token per running handler."""
    stats = cue.stats()
    assert stats.submitted == (
        stats.pending
        + stats.running
        + stats.completed
        + stats.failed
        + stats.skipped
        + stats.cancelled
    )
    for service in cue._services.values():
        assert service.limiter is None or service.limiter.borrowed_tokens == service.running


async def state_of(cue: runcue.Cue, work_id: str) -> runcue.WorkState:
    """The state of a work the cue still knows."""
    work = await cue.get(work_id)
    assert work is not None
    return work.state


# ---------------------------------------------------------------------- cue.cancel


async def test_cancel_pending_work(make_cue: Callable[..., runcue.Cue]) -> None:
    """Cancelled pending work never runs, ends cancelled, fires on_cancel; wait() raises."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    ran: list[str] = []
    cancelled: list[str] = []
    started = anyio.Event()
    release = anyio.Event()

    @cue.task("t", uses="serial")
    async def handler(work: runcue.WorkUnit) -> None:
        ran.append(str(work.params["name"]))
        started.set()
        await release.wait()

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        cancelled.append(work.id)

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("t", {"name": "first"})
            second = await cue.submit("t", {"name": "second"})
            third = await cue.submit("t", {"name": "third"})
            await started.wait()
            assert await cue.cancel(second) is True
            assert await state_of(cue, second) is runcue.WorkState.CANCELLED
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(second)
            assert cue.stats().cancelled == 1
            assert_consistent(cue)
            release.set()
            await cue.wait(first)
            await cue.wait(third)
    assert ran == ["first", "third"]
    assert cancelled == [second]
    assert_consistent(cue)


async def test_cancel_running_async_work_frees_its_slot(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A running async handler is cancelled; the next work of a concurrent=1 service runs."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    started = anyio.Event()
    handler_cancelled = anyio.Event()
    on_cancel_calls: list[str] = []

    @cue.task("hang", uses="serial")
    async def hang(work: runcue.WorkUnit) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            handler_cancelled.set()
            raise

    @cue.task("next", uses="serial")
    async def after(work: runcue.WorkUnit) -> str:
        return "next ran"

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        on_cancel_calls.append(work.id)

    with anyio.fail_after(10):
        async with cue:
            hung = await cue.submit("hang")
            following = await cue.submit("next")
            await started.wait()
            assert await state_of(cue, hung) is runcue.WorkState.RUNNING
            assert await cue.cancel(hung) is True
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(hung)
            assert handler_cancelled.is_set()
            assert await cue.wait(following) == "next ran"
    assert await state_of(cue, hung) is runcue.WorkState.CANCELLED
    assert on_cancel_calls == [hung]
    stats = cue.stats()
    assert (stats.cancelled, stats.completed, stats.failed) == (1, 1, 0)
    assert_consistent(cue)


async def test_cancel_running_sync_work_ends_it_but_keeps_the_slot(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A cancelled sync handler ends cancelled at once; its thread keeps the slot until done."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    @cue.task("block", uses="serial")
    def block(work: runcue.WorkUnit) -> None:
        entered.set()
        release.wait(10)
        order.append("block returned")

    @cue.task("next", uses="serial")
    async def after(work: runcue.WorkUnit) -> None:
        order.append("next")

    try:
        with anyio.fail_after(10):
            async with cue:
                blocker = await cue.submit("block")
                following = await cue.submit("next")
                await anyio.to_thread.run_sync(entered.wait, 10)
                assert await cue.cancel(blocker) is True
                with pytest.raises(runcue.WorkCancelled):
                    await cue.wait(blocker)
                assert not release.is_set()  # the thread is still in the handler
                assert await state_of(cue, following) is runcue.WorkState.PENDING
                assert cue._services["serial"].limiter is not None
                assert cue._services["serial"].limiter.borrowed_tokens == 1
                release.set()
                await cue.wait(following)
    finally:
        release.set()
    assert order == ["block returned", "next"]
    assert_consistent(cue)


async def test_cancel_work_waiting_for_its_retry(make_cue: Callable[..., runcue.Cue]) -> None:
    """Work in its retry backoff can be cancelled; it never runs again and join() is prompt."""
    cue = make_cue()
    attempts: list[int] = []
    retrying = anyio.Event()

    @cue.task("flaky", retry=3, backoff=runcue.Backoff(base=60.0, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> None:
        attempts.append(work.attempt)
        raise ConnectionError("retry in a minute")

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retrying.set()

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("flaky")
            await retrying.wait()
            assert await cue.cancel(work_id) is True
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(work_id)
            await cue.join()
    assert attempts == [1]
    assert cue.stats().cancelled == 1
    assert_consistent(cue)


async def test_cancel_finished_or_unknown_work_returns_false(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """cancel() on completed, failed or unknown work returns False and changes nothing."""
    cue = make_cue()
    cancelled: list[str] = []

    @cue.task("ok")
    async def ok(work: runcue.WorkUnit) -> int:
        return 1

    @cue.task("bad")
    async def bad(work: runcue.WorkUnit) -> None:
        raise ValueError("bad")

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        cancelled.append(work.id)

    with anyio.fail_after(10):
        async with cue:
            done = await cue.submit("ok")
            failed = await cue.submit("bad")
            assert await cue.wait(done) == 1
            with pytest.raises(ValueError, match="bad"):
                await cue.wait(failed)
            assert await cue.cancel(done) is False
            assert await cue.cancel(failed) is False
            assert await cue.cancel("no-such-id") is False
            assert await cue.cancel(done) is False
    assert await state_of(cue, done) is runcue.WorkState.COMPLETED
    assert await state_of(cue, failed) is runcue.WorkState.FAILED
    assert cancelled == []
    assert cue.stats().cancelled == 0
    assert_consistent(cue)


async def test_cancel_during_an_async_on_retry_callback(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Work cancelled while its async on_retry callback runs ends cancelled, not lost."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    in_callback = anyio.Event()
    go_on = anyio.Event()
    attempts: list[int] = []

    @cue.task("flaky", uses="serial", retry=3, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> None:
        attempts.append(work.attempt)
        raise ConnectionError("again")

    @cue.task("next", uses="serial")
    async def after(work: runcue.WorkUnit) -> str:
        return "next ran"

    @cue.on_retry
    async def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        in_callback.set()
        await go_on.wait()

    with anyio.fail_after(10):
        async with cue:
            flaky_id = await cue.submit("flaky")
            following = await cue.submit("next")
            await in_callback.wait()
            assert await cue.cancel(flaky_id) is True
            go_on.set()
            with anyio.fail_after(2), pytest.raises(runcue.WorkCancelled):
                await cue.wait(flaky_id)
            assert await cue.wait(following) == "next ran"
    assert attempts == [1]
    assert await state_of(cue, flaky_id) is runcue.WorkState.CANCELLED
    assert (cue.stats().cancelled, cue.stats().pending) == (1, 0)
    assert_consistent(cue)


async def test_stop_during_an_async_on_retry_callback(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """stop(timeout) while an async on_retry callback runs ends that work cancelled."""
    cue = make_cue()
    in_callback = anyio.Event()

    @cue.task("flaky", retry=3, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def flaky(work: runcue.WorkUnit) -> None:
        raise ConnectionError("again")

    @cue.on_retry
    async def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        in_callback.set()
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        cue.start()
        flaky_id = await cue.submit("flaky")
        await in_callback.wait()
        await cue.stop(timeout=0.05)
    assert await state_of(cue, flaky_id) is runcue.WorkState.CANCELLED
    stats = cue.stats()
    assert (stats.pending, stats.running, stats.cancelled) == (0, 0, 1)
    assert_consistent(cue)


# ---------------------------------------------------------------------- leaving the block


def make_holding_cue(
    make_cue: Callable[..., runcue.Cue],
) -> tuple[runcue.Cue, anyio.Event, list[str], list[str]]:
    """A cue whose "hold" work never ends by itself: 2 run at once (concurrent=2)."""
    cue = make_cue()
    cue.service("api", concurrent=2)
    both_started = anyio.Event()
    handler_cancelled: list[str] = []
    on_cancel_calls: list[str] = []
    running: list[str] = []

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        running.append(work.id)
        if len(running) == 2:
            both_started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            handler_cancelled.append(work.id)
            raise

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        on_cancel_calls.append(work.id)

    return cue, both_started, handler_cancelled, on_cancel_calls


async def assert_all_cancelled(
    cue: runcue.Cue, ids: list[str], handler_cancelled: list[str], on_cancel_calls: list[str]
) -> None:
    """Every work ended cancelled, both running handlers saw it, nothing is left lent."""
    assert sorted(handler_cancelled) == sorted(ids[:2])
    assert sorted(on_cancel_calls) == sorted(ids)
    for work_id in ids:
        assert await state_of(cue, work_id) is runcue.WorkState.CANCELLED
        with pytest.raises(runcue.WorkCancelled):
            await cue.wait(work_id)
    stats = cue.stats()
    assert (stats.submitted, stats.cancelled, stats.pending, stats.running) == (3, 3, 0, 0)
    assert_consistent(cue)


async def test_cancelling_the_async_with_body_cancels_everything(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A cancel scope around `async with` cancels running and pending work; no task remains."""
    cue, both_started, handler_cancelled, on_cancel_calls = make_holding_cue(make_cue)
    tasks_before = len(anyio.get_running_tasks())
    with anyio.fail_after(10):
        with anyio.CancelScope() as scope:
            async with cue:
                ids = [await cue.submit("hold", {"n": n}) for n in range(3)]
                await both_started.wait()
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert len(anyio.get_running_tasks()) == tasks_before
        await assert_all_cancelled(cue, ids, handler_cancelled, on_cancel_calls)


async def test_a_deadline_around_async_with_cancels_everything(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """move_on_after around `async with` (joining at its end) cancels all and leaves no task."""
    cue, both_started, handler_cancelled, on_cancel_calls = make_holding_cue(make_cue)
    tasks_before = len(anyio.get_running_tasks())
    with anyio.fail_after(10):
        with anyio.move_on_after(5) as scope:
            async with cue:
                ids = [await cue.submit("hold", {"n": n}) for n in range(3)]
                await both_started.wait()
                # Leaving the block joins: the deadline, 50 ms from now, cancels that wait.
                scope.deadline = anyio.current_time() + 0.05
        assert scope.cancelled_caught
        assert len(anyio.get_running_tasks()) == tasks_before
        await assert_all_cancelled(cue, ids, handler_cancelled, on_cancel_calls)


async def test_an_exception_in_the_body_cancels_everything(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """An exception in `async with` comes out as itself after cancelling all work."""
    cue, both_started, handler_cancelled, on_cancel_calls = make_holding_cue(make_cue)
    tasks_before = len(anyio.get_running_tasks())
    ids: list[str] = []

    async def fail_inside() -> None:
        async with cue:
            ids.extend([await cue.submit("hold", {"n": n}) for n in range(3)])
            await both_started.wait()
            _ = 1 / 0

    with anyio.fail_after(10):
        with pytest.raises(ZeroDivisionError):
            await fail_inside()
        assert len(anyio.get_running_tasks()) == tasks_before
        await assert_all_cancelled(cue, ids, handler_cancelled, on_cancel_calls)


async def test_stop_with_a_timeout_cancels_running_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """stop(timeout) cancels pending work at once and running work after the timeout."""
    cue, both_started, handler_cancelled, on_cancel_calls = make_holding_cue(make_cue)
    tasks_before = len(anyio.get_running_tasks())
    with anyio.fail_after(10):
        cue.start()
        ids = [await cue.submit("hold", {"n": n}) for n in range(3)]
        await both_started.wait()
        await cue.stop(timeout=0.05)
        assert len(anyio.get_running_tasks()) == tasks_before
        await assert_all_cancelled(cue, ids, handler_cancelled, on_cancel_calls)


# ---------------------------------------------------------------------- timeouts


async def test_an_async_handler_past_its_timeout_is_cancelled(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """At its deadline an async handler is cancelled and the work fails with HandlerTimeout."""
    cue = make_cue()
    handler_cancelled = anyio.Event()
    failures: list[BaseException] = []

    @cue.task("slow", timeout=0.05)
    async def slow(work: runcue.WorkUnit) -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            handler_cancelled.set()
            raise

    @cue.task("quick", timeout=5)
    async def quick(work: runcue.WorkUnit) -> str:
        return "in time"

    @cue.on_failure
    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        failures.append(error)

    with anyio.fail_after(10):
        async with cue:
            begun = anyio.current_time()
            work_id = await cue.submit("slow")
            with pytest.raises(runcue.HandlerTimeout) as caught:
                await cue.wait(work_id)
            took = anyio.current_time() - begun
            assert await cue.wait(await cue.submit("quick")) == "in time"
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, runcue.WorkTimeout)
    assert handler_cancelled.is_set()
    assert took >= 0.05 - 1e-3
    assert failures == [caught.value]
    assert await state_of(cue, work_id) is runcue.WorkState.FAILED
    assert (cue.stats().failed, cue.stats().completed) == (1, 1)
    assert_consistent(cue)


async def test_a_timed_out_attempt_is_retried(make_cue: Callable[..., runcue.Cue]) -> None:
    """A HandlerTimeout counts as a failed attempt and is retried when retry allows."""
    cue = make_cue()
    retried_after: list[BaseException] = []

    @cue.task("slow", timeout=0.05, retry=2, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def slow(work: runcue.WorkUnit) -> int:
        if work.attempt == 1:
            await anyio.sleep_forever()
        return work.attempt

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retried_after.append(error)

    with anyio.fail_after(10):
        async with cue:
            assert await cue.wait(await cue.submit("slow")) == 2
    assert len(retried_after) == 1
    assert isinstance(retried_after[0], runcue.HandlerTimeout)
    assert_consistent(cue)


async def test_a_sync_handler_past_its_timeout_fails_but_keeps_its_slot(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A sync handler's work fails at its deadline; its thread holds the slot until it returns."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    cue.service("elsewhere")
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    @cue.task("block", uses="serial", timeout=0.05)
    def block(work: runcue.WorkUnit) -> str:
        entered.set()
        release.wait(10)
        order.append("thread returned")
        return "dropped"

    @cue.task("next", uses="serial")
    async def after(work: runcue.WorkUnit) -> str:
        order.append("next")
        return "next ran"

    @cue.task("probe", uses="elsewhere")
    async def probe(work: runcue.WorkUnit) -> None:
        pass

    try:
        with anyio.fail_after(10):
            async with cue:
                blocker = await cue.submit("block")
                following = await cue.submit("next")
                with pytest.raises(runcue.HandlerTimeout):
                    await cue.wait(blocker)
                assert entered.is_set()
                assert not release.is_set()  # failed at the deadline, not when it returned
                # Let the scheduler go round (a probe on another service starts and ends):
                # the slot is still taken, so the next work of the service still waits.
                await cue.wait(await cue.submit("probe"))
                assert await state_of(cue, following) is runcue.WorkState.PENDING
                [blocked] = cue.debug_blocked()
                assert blocked["reason"] == "service_full"
                limiter = cue._services["serial"].limiter
                assert limiter is not None
                assert limiter.borrowed_tokens == 1
                release.set()
                assert await cue.wait(following) == "next ran"
    finally:
        release.set()
    assert order == ["thread returned", "next"]
    assert await state_of(cue, blocker) is runcue.WorkState.FAILED
    assert_consistent(cue)


async def test_a_timed_out_sync_handler_still_shows_in_the_service_stats(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """While a timed-out sync handler's thread holds the slot, stats and explain show it."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    release = threading.Event()

    @cue.task("block", uses="serial", timeout=0.05)
    def block(work: runcue.WorkUnit) -> None:
        release.wait(10)

    @cue.task("next", uses="serial")
    async def after(work: runcue.WorkUnit) -> None:
        pass

    try:
        with anyio.fail_after(10):
            async with cue:
                blocker = await cue.submit("block")
                following = await cue.submit("next")
                with pytest.raises(runcue.HandlerTimeout):
                    await cue.wait(blocker)
                serial = cue.stats().services["serial"]
                explained = cue.explain(following)
                release.set()
                await cue.wait(following)
    finally:
        release.set()
    # The slot is taken (the limiter lends its only token), so the snapshot should say so
    # rather than "0 running" next to a full service.
    assert serial.running == 1, serial
    assert "runs 0 of 1" not in explained, explained


async def test_the_retry_of_a_timed_out_sync_handler_waits_for_its_thread(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """On a concurrent=1 service, attempt 2 starts only after attempt 1's thread returned."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    release = threading.Event()
    retrying = anyio.Event()
    log: list[str] = []

    @cue.task(
        "block",
        uses="serial",
        timeout=0.05,
        retry=2,
        backoff=runcue.Backoff(base=0.0, jitter=False),
    )
    def block(work: runcue.WorkUnit) -> int:
        log.append(f"attempt {work.attempt} starts")
        if work.attempt == 1:
            release.wait(10)
            log.append("attempt 1 returns")
        return work.attempt

    @cue.task("probe_elsewhere")
    async def probe(work: runcue.WorkUnit) -> None:
        pass

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        assert isinstance(error, runcue.HandlerTimeout)
        retrying.set()

    try:
        with anyio.fail_after(10):
            async with cue:
                work_id = await cue.submit("block")
                await retrying.wait()
                # The scheduler goes round (a probe starts and ends); attempt 2 still waits.
                await cue.wait(await cue.submit("probe_elsewhere"))
                assert log == ["attempt 1 starts"]
                assert [item["reason"] for item in cue.debug_blocked()] == ["service_full"]
                release.set()
                assert await cue.wait(work_id) == 2
    finally:
        release.set()
    assert log == ["attempt 1 starts", "attempt 1 returns", "attempt 2 starts"]
    assert cue.stats().services["serial"].max_running == 1
    assert_consistent(cue)
