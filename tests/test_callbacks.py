"""Event callbacks (on_start, on_complete, on_failure, on_skip), event listeners
(cue.subscribe), and what happens when any of them, or a handler, raises."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import runcue

pytestmark = pytest.mark.anyio

KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


def as_kind(callback: Callable[..., None], kind: str) -> Callable[..., Any]:
    """The callback itself (sync), or an async function that yields once and then calls it."""
    if kind == "sync":
        return callback

    async def async_callback(*args: Any) -> None:
        await anyio.lowlevel.checkpoint()
        callback(*args)

    return async_callback


def runcue_errors(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    """ERROR records of the ``runcue`` logger whose message contains ``needle``."""
    return [
        record
        for record in caplog.records
        if record.name == "runcue"
        and record.levelno >= logging.ERROR
        and needle in record.getMessage()
    ]


# ---------------------------------------------------------------------------- on_* callbacks


@KINDS
async def test_on_start_and_on_complete_see_the_work_its_result_and_duration(
    make_cue: Callable[..., runcue.Cue], kind: str
) -> None:
    """on_start(work) comes first, then on_complete(work, result, duration) with the result."""
    cue = make_cue()
    calls: list[tuple[Any, ...]] = []

    @cue.task("bake")
    async def bake(work: runcue.WorkUnit) -> dict[str, int]:
        calls.append(("handler", work.id))
        await anyio.sleep(0.02)
        return {"pies": int(work.params["n"])}

    def on_start(work: runcue.WorkUnit) -> None:
        calls.append(("start", work.id, work.state))

    def on_complete(work: runcue.WorkUnit, result: Any, duration: float) -> None:
        calls.append(("complete", work.id, work.state, result, duration))

    cue.on_start(as_kind(on_start, kind))
    cue.on_complete(as_kind(on_complete, kind))

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("bake", {"n": 3})
    assert [call[0] for call in calls] == ["start", "handler", "complete"]
    assert calls[0] == ("start", work_id, runcue.WorkState.RUNNING)
    _, completed_id, state, result, duration = calls[2]
    assert completed_id == work_id
    assert state is runcue.WorkState.COMPLETED
    assert result == {"pies": 3}
    assert isinstance(duration, float)
    assert 0.015 <= duration < 5


@pytest.mark.parametrize("handler_kind", ["sync", "async"])
@KINDS
async def test_on_failure_gets_the_very_exception_the_handler_raised(
    make_cue: Callable[..., runcue.Cue], kind: str, handler_kind: str
) -> None:
    """on_failure(work, error) receives the same exception object; so does wait()."""
    cue = make_cue()
    raised: list[BaseException] = []
    failures: list[tuple[str, BaseException]] = []

    def fail(work: runcue.WorkUnit) -> None:
        error = KeyError(work.params["order"])
        raised.append(error)
        raise error

    if handler_kind == "sync":
        cue.task("charge")(fail)
    else:

        @cue.task("charge")
        async def charge(work: runcue.WorkUnit) -> None:
            fail(work)

    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        failures.append((work.id, error))

    cue.on_failure(as_kind(on_failure, kind))

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("charge", {"order": "A-1"})
            with pytest.raises(KeyError) as caught:
                await cue.wait(work_id)
    assert len(raised) == 1
    assert failures == [(work_id, raised[0])]
    assert failures[0][1] is raised[0]
    assert caught.value is raised[0]
    work = await cue.get(work_id)
    assert work is not None
    assert work.state is runcue.WorkState.FAILED
    assert work.exception is raised[0]


@KINDS
async def test_on_skip_is_called_for_work_whose_output_is_valid(
    make_cue: Callable[..., runcue.Cue], kind: str
) -> None:
    """on_skip(work) fires for skipped work and neither on_start nor on_complete does."""
    cue = make_cue()
    calls: list[tuple[str, str]] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        calls.append(("handler", work.id))

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        return False

    cue.on_skip(as_kind(lambda work: calls.append(("skip", work.id)), kind))
    cue.on_start(lambda work: calls.append(("start", work.id)))
    cue.on_complete(lambda work, result, duration: calls.append(("complete", work.id)))

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("t")
    assert calls == [("skip", work_id)]


# ---------------------------------------------------------------------------- raising


@pytest.mark.parametrize("hook", ["on_start", "on_complete", "on_failure", "on_skip"])
@KINDS
async def test_a_callback_that_raises_is_logged_and_the_cue_goes_on(
    make_cue: Callable[..., runcue.Cue],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    hook: str,
) -> None:
    """An exception in a callback is logged on "runcue" and changes no work's outcome."""
    cue = make_cue()
    calls: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        calls.append(work.params["mode"])
        if work.params["mode"] == "fail":
            raise ValueError("handler failed on purpose")
        return "ok"

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["mode"] != "skip")

    def explode(*args: Any) -> None:
        raise RuntimeError(f"{hook} exploded")

    getattr(cue, hook)(as_kind(explode, kind))
    trigger = {"on_start": "run", "on_complete": "run", "on_failure": "fail", "on_skip": "skip"}

    with anyio.fail_after(5):
        async with cue:
            first = await cue.submit("t", {"mode": trigger[hook]})
            if hook == "on_failure":
                with pytest.raises(ValueError, match="on purpose"):
                    await cue.wait(first)
            else:
                assert await cue.wait(first) == ("ok" if hook != "on_skip" else None)
            later = await cue.submit("t", {"mode": "run", "n": 2})
            assert await cue.wait(later) == "ok"
            still_later = await cue.submit("t", {"mode": trigger[hook], "n": 3})
            await cue.join()

    errors = runcue_errors(caplog, hook)
    expected_calls = {"on_start": 3, "on_complete": 3, "on_failure": 2, "on_skip": 2}
    assert len(errors) == expected_calls[hook]
    for record in errors:
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
        assert str(record.exc_info[1]) == f"{hook} exploded"
    work = await cue.get(still_later)
    assert work is not None
    expected = runcue.WorkState.FAILED if hook == "on_failure" else runcue.WorkState.COMPLETED
    assert work.state is expected


