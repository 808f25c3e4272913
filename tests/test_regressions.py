"""Regression tests for the bugs a review found (repros r1..r22): one test per bug.

Outcomes are decided by events, ``cue.wait``/``join`` and ``fail_after``; where a bug froze the
event loop (so ``fail_after`` could never fire), ``pytest.mark.timeout`` bounds the test, and
"does not spin" is measured in scheduler ticks per event-loop round, not in wall time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest
import trio.testing

import runcue
from runcue._scheduler import Scheduler

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]

ROUNDS = 200
"""Event-loop rounds a test yields for while it counts scheduler ticks."""
SPIN_TICKS = 50
"""More ticks than this in ROUNDS rounds: the scheduler loops on a deadline it cannot act on."""


class FakeStore:
    """In-memory Store: unlimited shared rate, leases counted for concurrency.

    Copied from the reviewer's /tmp/rv/fakestore.py, plus an optional gate that holds a claim
    round trip in flight, and an event set when a claim is given back.
    """

    def __init__(self, claim_gate: anyio.Event | None = None) -> None:
        self.leases: dict[str, set[str]] = {}
        self.claims: dict[str, str] = {}
        self.acquires = 0
        self.claim_gate = claim_gate
        self.claim_entered = anyio.Event()
        self.claim_released = anyio.Event()

    async def acquire(
        self,
        service: str,
        *,
        windows: tuple[runcue.RateSpec, ...],
        concurrent: int | None,
        lease: str,
        ttl: float,
    ) -> float:
        self.acquires += 1
        held = self.leases.setdefault(service, set())
        if concurrent is not None and len(held) >= concurrent:
            return 0.05
        held.add(lease)
        return 0.0

    async def renew(self, service: str, leases: list[str], ttl: float) -> None:
        pass

    async def release(self, service: str, lease: str) -> None:
        self.leases.get(service, set()).discard(lease)

    async def pause(self, service: str, seconds: float) -> None:
        pass

    async def claim(self, key: str, owner: str, ttl: float) -> bool:
        self.claim_entered.set()
        if self.claim_gate is not None:
            await self.claim_gate.wait()
        holder = self.claims.setdefault(key, owner)
        return holder == owner

    async def renew_claims(self, keys: list[str], owner: str, ttl: float) -> None:
        pass

    async def release_claim(self, key: str, owner: str) -> None:
        if self.claims.get(key) == owner:
            del self.claims[key]
        self.claim_released.set()

    async def aclose(self) -> None:
        pass


@contextmanager
def count_ticks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the scheduler's passes through its loop (``ticks[0]``)."""
    ticks = [0]
    original = Scheduler._tick

    async def counting(self: Scheduler) -> None:
        ticks[0] += 1
        await original(self)

    with monkeypatch.context() as patch:
        patch.setattr(Scheduler, "_tick", counting)
        yield ticks


async def ticks_over_rounds(ticks: list[int]) -> int:
    """How many scheduler ticks happen while this task yields ROUNDS times."""
    before = ticks[0]
    for _ in range(ROUNDS):
        await anyio.lowlevel.checkpoint()
    return ticks[0] - before


async def state_of(cue: runcue.Cue, work_id: str) -> runcue.WorkState:
    work = await cue.get(work_id)
    assert work is not None
    return work.state


async def work_of(cue: runcue.Cue, work_id: str) -> runcue.WorkUnit:
    work = await cue.get(work_id)
    assert work is not None
    return work


# ---------------------------------------------------------------------- r1


async def test_r1_sync_work_cancelled_before_its_thread_starts(make_cue: CueFactory) -> None:
    """A sync work cancelled before its thread starts never runs and frees its slot."""
    cue = make_cue()
    cue.service("svc", concurrent=1)
    ran: list[int] = []

    @cue.task("job", uses="svc")
    def job(work: runcue.WorkUnit) -> int:
        ran.append(work.params["n"])
        return int(work.params["n"])

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("job", {"n": 1})
            assert await cue.cancel(first) is True  # its runner has not started yet
            second = await cue.submit("job", {"n": 2})
            assert await cue.wait(second) == 2  # the slot was given back
    assert await state_of(cue, first) is runcue.WorkState.CANCELLED
    assert ran == [2]
    assert cue.stats().services["svc"].running == 0


# ---------------------------------------------------------------------- r2


