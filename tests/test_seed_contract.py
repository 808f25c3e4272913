"""The seed's contract: every submit is a work unit, errors begin with 0.2's words, a stopped
cue starts again, and 0.2's models construct as they did."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

import runcue
from runcue.models import PriorityContext, WorkState, WorkUnit

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]


# ---------------------------------------------------------------------------- every submit


async def test_identical_submits_are_separate_work_by_default(make_cue: CueFactory) -> None:
    """Five submits of equal params give five ids, five runs and five events of each kind."""
    cue = make_cue()
    runs: list[str] = []
    kinds: list[str] = []
    cue.subscribe(lambda event: kinds.append(event.kind))

    @cue.task("ping")
    async def ping(work: runcue.WorkUnit) -> str:
        runs.append(work.id)
        return work.id

    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("ping", params={}) for _ in range(5)]
            assert not cue._engine.twins  # no de-duplication index is kept at all
    assert len(set(ids)) == 5
    assert sorted(runs) == sorted(ids)
    assert kinds.count("queued") == 5
    assert kinds.count("started") == 5
    assert kinds.count("completed") == 5
    assert cue.stats().submitted == cue.stats().completed == 5


async def test_six_identical_submits_run_six_at_once(make_cue: CueFactory) -> None:
    """Six equal works under concurrent=6 are six handlers running together."""
    cue = make_cue()
    cue.service("api", concurrent=6)
    running = 0
    most = 0
    all_in = anyio.Event()
    release = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 6:
            all_in.set()
        await release.wait()
        running -= 1

    with anyio.fail_after(10):
        async with cue:
            for _ in range(6):
                await cue.submit("call", {"same": True})
            await all_in.wait()
            release.set()
    assert most == 6


async def test_a_stall_warning_counts_every_identical_submit(make_cue: CueFactory) -> None:
    """Two equal works that cannot start are two pending in the stall warning."""
    cue = make_cue(stall_warn_after=0.05)
    warned: list[int] = []
    seen = anyio.Event()

    @cue.task("wait")
    async def wait(work: runcue.WorkUnit) -> None:
        pass  # pragma: no cover - never ready

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return False

    @cue.on_stall_warning
    def on_stall(seconds: float, pending: int) -> None:
        warned.append(pending)
        seen.set()

    with anyio.fail_after(10):
        cue.start()
        await cue.submit("wait", {"x": 1})
        await cue.submit("wait", {"x": 1})
        await seen.wait()
        await cue.stop()
    assert warned[0] == 2


async def test_a_dedup_task_shares_equal_params_and_key_always_dedups(
    make_cue: CueFactory,
) -> None:
    """dedup=True makes equal params one work; key= de-duplicates on any task; others don't."""
    cue = make_cue()
    cue.service("serial", concurrent=1)
    release = anyio.Event()
    gate_in = anyio.Event()
    calls: list[tuple[str, object]] = []

    @cue.task("gate", uses="serial")
    async def gate(work: runcue.WorkUnit) -> None:
        gate_in.set()
        await release.wait()

    @cue.task("same", uses="serial", dedup=True)
    async def same(work: runcue.WorkUnit) -> None:
        calls.append(("same", work.params.get("n")))

    @cue.task("plain", uses="serial")
    async def plain(work: runcue.WorkUnit) -> None:
        calls.append(("plain", work.params.get("n")))

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("gate")
            await gate_in.wait()
            first = await cue.submit("same", {"n": 1})
            assert await cue.submit("same", {"n": 1}) == first
            assert await cue.submit("same", {"n": 2}) != first
            keyed = await cue.submit("plain", {"n": 3}, key="k")
            assert await cue.submit("plain", {"n": 4}, key="k") == keyed
            assert await cue.submit("plain", {"n": 3}) != keyed
            assert await cue.submit("plain", {"n": 3}) != keyed
            release.set()
    assert sorted(calls, key=str) == sorted(
        [("same", 1), ("same", 2), ("plain", 3), ("plain", 3), ("plain", 3)], key=str
    )


