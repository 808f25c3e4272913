"""The ledger, property-tested: every submitted work ends in exactly one terminal event.

A hypothesis state machine drives a live cue (on asyncio and on trio, through a blocking
portal) with random submissions and handler outcomes (return, raise, hang until released,
slow, fail once then succeed, "slow down" once), checks that flip (including checks that
raise), async ``on_start``/``on_cancel`` callbacks (starts held in ``on_start`` while limits
change), cancellations, limit changes, pokes, submissions from a plain thread, and a stop.
After every step the counts add up, no service runs more handlers than its limit allows (nor
starts one while paused), and every id is known until it finishes; at the end each id saw
exactly one ``queued`` and exactly one terminal event.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import anyio
import anyio.from_thread
import pytest
import trio  # noqa: F401 - a missing trio must fail this file, not skip half of it
from anyio.from_thread import BlockingPortal
from hypothesis import HealthCheck, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import runcue

SERVICES = ("a", "b")
TASKS = ("a_async", "a_sync", "b_flaky", "free")
OUTCOMES = ("return", "raise", "hang", "slow", "flaky", "slow_down")
TERMINAL = frozenset({"completed", "failed", "skipped", "cancelled"})
GROUPS = 3
GATES = 2
FREE_TIMEOUT = 0.05  # the "free" task's handler timeout: a hang there fails with HandlerTimeout
SAFETY = 30.0  # the longest a sync handler ever blocks, so a bug cannot hang the suite

STEPS: Counter[str] = Counter()  # rules run per backend, to prove the volume
EXAMPLES: Counter[str] = Counter()
SEEN: dict[str, Counter[str]] = {}  # per backend: terminal kinds and notable paths, for the log

Flag = bool | str  # True, False or "raise"


class Boom(Exception):
    """The error a handler with outcome "raise" raises."""


class LedgerMachine(RuleBasedStateMachine):
    """A live cue and a model of what it must never get wrong."""

    backend = "asyncio"
    ids: Bundle[str] = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.stack = contextlib.ExitStack()
        self.portal: BlockingPortal | None = None
        self.cue: runcue.Cue | None = None
        self.run_future: Future[Any] | None = None
        self.keep: int | None = None
        self.stopped = False
        self.open_all = False
        self.end_mode = "drain"
        self.ready: list[Flag] = [True] * GROUPS
        self.stale: list[Flag] = [True] * GROUPS
        self.async_gates: list[anyio.Event] = []
        self.sync_gates = [threading.Event() for _ in range(GATES)]
        self.queued: Counter[str] = Counter()
        self.terminal: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.ends: dict[str, tuple[str, Any, BaseException | None]] = {}
        self.params: dict[str, tuple[str, dict[str, Any]]] = {}
        self.ceiling: dict[str, int | None] = {}
        self.violations: list[str] = []
        self.counter = 0
        self.slowed_down: set[str] = set()  # works whose "slow_down" outcome raised once
        self.hold_starts = False  # async on_start waits for start_gate while set
        self.start_gate: anyio.Event | None = None
        EXAMPLES[self.backend] += 1

    # ------------------------------------------------------------------ plumbing

    def _call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` (awaited if it is async) on the cue's event loop."""
        assert self.portal is not None
        return self.portal.call(func, *args)

    @property
    def live_cue(self) -> runcue.Cue:
        assert self.cue is not None
        return self.cue

    def _listen(self, event: runcue.WorkEvent) -> None:
        """Count events; a limit breach at a start is recorded (listeners must not raise)."""
        work_id = event.work.id
        if event.kind == "queued":
            self.queued[work_id] += 1
        elif event.kind in TERMINAL:
            self.terminal[work_id] += 1
            self.kinds[event.kind] += 1
            self.ends[work_id] = (event.kind, event.work.result, event.work.exception)
        elif event.kind == "started" and event.service is not None:
            service = self.live_cue._services[event.service]
            held = service.running + service.abandoned
            if service.concurrent is not None and held > service.concurrent:
                self.violations.append(
                    f"{work_id} started on {event.service!r} with {held} running,"
                    f" concurrent={service.concurrent}"
                )

    async def _handle_async(self, work: runcue.WorkUnit) -> int:
        params = work.params
        outcome = params["outcome"]
        service = self.live_cue._services[work._task.service]
        if service.paused_until > anyio.current_time():
            self.violations.append(f"{work.id} started while {service.name!r} was paused")
        if outcome == "slow_down" and work.id not in self.slowed_down:
            self.slowed_down.add(work.id)
            raise runcue.RateLimited(retry_after=0.005)
        if outcome == "raise":
            raise Boom(f"work {params['n']} raises")
        if outcome == "flaky" and work.attempt == 1:
            raise ConnectionError(f"work {params['n']} fails its first attempt")
        if outcome == "slow":
            await anyio.sleep(params["delay"])
        if outcome == "hang" and not self.open_all:
            await self.async_gates[params["gate"]].wait()
        return int(params["n"])

    def _handle_sync(self, work: runcue.WorkUnit) -> int:
        params = work.params
        outcome = params["outcome"]
        if outcome == "slow_down" and work.id not in self.slowed_down:
            self.slowed_down.add(work.id)
            raise runcue.RateLimited(retry_after=0.005)
        if outcome == "raise":
            raise Boom(f"work {params['n']} raises")
        if outcome == "flaky" and work.attempt == 1:
            raise ConnectionError(f"work {params['n']} fails its first attempt")
        if outcome == "slow":
            time.sleep(params["delay"])
        hanging = outcome == "hang" and not self.open_all
        if hanging and not self.sync_gates[params["gate"]].wait(SAFETY):
            raise TimeoutError("the test never released this sync handler")
        return int(params["n"])

    def _flag(self, flags: list[Flag], work: runcue.WorkUnit) -> bool:
        value = flags[work.params["group"]]
        if value == "raise":
            raise RuntimeError(f"the check raises for group {work.params['group']}")
        return bool(value)

    async def _on_start(self, work: runcue.WorkUnit) -> None:
        await anyio.sleep(0)
        while self.hold_starts and not self.open_all:
            assert self.start_gate is not None
            await self.start_gate.wait()

    async def _on_cancel(self, work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.001)

    def _build(self, keep: int | None, checks: str, async_checks: bool, callbacks: bool) -> None:
        """Make the cue and its gates inside the event loop."""
        self.async_gates = [anyio.Event() for _ in range(GATES)]
        self.start_gate = anyio.Event()
        cue = runcue.Cue(
            keep_finished=keep,
            checks=checks,  # type: ignore[arg-type]
            recheck_interval=0.005,
            check_timeout=5.0,
            seed=7,
        )
        cue.service("a", concurrent=2)
        cue.service("b", concurrent=1, rate="50/0.1s")
        self.ceiling = {"a": 2, "b": 1}
        cue.task("a_async", uses="a", dedup=True)(self._handle_async)
        cue.task("a_sync", uses="a", dedup=True)(self._handle_sync)
        cue.task(
            "b_flaky",
            uses="b",
            retry=2,
            backoff=runcue.Backoff(base=0.002),
            retry_on=ConnectionError,
            dedup=True,
        )(self._handle_async)
        cue.task("free", timeout=FREE_TIMEOUT, dedup=True)(self._handle_async)
        if async_checks:

            async def is_ready(work: runcue.WorkUnit) -> bool:
                await anyio.sleep(0)
                return self._flag(self.ready, work)

            async def is_stale(work: runcue.WorkUnit) -> bool:
                await anyio.sleep(0)
                return self._flag(self.stale, work)

            cue.is_ready(is_ready)
            cue.is_stale(is_stale)
        else:
            cue.is_ready(lambda work: self._flag(self.ready, work))
            cue.is_stale(lambda work: self._flag(self.stale, work))
        if callbacks:
            cue.on_start(self._on_start)
            cue.on_cancel(self._on_cancel)
        cue.subscribe(self._listen)
        self.cue = cue

    def _open_everything(self) -> None:
        """Let every hanging handler, now and later, return (called on the loop)."""
        self.open_all = True
        if self.start_gate is not None:
            self.start_gate.set()
        for gate in self.async_gates:
            gate.set()
        for sync_gate in self.sync_gates:
            sync_gate.set()

    def _after_stop(self) -> None:
        """The cue stopped: collect run()'s outcome, free stray threads, check every end."""
        self.stopped = True
        assert self.run_future is not None
        self.run_future.result(timeout=10)
        for sync_gate in self.sync_gates:
            sync_gate.set()  # threads abandoned by stop(timeout=) may finish now
        self._call(self._check_all_finished)

    def _check_all_finished(self) -> None:
        cue = self.live_cue
        stats = cue.stats()
        assert stats.pending == 0
        assert stats.running == 0
        for work_id in self.params:
            assert self.queued[work_id] == 1, work_id
            assert self.terminal[work_id] == 1, (work_id, self.terminal[work_id])
        assert set(self.terminal) == set(self.params)
        for name, service in cue._services.items():
            assert service.limiter is not None
            assert service.limiter.borrowed_tokens == 0, name
        if self.keep is not None:
            assert len(cue._engine.finished) <= self.keep
        seen = SEEN.setdefault(self.backend, Counter())
        seen.update(self.kinds)
        seen["check errors"] += cue._engine.checks.errors
        seen["retried"] += stats.retried
        for work_id, (kind, result, exception) in self.ends.items():
            task, params = self.params[work_id]
            outcome = params["outcome"]
            if kind == "completed":
                assert outcome != "raise", work_id
                assert result == params["n"], (work_id, result)
            elif kind == "failed":
                if outcome == "raise":
                    assert isinstance(exception, Boom), (work_id, exception)
                elif outcome == "flaky":
                    assert isinstance(exception, ConnectionError), (work_id, exception)
                else:
                    # A hang on the "free" task times out; so may a "slow" one (a few ms of
                    # sleep) when the machine stalls past FREE_TIMEOUT (a GC pause, a loaded
                    # CI host): still one clean HandlerTimeout, never anything else.
                    assert outcome in ("hang", "slow"), (work_id, outcome, exception)
                    assert task == "free", (work_id, task, exception)
                    assert isinstance(exception, runcue.HandlerTimeout), (work_id, exception)
            elif kind == "cancelled":
                assert isinstance(exception, runcue.WorkCancelled), (work_id, exception)

    # ------------------------------------------------------------------ set-up

    @initialize(
        keep=st.sampled_from([None, 0, 3, 1000]),
        checks=st.sampled_from(["auto", "inline", "thread"]),
        async_checks=st.booleans(),
        end_mode=st.sampled_from(["drain", "stop"]),
        callbacks=st.booleans(),
    )
    def start(
        self, keep: int | None, checks: str, async_checks: bool, end_mode: str, callbacks: bool
    ) -> None:
        """Start a portal on the backend and run a fresh cue under it."""
        self.keep = keep
        self.end_mode = end_mode
        self.portal = self.stack.enter_context(
            anyio.from_thread.start_blocking_portal(self.backend)
        )
        self._call(self._build, keep, checks, async_checks, callbacks)
        self.run_future, _ = self.portal.start_task(self.live_cue.run)

    # ------------------------------------------------------------------ rules

    async def _submit(self, task: str, params: dict[str, Any], priority: float | None) -> str:
        cue = self.live_cue
        before = cue.stats().submitted
        work_id = await cue.submit(task, params, priority=priority)
        assert work_id not in self.params, "a fresh submission reused an id"
        assert cue.stats().submitted == before + 1
        self.params[work_id] = (task, params)
        return work_id

    @precondition(lambda self: not self.stopped)
    @rule(
        target=ids,
        task=st.sampled_from(TASKS),
        outcome=st.sampled_from(OUTCOMES),
        group=st.integers(0, GROUPS - 1),
        gate=st.integers(0, GATES - 1),
        delay=st.sampled_from([0.0, 0.001, 0.003]),
        priority=st.none() | st.sampled_from([0.0, 0.3, 1.0]),
    )
    def submit(
        self,
        task: str,
        outcome: str,
        group: int,
        gate: int,
        delay: float,
        priority: float | None,
    ) -> str:
        """Submit one work with a chosen handler outcome."""
        self.counter += 1
        params = {"n": self.counter, "outcome": outcome, "group": group, "gate": gate}
        params["delay"] = delay
        work_id: str = self._call(self._submit, task, params, priority)
        return work_id

    @precondition(lambda self: not self.stopped)
    @rule(target=ids, outcome=st.sampled_from(["return", "raise", "slow"]))
    def submit_from_a_thread(self, outcome: str) -> str:
        """submit_threadsafe() from this plain (non-loop) thread."""
        self.counter += 1
        params = {"n": self.counter, "outcome": outcome, "group": 0, "gate": 0, "delay": 0.001}
        before = self._call(lambda: self.live_cue.stats().submitted)
        work_id = self.live_cue.submit_threadsafe("a_async", params)
        assert work_id not in self.params
        self.params[work_id] = ("a_async", params)
        assert self._call(lambda: self.live_cue.stats().submitted) == before + 1
        return work_id

    async def _resubmit(self, work_id: str) -> str:
        cue = self.live_cue
        task, params = self.params[work_id]
        twins = [w for w in cue._engine.works.values() if w.task == task and w.params == params]
        before = cue.stats().submitted
        new_id = await cue.submit(task, dict(params))
        if twins and not twins[0].state.finished:
            # (A long burst of submissions may let the twin finish inside submit() itself:
            # de-duplication holds against work live when the submission is taken.)
            assert new_id == twins[0].id, "equal live work was queued twice"
            assert cue.stats().submitted == before
        else:
            assert new_id not in self.params, "finished work's id came back"
            assert cue.stats().submitted == before + 1
            self.params[new_id] = (task, params)
        return new_id

    @precondition(lambda self: not self.stopped)
    @rule(target=ids, work_id=ids)
    def resubmit(self, work_id: str) -> str:
        """Submit equal params again: the live twin's id, or a new work once it finished."""
        new_id: str = self._call(self._resubmit, work_id)
        return new_id

    async def _cancel(self, work_id: str) -> None:
        cue = self.live_cue
        work = await cue.get(work_id)
        live = work is not None and not work.state.finished
        if work is not None and work.state is runcue.WorkState.RUNNING:
            SEEN.setdefault(self.backend, Counter())["cancel running"] += 1
        assert await cue.cancel(work_id) is live

    @rule(work_id=ids)
    def cancel(self, work_id: str) -> None:
        """Cancel a work: True exactly when it was pending or running."""
        self._call(self._cancel, work_id)

    async def _cancel_live(self, index: int, running_only: bool) -> None:
        cue = self.live_cue
        live = [
            work
            for work in cue._engine.works.values()
            if not running_only or work.state is runcue.WorkState.RUNNING
        ]
        if not live:
            return
        work = live[index % len(live)]
        if work.state is runcue.WorkState.RUNNING:
            SEEN.setdefault(self.backend, Counter())["cancel running"] += 1
        assert await cue.cancel(work.id) is True
        assert self.terminal[work.id] <= 1

    @rule(index=st.integers(0, 1000), running_only=st.booleans())
    def cancel_live(self, index: int, running_only: bool) -> None:
        """Cancel one work that is pending or running now: cancel() says True."""
        self._call(self._cancel_live, index, running_only)

    def _release(self, gate: int) -> None:
        self.async_gates[gate].set()
        self.async_gates[gate] = anyio.Event()
        old = self.sync_gates[gate]
        self.sync_gates[gate] = threading.Event()
        old.set()

    @rule(gate=st.integers(0, GATES - 1))
    def release(self, gate: int) -> None:
        """Let the handlers hanging on one gate return."""
        self._call(self._release, gate)

    @rule(group=st.integers(0, GROUPS - 1), value=st.sampled_from([True, False, "raise"]))
    def flip_ready(self, group: int, value: Flag) -> None:
        """Change what is_ready answers for a group (True, False, or raise)."""
        self.ready[group] = value

    @rule(group=st.integers(0, GROUPS - 1), value=st.sampled_from([True, True, False, "raise"]))
    def flip_stale(self, group: int, value: Flag) -> None:
        """Change what is_stale answers for a group (True, False, or raise)."""
        self.stale[group] = value

    def _limits(self, name: str, concurrent: int | None, rate: str | None) -> None:
        cue = self.live_cue
        cue.service(name, concurrent=concurrent, rate=rate)
        service = cue._services[name]
        held = service.running + service.abandoned
        self.ceiling[name] = None if concurrent is None else max(concurrent, held)

    @precondition(lambda self: not self.stopped)
    @rule(
        name=st.sampled_from(SERVICES),
        concurrent=st.none() | st.integers(1, 3),
        rate=st.sampled_from([None, "50/0.1s", "5/0.01s", "1000/s;20/0.05s"]),
    )
    def change_limits(self, name: str, concurrent: int | None, rate: str | None) -> None:
        """Declare a service again with other limits while it runs."""
        self._call(self._limits, name, concurrent, rate)

    def _hold_starts(self, hold: bool) -> None:
        self.hold_starts = hold
        if not hold:
            assert self.start_gate is not None
            self.start_gate.set()
            self.start_gate = anyio.Event()

    @rule(hold=st.booleans())
    def hold_starts_in_on_start(self, hold: bool) -> None:
        """Hold admitted starts in their async on_start (or let them go): limits may change,
        services pause and the cue stop while they wait there."""
        self._call(self._hold_starts, hold)

    @rule()
    def poke(self) -> None:
        """Ask is_ready again for every waiting work."""
        self._call(self.live_cue.poke)

    async def _settle(self, ticks: int) -> None:
        for _ in range(ticks):
            await anyio.sleep(0)

    @rule(ticks=st.integers(1, 30))
    def settle(self, ticks: int) -> None:
        """Let the loop run a few turns."""
        self._call(self._settle, ticks)

    async def _stop(self, timeout: float, release_first: bool) -> None:
        if release_first:
            self._open_everything()
            await self.live_cue.stop()
        else:
            await self.live_cue.stop(timeout=timeout)

    @precondition(lambda self: not self.stopped and self.counter >= 8)
    @rule(timeout=st.sampled_from([0.005, 0.02]), release_first=st.booleans())
    def stop(self, timeout: float, release_first: bool) -> None:
        """Stop mid-run (after releasing every hang, or cancelling it after a timeout)."""
        SEEN.setdefault(self.backend, Counter())["stop mid-run"] += 1
        self._call(self._stop, timeout, release_first)
        self._after_stop()

    async def _submit_after_stop(self) -> None:
        cue = self.live_cue
        before = cue.stats()
        with pytest.raises(runcue.CueStateError, match="stopp"):
            await cue.submit("a_async", {"n": -1, "outcome": "return"})
        assert cue.stats().submitted == before.submitted

    @precondition(lambda self: self.stopped)
    @rule()
    def submit_after_stop(self) -> None:
        """Submitting to a stopped cue raises and changes nothing."""
        self._call(self._submit_after_stop)
        with pytest.raises(runcue.CueStateError, match="running cue"):
            self.live_cue.submit_threadsafe("a_async", {"n": -1, "outcome": "return"})

    # ------------------------------------------------------------------ invariants

    def _check_step(self) -> None:
        cue = self.live_cue
        stats = cue.stats()
        assert stats.submitted == (
            stats.pending
            + stats.running
            + stats.completed
            + stats.failed
            + stats.skipped
            + stats.cancelled
        ), stats
        assert stats.submitted == len(self.params)
        assert stats.completed == self.kinds["completed"]
        assert stats.failed == self.kinds["failed"]
        assert stats.skipped == self.kinds["skipped"]
        assert stats.cancelled == self.kinds["cancelled"]
        assert not self.violations, self.violations
        for name in SERVICES:
            service = cue._services[name]
            held = service.running + service.abandoned
            assert stats.services[name].running == held
            ceiling = self.ceiling[name]
            assert ceiling is None or held <= ceiling, (name, held, ceiling)
            if service.concurrent is not None and held <= service.concurrent:
                self.ceiling[name] = service.concurrent
        for work_id in self.params:
            ended = self.terminal[work_id]
            assert ended <= 1, (work_id, ended)
            work = cue._find(work_id)
            if ended == 0:
                assert work is not None, f"{work_id} was forgotten before it finished"
                assert not work.state.finished, (work_id, work.state)
            else:
                assert work is None or work.state.finished, (work_id, work.state)

    @invariant()
    def ledger_adds_up(self) -> None:
        """The ledger adds up, limits hold, and every id is known until it finishes."""
        if self.portal is not None and self.cue is not None:
            STEPS[self.backend] += 1
            self._call(self._check_step)

    # ------------------------------------------------------------------ the end

    async def _finish(self) -> None:
        cue = self.live_cue
        if self.end_mode == "drain":
            self._open_everything()
            self.ready[:] = [True] * GROUPS
            self.stale[:] = [True] * GROUPS
            cue.poke()
            with anyio.fail_after(20):
                await cue.join()
            assert cue.stats().pending == 0
            assert cue.stats().running == 0
            await cue.stop()
        else:
            await cue.stop(timeout=0.01)

    def teardown(self) -> None:
        """Stop the cue (drain or cut short), check every end, close the portal."""
        try:
            if self.portal is not None and self.cue is not None and not self.stopped:
                self._call(self._finish)
                self._after_stop()
        finally:
            for sync_gate in self.sync_gates:
                sync_gate.set()
            self.stack.close()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_every_work_ends_exactly_once_and_the_ledger_adds_up(backend: str) -> None:
    """Random runs on each backend keep the ledger, the limits and one end per work."""
    # A fixed seed (not derandomize=True, whose first examples here are degenerate): the
    # same varied runs on every CI run.
    machine = seed(20_240_601)(
        type(f"LedgerMachine_{backend}", (LedgerMachine,), {"backend": backend})
    )
    STEPS[backend] = 0
    EXAMPLES[backend] = 0
    SEEN[backend] = Counter()
    started = time.perf_counter()
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=150,
            stateful_step_count=80,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    elapsed = time.perf_counter() - started
    print(
        f"ledger[{backend}]: {EXAMPLES[backend]} runs, {STEPS[backend]} steps on the loop"
        f" in {elapsed:.1f}s; seen: {dict(SEEN[backend])}"
    )
    assert STEPS[backend] >= 2000