async def test_r2_stray_asyncio_cancelled_error_fails_only_that_work(
    make_cue: CueFactory, anyio_backend: str
) -> None:
    """A handler's own asyncio CancelledError fails only that work; the cue and others go on."""
    if anyio_backend != "asyncio":
        pytest.skip("a CancelledError outside any cancel scope only exists on asyncio")
    cue = make_cue()
    bad_failed = anyio.Event()

    @cue.task("bad")
    async def bad(work: runcue.WorkUnit) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # a cancellation that is not from any cancel scope

    @cue.task("good")
    async def good(work: runcue.WorkUnit) -> str:
        await bad_failed.wait()  # runs on while the other work fails
        return "ok"

    @cue.on_failure
    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        bad_failed.set()

    with anyio.fail_after(10):
        async with cue:
            good_id = await cue.submit("good")
            bad_id = await cue.submit("bad")
            assert await cue.wait(good_id) == "ok"
            after = await cue.submit("good", {"after": True})
            assert await cue.wait(after) == "ok"
    failed = await work_of(cue, bad_id)
    assert failed.state is runcue.WorkState.FAILED
    assert isinstance(failed.exception, asyncio.CancelledError)
    stats = cue.stats()
    assert (stats.completed, stats.failed, stats.cancelled) == (2, 1, 0)


# ---------------------------------------------------------------------- r3c


