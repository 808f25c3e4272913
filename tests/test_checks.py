"""The two checks, is_ready and is_stale: when they are asked, what their answers do, and how
blocked work explains itself (debug_blocked / explain)."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio.testing

import runcue

pytestmark = pytest.mark.anyio

Check = Callable[[runcue.WorkUnit], bool]

VIRTUAL_TIME = pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param("asyncio", id="asyncio"),
        pytest.param(
            ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio-virtual"
        ),
    ],
)
"""Override the backends for one test: trio on a virtual clock, asyncio in real time."""

CHECK_KINDS = pytest.mark.parametrize("kind", ["sync", "async"])


def as_kind(check: Check, kind: str) -> Callable[[runcue.WorkUnit], Any]:
    """The check itself (sync), or an async function that yields once and then answers."""
    if kind == "sync":
        return check

    async def async_check(work: runcue.WorkUnit) -> bool:
        await anyio.lowlevel.checkpoint()
        return check(work)

    return async_check


def is_virtual(anyio_backend: object) -> bool:
    """True when the test runs on trio's MockClock."""
    return isinstance(anyio_backend, tuple)


class Recorder:
    """Subscribes to a cue and lets a test wait for one kind of event."""

    def __init__(self, cue: runcue.Cue) -> None:
        self.events: list[runcue.WorkEvent] = []
        self._changed = anyio.Event()
        self.unsubscribe = cue.subscribe(self._on_event)

    def _on_event(self, event: runcue.WorkEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def count(self, kind: str, work_id: str | None = None) -> int:
        return sum(
            1
            for event in self.events
            if event.kind == kind and (work_id is None or event.work.id == work_id)
        )

    async def until(self, kind: str, work_id: str | None = None, times: int = 1) -> None:
        while self.count(kind, work_id) < times:
            self._changed = anyio.Event()
            await self._changed.wait()


async def settled(cue: runcue.Cue, events: Recorder, work_id: str) -> dict[str, Any]:
    """debug_blocked()'s entry for a parked work, once no check about it is in flight."""
    while True:
        await anyio.wait_all_tasks_blocked()
        [item] = [item for item in cue.debug_blocked() if item["work"].id == work_id]
        if item["reason"] != "checking":
            return item
        await events.until("waiting", work_id, times=events.count("waiting", work_id) + 1)


@contextmanager
def runcue_records(needle: str) -> Iterator[list[logging.LogRecord]]:
    """Collect records of the ``runcue`` logger whose message contains ``needle``."""
    found: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if needle in record.getMessage():
                found.append(record)

    handler = Collect(level=logging.DEBUG)
    log = logging.getLogger("runcue")
    log.addHandler(handler)
    try:
        yield found
    finally:
        log.removeHandler(handler)


# ---------------------------------------------------------------------------- is_ready


@CHECK_KINDS
async def test_not_ready_work_stays_pending_and_says_why(
    make_cue: Callable[..., runcue.Cue], kind: str
) -> None:
    """is_ready False keeps the work pending, unrun, with reason not_ready in debug_blocked()."""
    cue = make_cue()
    ran: list[str] = []

    @cue.task("consume")
    async def consume(work: runcue.WorkUnit) -> None:
        ran.append(work.id)

    cue.is_ready(as_kind(lambda work: False, kind))

    with anyio.fail_after(5):
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("consume", {"n": 1})
            await events.until("waiting", work_id)
            item = await settled(cue, events, work_id)
            work = await cue.get(work_id)
            assert work is not None
            assert work.state is runcue.WorkState.PENDING
            assert [entry["work"].id for entry in cue.debug_blocked()] == [work_id]
            assert item["reason"] == "not_ready"
            assert "is_ready" in item["details"]
            assert cue.stats().pending == 1
            assert await cue.cancel(work_id)
    assert ran == []


@CHECK_KINDS
async def test_waiting_work_is_rechecked_when_a_producer_completes(
    make_cue: Callable[..., runcue.Cue], kind: str
) -> None:
    """A completion rechecks parked work: the consumer runs right after its producer."""
    cue = make_cue(recheck_interval=3600)  # only a completion can wake the consumer
    store: dict[str, str] = {}
    order: list[str] = []

    @cue.task("produce")
    async def produce(work: runcue.WorkUnit) -> None:
        order.append("produce")
        store[work.params["name"]] = "apples"

    @cue.task("consume")
    async def consume(work: runcue.WorkUnit) -> str:
        order.append("consume")
        return store[work.params["name"]].upper()

    def ready(work: runcue.WorkUnit) -> bool:
        return work.task != "consume" or work.params["name"] in store

    cue.is_ready(as_kind(ready, kind))

    with anyio.fail_after(5):
        async with cue:
            events = Recorder(cue)
            consumer = await cue.submit("consume", {"name": "a"})
            await events.until("waiting", consumer)
            assert order == []
            await cue.submit("produce", {"name": "a"})
            assert await cue.wait(consumer) == "APPLES"
    assert order == ["produce", "consume"]


@CHECK_KINDS
async def test_poke_rechecks_waiting_work_at_once(
    make_cue: Callable[..., runcue.Cue], kind: str
) -> None:
    """cue.poke() asks is_ready again now, without waiting for the recheck interval."""
    cue = make_cue(recheck_interval=3600)
    store: set[str] = set()

    @cue.task("consume")
    async def consume(work: runcue.WorkUnit) -> str:
        return "done"

    cue.is_ready(as_kind(lambda work: "input" in store, kind))

    async with cue:
        events = Recorder(cue)
        with anyio.fail_after(5):
            work_id = await cue.submit("consume")
            await events.until("waiting", work_id)
        store.add("input")
        cue.poke()
        with anyio.fail_after(2):
            assert await cue.wait(work_id) == "done"


async def test_poke_is_harmless_before_start_and_after_stop(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """poke() on a cue that is not running does nothing and raises nothing."""
    cue = make_cue()

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        return "ok"

    cue.poke()
    with anyio.fail_after(5):
        async with cue:
            assert await cue.wait(await cue.submit("t")) == "ok"
    cue.poke()


@VIRTUAL_TIME
async def test_an_artifact_made_outside_the_cue_is_noticed_quickly(
    make_cue: Callable[..., runcue.Cue], anyio_backend: object
) -> None:
    """Without poke or completion, the default recheck interval (0.25 s) notices a new input."""
    cue = make_cue()
    store: set[str] = set()
    made_at: list[float] = []

    @cue.task("consume")
    async def consume(work: runcue.WorkUnit) -> float:
        return anyio.current_time()

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        return "input" in store

    async def make_the_input_later() -> None:
        await anyio.sleep(0.3)
        store.add("input")
        made_at.append(anyio.current_time())

    with anyio.fail_after(2):
        async with cue, anyio.create_task_group() as tg:
            events = Recorder(cue)
            work_id = await cue.submit("consume")
            await events.until("waiting", work_id)
            tg.start_soon(make_the_input_later)
            started: float = await cue.wait(work_id)
    noticed_after = started - made_at[0]
    # On the virtual clock the bound is exact; in real time, allow for a busy machine.
    assert 0 <= noticed_after <= (0.25 + 1e-6 if is_virtual(anyio_backend) else 1.0)


@VIRTUAL_TIME
async def test_parked_work_is_rechecked_at_a_bounded_rate(
    make_cue: Callable[..., runcue.Cue], anyio_backend: object
) -> None:
    """A never-ready work is asked about once per recheck_interval: never busy-polled."""
    interval, window = (0.25, 20.0) if is_virtual(anyio_backend) else (0.05, 0.5)
    cue = make_cue(recheck_interval=interval)
    calls: list[float] = []

    @cue.task("never")
    async def never(work: runcue.WorkUnit) -> None:
        raise AssertionError("is_ready never said yes")

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        calls.append(anyio.current_time())
        return False

    with anyio.fail_after(window + 5):
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("never")
            await events.until("waiting", work_id)
            before = len(calls)
            await anyio.sleep(window)
            asked = len(calls) - before
            await cue.cancel(work_id)
    expected = window / interval
    assert asked <= expected + 3, f"asked {asked} times in {window}s (interval {interval}s)"
    assert asked >= expected * 0.3, f"asked only {asked} times in {window}s"


@VIRTUAL_TIME
async def test_a_parked_work_is_not_asked_again_before_anything_happens(
    make_cue: Callable[..., runcue.Cue], anyio_backend: object
) -> None:
    """Once parked, a work is re-asked only after a completion, a poke or recheck_interval."""
    cue = make_cue(recheck_interval=3600)
    calls: list[float] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        calls.append(anyio.current_time())
        return False

    with anyio.fail_after(60):
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("t")
            await events.until("waiting", work_id)
            await anyio.sleep(30 if is_virtual(anyio_backend) else 0.2)
            asked = len(calls)
            await cue.cancel(work_id)
    assert asked == 1, f"is_ready asked {asked} times with nothing changed: at {calls}"


async def run_chain(
    cue: runcue.Cue, lanes: int, stages: int
) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], int]]:
    """Run `lanes` independent chains of `stages` steps, consumers submitted first; returns
    how often is_ready and is_stale were asked per (lane, stage)."""
    store: set[tuple[int, int]] = set()  # (lane, stage) artifacts
    ready_calls: dict[tuple[int, int], int] = {}
    stale_calls: dict[tuple[int, int], int] = {}

    def where(work: runcue.WorkUnit) -> tuple[int, int]:
        return (int(work.params["lane"]), int(work.params["stage"]))

    @cue.task("step")
    async def step(work: runcue.WorkUnit) -> None:
        await anyio.lowlevel.checkpoint()
        store.add(where(work))

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        lane, stage = where(work)
        ready_calls[lane, stage] = ready_calls.get((lane, stage), 0) + 1
        return stage == 0 or (lane, stage - 1) in store

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        stale_calls[where(work)] = stale_calls.get(where(work), 0) + 1
        return where(work) not in store

    with anyio.fail_after(10):
        async with cue:
            # Consumers first, so every one of them has to wait for its producer.
            for stage in reversed(range(stages)):
                for lane in range(lanes):
                    await cue.submit("step", {"lane": lane, "stage": stage})
    assert len(store) == lanes * stages
    assert cue.stats().completed == lanes * stages
    return ready_calls, stale_calls


