"""Faults: BaseExceptions, outside cancellation, hung handlers, broken callbacks and checks,
threads and re-entrant calls. After each one the cue is consistent: the ledger adds up and,
once it has closed, no service lends a token."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import pytest

import runcue

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]


class Halt(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


def assert_consistent(cue: runcue.Cue, *, closed: bool = True) -> None:
    """The ledger adds up; a closed cue has nothing pending or running and lends no token."""
    stats = cue.stats()
    assert stats.submitted == (
        stats.pending
        + stats.running
        + stats.completed
        + stats.failed
        + stats.skipped
        + stats.cancelled
    ), stats
    for name, service in cue._services.items():
        limiter = service.limiter
        if limiter is None:
            continue
        if closed:
            assert limiter.borrowed_tokens == 0, (
                f"service {name!r} of a closed cue still lends {limiter.borrowed_tokens}"
                f" token(s); stats running={stats.services[name].running},"
                f" abandoned={service.abandoned}"
            )
        else:
            assert limiter.borrowed_tokens == service.running + service.abandoned, name
    if closed:
        assert (stats.pending, stats.running) == (0, 0), stats


async def state_of(cue: runcue.Cue, work_id: str) -> runcue.WorkState:
    """The state of a work the cue still knows."""
    work = await cue.get(work_id)
    assert work is not None, work_id
    return work.state


async def wait_thread_event(event: threading.Event, timeout: float = 5.0) -> None:
    """Wait for a threading.Event without blocking the loop; fail if it never comes."""
    assert await anyio.to_thread.run_sync(event.wait, timeout), "the thread never got there"


async def assert_slots_returned(cue: runcue.Cue) -> None:
    """Once every handler thread returned, the closed cue lends no token (bounded wait)."""
    with anyio.move_on_after(2):
        while any(
            s.limiter is not None and s.limiter.borrowed_tokens for s in cue._services.values()
        ):
            await anyio.sleep(0.01)
    assert_consistent(cue)


# ---------------------------------------------------------------------- BaseException


def _base_exception_run(
    backend: str, make_error: Callable[[], BaseException], sync_handler: bool
) -> tuple[dict[str, Any], BaseException | None]:
    """Run a cue in a fresh event loop whose 'bad' handler raises ``make_error()``.

    Returns what the code around ``async with`` saw, and what escaped ``anyio.run`` (asyncio
    lets KeyboardInterrupt and SystemExit out of the loop as well, by its own design).
    """
    seen: dict[str, Any] = {}

    async def main() -> None:
        cue = runcue.Cue(seed=1)
        cue.service("s", concurrent=2)
        hanging = anyio.Event()
        error = make_error()
        seen["error"] = error

        @cue.task("hang", uses="s")
        async def hang(work: runcue.WorkUnit) -> None:
            hanging.set()
            await anyio.sleep_forever()

        if sync_handler:

            @cue.task("bad", uses="s")
            def bad_sync(work: runcue.WorkUnit) -> None:
                raise error

        else:

            @cue.task("bad", uses="s")
            async def bad(work: runcue.WorkUnit) -> None:
                await hanging.wait()
                raise error

        @cue.task("later", uses="s")
        async def later(work: runcue.WorkUnit) -> None:
            raise AssertionError("must never start")

        seen["cue"] = cue
        with anyio.fail_after(10):
            try:
                async with cue:
                    seen["hang"] = await cue.submit("hang")
                    await hanging.wait()
                    seen["bad"] = await cue.submit("bad")
                    seen["later"] = await cue.submit("later")  # the service is full
                    await anyio.sleep_forever()
            except BaseException as exc:
                seen["caught"] = exc
                raise

    escaped: BaseException | None = None
    try:
        anyio.run(main, backend=backend)
    except BaseException as exc:
        escaped = exc
    return seen, escaped


ERRORS: dict[str, Callable[[], BaseException]] = {
    "BaseException": lambda: Halt("halt"),
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
}


def _base_exception_summary(backend: str, kind: str, sync_handler: bool) -> dict[str, Any]:
    """Run the scenario and describe the outcome in plain data (it may run in a subprocess)."""
    seen, escaped = _base_exception_run(backend, ERRORS[kind], sync_handler)
    error = seen["error"]
    cue: runcue.Cue = seen["cue"]
    finished = {work.id: work for work in cue._engine.finished.values()}
    stats = cue.stats()
    return {
        "caught": "same" if seen.get("caught") is error else repr(seen.get("caught")),
        "escaped": "none" if escaped is None else "same" if escaped is error else repr(escaped),
        "bad": [finished[seen["bad"]].state.value, finished[seen["bad"]].exception is error],
        "others": [
            [finished[seen[name]].state.value, type(finished[seen[name]].exception).__name__]
            for name in ("hang", "later")
        ],
        "ledger": [
            stats.submitted,
            stats.pending,
            stats.running,
            stats.completed,
            stats.failed,
            stats.skipped,
            stats.cancelled,
        ],
        "borrowed": sum(
            s.limiter.borrowed_tokens for s in cue._services.values() if s.limiter is not None
        ),
        "stopped": "stopped" in repr(cue),
    }


def _base_exception_in_a_subprocess(backend: str, kind: str, sync_handler: bool) -> Any:
    """The scenario in a fresh interpreter: a KeyboardInterrupt or SystemExit that got out
    of the loop (asyncio's rule for its tasks) must not end pytest, nor the loop's idle
    worker threads keep it alive."""
    call = f"_base_exception_summary({backend!r}, {kind!r}, {sync_handler!r})"
    return _summary_in_a_subprocess(call)


def _summary_in_a_subprocess(call: str) -> Any:
    """``test_faults.<call>`` in a fresh interpreter: the JSON it returns."""
    script = "\n".join(
        [
            "import json, os, sys",
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})",
            "import test_faults",
            f"summary = test_faults.{call}",
            "print('SUMMARY ' + json.dumps(summary), flush=True)",
            "os._exit(0)",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert lines, f"the scenario did not report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("SUMMARY "))


@pytest.mark.parametrize("sync_handler", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("kind", list(ERRORS))
def test_a_base_exception_from_a_handler_stops_the_cue_and_reaches_the_caller(
    anyio_backend: str, kind: str, sync_handler: bool
) -> None:
    """A handler raising a BaseException stops the cue; `async with` raises that object."""
    if kind == "BaseException":
        summary = _base_exception_summary(anyio_backend, kind, sync_handler)
    else:
        summary = _base_exception_in_a_subprocess(anyio_backend, kind, sync_handler)
    assert summary["caught"] == "same", summary
    # Re-raised by the code around it, and only by it: the runner holds KeyboardInterrupt
    # and SystemExit back from asyncio, which would let them out of the loop itself.
    assert summary["escaped"] == "same", summary
    assert summary["bad"] == ["failed", True], summary
    assert summary["others"] == [["cancelled", "WorkCancelled"]] * 2, summary
    assert summary["ledger"] == [3, 0, 0, 0, 1, 0, 2], summary
    assert summary["borrowed"] == 0, summary
    assert summary["stopped"], summary


async def test_a_base_exception_reaches_stop_when_started_in_the_background(
    make_cue: CueFactory,
) -> None:
    """With start()/stop(), a handler's BaseException stops the cue and stop() raises it."""
    cue = make_cue()
    error = Halt("from the handler")

    @cue.task("bad")
    async def bad(work: runcue.WorkUnit) -> None:
        raise error

    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("bad")
        with pytest.raises(Halt) as info:
            await cue.stop()
    assert info.value is error
    assert await state_of(cue, work_id) is runcue.WorkState.FAILED
    assert_consistent(cue)


def _stopped_by_itself_summary(backend: str, kind: str) -> dict[str, Any]:
    """start(); a handler raises ``kind``; the cue stops by itself; then stop() is called."""
    seen: dict[str, Any] = {}

    async def main() -> None:
        cue = runcue.Cue(seed=1)
        error = ERRORS[kind]()
        ran = anyio.Event()

        @cue.task("bad")
        async def bad(work: runcue.WorkUnit) -> None:
            ran.set()
            raise error

        with anyio.fail_after(10):
            cue.start()
            await cue.submit("bad")
            await ran.wait()
            while "stopped" not in repr(cue):
                await anyio.sleep(0.01)
            try:
                await cue.stop()
                seen["stop"] = "returned"
            except BaseException as exc:
                seen["stop"] = "same" if exc is error else repr(exc)

    try:
        anyio.run(main, backend=backend)
        seen["escaped"] = "none"
    except BaseException as exc:
        seen["escaped"] = repr(exc)
    return seen


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit"])
def test_stop_raises_what_stopped_a_background_cue_by_itself(anyio_backend: str, kind: str) -> None:
    """With start(), a handler's KeyboardInterrupt or SystemExit stops the cue at once; a
    stop() called after that raises it (it was lost on trio), and nothing leaves the loop
    past the caller (asyncio let it out of the loop itself)."""
    summary = _summary_in_a_subprocess(f"_stopped_by_itself_summary({anyio_backend!r}, {kind!r})")
    assert summary == {"stop": "same", "escaped": "none"}


async def test_a_base_exception_reaches_the_callers_task_group(make_cue: CueFactory) -> None:
    """Under the caller's task group (tg.start(cue.run)), the BaseException leaves the group."""
    cue = make_cue()
    error = Halt("from the handler")

    @cue.task("bad")
    async def bad(work: runcue.WorkUnit) -> None:
        raise error

    caught: list[BaseException] = []
    with anyio.fail_after(10):
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(cue.run)
                await cue.submit("bad")
                await anyio.sleep_forever()
        except BaseException as exc:
            caught.append(exc)
    assert len(caught) == 1
    found = caught[0]
    if isinstance(found, BaseExceptionGroup):
        assert found.exceptions == (error,), found.exceptions
    else:
        assert found is error
    assert_consistent(cue)


def crashing_cue(make_cue: CueFactory, error: BaseException) -> tuple[runcue.Cue, anyio.Event]:
    """A cue whose only task raises ``error``; the event is set just before it does."""
    cue = make_cue()
    raising = anyio.Event()

    @cue.task("bad")
    async def bad(work: runcue.WorkUnit) -> None:
        raising.set()
        raise error

    return cue, raising


async def test_stop_racing_a_crash_raises_the_crash_not_a_stream_error(
    make_cue: CueFactory,
) -> None:
    """stop() racing a handler's BaseException raises that exception, never a stream error."""
    # The race (stop() after the scheduler's stream closed, before the cue marked itself
    # stopping) depends on task order: run it many times, stopping at once or a bit later.
    for attempt in range(60):
        error = Halt(f"crash {attempt}")
        cue, raising = crashing_cue(make_cue, error)
        with anyio.fail_after(10):
            cue.start()
            await cue.submit("bad")
            if attempt % 2:
                await raising.wait()
            caught: BaseException | None = None
            try:
                await cue.stop()
            except BaseException as exc:
                caught = exc
        assert caught is error, f"attempt {attempt}: stop() raised {caught!r}"
        assert_consistent(cue)


# ---------------------------------------------------------------------- outside cancellation


async def test_cancelling_a_scope_around_async_with_cancels_everything_cleanly(
    make_cue: CueFactory,
) -> None:
    """A cancelled outer scope cancels running async and sync work and pending work."""
    cue = make_cue()
    cue.service("s", concurrent=2)
    async_running = anyio.Event()
    thread_entered = threading.Event()
    thread_release = threading.Event()
    thread_returned = threading.Event()
    cancelled: list[str] = []

    @cue.task("async_hang", uses="s")
    async def async_hang(work: runcue.WorkUnit) -> None:
        async_running.set()
        await anyio.sleep_forever()

    @cue.task("sync_hang", uses="s")
    def sync_hang(work: runcue.WorkUnit) -> None:
        thread_entered.set()
        try:
            thread_release.wait(10)
        finally:
            thread_returned.set()

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        cancelled.append(work.id)

    ids: list[str] = []
    try:
        with anyio.fail_after(10):
            with anyio.CancelScope() as scope:
                async with cue:
                    ids.append(await cue.submit("async_hang"))
                    ids.append(await cue.submit("sync_hang"))
                    ids.append(await cue.submit("async_hang", {"queued": True}))
                    await async_running.wait()
                    await wait_thread_event(thread_entered)
                    scope.cancel()
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
        assert not thread_returned.is_set()  # the sync handler's thread was left behind
        for work_id in ids:
            assert await state_of(cue, work_id) is runcue.WorkState.CANCELLED
        assert sorted(cancelled) == sorted(ids)
        stats = cue.stats()
        assert (stats.pending, stats.running, stats.cancelled) == (0, 0, 3)
    finally:
        thread_release.set()
        await wait_thread_event(thread_returned)
    await assert_slots_returned(cue)


async def test_a_deadline_around_async_with_raises_timeout_and_cancels_work(
    make_cue: CueFactory,
) -> None:
    """fail_after() around `async with` raises TimeoutError to the caller; work ends cancelled."""
    cue = make_cue()
    running = anyio.Event()

    @cue.task("hang")
    async def hang(work: runcue.WorkUnit) -> None:
        running.set()
        await anyio.sleep_forever()

    ids: list[str] = []

    async def body() -> None:
        async with cue:
            ids.append(await cue.submit("hang"))
            await running.wait()

    with anyio.fail_after(10):
        with pytest.raises(TimeoutError), anyio.fail_after(0.2):
            await body()
        assert await state_of(cue, ids[0]) is runcue.WorkState.CANCELLED
    assert_consistent(cue)


# ---------------------------------------------------------------------- hung handlers


@pytest.mark.parametrize("how", ["start-stop", "task-group"])
async def test_stop_with_timeout_cancels_a_hung_async_handler(
    make_cue: CueFactory, how: str
) -> None:
    """stop(timeout=) returns after cancelling a handler that never returns."""
    cue = make_cue()
    cue.service("s", concurrent=1)
    running = anyio.Event()
    handler_cancelled = anyio.Event()
    cancelled: list[str] = []

    @cue.task("hang", uses="s")
    async def hang(work: runcue.WorkUnit) -> None:
        running.set()
        try:
            await anyio.sleep_forever()
        finally:
            handler_cancelled.set()

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        cancelled.append(work.id)

    async def scenario() -> tuple[str, str]:
        hung = await cue.submit("hang")
        queued = await cue.submit("hang", {"second": True})
        await running.wait()
        with anyio.fail_after(5):
            await cue.stop(timeout=0.05)
        return hung, queued

    with anyio.fail_after(10):
        if how == "start-stop":
            cue.start()
            hung, queued = await scenario()
        else:
            async with anyio.create_task_group() as tg:
                await tg.start(cue.run)
                hung, queued = await scenario()
    assert handler_cancelled.is_set()
    assert sorted(cancelled) == sorted([hung, queued])
    for work_id in (hung, queued):
        assert await state_of(cue, work_id) is runcue.WorkState.CANCELLED
        with pytest.raises(runcue.WorkCancelled):
            await cue.wait(work_id)
    assert_consistent(cue)


async def test_stop_with_timeout_abandons_a_hung_sync_handler(make_cue: CueFactory) -> None:
    """stop(timeout=) returns while a sync handler's thread still blocks; the work is cancelled."""
    cue = make_cue()
    cue.service("s", concurrent=1)
    entered = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    @cue.task("stuck", uses="s")
    def stuck(work: runcue.WorkUnit) -> str:
        entered.set()
        try:
            release.wait(10)
            return "late"
        finally:
            returned.set()

    try:
        with anyio.fail_after(10):
            cue.start()
            work_id = await cue.submit("stuck")
            await wait_thread_event(entered)
            with anyio.fail_after(5):
                await cue.stop(timeout=0.05)
            assert not returned.is_set()
            assert await state_of(cue, work_id) is runcue.WorkState.CANCELLED
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(work_id)
            assert_consistent(cue)
    finally:
        release.set()
        await wait_thread_event(returned)
    work = await cue.get(work_id)
    assert work is not None
    assert work.state is runcue.WorkState.CANCELLED  # the late result is dropped
    assert work.result is None
    assert_consistent(cue)


# ---------------------------------------------------------------------- callbacks and checks

CALLBACKS = ["on_start", "on_complete", "on_failure", "on_skip", "on_retry", "on_cancel"]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("slot", CALLBACKS)
async def test_a_raising_callback_is_logged_and_the_cue_goes_on(
    make_cue: CueFactory, caplog: pytest.LogCaptureFixture, slot: str, is_async: bool
) -> None:
    """Every event callback that raises is logged as an error naming it; all work still ends."""
    cue = make_cue()
    calls: list[str] = []

    def sync_callback(*args: Any) -> None:
        calls.append(slot)
        raise RuntimeError(f"{slot} is broken")

    async def async_callback(*args: Any) -> None:
        await anyio.sleep(0)
        sync_callback(*args)

    getattr(cue, slot)(async_callback if is_async else sync_callback)

    @cue.task("t", retry=2, backoff=0.0)
    async def handler(work: runcue.WorkUnit) -> str:
        kind = work.params["kind"]
        if kind == "fail" or (kind == "flaky" and work.attempt == 1):
            raise ValueError(kind)
        if kind == "hang":
            await anyio.sleep_forever()
        return str(kind)

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["kind"] != "skip")

    ids: dict[str, str] = {}
    with caplog.at_level(logging.ERROR, logger="runcue"), anyio.fail_after(10):
        async with cue:
            for kind in ("ok", "fail", "flaky", "skip", "hang"):
                ids[kind] = await cue.submit("t", {"kind": kind})
            assert await cue.wait(ids["ok"]) == "ok"
            assert await cue.wait(ids["flaky"]) == "flaky"
            with pytest.raises(ValueError, match="fail"):
                await cue.wait(ids["fail"])
            assert await cue.wait(ids["skip"]) is None
            assert await cue.cancel(ids["hang"]) is True
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(ids["hang"])
    assert calls, f"{slot} was never called"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors, "the broken callback was not logged"
    assert all(slot in r.getMessage() for r in errors)
    assert any(r.exc_info and f"{slot} is broken" in str(r.exc_info[1]) for r in errors)
    stats = cue.stats()
    assert (stats.completed, stats.failed, stats.skipped, stats.cancelled) == (2, 1, 1, 1)
    assert_consistent(cue)