@pytest.mark.timeout(20)
async def test_r3c_sync_work_beyond_max_threads_does_not_freeze_the_loop(
    make_cue: CueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rated service without `concurrent`, sync work beyond max_threads: no freeze, no spin."""
    cue = make_cue(max_threads=1)
    cue.service("api", rate="100/sec")
    first_started = anyio.Event()
    gate = threading.Event()
    done: list[int] = []

    @cue.task("job", uses="api")
    def job(work: runcue.WorkUnit) -> None:
        if work.params["i"] == 0:
            anyio.from_thread.run_sync(first_started.set)
            gate.wait(10)
        done.append(work.params["i"])

    with count_ticks(monkeypatch) as ticks:
        try:
            with anyio.fail_after(10):
                async with cue:
                    for i in range(3):
                        await cue.submit("job", {"i": i})
                    await first_started.wait()  # the only thread is busy, two works queued
                    spun = await ticks_over_rounds(ticks)
                    gate.set()
        finally:
            gate.set()
    assert sorted(done) == [0, 1, 2]
    assert spun < SPIN_TICKS, f"{spun} scheduler ticks in {ROUNDS} rounds while threads were full"


# ---------------------------------------------------------------------- r4


@pytest.mark.timeout(20)
async def test_r4_shared_service_with_full_local_slots_does_not_spin(
    make_cue: CueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared service whose local slots are full waits for a slot instead of spinning."""
    store = FakeStore()
    cue = make_cue(store=store)
    cue.service("api", concurrent=1, shared=True)
    spun: list[int] = []

    with count_ticks(monkeypatch) as ticks:

        @cue.task("job", uses="api")
        async def job(work: runcue.WorkUnit) -> None:
            spun.append(await ticks_over_rounds(ticks))  # the slot is full, others queued

        with anyio.fail_after(10):
            async with cue:
                for i in range(3):
                    await cue.submit("job", {"i": i})
    assert cue.stats().completed == 3
    assert len(spun) == 3
    assert spun[0] < SPIN_TICKS, f"{spun[0]} ticks in {ROUNDS} rounds with the local slot full"
    assert store.leases.get("api", set()) == set()


# ---------------------------------------------------------------------- r5


async def test_r5_claim_taken_while_cancelled_is_given_back(make_cue: CueFactory) -> None:
    """A store claim granted after its work was cancelled is given back, not kept forever."""
    gate = anyio.Event()
    store = FakeStore(claim_gate=gate)
    cue = make_cue(store=store, lease_ttl=5.0)

    @cue.task("job")
    async def job(work: runcue.WorkUnit) -> int:
        return int(work.params["i"])

    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("job", {"i": 1}, key="k1")
            await store.claim_entered.wait()  # the claim round trip is in flight
            assert await cue.cancel(first) is True
            gate.set()  # the store grants the claim to a work that is gone
            await store.claim_released.wait()
            assert store.claims == {}
            second = await cue.submit("job", {"i": 2}, key="k1")
            assert await cue.wait(second) == 2
    assert await state_of(cue, first) is runcue.WorkState.CANCELLED
    assert store.claims == {}


# ---------------------------------------------------------------------- r6


async def test_r6_slow_async_on_complete_does_not_hold_the_slot(make_cue: CueFactory) -> None:
    """A slow async on_complete does not keep the service's freed slot idle."""
    cue = make_cue()
    cue.service("svc", concurrent=1)
    starts: list[int] = []
    all_started = anyio.Event()

    @cue.task("job", uses="svc")
    async def job(work: runcue.WorkUnit) -> None:
        starts.append(work.params["i"])
        if len(starts) == 4:
            all_started.set()

    @cue.on_complete
    async def on_complete(work: runcue.WorkUnit, result: object, duration: float) -> None:
        await all_started.wait()  # a slow database write, until every work has started

    with anyio.fail_after(10):
        async with cue:
            for i in range(4):
                await cue.submit("job", {"i": i})
    assert starts == [0, 1, 2, 3]
    assert cue.stats().completed == 4


# ---------------------------------------------------------------------- r7


async def test_r7_async_on_cancel_runs_to_its_end(make_cue: CueFactory) -> None:
    """An async on_cancel for work cancelled while it ran runs to its end, not cut short."""
    cue = make_cue()
    log: list[str] = []
    started = anyio.Event()
    commit = anyio.Event()

    @cue.task("job")
    async def job(work: runcue.WorkUnit) -> str:
        started.set()
        with anyio.CancelScope(shield=True):
            await commit.wait()  # a commit that must not be interrupted
        return "done"

    @cue.on_cancel
    async def on_cancel(work: runcue.WorkUnit) -> None:
        log.append("entered")
        await anyio.lowlevel.checkpoint()  # raises at once in a cancelled scope
        log.append("finished")

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("job")
            await started.wait()
            assert await cue.cancel(work_id) is True
            commit.set()
    assert await state_of(cue, work_id) is runcue.WorkState.CANCELLED
    assert log == ["entered", "finished"]


# ---------------------------------------------------------------------- r8


async def test_r8_rate_limited_during_stop_ends_cancelled_with_on_cancel(
    make_cue: CueFactory,
) -> None:
    """RateLimited raised while the cue stops ends the work cancelled, and on_cancel fires."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    started = anyio.Event()
    stopping = anyio.Event()
    fired: list[str] = []

    @cue.task("job", uses="api")
    async def job(work: runcue.WorkUnit) -> None:
        started.set()
        await stopping.wait()
        raise runcue.RateLimited(retry_after=1)

    @cue.on_cancel
    def on_cancel(work: runcue.WorkUnit) -> None:
        fired.append(work.id)
        stopping.set()  # the first on_cancel is the queued work, cancelled by stop()

    cue.start()
    running = await cue.submit("job", {"n": 1})
    queued = await cue.submit("job", {"n": 2})
    with anyio.fail_after(10):
        await started.wait()
        await cue.stop()
    assert await state_of(cue, running) is runcue.WorkState.CANCELLED
    assert await state_of(cue, queued) is runcue.WorkState.CANCELLED
    assert fired == [queued, running]
    with pytest.raises(runcue.WorkCancelled):
        await cue.wait(running)


# ---------------------------------------------------------------------- r12


class FlakyArtifact:
    """An output whose exists() raises once: on the first look its running work takes before
    the handler ran (the snapshot that lets a failed attempt clean up after itself)."""

    def __init__(self, work: runcue.WorkUnit) -> None:
        self.key = f"s3://bucket/out-{work.id}"
        self.work = work
        self.made = False
        self.raised = 0

    def exists(self) -> bool:
        if self.work.state is runcue.WorkState.RUNNING and not self.made and not self.raised:
            self.raised += 1
            raise ConnectionError("S3 timed out")
        return self.made

    def mtime(self) -> float | None:
        return 1.0 if self.made else None


async def test_r12_artifact_exists_raising_fails_only_that_attempt(make_cue: CueFactory) -> None:
    """An output whose exists() raises fails that attempt only; the retry and the cue go on."""
    cue = make_cue()
    outputs: list[FlakyArtifact] = []
    retried: list[BaseException] = []
    retry_seen = anyio.Event()
    ran: list[int] = []

    def declare(work: runcue.WorkUnit) -> list[FlakyArtifact]:
        outputs.append(FlakyArtifact(work))
        return outputs[-1:]

    @cue.task("job", outputs=declare, retry=2, backoff=0)
    async def job(work: runcue.WorkUnit) -> str:
        ran.append(work.attempt)
        outputs[0].made = True
        return "made"

    @cue.task("other")
    async def other(work: runcue.WorkUnit) -> str:
        await retry_seen.wait()  # runs on while the artifact fails
        return "other done"

    @cue.on_retry
    def on_retry(work: runcue.WorkUnit, error: BaseException, delay: float) -> None:
        retried.append(error)
        retry_seen.set()

    with anyio.fail_after(10):
        async with cue:
            other_id = await cue.submit("other")
            job_id = await cue.submit("job")
            assert await cue.wait(job_id) == "made"
            assert await cue.wait(other_id) == "other done"
    assert len(outputs) == 1
    assert outputs[0].raised == 1
    assert len(retried) == 1
    assert isinstance(retried[0], ConnectionError)
    assert ran == [2]  # the failed attempt never called the handler
    assert (await work_of(cue, job_id)).attempt == 2


# ---------------------------------------------------------------------- r13


@dataclass
class Row:
    """An artifact without ``key`` that cannot be hashed (eq=True, not frozen)."""

    table: str
    id: int

    def exists(self) -> bool:
        return False

    def mtime(self) -> float | None:
        return None


async def test_r13_unhashable_artifact_rejected_at_submit(make_cue: CueFactory) -> None:
    """An unhashable artifact makes submit() raise and leaves no half-submitted work behind."""
    cue = make_cue()

    @cue.task("load", outputs=lambda work: [Row("t", work.params["id"])])
    async def load(work: runcue.WorkUnit) -> int:
        return 1

    @cue.task("plain")
    async def plain(work: runcue.WorkUnit) -> int:
        return 2

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(TypeError, match="unhashable"):
                await cue.submit("load", {"id": 1})
            stats = cue.stats()
            assert (stats.submitted, stats.pending, stats.running) == (0, 0, 0)
            await cue.join()  # nothing is left waiting
            assert await cue.wait(await cue.submit("plain")) == 2
    assert cue.stats().submitted == 1


# ---------------------------------------------------------------------- r16


async def test_r16_rate_limited_pause_gates_the_submit_fast_path(make_cue: CueFactory) -> None:
    """A service paused by RateLimited starts nothing, not even work submitted to an idle queue."""
    cue = make_cue()
    cue.service("api")
    starts: list[int] = []
    paused = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        starts.append(work.params["n"])
        if work.params["n"] == 1:
            raise runcue.RateLimited(retry_after=60)

    def listener(event: runcue.WorkEvent) -> None:
        if event.kind == "paused":
            paused.set()

    cue.subscribe(listener)
    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("call", {"n": 1})
            await paused.wait()
            assert await cue.cancel(first) is True  # give up on it: the queue is empty again
            assert cue.stats().services["api"].paused_for > 50
            second = await cue.submit("call", {"n": 2})
            assert await state_of(cue, second) is runcue.WorkState.PENDING
            for _ in range(ROUNDS):
                await anyio.lowlevel.checkpoint()
            assert await state_of(cue, second) is runcue.WorkState.PENDING
            assert "paused" in cue.explain(second)
            assert await cue.cancel(second) is True
    assert starts == [1]


# ---------------------------------------------------------------------- r17


async def test_r17_raising_retry_on_fails_the_work_not_the_cue(
    make_cue: CueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry_on predicate that raises fails its work without retry, logged; the cue goes on."""
    cue = make_cue()
    job_failed = anyio.Event()

    def retry_on(exc: BaseException) -> bool:
        return bool(exc.response.status >= 500)  # type: ignore[attr-defined]

    @cue.task("job", retry=3, retry_on=retry_on)
    async def job(work: runcue.WorkUnit) -> None:
        raise ValueError("bad input")

    @cue.task("other")
    async def other(work: runcue.WorkUnit) -> str:
        await job_failed.wait()  # runs on while the predicate raises
        return "other done"

    @cue.on_failure
    def on_failure(work: runcue.WorkUnit, error: BaseException) -> None:
        job_failed.set()

    with caplog.at_level(logging.ERROR, logger="runcue"), anyio.fail_after(10):
        async with cue:
            other_id = await cue.submit("other")
            job_id = await cue.submit("job")
            assert await cue.wait(other_id) == "other done"
    failed = await work_of(cue, job_id)
    assert failed.state is runcue.WorkState.FAILED
    assert failed.attempt == 1
    assert cue.stats().retried == 0
    logged = [r for r in caplog.records if r.name == "runcue" and "retry_on" in r.getMessage()]
    assert logged
    assert logged[0].exc_info is not None
    assert isinstance(logged[0].exc_info[1], AttributeError)


# ---------------------------------------------------------------------- r19


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(
            ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}), id="trio-mockclock"
        )
    ],
)
async def test_r19_stall_warning_on_a_virtual_clock_does_not_freeze(make_cue: CueFactory) -> None:
    """A stall deadline that rounds down (0.4 + 0.3) warns on time instead of freezing MockClock."""
    cue = make_cue(stall_warn_after=0.3)
    warned: list[tuple[float, float, int]] = []
    warning = anyio.Event()

    @cue.task("first")
    async def first(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.4)

    @cue.task("blocked")
    async def blocked(work: runcue.WorkUnit) -> None:
        pass

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return work.task == "first"

    @cue.on_stall_warning
    def on_stall_warning(quiet: float, pending: int) -> None:
        warned.append((anyio.current_time(), quiet, pending))
        warning.set()

    with anyio.fail_after(10):
        async with cue:
            await cue.wait(await cue.submit("first"))  # the last progress: t = 0.4
            stuck = await cue.submit("blocked")  # never ready: the stall warning is due at 0.7
            await warning.wait()
            await anyio.sleep(1)  # virtual time keeps moving after the warning
            assert await cue.cancel(stuck) is True
    assert len(warned) == 1
    at, quiet, pending = warned[0]
    assert at == pytest.approx(0.7, abs=1e-6)
    assert quiet == pytest.approx(0.3, abs=1e-6)
    assert pending == 1