async def test_checks_are_asked_a_handful_of_times_per_producer_consumer_pair(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """A consumer's is_ready is asked a few times (not ready, then after its producer)."""
    ready_calls, stale_calls = await run_chain(make_cue(checks="inline"), lanes=20, stages=2)
    consumers = [ready_calls[lane, 1] for lane in range(20)]
    producers = [ready_calls[lane, 0] for lane in range(20)]
    assert max(consumers) <= 3, f"a consumer's is_ready was asked {max(consumers)} times"
    assert set(producers) == {1}
    assert set(stale_calls.values()) == {1}  # asked once, when ready, right before running


async def test_checks_in_a_deeper_chain_grow_only_with_its_depth(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """In a 4-step chain, a step is asked about once per completed wave before it, no more."""
    stages = 4
    ready_calls, stale_calls = await run_chain(make_cue(checks="inline"), lanes=10, stages=stages)
    for (_, stage), calls in ready_calls.items():
        assert calls <= stage + 2, f"stage {stage} was asked {calls} times"
    assert set(stale_calls.values()) == {1}


# ---------------------------------------------------------------------------- is_stale


@CHECK_KINDS
async def test_is_stale_false_skips_the_work(
    make_cue: Callable[..., runcue.Cue], kind: str
) -> None:
    """is_stale False skips: on_skip fires, the handler is not called, work.skipped is True."""
    cue = make_cue()
    ran: list[str] = []
    skipped: list[str] = []

    @cue.task("build")
    async def build(work: runcue.WorkUnit) -> str:
        ran.append(work.params["name"])
        return "built"

    cue.is_stale(as_kind(lambda work: work.params["name"] != "fresh", kind))

    @cue.on_skip
    def on_skip(work: runcue.WorkUnit) -> None:
        skipped.append(work.params["name"])

    with anyio.fail_after(5):
        async with cue:
            fresh = await cue.submit("build", {"name": "fresh"})
            old = await cue.submit("build", {"name": "old"})
            assert await cue.wait(fresh) is None
            assert await cue.wait(old) == "built"
    assert ran == ["old"]
    assert skipped == ["fresh"]
    fresh_work = await cue.get(fresh)
    old_work = await cue.get(old)
    assert fresh_work is not None and old_work is not None
    assert fresh_work.skipped is True
    assert fresh_work.state is runcue.WorkState.COMPLETED
    assert old_work.skipped is False
    stats = cue.stats()
    assert (stats.skipped, stats.completed) == (1, 1)


async def test_is_stale_is_not_asked_while_not_ready(make_cue: Callable[..., runcue.Cue]) -> None:
    """is_stale is only asked once is_ready said yes."""
    cue = make_cue(recheck_interval=3600)
    store: set[str] = set()
    stale_asked_when_ready: list[bool] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        return "input" in store

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        stale_asked_when_ready.append("input" in store)
        return True

    with anyio.fail_after(5):
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("t")
            await events.until("waiting", work_id)
            assert stale_asked_when_ready == []
            store.add("input")
            cue.poke()
            await cue.wait(work_id)
    assert stale_asked_when_ready == [True]


# ---------------------------------------------------------------------------- checks that raise


@pytest.mark.parametrize("check", ["is_ready", "is_stale"])
@CHECK_KINDS
async def test_a_check_that_raises_keeps_the_work_pending_and_is_logged(
    make_cue: Callable[..., runcue.Cue],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    check: str,
) -> None:
    """A raising check: work stays pending (check_error), a warning is logged, then it runs."""
    cue = make_cue(recheck_interval=3600)
    broken = [True]
    ran: list[str] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        ran.append(work.id)
        return "ok"

    def flaky(work: runcue.WorkUnit) -> bool:
        if broken[0]:
            raise OSError("disk on fire")
        return True

    getattr(cue, check)(as_kind(flaky, kind))

    caplog.set_level(logging.WARNING, logger="runcue")
    with anyio.fail_after(5):
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("t")
            await events.until("waiting", work_id)
            item = await settled(cue, events, work_id)
            assert len(cue.debug_blocked()) == 1
            assert item["reason"] == "check_error"
            assert check in item["details"]
            assert "disk on fire" in item["details"]
            assert ran == []
            warnings = [
                r
                for r in caplog.records
                if r.name == "runcue" and r.levelno == logging.WARNING and check in r.getMessage()
            ]
            assert warnings, "the check's exception was not logged"
            assert warnings[0].exc_info is not None
            assert isinstance(warnings[0].exc_info[1], OSError)

            broken[0] = False
            cue.poke()
            assert await cue.wait(work_id) == "ok"
    assert ran == [work_id]


async def test_a_check_that_raised_is_asked_again_without_a_poke(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """After a check error the periodic recheck (default 0.25 s) asks again by itself."""
    cue = make_cue()
    broken = [True]

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        return "ok"

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        if broken[0]:
            raise OSError("not mounted yet")
        return True

    with anyio.fail_after(5), runcue_records("is_ready raised") as logged:
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("t")
            await events.until("waiting", work_id)
            assert logged
            broken[0] = False
            with anyio.fail_after(2):
                assert await cue.wait(work_id) == "ok"


@VIRTUAL_TIME
async def test_an_async_check_that_hangs_counts_as_a_check_error(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """An async check that does not answer within check_timeout leaves the work check_error."""
    cue = make_cue(check_timeout=0.05, recheck_interval=3600)
    hang = [True]

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> str:
        return "ok"

    @cue.is_ready
    async def ready(work: runcue.WorkUnit) -> bool:
        if hang[0]:
            await anyio.sleep_forever()
        return True

    with anyio.fail_after(5), runcue_records("is_ready raised") as logged:
        async with cue:
            events = Recorder(cue)
            work_id = await cue.submit("t")
            await events.until("waiting", work_id)
            blocked = await settled(cue, events, work_id)
            assert blocked["reason"] == "check_error"
            assert "check_timeout" in blocked["details"]
            assert logged
            hang[0] = False
            cue.poke()
            assert await cue.wait(work_id) == "ok"


# ---------------------------------------------------------------------------- debug_blocked


async def test_debug_blocked_reports_a_full_service(make_cue: Callable[..., runcue.Cue]) -> None:
    """Work behind a busy concurrent=1 service is reported as service_full."""
    cue = make_cue()
    cue.service("knife", concurrent=1)
    started = anyio.Event()
    release = anyio.Event()

    @cue.task("cut", uses="knife")
    async def cut(work: runcue.WorkUnit) -> int:
        started.set()
        await release.wait()
        return int(work.params["n"])

    with anyio.fail_after(5):
        async with cue:
            first = await cue.submit("cut", {"n": 1})
            await started.wait()
            second = await cue.submit("cut", {"n": 2})
            await anyio.wait_all_tasks_blocked()
            blocked = cue.debug_blocked()
            assert [item["work"].id for item in blocked] == [second]
            assert blocked[0]["reason"] == "service_full"
            assert "knife" in blocked[0]["details"]
            assert "pending: service_full" in cue.explain(second)
            assert "running" in cue.explain(first)
            release.set()
            assert await cue.wait(second) == 2
    assert cue.stats().services["knife"].max_running == 1
    assert cue.debug_blocked() == []


async def test_debug_blocked_reports_rate_limited_with_the_next_slot(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Work held back by a used-up rate is rate_limited, and says when the next slot frees."""
    cue = make_cue()
    cue.service("api", rate="1/min")

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> int:
        return int(work.params["n"])

    with anyio.fail_after(5):
        async with cue:
            first = await cue.submit("call", {"n": 1})
            assert await cue.wait(first) == 1
            second = await cue.submit("call", {"n": 2})
            await anyio.wait_all_tasks_blocked()
            [blocked] = cue.debug_blocked()
            assert blocked["work"].id == second
            assert blocked["reason"] == "rate_limited"
            match = re.search(r"next slot in ([0-9.e+-]+)\s*s", blocked["details"])
            assert match is not None, blocked["details"]
            assert 0 < float(match.group(1)) <= 60
            assert await cue.cancel(second)


async def test_explain_answers_in_one_sentence(make_cue: Callable[..., runcue.Cue]) -> None:
    """explain(id) is a sentence naming the work and where it stands, for every state."""
    cue = make_cue()

    @cue.task("ok")
    async def ok(work: runcue.WorkUnit) -> None:
        pass

    @cue.task("boom")
    async def boom(work: runcue.WorkUnit) -> None:
        raise ValueError("no flour")

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        return not work.params.get("blocked", False)

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        return not work.params.get("fresh", False)

    with anyio.fail_after(5):
        async with cue:
            events = Recorder(cue)
            waiting = await cue.submit("ok", {"blocked": True})
            await events.until("waiting", waiting)
            done = await cue.submit("ok")
            skipped = await cue.submit("ok", {"fresh": True})
            failed = await cue.submit("boom")
            await cue.wait(done)
            await cue.wait(skipped)
            with pytest.raises(ValueError, match="no flour"):
                await cue.wait(failed)
            sentences = {
                "pending": cue.explain(waiting),
                "completed": cue.explain(done),
                "skipped": cue.explain(skipped),
                "failed": cue.explain(failed),
            }
            await cue.cancel(waiting)
    for state, sentence in sentences.items():
        assert isinstance(sentence, str)
        assert sentence.endswith("."), sentence
        assert "\n" not in sentence
        assert state in sentence, sentence
    assert waiting in sentences["pending"]
    assert "not_ready" in sentences["pending"]
    assert "no flour" in sentences["failed"]
    unknown = cue.explain("no-such-id")
    assert "no-such-id" in unknown
    assert unknown.endswith(".")


# ---------------------------------------------------------------------------- where checks run


async def test_checks_thread_runs_sync_checks_off_the_event_loop(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """checks="thread" calls sync checks in a worker thread, never on the loop's thread."""
    cue = make_cue(checks="thread")
    loop_thread = threading.get_ident()
    ready_threads: list[int] = []
    stale_threads: list[int] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        ready_threads.append(threading.get_ident())
        return True

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        stale_threads.append(threading.get_ident())
        return True

    with anyio.fail_after(5):
        async with cue:
            for n in range(5):
                await cue.submit("t", {"n": n})
    assert len(ready_threads) >= 5
    assert len(stale_threads) >= 5
    assert loop_thread not in ready_threads + stale_threads
    assert cue.stats().completed == 5


async def test_checks_inline_keeps_even_slow_checks_on_the_loop(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """checks="inline" calls sync checks on the loop's thread, however slow they are."""
    cue = make_cue(checks="inline")
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        threads.append(threading.get_ident())
        time.sleep(0.005)  # slower than what "auto" tolerates on the loop
        return True

    with anyio.fail_after(5):
        async with cue:
            for n in range(3):
                await cue.wait(await cue.submit("t", {"n": n}))
    assert len(threads) == 3
    assert set(threads) == {loop_thread}


async def test_checks_auto_moves_slow_sync_checks_to_a_thread(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """checks="auto" starts on the loop and moves to a thread once checks keep being slow."""
    cue = make_cue()
    loop_thread = threading.get_ident()
    threads: list[int] = []

    @cue.task("t")
    async def handler(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        threads.append(threading.get_ident())
        time.sleep(0.005)
        return True

    with anyio.fail_after(5):
        async with cue:
            for n in range(6):
                await cue.wait(await cue.submit("t", {"n": n}))
    assert threads[:3] == [loop_thread] * 3  # a lone slow call may be noise: three are not
    assert loop_thread not in threads[3:]


def test_an_unknown_checks_mode_is_refused() -> None:
    """Cue(checks=...) accepts only "auto", "inline" and "thread"."""
    with pytest.raises(ValueError, match="checks"):
        runcue.Cue(checks="sometimes")  # type: ignore[arg-type]
