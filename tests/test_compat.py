"""Code written against the seed's runcue 0.2 API keeps working unchanged."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import runcue
from runcue.models import PriorityContext, WorkState, WorkUnit

pytestmark = pytest.mark.anyio


def reads_as(state: WorkState, text: str) -> bool:
    """0.2 code compared states with plain strings (`work.state == "completed"`)."""
    return state == text


def test_models_module_exports_the_public_types() -> None:
    """`from runcue.models import WorkState, WorkUnit, PriorityContext` gives the public types."""
    assert WorkState is runcue.WorkState
    assert WorkUnit is runcue.WorkUnit
    assert PriorityContext is runcue.PriorityContext


def test_work_states_have_the_seed_values() -> None:
    """WorkState values are the strings 0.2 used, and compare equal to them."""
    assert [state.value for state in WorkState] == [
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
    ]
    assert WorkState("completed") is WorkState.COMPLETED
    assert reads_as(WorkState.FAILED, "failed")
    assert str(WorkState.CANCELLED) == "cancelled"
    assert [state.finished for state in WorkState] == [False, False, True, True, True]


def test_get_task_returns_the_registration_or_none() -> None:
    """cue.get_task(name) gives the task's name, handler and service; None when unknown."""
    cue = runcue.Cue()
    cue.service("openai", rate="60/min", concurrent=5)

    @cue.task("extract_text", uses="openai")
    def extract_text(work: WorkUnit) -> dict[str, str]:
        return {}

    spec = cue.get_task("extract_text")
    assert spec is not None
    assert spec.name == "extract_text"
    assert spec.handler is extract_text
    assert spec.service == "openai"
    assert cue.get_task("missing") is None


async def test_work_fields_through_a_successful_run() -> None:
    """A work unit reads pending, then running in its handler, then completed with its result."""
    cue = runcue.Cue(seed=1)
    cue.service("serial", concurrent=1)
    release = anyio.Event()
    started = anyio.Event()
    seen_in_handler: list[tuple[WorkState, int, float | None]] = []

    @cue.task("extract", uses="serial")
    async def extract(work: WorkUnit) -> dict[str, Any]:
        seen_in_handler.append((work.state, work.attempt, work.started_at))
        started.set()
        await release.wait()
        return {"text": work.params["page"].upper()}

    before = time.time()
    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("extract", params={"page": "one"})
            second = await cue.submit("extract", params={"page": "two"})
            await started.wait()
            waiting = await cue.get(second)
            assert waiting is not None
            assert waiting.state is WorkState.PENDING
            assert reads_as(waiting.state, "pending")
            assert waiting.started_at is None
            assert waiting.completed_at is None
            assert waiting.result is None
            assert waiting.error is None
            running = await cue.get(first)
            assert running is not None
            assert reads_as(running.state, "running")
            release.set()
            assert await cue.wait(first) == {"text": "ONE"}
    after = time.time()
    work = await cue.get(first)
    assert work is not None
    assert work.id == first
    assert work.task == "extract"
    assert work.params == {"page": "one"}
    assert work.state is WorkState.COMPLETED
    assert reads_as(work.state, "completed")
    assert work.result == {"text": "ONE"}
    assert work.error is None
    assert work.attempt == 1
    assert not work.skipped
    assert work.started_at is not None
    assert work.completed_at is not None
    assert before <= work.created_at <= work.started_at <= work.completed_at <= after
    assert seen_in_handler[0][:2] == (WorkState.RUNNING, 1)
    assert seen_in_handler[0][2] == work.started_at


async def test_failed_work_keeps_the_error_message_and_wait_reraises_the_same_object() -> None:
    """A failure reads FAILED with .error the message; wait() raises the handler's own exception."""
    cue = runcue.Cue(seed=1)
    raised: list[BaseException] = []
    reported: list[BaseException] = []

    @cue.task("charge")
    def charge(work: WorkUnit) -> None:
        error = ValueError(f"card declined for order {work.params['order_id']}")
        raised.append(error)
        raise error

    @cue.on_failure
    def on_failure(work: WorkUnit, error: BaseException) -> None:
        reported.append(error)

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("charge", params={"order_id": 7})
            with pytest.raises(ValueError, match="card declined") as info:
                await cue.wait(work_id)
    assert info.value is raised[0]
    assert reported == raised
    work = await cue.get(work_id)
    assert work is not None
    assert work.state is WorkState.FAILED
    assert reads_as(work.state, "failed")
    assert work.error == "card declined for order 7"
    assert work.result is None
    assert work.completed_at is not None


async def test_attempt_counts_up_across_retries() -> None:
    """work.attempt is 1 on the first call and grows by one on each retry."""
    cue = runcue.Cue(seed=1)
    attempts: list[int] = []

    @cue.task("flaky", retry=3, backoff=runcue.Backoff(base=0.0, jitter=False))
    async def flaky(work: WorkUnit) -> int:
        attempts.append(work.attempt)
        if work.attempt < 3:
            raise ConnectionError("try again")
        return work.attempt

    with anyio.fail_after(10):
        async with cue:
            assert await cue.wait(await cue.submit("flaky")) == 3
    assert attempts == [1, 2, 3]