# ---------------------------------------------------------------------- r22


async def test_r22_stop_from_an_async_callback_does_not_deadlock(make_cue: CueFactory) -> None:
    """stop() awaited inside an async on_failure returns, and the cue closes."""
    cue = make_cue(check_timeout=30)
    stopped = anyio.Event()

    @cue.task("job")
    async def job(work: runcue.WorkUnit) -> None:
        raise ValueError("fatal")

    @cue.on_failure
    async def give_up(work: runcue.WorkUnit, error: BaseException) -> None:
        await cue.stop()  # give up on the whole batch
        stopped.set()

    cue.start()
    job_id = await cue.submit("job")
    with anyio.fail_after(10):
        await stopped.wait()
        await cue.stop()  # the cue closed: returns at once
    assert await state_of(cue, job_id) is runcue.WorkState.FAILED
    with pytest.raises(runcue.CueStateError):
        await cue.submit("job")


# ---------------------------------------------------------------------- r18: keyed de-dup


async def test_r18_keyed_dedup_is_per_task(make_cue: CueFactory) -> None:
    """The same key under two tasks makes two works; under one task, one."""
    cue = make_cue()
    gate = anyio.Event()

    @cue.task("a")
    async def a(work: runcue.WorkUnit) -> str:
        await gate.wait()
        return "a"

    @cue.task("b")
    async def b(work: runcue.WorkUnit) -> str:
        await gate.wait()
        return "b"

    with anyio.fail_after(10):
        async with cue:
            a_id = await cue.submit("a", key="k")
            b_id = await cue.submit("b", key="k")
            again = await cue.submit("a", {"other": "params"}, key="k")
            gate.set()
            assert await cue.wait(a_id) == "a"
            assert await cue.wait(b_id) == "b"
    assert a_id != b_id
    assert again == a_id
    assert cue.stats().submitted == 2