async def test_an_async_callback_that_never_returns_is_cancelled_and_logged(
    make_cue: Callable[..., runcue.Cue], caplog: pytest.LogCaptureFixture
) -> None:
    """An async callback running past check_timeout is cancelled and logged; the cue ends."""
    cue = make_cue(check_timeout=0.05)
    entered: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        return "ok"

    @cue.on_complete
    async def on_complete(work: runcue.WorkUnit, result: Any, duration: float) -> None:
        entered.append(work.id)
        await anyio.sleep_forever()

    with anyio.fail_after(5):
        async with cue:
            work_id = await cue.submit("t")
            assert await cue.wait(work_id) == "ok"
    assert entered == [work_id]
    assert runcue_errors(caplog, "on_complete")


async def test_a_slow_async_on_skip_does_not_hold_up_other_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """While one work's async on_skip is still running, other ready work starts."""
    cue = make_cue()
    other_started = anyio.Event()
    order: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        order.append("other started")
        other_started.set()

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["n"] != 0)

    @cue.on_skip
    async def on_skip(work: runcue.WorkUnit) -> None:
        await other_started.wait()  # e.g. a slow write of the skip to a database
        order.append("on_skip returned")

    with anyio.fail_after(2):
        async with cue:
            await cue.submit("t", {"n": 0})
            await cue.submit("t", {"n": 1})
    assert order == ["other started", "on_skip returned"]


async def test_a_handler_that_raises_fails_only_its_own_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """One handler's exception fails that work; the others complete normally."""
    cue = make_cue()
    cue.service("api", concurrent=2)

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> int:
        await anyio.sleep(0)
        if work.params["n"] == 2:
            raise ZeroDivisionError("n == 2")
        return int(work.params["n"])

    with anyio.fail_after(5):
        async with cue:
            ids = [await cue.submit("t", {"n": n}) for n in range(5)]
            await cue.join()
            results: dict[int, Any] = {}
            for n, work_id in enumerate(ids):
                try:
                    results[n] = await cue.wait(work_id)
                except ZeroDivisionError as exc:
                    results[n] = exc
    assert {n: r for n, r in results.items() if n != 2} == {0: 0, 1: 1, 3: 3, 4: 4}
    assert isinstance(results[2], ZeroDivisionError)
    failed = await cue.get(ids[2])
    assert failed is not None
    assert failed.state is runcue.WorkState.FAILED
    assert failed.error == "n == 2"
    stats = cue.stats()
    assert (stats.completed, stats.failed, stats.pending, stats.running) == (4, 1, 0, 0)