async def test_skipped_work_reads_completed_with_skipped_set() -> None:
    """When is_stale is False the handler is not called; the work is COMPLETED and skipped."""
    cue = runcue.Cue(seed=1)
    called: list[str] = []
    skipped: list[str] = []

    @cue.task("extract")
    def extract(work: WorkUnit) -> str:
        called.append(work.params["page"])
        return "ran"

    @cue.is_stale
    def is_stale(work: WorkUnit) -> bool:
        return bool(work.params["page"] != "done")

    @cue.on_skip
    def on_skip(work: WorkUnit) -> None:
        skipped.append(work.id)

    with anyio.fail_after(10):
        async with cue:
            done = await cue.submit("extract", params={"page": "done"})
            fresh = await cue.submit("extract", params={"page": "new"})
            assert await cue.wait(done) is None
            assert await cue.wait(fresh) == "ran"
    assert called == ["new"]
    assert skipped == [done]
    work = await cue.get(done)
    assert work is not None
    assert work.state is WorkState.COMPLETED
    assert work.skipped
    assert work.result is None
    assert work.started_at is None
    other = await cue.get(fresh)
    assert other is not None
    assert not other.skipped
    assert cue.stats().skipped == 1


async def test_get_returns_none_for_an_unknown_id() -> None:
    """await cue.get(id) is None for an id the cue never issued."""
    cue = runcue.Cue(seed=1)
    with anyio.fail_after(5):
        async with cue:
            assert await cue.get("no-such-id") is None
    assert await cue.get("no-such-id") is None


async def test_wait_for_an_unknown_id_raises_work_not_found() -> None:
    """await cue.wait(id) of an unknown id raises WorkNotFound, a KeyError."""
    cue = runcue.Cue(seed=1)
    with anyio.fail_after(5):
        async with cue:
            with pytest.raises(runcue.WorkNotFound, match="no-such-id") as info:
                await cue.wait("no-such-id")
    assert isinstance(info.value, KeyError)


async def test_list_filters_by_state_and_task_and_limits() -> None:
    """await cue.list(state=, task=, limit=) filters known work, oldest first."""
    cue = runcue.Cue(seed=1)
    cue.service("serial", concurrent=1)
    release = anyio.Event()

    @cue.task("a")
    async def a(work: WorkUnit) -> int:
        return int(work.params["n"])

    @cue.task("b")
    async def b(work: WorkUnit) -> None:
        raise RuntimeError("b fails")

    @cue.task("held", uses="serial")
    async def held(work: WorkUnit) -> None:
        await release.wait()

    with anyio.fail_after(10):
        async with cue:
            a_ids = [await cue.submit("a", {"n": n}) for n in range(4)]
            b_ids = [await cue.submit("b", {"n": n}) for n in range(2)]
            for work_id in a_ids:
                await cue.wait(work_id)
            for work_id in b_ids:
                with pytest.raises(RuntimeError):
                    await cue.wait(work_id)
            held_ids = [await cue.submit("held", {"n": n}) for n in range(3)]
            await anyio.wait_all_tasks_blocked()

            # Finished work is listed in the order it finished (any order, run together).
            completed = await cue.list(state=WorkState.COMPLETED)
            assert sorted(w.id for w in completed) == sorted(a_ids)
            first_two = [w.id for w in await cue.list(state="completed", limit=2)]
            assert first_two == [w.id for w in completed[:2]]
            assert sorted(w.id for w in await cue.list(state="failed")) == sorted(b_ids)
            assert sorted(w.id for w in await cue.list(task="b")) == sorted(b_ids)
            assert [w.id for w in await cue.list(state="running")] == held_ids[:1]
            assert [w.id for w in await cue.list(state=WorkState.PENDING)] == held_ids[1:]
            assert await cue.list(task="a", state="failed") == []
            everything = await cue.list(limit=None)
            assert len(everything) == 9
            assert [w.id for w in everything[:3]] == held_ids  # live work first
            assert len(await cue.list(limit=5)) == 5
            release.set()
    assert len(await cue.list(state="completed", limit=None)) == 7