# ---------------------------------------------------------------------- r21: async priority


async def test_r21_async_priority_callback_is_rejected(make_cue: CueFactory) -> None:
    """@cue.priority rejects an async function with TypeError instead of never awaiting it."""
    cue = make_cue()

    async def priority(ctx: runcue.PriorityContext) -> float:
        return 1.0

    with pytest.raises(TypeError, match="async"):
        cue.priority(priority)

    def sync_priority(ctx: runcue.PriorityContext) -> float:
        return 1.0

    assert cue.priority(sync_priority) is sync_priority


# --------------------------------------------------- second review (spare runners, sweeps)


async def test_t2_stop_from_a_handler_on_a_runner_started_by_a_callback(
    make_cue: CueFactory,
) -> None:
    """A runner spawned from an async on_complete (which runs as a callback) may later run,
    as the service's idle runner, a handler that calls stop(): that stop() returns."""
    cue = make_cue()
    cue.service("t")
    stopped = anyio.Event()

    @cue.task("a")
    async def a(work: runcue.WorkUnit) -> int:
        return 1

    @cue.task("b", uses="t")
    async def b(work: runcue.WorkUnit) -> int:
        if work.params.get("stop"):
            await cue.stop()
            stopped.set()
        return 2

    @cue.on_complete
    async def follow_up(work: runcue.WorkUnit, result: object, duration: float) -> None:
        if work.task == "a":
            await cue.submit("b", {"i": 0})  # spawns the runner of "t" from this callback

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("a")
            await cue.join()
            await cue.submit("b", {"stop": True})  # runs on that runner, now idle
            await stopped.wait()