async def test_a_sync_handler_that_raises_fails_only_its_own_work(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A sync handler (run in a thread) that raises fails its work; the next one still runs."""
    cue = make_cue()

    @cue.task("t")
    def handler(work: runcue.WorkUnit) -> int:
        if work.params["n"] == 0:
            raise OSError("no disk")
        return int(work.params["n"])

    with anyio.fail_after(5):
        async with cue:
            bad = await cue.submit("t", {"n": 0})
            with pytest.raises(OSError, match="no disk"):
                await cue.wait(bad)
            assert await cue.wait(await cue.submit("t", {"n": 1})) == 1


# ---------------------------------------------------------------------------- subscribe


async def test_subscribers_receive_work_events_in_order(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A listener gets queued/waiting/started/completed/failed/skipped WorkEvents in order."""
    cue = make_cue(recheck_interval=3600)
    cue.service("api", concurrent=3)
    events: list[runcue.WorkEvent] = []
    inputs: set[str] = set()

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> str:
        if work.params["name"] == "bad":
            raise ValueError("bad")
        inputs.add(work.params["name"])
        return "ok"

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        needs = work.params.get("needs")
        return needs is None or bool(needs in inputs)

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["name"] != "fresh")

    unsubscribe = cue.subscribe(events.append)
    assert callable(unsubscribe)

    with anyio.fail_after(5):
        async with cue:
            waiter = await cue.submit("t", {"name": "waiter", "needs": "good"})
            good = await cue.submit("t", {"name": "good"})
            bad = await cue.submit("t", {"name": "bad"})
            fresh = await cue.submit("t", {"name": "fresh"})

    assert all(isinstance(event, runcue.WorkEvent) for event in events)
    assert all(event.kind in runcue.EVENT_KINDS for event in events)

    def kinds(work_id: str) -> list[str]:
        return [event.kind for event in events if event.work.id == work_id]

    assert kinds(good) == ["queued", "started", "completed"]
    assert kinds(bad) == ["queued", "started", "failed"]
    assert kinds(fresh) == ["queued", "skipped"]
    waiter_kinds = kinds(waiter)
    assert waiter_kinds[0] == "queued"
    assert "waiting" in waiter_kinds
    assert waiter_kinds[-2:] == ["started", "completed"]
    assert set(waiter_kinds[1:-2]) == {"waiting"}

    times = [event.time for event in events]
    assert times == sorted(times)
    assert {event.service for event in events} == {"api"}
    by_kind = {event.kind: event for event in events if event.work.id in (good, bad)}
    assert by_kind["completed"].duration is not None
    assert by_kind["completed"].duration >= 0
    assert "bad" in by_kind["failed"].details
    assert by_kind["completed"].work.state is runcue.WorkState.COMPLETED


async def test_events_reach_listeners_before_the_matching_callback(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A listener hears of a completion before on_complete is called."""
    cue = make_cue()
    order: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    cue.on_start(lambda work: order.append("on_start"))
    cue.on_complete(lambda work, result, duration: order.append("on_complete"))
    cue.subscribe(lambda event: order.append(f"event:{event.kind}"))

    with anyio.fail_after(5):
        async with cue:
            await cue.submit("t")
    assert order == [
        "event:queued",
        "event:started",
        "on_start",
        "event:completed",
        "on_complete",
    ]


async def test_unsubscribe_stops_the_events_of_that_listener_only(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """After unsubscribe() a listener hears nothing more; other listeners are unaffected."""
    cue = make_cue()
    first: list[str] = []
    second: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    stop_first = cue.subscribe(lambda event: first.append(event.work.id))
    cue.subscribe(lambda event: second.append(event.work.id))

    with anyio.fail_after(5):
        async with cue:
            before = await cue.submit("t", {"n": 1})
            await cue.wait(before)
            stop_first()
            stop_first()  # a second call is harmless
            after = await cue.submit("t", {"n": 2})
            await cue.wait(after)
    assert first == [before] * 3
    assert second == [before] * 3 + [after] * 3


async def test_a_listener_that_raises_is_logged_and_kept(
    make_cue: Callable[..., runcue.Cue], caplog: pytest.LogCaptureFixture
) -> None:
    """A raising listener is logged on "runcue", stays subscribed, and work goes on."""
    cue = make_cue()
    heard: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return int(work.params["n"])

    def grumpy(event: runcue.WorkEvent) -> None:
        heard.append(event.kind)
        raise RuntimeError("listener exploded")

    cue.subscribe(grumpy)

    with anyio.fail_after(5):
        async with cue:
            assert await cue.wait(await cue.submit("t", {"n": 1})) == 1
            assert await cue.wait(await cue.submit("t", {"n": 2})) == 2
    assert heard == ["queued", "started", "completed"] * 2
    errors = runcue_errors(caplog, "listener")
    assert len(errors) == 6
    assert all(r.exc_info is not None and str(r.exc_info[1]) == "listener exploded" for r in errors)


def test_subscribe_refuses_what_is_not_callable() -> None:
    """subscribe() needs a callable."""
    cue = runcue.Cue()
    with pytest.raises(TypeError, match="callable"):
        cue.subscribe("print")  # type: ignore[arg-type]