async def test_cancel_pending_work() -> None:
    """await cue.cancel(id) on pending work ends it cancelled; its handler never runs."""
    cue = runcue.Cue(seed=1)
    cue.service("serial", concurrent=1)
    release = anyio.Event()
    started = anyio.Event()
    ran: list[str] = []
    cancelled: list[str] = []

    @cue.task("t", uses="serial")
    async def handler(work: WorkUnit) -> str:
        ran.append(work.params["name"])
        started.set()
        await release.wait()
        return str(work.params["name"])

    @cue.on_cancel
    def on_cancel(work: WorkUnit) -> None:
        cancelled.append(work.params["name"])

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("t", {"name": "first"})
            victim = await cue.submit("t", {"name": "victim"})
            last = await cue.submit("t", {"name": "last"})
            await started.wait()
            assert await cue.cancel(victim) is True
            work = await cue.get(victim)
            assert work is not None
            assert work.state is WorkState.CANCELLED
            assert reads_as(work.state, "cancelled")
            with pytest.raises(runcue.WorkCancelled):
                await cue.wait(victim)
            assert await cue.cancel(victim) is False
            assert await cue.cancel("no-such-id") is False
            release.set()
            assert await cue.wait(first) == "first"
            assert await cue.wait(last) == "last"
            assert await cue.cancel(first) is False
    assert ran == ["first", "last"]
    assert cancelled == ["victim"]
    assert cue.stats().cancelled == 1


async def test_join_waits_until_nothing_is_pending_or_running() -> None:
    """await cue.join() returns once every submitted work has finished, however it ended."""
    cue = runcue.Cue(seed=1)
    cue.service("api", concurrent=2)
    outcomes: list[str] = []

    @cue.task("t", uses="api")
    async def handler(work: WorkUnit) -> None:
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        if work.params["n"] % 3 == 0:
            outcomes.append("failed")
            raise RuntimeError("multiple of three")
        outcomes.append("completed")

    with anyio.fail_after(10):
        cue.start()
        for n in range(10):
            await cue.submit("t", {"n": n})
        await cue.join()
        assert len(outcomes) == 10
        stats = cue.stats()
        assert (stats.pending, stats.running, stats.completed, stats.failed) == (0, 0, 6, 4)
        await cue.join()  # idle: returns at once
        await cue.stop()


async def test_seed_quick_example_runs_on_the_start_stop_form(tmp_path: Path) -> None:
    """The seed README's quick example (start, submit, stop) works, with is_ready/is_stale."""
    cue = runcue.Cue()
    cue.service("openai", rate="60/min", concurrent=5)
    completions: list[tuple[str, float]] = []

    @cue.task("extract_text", uses="openai")
    def extract_text(work: WorkUnit) -> dict[str, str]:
        text = f"text of {Path(work.params['image_path']).name}"
        output_path = work.params["image_path"].replace(".png", ".txt")
        Path(output_path).write_text(text)
        return {"output": output_path}

    @cue.is_ready
    def is_ready(work: WorkUnit) -> bool:
        if work.task == "extract_text":
            return Path(work.params["image_path"]).exists()
        return True

    @cue.is_stale
    def is_stale(work: WorkUnit) -> bool:
        if work.task == "extract_text":
            output = work.params["image_path"].replace(".png", ".txt")
            return not Path(output).exists()
        return True

    @cue.on_complete
    def on_complete(work: WorkUnit, result: Any, duration: float) -> None:
        completions.append((json.dumps(result), duration))

    page = tmp_path / "page.png"
    page.write_bytes(b"png")
    with anyio.fail_after(10):
        cue.start()
        work_id = await cue.submit("extract_text", params={"image_path": str(page)})
        await cue.wait(work_id)
        await cue.stop()
    assert (tmp_path / "page.txt").read_text() == "text of page.png"
    assert len(completions) == 1
    assert completions[0][1] >= 0.0

    # Resubmitting after a "restart": is_stale skips what is done.
    again = runcue.Cue()
    again.service("openai", rate="60/min", concurrent=5)
    again.task("extract_text", uses="openai")(extract_text)
    again.is_stale(is_stale)
    with anyio.fail_after(10):
        async with again:
            redo = await again.submit("extract_text", params={"image_path": str(page)})
    work = await again.get(redo)
    assert work is not None
    assert work.state is WorkState.COMPLETED
    assert work.skipped


async def test_priority_callback_gets_a_priority_context() -> None:
    """@cue.priority receives a PriorityContext with the work, its wait time and queue depth."""
    cue = runcue.Cue(seed=1)
    cue.service("serial", concurrent=1)
    contexts: list[PriorityContext] = []
    order: list[str] = []

    @cue.task("t", uses="serial")
    async def handler(work: WorkUnit) -> None:
        order.append(work.params["name"])

    @cue.priority
    def priority(ctx: PriorityContext) -> float:
        contexts.append(ctx)
        return 1.0 if ctx.work.params["name"] == "urgent" else 0.1

    cue_ids: list[str] = []
    for name in ("low1", "low2", "urgent"):
        cue_ids.append(await cue.submit("t", {"name": name}))
    with anyio.fail_after(10):
        async with cue:
            pass
    assert order[0] == "urgent"
    assert sorted(order) == ["low1", "low2", "urgent"]
    assert {ctx.work.id for ctx in contexts} == set(cue_ids)
    assert all(isinstance(ctx, PriorityContext) for ctx in contexts)
    assert all(ctx.wait_time >= 0 and ctx.queue_depth >= 1 for ctx in contexts)