async def test_t3_skips_with_nothing_running_do_not_resweep_every_time(
    make_cue: CueFactory,
) -> None:
    """300 parked works, then 300 works skipped one by one with nothing running: the parked
    works are re-asked a bounded number of times, not once per skip."""
    cue = make_cue(recheck_interval=60)
    parked = 300
    asked = 0
    waiting = anyio.Event()

    @cue.task("wait")
    async def wait(work: runcue.WorkUnit) -> None:
        return None

    @cue.task("skipme")
    async def skipme(work: runcue.WorkUnit) -> None:
        return None

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        nonlocal asked
        if work.task == "wait":
            asked += 1
            if asked >= parked:
                waiting.set()
            return False
        return True

    @cue.is_stale
    def stale(work: runcue.WorkUnit) -> bool:
        return work.task != "skipme"

    with anyio.fail_after(20):
        async with cue:
            for index in range(parked):
                await cue.submit("wait", {"i": index})
            await waiting.wait()
            before = asked
            for index in range(parked):
                work_id = await cue.submit("skipme", {"i": index})
                await cue.wait(work_id)
            await cue.stop(timeout=0)
    # Spaced sweeps: well under one full re-ask per skip (that would be 90,000 calls).
    assert asked - before < parked * parked // 4


async def test_t5_cancel_of_a_retried_work_never_reaches_its_old_runner(
    make_cue: CueFactory,
) -> None:
    """A retried work handed to another runner, cancelled before that runner starts it, ends
    cancelled itself; the work its old runner went on with is not touched."""
    cue = make_cue()
    cue.service("s", concurrent=1)
    attempts = 0
    x_started = anyio.Event()

    @cue.task("a", uses="s", retry=2, backoff=runcue.Backoff(base=0.05, jitter=False))
    async def a(work: runcue.WorkUnit) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ValueError("the first attempt fails")
        await anyio.sleep(30)

    @cue.task("x", uses="s")
    async def x(work: runcue.WorkUnit) -> str:
        x_started.set()
        await anyio.sleep(0.3)
        return "x done"

    with anyio.fail_after(20):
        async with cue, anyio.create_task_group() as tg:

            def listener(event: runcue.WorkEvent) -> None:
                if event.kind == "started" and event.work.task == "a" and event.work.attempt >= 2:
                    tg.start_soon(cue.cancel, event.work.id)

            cue.subscribe(listener)
            a_id = await cue.submit("a")
            x_id = await cue.submit("x")  # the runner of "a" takes it after "a" fails
            await x_started.wait()
            cue.service("s", concurrent=2)  # now a's retry starts on another runner
            await cue.join()
            assert (await cue.get(x_id)).state is runcue.WorkState.COMPLETED  # type: ignore[union-attr]
            assert (await cue.get(a_id)).state is runcue.WorkState.CANCELLED  # type: ignore[union-attr]