@pytest.mark.parametrize("slot", ["on_start", "on_complete", "on_failure", "on_cancel"])
async def test_a_hanging_async_callback_is_cut_off_by_check_timeout(
    make_cue: CueFactory, caplog: pytest.LogCaptureFixture, slot: str
) -> None:
    """An async callback that never returns is cancelled after check_timeout and logged."""
    cue = make_cue(check_timeout=0.1)
    entered = anyio.Event()

    async def hanging(*args: Any) -> None:
        entered.set()
        await anyio.sleep_forever()

    getattr(cue, slot)(hanging)
    running = anyio.Event()

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        if work.params["kind"] == "fail":
            raise ValueError("fail")
        if work.params["kind"] == "hang":
            running.set()
            await anyio.sleep_forever()
        return "ok"

    with caplog.at_level(logging.ERROR, logger="runcue"), anyio.fail_after(10):
        async with cue:
            ok = await cue.submit("t", {"kind": "ok"})
            failing = await cue.submit("t", {"kind": "fail"})
            hung = await cue.submit("t", {"kind": "hang"})
            await running.wait()
            await cue.cancel(hung)
            assert await cue.wait(ok) == "ok"
            with pytest.raises(ValueError, match="fail"):
                await cue.wait(failing)
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(hung)
    assert entered.is_set()
    assert any(
        slot in r.getMessage() and "did not return" in r.getMessage() for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert_consistent(cue)


async def test_a_raising_listener_and_priority_callback_are_logged_and_kept(
    make_cue: CueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising subscriber and priority callback are logged; work runs; it stays subscribed."""
    cue = make_cue()
    heard: list[str] = []

    def listener(event: runcue.WorkEvent) -> None:
        heard.append(event.kind)
        raise RuntimeError("listener is broken")

    @cue.priority
    def priority(ctx: runcue.PriorityContext) -> float:
        raise RuntimeError("priority is broken")

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return int(work.params["n"])

    cue.subscribe(listener)
    with caplog.at_level(logging.ERROR, logger="runcue"), anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("t", {"n": n}) for n in range(3)]
            assert [await cue.wait(work_id) for work_id in ids] == [0, 1, 2]
    assert heard.count("completed") == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("listener" in m for m in messages), messages
    assert any("priority" in m for m in messages), messages
    assert_consistent(cue)


@pytest.mark.parametrize("check", ["is_ready", "is_stale"])
@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
async def test_a_raising_check_keeps_work_pending_until_it_is_fixed(
    make_cue: CueFactory, caplog: pytest.LogCaptureFixture, check: str, is_async: bool
) -> None:
    """A check that raises parks the work as check_error (logged); fixed and poked, it runs."""
    cue = make_cue(recheck_interval=30.0)
    broken = [True]
    parked = anyio.Event()

    def answer(work: runcue.WorkUnit) -> bool:
        if broken[0]:
            raise OSError(f"{check} cannot read the disk")
        return True

    async def answer_async(work: runcue.WorkUnit) -> bool:
        await anyio.sleep(0)
        return answer(work)

    getattr(cue, check)(answer_async if is_async else answer)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        return "ran"

    def listener(event: runcue.WorkEvent) -> None:
        if event.kind == "waiting" and "check_error" in event.details:
            parked.set()

    cue.subscribe(listener)
    with caplog.at_level(logging.WARNING, logger="runcue"), anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("t")
            await parked.wait()
            (blocked,) = cue.debug_blocked()
            assert blocked["reason"] == "check_error"
            assert "cannot read the disk" in blocked["details"]
            assert_consistent(cue, closed=False)
            broken[0] = False
            cue.poke()
            assert await cue.wait(work_id) == "ran"
    assert any(check in r.getMessage() and "raised" in r.getMessage() for r in caplog.records)
    assert_consistent(cue)


@pytest.mark.parametrize("mode", ["async", "sync-in-thread"])
async def test_a_hanging_check_is_cut_off_by_check_timeout(make_cue: CueFactory, mode: str) -> None:
    """A check that never answers becomes a check_error after check_timeout; the cue goes on."""
    cue = make_cue(check_timeout=0.1, checks="thread", recheck_interval=30.0)
    hang = [True]
    gate = threading.Event()
    parked = anyio.Event()

    async def ready_async(work: runcue.WorkUnit) -> bool:
        if hang[0] and work.params["n"] == 0:
            await anyio.sleep_forever()
        return True

    def ready_sync(work: runcue.WorkUnit) -> bool:
        if hang[0] and work.params["n"] == 0:
            gate.wait(10)
        return True

    cue.is_ready(ready_async if mode == "async" else ready_sync)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        return int(work.params["n"])

    def listener(event: runcue.WorkEvent) -> None:
        if event.kind == "waiting" and "check_error" in event.details:
            parked.set()

    cue.subscribe(listener)
    try:
        with anyio.fail_after(10):
            async with cue:
                stuck = await cue.submit("t", {"n": 0})
                await parked.wait()
                (blocked,) = cue.debug_blocked()
                assert blocked["reason"] == "check_error"
                assert "check_timeout" in blocked["details"]
                other = await cue.submit("t", {"n": 1})
                answered: list[int] = []
                with anyio.move_on_after(3):
                    answered.append(await cue.wait(other))
                assert answered == [1], "one hung check held up the checks of other work"
                hang[0] = False
                gate.set()
                cue.poke()
                assert await cue.wait(stuck) == 0
    finally:
        gate.set()
    assert_consistent(cue)


# ---------------------------------------------------------------------- the body raising


async def test_the_body_raising_while_work_runs_cancels_all_and_comes_out_as_itself(
    make_cue: CueFactory,
) -> None:
    """An error in the body comes out as itself; running, pending, retrying work end cancelled."""
    cue = make_cue()
    cue.service("s", concurrent=2)
    async_running = anyio.Event()
    retry_waiting = anyio.Event()
    thread_entered = threading.Event()
    thread_release = threading.Event()
    thread_returned = threading.Event()

    @cue.task("async_hang", uses="s")
    async def async_hang(work: runcue.WorkUnit) -> None:
        async_running.set()
        await anyio.sleep_forever()

    @cue.task("sync_hang", uses="s")
    def sync_hang(work: runcue.WorkUnit) -> None:
        thread_entered.set()
        try:
            thread_release.wait(10)
        finally:
            thread_returned.set()

    @cue.task("retrying", retry=3, backoff=runcue.Backoff(base=60.0, jitter=False))
    async def retrying(work: runcue.WorkUnit) -> None:
        raise ConnectionError("try later")

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retry_waiting.set()

    error = LookupError("the body failed")
    ids: list[str] = []

    async def body() -> None:
        async with cue:
            ids.append(await cue.submit("async_hang"))
            ids.append(await cue.submit("sync_hang"))
            ids.append(await cue.submit("async_hang", {"queued": True}))
            ids.append(await cue.submit("retrying"))
            await async_running.wait()
            await retry_waiting.wait()
            await wait_thread_event(thread_entered)
            raise error

    try:
        with anyio.fail_after(10):
            with pytest.raises(LookupError) as info:
                await body()
            assert info.value is error
            for work_id in ids:
                assert await state_of(cue, work_id) is runcue.WorkState.CANCELLED, work_id
            stats = cue.stats()
            assert (stats.pending, stats.running, stats.cancelled) == (0, 0, 4)
    finally:
        thread_release.set()
        await wait_thread_event(thread_returned)
    await assert_slots_returned(cue)


# ---------------------------------------------------------------------- threads


async def test_submit_threadsafe_from_many_plain_threads(make_cue: CueFactory) -> None:
    """Plain threads submit concurrently with submit_threadsafe(); every work runs once."""
    cue = make_cue()
    cue.service("s", concurrent=4)
    ran: list[tuple[int, int]] = []

    @cue.task("t", uses="s")
    async def handler(work: runcue.WorkUnit) -> int:
        ran.append((work.params["thread"], work.params["n"]))
        await anyio.sleep(0)
        return int(work.params["n"])

    submitted: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def submitter(thread: int) -> None:
        try:
            submitted[thread] = [
                cue.submit_threadsafe("t", {"thread": thread, "n": n}) for n in range(25)
            ]
        except BaseException as exc:
            errors.append(exc)

    with anyio.fail_after(20):
        async with cue:
            threads = [threading.Thread(target=submitter, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                await anyio.to_thread.run_sync(thread.join, 10)
            assert not errors, errors
            all_ids = [work_id for ids in submitted.values() for work_id in ids]
            assert len(set(all_ids)) == 100
            await cue.join()
            for number, ids in submitted.items():
                assert [await cue.wait(work_id) for work_id in ids] == list(range(25)), number
    assert sorted(ran) == sorted((t, n) for t in range(4) for n in range(25))
    assert cue.stats().completed == 100
    assert_consistent(cue)


async def test_sync_handlers_submit_and_cancel_from_their_threads(make_cue: CueFactory) -> None:
    """A sync handler submits with submit_threadsafe() and cancels through anyio.from_thread."""
    cue = make_cue()
    cue.service("children", concurrent=1)
    child_running = anyio.Event()

    @cue.task("child", uses="children")
    async def child(work: runcue.WorkUnit) -> str:
        if work.params.get("hang"):
            child_running.set()
            await anyio.sleep_forever()
        return f"child {work.params['n']}"

    @cue.task("parent")
    def parent(work: runcue.WorkUnit) -> list[str]:
        ids = [cue.submit_threadsafe("child", {"n": n}) for n in range(3)]
        if work.params.get("cancel"):
            victim = cue.submit_threadsafe("child", {"n": 99, "hang": True})
            anyio.from_thread.run(child_running.wait)
            assert anyio.from_thread.run(cue.cancel, victim) is True
            ids.append(victim)
        return ids

    with anyio.fail_after(10):
        async with cue:
            plain = await cue.wait(await cue.submit("parent"))
            cancelling = await cue.wait(await cue.submit("parent", {"cancel": True}))
            await cue.join()
            assert [await cue.wait(work_id) for work_id in plain] == [
                "child 0",
                "child 1",
                "child 2",
            ]
            victim = cancelling[-1]
            assert await state_of(cue, victim) is runcue.WorkState.CANCELLED
    assert cue.stats().cancelled == 1
    assert_consistent(cue)


async def test_cancel_from_a_plain_thread_through_the_loop_token(make_cue: CueFactory) -> None:
    """A plain thread cancels running work with anyio.from_thread.run(..., token=)."""
    cue = make_cue()
    running = anyio.Event()

    @cue.task("hang")
    async def hang(work: runcue.WorkUnit) -> None:
        running.set()
        await anyio.sleep_forever()

    outcome: list[object] = []

    def canceller(token: anyio.lowlevel.EventLoopToken, work_id: str) -> None:
        try:
            outcome.append(anyio.from_thread.run(cue.cancel, work_id, token=token))
        except BaseException as exc:
            outcome.append(exc)

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("hang")
            await running.wait()
            thread = threading.Thread(
                target=canceller, args=(anyio.lowlevel.current_token(), work_id)
            )
            thread.start()
            await anyio.to_thread.run_sync(thread.join, 5)
            assert outcome == [True]
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(work_id)
    assert_consistent(cue)


def test_submit_threadsafe_from_the_event_loop_thread_raises_instead_of_hanging(
    anyio_backend: str,
) -> None:
    """submit_threadsafe() on the loop's own thread raises a clear error; it must not deadlock."""
    seen: list[BaseException | str] = []

    async def main() -> None:
        cue = runcue.Cue(seed=1)

        @cue.task("t")
        async def handler(work: runcue.WorkUnit) -> None:
            return None

        async with cue:
            try:
                seen.append(cue.submit_threadsafe("t"))
            except Exception as exc:
                seen.append(exc)

    # A deadlock would freeze this loop for good, so it runs in a thread of its own.
    runner = threading.Thread(
        target=anyio.run, args=(main,), kwargs={"backend": anyio_backend}, daemon=True
    )
    runner.start()
    runner.join(5)
    assert not runner.is_alive(), "submit_threadsafe() on the loop thread deadlocked the loop"
    (result,) = seen
    assert isinstance(result, RuntimeError), result
    assert "await cue.submit" in str(result) or "thread" in str(result)


# ---------------------------------------------------------------------- inside async handlers


async def test_async_handlers_submit_wait_and_cancel_other_work(make_cue: CueFactory) -> None:
    """An async handler submits and waits for children, and cancels a pending sibling."""
    cue = make_cue()
    cue.service("parents", concurrent=1)
    cue.service("children", concurrent=2)

    @cue.task("child", uses="children")
    async def child(work: runcue.WorkUnit) -> int:
        return int(work.params["n"]) * 10

    @cue.task("blocked", uses="parents")
    async def blocked(work: runcue.WorkUnit) -> None:
        raise AssertionError("cancelled before it could start")

    sibling_queued = anyio.Event()
    siblings: list[str] = []

    @cue.task("parent", uses="parents")
    async def parent(work: runcue.WorkUnit) -> list[int]:
        await sibling_queued.wait()
        assert await cue.cancel(siblings[0]) is True  # pending behind this parent
        ids = [await cue.submit("child", {"n": n}) for n in range(4)]
        return [await cue.wait(child_id) for child_id in ids]

    with anyio.fail_after(10):
        async with cue:
            parent_id = await cue.submit("parent")
            sibling = await cue.submit("blocked")
            siblings.append(sibling)
            sibling_queued.set()
            assert await cue.wait(parent_id) == [0, 10, 20, 30]
            assert await state_of(cue, sibling) is runcue.WorkState.CANCELLED
    stats = cue.stats()
    assert (stats.completed, stats.cancelled) == (5, 1)
    assert_consistent(cue)


async def test_an_async_handler_that_cancels_itself_ends_cancelled(make_cue: CueFactory) -> None:
    """cue.cancel(work.id) from inside the handler cancels it at its next await."""
    cue = make_cue()
    cue.service("s", concurrent=1)
    reached_after: list[bool] = []

    @cue.task("self_cancel", uses="s")
    async def self_cancel(work: runcue.WorkUnit) -> str:
        assert await cue.cancel(work.id) is True
        await anyio.sleep(0)
        reached_after.append(True)
        return "not cancelled"

    @cue.task("next", uses="s")
    async def after(work: runcue.WorkUnit) -> str:
        return "next ran"

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("self_cancel")
            following = await cue.submit("next")
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(work_id)
            assert await cue.wait(following) == "next ran"
    assert reached_after == []
    assert_consistent(cue)