def test_dedup_must_be_a_bool() -> None:
    """@cue.task(dedup=...) takes True or False and names a bad value."""
    cue = runcue.Cue()
    with pytest.raises(TypeError, match="dedup must be True or False, got 'yes'"):
        cue.task("t", dedup="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- 0.2's words


async def test_unknown_task_error_begins_with_the_seed_words() -> None:
    """submit() of an unregistered task raises 'Unknown task ...' (a ValueError)."""
    cue = runcue.Cue()
    with pytest.raises(runcue.UnknownTaskError, match=r"^Unknown task 'nope'") as info:
        await cue.submit("nope")
    assert isinstance(info.value, ValueError)


def test_unknown_service_error_begins_with_the_seed_words() -> None:
    """A task using an undeclared service raises 'Unknown service ...' (a ValueError)."""
    cue = runcue.Cue()
    with pytest.raises(runcue.UnknownServiceError, match=r"^Unknown service 'ocr'") as info:
        cue.task("t", uses="ocr")
    assert isinstance(info.value, ValueError)
    assert "cue.service('ocr'" in str(info.value)


@pytest.mark.parametrize("rate", ["sixty/min", "10 per minute", "", "0/min", "10/0min", "/min"])
def test_a_malformed_rate_begins_with_invalid_rate_format(rate: str) -> None:
    """A rate that is not N/unit raises 'Invalid rate format ...' naming the string."""
    cue = runcue.Cue()
    with pytest.raises(runcue.InvalidRateError, match=r"^Invalid rate format") as info:
        cue.service("api", rate=rate)
    assert repr(rate) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_an_unknown_unit_begins_with_unknown_rate_unit() -> None:
    """'N/fortnight' raises 'Unknown rate unit ...' naming the unit and listing the real ones."""
    cue = runcue.Cue()
    with pytest.raises(runcue.InvalidRateError, match=r"^Unknown rate unit 'fortnight'") as info:
        cue.service("api", rate="10/fortnight")
    assert "min" in str(info.value)


async def test_timeout_errors_begin_with_the_seed_words(make_cue: CueFactory) -> None:
    """Work failed by pending_timeout / stall_timeout reads 'Pending timeout' / 'Stall timeout'."""
    for option, words, kind in (
        ("pending_timeout", "Pending timeout", runcue.PendingTimeout),
        ("stall_timeout", "Stall timeout", runcue.StallTimeout),
    ):
        cue = make_cue(**{option: 0.05})

        @cue.task("never")
        async def never(work: runcue.WorkUnit) -> None:
            pass  # pragma: no cover - never ready

        @cue.is_ready
        def is_ready(work: runcue.WorkUnit) -> bool:
            return False

        with anyio.fail_after(10):
            async with cue:
                work_id = await cue.submit("never")
                with pytest.raises(kind) as info:
                    await cue.wait(work_id)
        assert str(info.value).startswith(words)
        assert isinstance(info.value, TimeoutError)
        work = await cue.get(work_id)
        assert work is not None and work.error is not None
        assert work.error.startswith(words)


# ---------------------------------------------------------------------------- starting again


async def test_start_stop_three_quick_cycles_and_work_of_later_runs_runs() -> None:
    """start -> stop -> start, three times in a row: nothing raises, every run's work runs."""
    cue = runcue.Cue(seed=1)
    ran: list[int] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> int:
        ran.append(work.params["run"])
        return int(work.params["run"])

    with anyio.fail_after(10):
        for _ in range(3):
            cue.start()
            await cue.stop()
        for run in range(3):
            cue.start()
            assert await cue.wait(await cue.submit("t", {"run": run})) == run
            await cue.stop()
            assert "stopped" in repr(cue)
    assert ran == [0, 1, 2]
    assert cue.stats().completed == 3


async def test_async_with_twice_in_sequence_keeps_registrations_and_history() -> None:
    """Two `async with cue:` blocks in a row: the second run runs; the first's work is kept."""
    cue = runcue.Cue(seed=1, keep_finished=2)
    cue.service("api", concurrent=1)

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> int:
        return int(work.params["n"])

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("t", {"n": 1})
        async with cue:
            kept = await cue.get(first)
            assert kept is not None and kept.result == 1  # history carries over
            assert await cue.wait(first) == 1
            second = await cue.submit("t", {"n": 2})
            third = await cue.submit("t", {"n": 3})
        assert await cue.get(first) is None  # keep_finished=2 bounds the history over runs
        assert [await cue.wait(w) for w in (second, third)] == [2, 3]
    stats = cue.stats()
    assert stats.submitted == stats.completed == 3


async def test_the_three_ways_to_run_follow_one_another() -> None:
    """A cue run by start/stop, then `async with`, then tg.start(cue.run), runs work each time."""
    cue = runcue.Cue(seed=1)

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        return str(work.params["how"])

    with anyio.fail_after(10):
        cue.start()
        assert await cue.wait(await cue.submit("t", {"how": "start"})) == "start"
        await cue.stop()
        async with cue:
            assert await cue.wait(await cue.submit("t", {"how": "with"})) == "with"
        async with anyio.create_task_group() as tg:
            await tg.start(cue.run)
            assert await cue.wait(await cue.submit("t", {"how": "run"})) == "run"
            await cue.stop()
        cue.start()
        assert await cue.wait(await cue.submit("t", {"how": "again"})) == "again"
        await cue.stop()


async def test_starting_a_running_cue_is_an_error_naming_the_fix() -> None:
    """While a cue runs, `async with`, run() and a start() of another form raise CueStateError."""
    cue = runcue.Cue(seed=1)
    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(runcue.CueStateError, match="running") as info:
                cue.start()
            assert "stop it first" in str(info.value)
            with pytest.raises(runcue.CueStateError, match="running"):
                await cue.run()
            with pytest.raises(runcue.CueStateError, match="running"):
                async with cue:
                    pass  # pragma: no cover
        cue.start()
        cue.start()  # the same background run: does nothing
        with pytest.raises(runcue.CueStateError, match=r"starting|running"):
            async with cue:
                pass  # pragma: no cover
        await cue.stop()


async def test_a_rate_window_still_counts_the_last_runs_starts() -> None:
    """A service's rate history carries over a restart: '1/min' admits no second start."""
    cue = runcue.Cue(seed=1)
    cue.service("api", rate="1/min")

    @cue.task("t", uses="api")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    with anyio.fail_after(10):
        async with cue:
            await cue.wait(await cue.submit("t"))
        cue.start()
        await cue.submit("t")
        with anyio.fail_after(5):
            while not cue.debug_blocked() or cue.debug_blocked()[0]["reason"] == "queued":
                await anyio.sleep(0.01)
        (blocked,) = cue.debug_blocked()
        assert blocked["reason"] == "rate_limited"
        assert cue.stats().services["api"].windows[0].used == 1
        await cue.stop()
    assert cue.stats().cancelled == 1


def test_a_cue_runs_again_on_another_event_loop_and_backend() -> None:
    """The same cue runs under anyio.run on asyncio, then on trio, then on asyncio again."""
    cue = runcue.Cue(seed=1)
    cue.service("api", rate="100/sec", concurrent=2)

    @cue.task("t", uses="api")
    def handler(work: runcue.WorkUnit) -> int:  # a sync handler: worker threads per loop
        return int(work.params["n"]) * 2

    async def main(n: int) -> int:
        with anyio.fail_after(10):
            async with cue:
                result = int(await cue.wait(await cue.submit("t", {"n": n})))
        return result

    assert anyio.run(main, 1, backend="asyncio") == 2
    assert anyio.run(main, 2, backend="trio") == 4
    assert anyio.run(main, 3, backend="asyncio") == 6
    assert cue.stats().completed == 3
    assert cue.stats().services["api"].max_running == 1


# ---------------------------------------------------------------------------- 0.2 models


def test_work_units_construct_with_the_seed_keywords() -> None:
    """WorkUnit(id=, task=, params=, created_at=) and 0.2's other fields construct as before."""
    now = time.time()
    work = WorkUnit(id="w1", task="extract", params={"page": 1}, created_at=now)
    assert (work.id, work.task, dict(work.params), work.created_at) == (
        "w1",
        "extract",
        {"page": 1},
        now,
    )
    assert work.state is WorkState.PENDING and work.attempt == 1 and work.error is None
    failed = WorkUnit(
        id="w2",
        task="extract",
        state=WorkState.FAILED,
        started_at=now,
        completed_at=now + 1,
        result=None,
        error="boom",
        attempt=3,
    )
    assert failed.params == {}
    assert (failed.state, failed.error, failed.attempt) == (WorkState.FAILED, "boom", 3)
    assert failed.completed_at == now + 1


def test_priority_context_constructs_with_keywords_for_a_priority_function() -> None:
    """PriorityContext(work=, wait_time=, queue_depth=) feeds a user's priority function."""
    cue = runcue.Cue()

    @cue.priority
    def by_age(ctx: PriorityContext) -> float:
        return min(1.0, ctx.wait_time / 60) if ctx.queue_depth > 1 else 0.5

    work = WorkUnit(id="w", task="t", params={}, created_at=0.0)
    assert by_age(PriorityContext(work=work, wait_time=30.0, queue_depth=5)) == 0.5
    assert by_age(PriorityContext(work=work, wait_time=30.0, queue_depth=1)) == 0.5
    assert by_age(PriorityContext(work=work, wait_time=120.0, queue_depth=2)) == 1.0