async def test_t1_stop_with_timeout_cancels_work_not_started_yet(make_cue: CueFactory) -> None:
    """stop(timeout=0) right after a submit that went to a runner (idle or new) cancels it
    before its handler runs, instead of waiting for the whole handler."""
    for warm in (False, True):
        cue = make_cue()
        cue.service("s", concurrent=4)
        slow_ran = False

        @cue.task("fast", uses="s")
        async def fast(work: runcue.WorkUnit) -> None:
            return None

        @cue.task("slow", uses="s")
        async def slow(work: runcue.WorkUnit) -> None:
            nonlocal slow_ran
            slow_ran = True
            await anyio.sleep(30)

        with anyio.fail_after(10):
            async with cue:
                if warm:
                    await cue.wait(await cue.submit("fast"))  # leaves an idle runner on "s"
                work_id = await cue.submit("slow")
                await cue.stop(timeout=0)
                work = await cue.get(work_id)
                assert work is not None
                assert work.state is runcue.WorkState.CANCELLED


# ------------------------------------------------------ third review (orphans, fairness)


async def test_u1_producer_finishing_during_a_threaded_check_leaves_its_consumer_sweepable(
    make_cue: CueFactory,
) -> None:
    """A consumer whose producer finishes while its input check runs in a thread is not
    filed as waiting for the outside world: the next completion's sweep starts it."""
    cue = make_cue(checks="thread", recheck_interval=3600)
    made: set[str] = set()
    entered, released = threading.Event(), threading.Event()
    gate = anyio.Event()

    class Made:
        def __init__(self, name: str) -> None:
            self.name = name

        @property
        def key(self) -> tuple[str, str]:
            return ("made", self.name)

        def exists(self) -> bool:
            return self.name in made

        def mtime(self) -> float | None:
            return 1.0 if self.name in made else None

    class SlowToAsk:
        key = ("slow", "input")

        def exists(self) -> bool:
            entered.set()
            released.wait(10)  # until the producer has finished
            return True

        def mtime(self) -> float | None:
            return 1.0

    producing = anyio.Event()

    @cue.task("produce", outputs=lambda work: [Made("x")])
    async def produce(work: runcue.WorkUnit) -> None:
        producing.set()
        await gate.wait()
        made.add("x")

    @cue.task("consume", inputs=lambda work: [Made("x"), SlowToAsk()], outputs=lambda w: [])
    async def consume(work: runcue.WorkUnit) -> str:
        return "consumed"

    @cue.task("tick")
    async def tick(work: runcue.WorkUnit) -> None:
        return None

    @cue.on_complete
    def finished(work: runcue.WorkUnit, result: object, duration: float) -> None:
        if work.task == "produce":
            released.set()

    with anyio.fail_after(10):
        async with cue:
            await cue.submit("produce")
            await producing.wait()
            consumer = await cue.submit("consume")
            await anyio.to_thread.run_sync(entered.wait, 10)  # its check is in the thread
            gate.set()  # the producer finishes while the check waits
            await anyio.to_thread.run_sync(released.wait, 10)
            await cue.wait(await cue.submit("tick"))  # an unrelated completion
            assert await cue.wait(consumer) == "consumed"


async def test_u2_a_long_walk_on_one_service_does_not_hold_up_another(
    make_cue: CueFactory,
) -> None:
    """While the scheduler walks 3,000 not-ready works of service A, a work submitted to an
    idle service B starts before that walk ends."""
    cue = make_cue(checks="inline", recheck_interval=3600)
    cue.service("A", concurrent=2)
    cue.service("B", concurrent=2)
    total = 3_000
    asked = 0
    asked_when_b_started: list[int] = []
    first_walk, second_walk = anyio.Event(), anyio.Event()

    @cue.task("a", uses="A")
    async def a(work: runcue.WorkUnit) -> None:
        return None

    @cue.task("b", uses="B")
    async def b(work: runcue.WorkUnit) -> None:
        asked_when_b_started.append(asked)

    @cue.is_ready
    def ready(work: runcue.WorkUnit) -> bool:
        nonlocal asked
        if work.task != "a":
            return True
        asked += 1
        if asked == total:
            first_walk.set()
        if asked == total + 10:
            second_walk.set()
        end = time.perf_counter() + 50e-6  # a check that costs 50 µs
        while time.perf_counter() < end:
            pass
        return False

    with anyio.fail_after(20):
        async with cue:
            for index in range(total):
                await cue.submit("a", {"i": index})
            await first_walk.wait()
            cue.poke()  # a second walk over all of them
            await second_walk.wait()
            await cue.wait(await cue.submit("b"))
            await cue.stop(timeout=0)
    assert asked_when_b_started[0] < 2 * total
