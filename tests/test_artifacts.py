"""Declared artifacts (issue 6): inputs/outputs that derive is_ready and is_stale, precise
wake-ups, diagnostics, safe outputs, and Make's rebuild-what-changed rule."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]
# Tests that inspect parked work use make_cue(recheck_interval=60.0, checks="inline"): no
# periodic recheck to race with, and checks never hop to a thread, so the test only ever sees
# parked work at rest (not "queued"/"checking" in the middle of a recheck).
OLD = time.time() - 10_000.0  # a base mtime far in the past: no clock granularity surprises


def set_mtime(path: Path, stamp: float) -> None:
    """Give a file an exact modification time."""
    os.utime(path, (stamp, stamp))


def make_file(path: Path, text: str, stamp: float = OLD) -> Path:
    """Write a file and date it (in the past by default)."""
    path.write_text(text)
    set_mtime(path, stamp)
    return path


class MemoryStore:
    """In-memory artifacts on a logical clock; counts exists() calls per (name, role)."""

    def __init__(self) -> None:
        self.stamps: dict[str, float] = {}
        self.tick = 0.0
        self.exists_calls: Counter[tuple[str, str]] = Counter()
        self.deleted: list[str] = []

    def write(self, name: str) -> None:
        self.tick += 1.0
        self.stamps[name] = self.tick

    def artifact(self, name: str, role: str = "any") -> MemoryArtifact:
        return MemoryArtifact(self, name, role)


class MemoryArtifact:
    """A custom artifact following the runcue.Artifact protocol (not a file)."""

    __slots__ = ("name", "role", "store")

    def __init__(self, store: MemoryStore, name: str, role: str) -> None:
        self.store, self.name, self.role = store, name, role

    @property
    def key(self) -> tuple[str, str]:
        return ("memory", self.name)

    def exists(self) -> bool:
        self.store.exists_calls[(self.name, self.role)] += 1
        return self.name in self.store.stamps

    def mtime(self) -> float | None:
        return self.store.stamps.get(self.name)

    def delete(self) -> None:
        self.store.deleted.append(self.name)
        self.store.stamps.pop(self.name, None)

    def __repr__(self) -> str:
        return f"MemoryArtifact({self.name!r})"


class Recorder:
    """Subscribes to a cue's events and lets a test wait for them."""

    def __init__(self, cue: runcue.Cue) -> None:
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._changed = anyio.Event()
        cue.subscribe(self._on_event)

    def _on_event(self, event: runcue.WorkEvent) -> None:
        self._counts[(event.kind, None)] += 1
        self._counts[(event.kind, event.work.id)] += 1
        self._changed.set()

    def count(self, kind: str, work_id: str | None = None) -> int:
        return self._counts[(kind, work_id)]

    async def until(self, kind: str, work_id: str | None = None, times: int = 1) -> None:
        while self.count(kind, work_id) < times:
            self._changed = anyio.Event()
            await self._changed.wait()


async def no_new_parks(recorder: Recorder, window: float = 0.25) -> None:
    """Give the engine a short window in which to recheck (and re-park) other parked work;
    returns at the first new park, or when the window ends. Decides nothing by itself: the
    caller then asserts that nothing else was asked."""
    with anyio.move_on_after(window):
        await recorder.until("waiting", times=recorder.count("waiting") + 1)


def blocked(cue: runcue.Cue, work_id: str) -> dict[str, Any]:
    """The debug_blocked() entry of one work."""
    (entry,) = [item for item in cue.debug_blocked() if item["work"].id == work_id]
    return entry


async def finished(cue: runcue.Cue, work_id: str) -> runcue.WorkUnit:
    """Wait for a work to finish and return it."""
    await cue.wait(work_id)
    work = await cue.get(work_id)
    assert work is not None
    return work


# --------------------------------------------------------------------------- 1. declarations


def _forms(tmp_path: Path, store: MemoryStore) -> dict[str, tuple[Any, Any, dict[str, Any]]]:
    """Each way to declare: (inputs spec, outputs spec, params); the input is ``src``."""
    src, out = tmp_path / "src.txt", tmp_path / "out.txt"
    return {
        "key-str": ("src", "out", {"src": str(src), "out": str(out)}),
        "key-pathlike-list": ("src", "out", {"src": [src], "out": [out]}),
        "key-runcue-File": ("src", "out", {"src": runcue.File(src), "out": runcue.File(out)}),
        "callable-path": (lambda w: str(src), lambda w: out, {}),
        "callable-memory": (
            lambda w: [store.artifact("src")],
            lambda w: [store.artifact("out")],
            {},
        ),
    }


FORMS = ["key-str", "key-pathlike-list", "key-runcue-File", "callable-path", "callable-memory"]


@pytest.mark.parametrize("form", FORMS)
async def test_declared_task_waits_runs_then_skips(
    make_cue: CueFactory, tmp_path: Path, form: str
) -> None:
    """Any declaration form: missing input -> waits; input appears -> runs; again -> skipped."""
    store = MemoryStore()
    inputs, outputs, params = _forms(tmp_path, store)[form]
    memory = form == "callable-memory"
    cue = make_cue(recheck_interval=60.0, checks="inline")
    calls: list[str] = []

    @cue.task("build", inputs=inputs, outputs=outputs)
    async def build(work: runcue.WorkUnit) -> None:
        calls.append(work.id)
        if memory:
            store.write("out")
        else:
            (tmp_path / "out.txt").write_text("built")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            first = await cue.submit("build", params)
            await recorder.until("waiting", first)
            assert calls == []
            assert blocked(cue, first)["reason"] == "not_ready"
            if memory:
                store.write("src")
            else:
                make_file(tmp_path / "src.txt", "input")
            cue.poke()
            assert (await finished(cue, first)).skipped is False
            second = await cue.submit("build", params)
            assert (await finished(cue, second)).skipped is True
    assert calls == [first]
    if memory:
        assert "out" in store.stamps
    else:
        assert (tmp_path / "out.txt").read_text() == "built"


async def test_file_and_custom_artifact_follow_the_protocol(tmp_path: Path) -> None:
    """runcue.File and a user class both satisfy runcue.Artifact; File keys on the abspath."""
    store = MemoryStore()
    path = make_file(tmp_path / "a.txt", "a", OLD + 5)
    assert isinstance(store.artifact("x"), runcue.Artifact)
    assert isinstance(runcue.File(path), runcue.Artifact)
    assert runcue.File(path) == runcue.File(str(path))
    assert runcue.File(path).key == os.path.abspath(path)
    assert runcue.File(path).mtime() == pytest.approx(OLD + 5)
    assert runcue.File(tmp_path / "none").mtime() is None
    assert runcue.File(tmp_path / "none").exists() is False


@pytest.mark.parametrize("label", ["inputs", "outputs"])
async def test_non_declaration_is_rejected_at_registration(
    make_cue: CueFactory, label: str
) -> None:
    """inputs=42 (or outputs=42) raises TypeError at @cue.task, naming the task."""
    cue = make_cue()
    options: dict[str, Any] = {label: 42}
    with pytest.raises(TypeError, match=rf"task 'bad'.*{label}"):
        cue.task("bad", **options)
    assert cue.get_task("bad") is None


async def test_declaration_that_raises_fails_submit(make_cue: CueFactory) -> None:
    """An inputs callable that raises (or returns a non-artifact) makes submit() raise TypeError."""
    cue = make_cue()

    def explode(work: runcue.WorkUnit) -> Iterable[Any]:
        raise KeyError("no such column")

    @cue.task("broken", inputs=explode, outputs="out")
    async def broken(work: runcue.WorkUnit) -> None:
        raise AssertionError("never runs")

    @cue.task("odd", inputs=lambda w: [42], outputs="out")
    async def odd(work: runcue.WorkUnit) -> None:
        raise AssertionError("never runs")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(TypeError, match="task 'broken'") as caught:
                await cue.submit("broken", {"out": "x"})
            assert isinstance(caught.value.__cause__, KeyError)
            with pytest.raises(TypeError, match=r"task 'odd'.*not an artifact"):
                await cue.submit("odd", {"out": "x"})
            assert await cue.list() == []


# --------------------------------------------------------------------------- 2. derived checks


@pytest.mark.parametrize(
    ("scenario", "runs"),
    [("output-missing", True), ("output-older", True), ("output-newer", False)],
)
async def test_stale_follows_makes_rule(
    make_cue: CueFactory, tmp_path: Path, scenario: str, runs: bool
) -> None:
    """Stale when an output is missing or older than any input; up to date otherwise."""
    first = make_file(tmp_path / "a.txt", "a", OLD + 10)
    second = make_file(tmp_path / "b.txt", "b", OLD + 20)
    out, other = tmp_path / "out.txt", make_file(tmp_path / "other.txt", "o", OLD + 100)
    if scenario != "output-missing":
        make_file(out, "old", OLD + 15 if scenario == "output-older" else OLD + 30)
    cue = make_cue()
    calls: list[str] = []

    @cue.task("join", inputs="src", outputs="out")
    async def join(work: runcue.WorkUnit) -> None:
        calls.append(work.id)
        out.write_text("new")

    with anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("join", {"src": [first, second], "out": [out, other]})
            work = await finished(cue, work_id)
    assert work.skipped is (not runs)
    assert calls == ([work_id] if runs else [])


@pytest.mark.parametrize(("max_age", "runs"), [(None, False), (7_200.0, False), (60.0, True)])
async def test_max_age_makes_old_outputs_stale(
    make_cue: CueFactory, tmp_path: Path, max_age: float | None, runs: bool
) -> None:
    """max_age= rebuilds an up-to-date output once it is older than max_age seconds."""
    now = time.time()
    src = make_file(tmp_path / "src.txt", "s", now - 3_700)
    out = make_file(tmp_path / "out.txt", "o", now - 3_600)  # one hour old, newer than src
    cue = make_cue()
    calls: list[str] = []

    @cue.task("refresh", inputs="src", outputs="out", max_age=max_age)
    async def refresh(work: runcue.WorkUnit) -> None:
        calls.append(work.id)
        out.write_text("fresh")

    with anyio.fail_after(10):
        async with cue:
            work = await finished(cue, await cue.submit("refresh", {"src": src, "out": out}))
    assert work.skipped is (not runs)
    assert len(calls) == int(runs)


async def test_user_is_ready_applies_on_top_of_declared_inputs(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """Both must agree: is_ready False holds ready work back; True cannot run a missing input."""
    src = make_file(tmp_path / "src.txt", "s")
    absent = tmp_path / "absent.txt"
    cue = make_cue(recheck_interval=60.0, checks="inline")
    gate = {"open": False}
    calls: list[str] = []

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return gate["open"] or work.params["src"] == absent

    @cue.task("build", inputs="src", outputs="out")
    async def build(work: runcue.WorkUnit) -> None:
        calls.append(work.id)
        Path(work.params["out"]).write_text("x")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            held = await cue.submit("build", {"src": src, "out": tmp_path / "o1"})
            starved = await cue.submit("build", {"src": absent, "out": tmp_path / "o2"})
            await recorder.until("waiting", held)
            await recorder.until("waiting", starved)
            assert calls == []
            assert blocked(cue, held)["details"] == "is_ready returned False"
            assert "absent.txt" in blocked(cue, starved)["details"]
            gate["open"] = True
            cue.poke()
            await cue.wait(held)
            await recorder.until("waiting", starved, times=2)
            assert calls == [held]
            assert await cue.cancel(starved)


async def test_user_is_stale_can_skip_but_not_force(make_cue: CueFactory, tmp_path: Path) -> None:
    """is_stale False skips stale declared work; is_stale True does not run up-to-date work."""
    src = make_file(tmp_path / "src.txt", "s", OLD)
    fresh = make_file(tmp_path / "fresh.txt", "f", OLD + 10)
    cue = make_cue()
    calls: list[str] = []

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["says_stale"])

    @cue.task("build", inputs="src", outputs="out")
    async def build(work: runcue.WorkUnit) -> None:
        calls.append(work.id)

    with anyio.fail_after(10):
        async with cue:
            vetoed = await cue.submit(
                "build", {"src": src, "out": tmp_path / "missing.txt", "says_stale": False}
            )
            forced = await cue.submit("build", {"src": src, "out": fresh, "says_stale": True})
            assert (await finished(cue, vetoed)).skipped is True
            assert (await finished(cue, forced)).skipped is True
    assert calls == []
    assert fresh.read_text() == "f"


# --------------------------------------------------------------------------- 3. precise wake-ups

PAIRS = 2_000


def _pipeline(cue: runcue.Cue, store: MemoryStore, gates: dict[bool, anyio.Event]) -> None:
    """Register producer i -> a{i} and consumer a{i} -> b{i} on memory artifacts; a producer
    waits for ``gates[i < PAIRS // 2]`` when that gate exists."""

    @cue.task("produce", outputs=lambda w: [store.artifact(f"a{w.params['i']}", "producer")])
    async def produce(work: runcue.WorkUnit) -> None:
        gate = gates.get(work.params["i"] < PAIRS // 2)
        if gate is not None:
            await gate.wait()
        store.write(f"a{work.params['i']}")

    @cue.task(
        "consume",
        inputs=lambda w: [store.artifact(f"a{w.params['i']}", "consumer")],
        outputs=lambda w: [store.artifact(f"b{w.params['i']}", "consumer")],
    )
    async def consume(work: runcue.WorkUnit) -> None:
        store.write(f"b{work.params['i']}")


def _assert_few_input_checks(cue: runcue.Cue, store: MemoryStore) -> None:
    """Every consumer ran, and its input was asked about at most 3 times."""
    assert all(f"b{i}" in store.stamps for i in range(PAIRS))
    per_consumer = Counter(store.exists_calls[(f"a{i}", "consumer")] for i in range(PAIRS))
    assert max(per_consumer) <= 3, f"consumers by number of input checks: {per_consumer}"
    # Producers are asked once each (they declare no inputs); consumers at most 3 times each.
    assert cue._engine.checks.calls["inputs"] <= PAIRS + 3 * PAIRS
    assert cue.stats().completed == 2 * PAIRS


async def test_pipeline_of_2000_pairs_checks_each_input_at_most_three_times(
    make_cue: CueFactory,
) -> None:
    """2,000 producer/consumer pairs, consumers submitted first: <= 3 input checks each."""
    store = MemoryStore()
    cue = make_cue()
    _pipeline(cue, store, {})
    with anyio.fail_after(20):
        async with cue:
            for i in range(PAIRS):
                await cue.submit("consume", {"i": i})
            for i in range(PAIRS):
                await cue.submit("produce", {"i": i})
    _assert_few_input_checks(cue, store)


async def test_pipeline_consumers_parked_before_producers_exist(make_cue: CueFactory) -> None:
    """Consumers parked before their producers are submitted still get <= 3 input checks."""
    store = MemoryStore()
    gates = {True: anyio.Event(), False: anyio.Event()}
    cue = make_cue(recheck_interval=60.0, checks="inline")
    _pipeline(cue, store, gates)
    recorder = Recorder(cue)
    with anyio.fail_after(20):
        async with cue:
            consumers = [await cue.submit("consume", {"i": i}) for i in range(PAIRS)]
            await recorder.until("waiting", times=PAIRS)
            await anyio.wait_all_tasks_blocked()  # the scheduler settled: nothing produces yet
            for i in range(PAIRS):
                await cue.submit("produce", {"i": i})
            await recorder.until("started", times=PAIRS)
            gates[True].set()  # the first half of the producers finish ...
            for work_id in consumers[: PAIRS // 2]:
                await cue.wait(work_id)
            await no_new_parks(recorder)
            gates[False].set()  # ... then the second half
    _assert_few_input_checks(cue, store)


@pytest.mark.parametrize("producers", ["submitted-with-consumers", "submitted-later"])
async def test_completion_rechecks_only_its_dependents(
    make_cue: CueFactory, producers: str
) -> None:
    """A finished producer rechecks its own consumers; other parked consumers are not asked."""
    store = MemoryStore()
    cue = make_cue(recheck_interval=60.0, checks="inline")
    release = {i: anyio.Event() for i in range(4)}

    @cue.task("produce", outputs=lambda w: [store.artifact(f"a{w.params['i']}", "producer")])
    async def produce(work: runcue.WorkUnit) -> None:
        await release[work.params["i"]].wait()
        store.write(f"a{work.params['i']}")

    @cue.task(
        "consume",
        inputs=lambda w: [store.artifact(f"a{w.params['i']}", f"consumer{w.params['copy']}")],
        outputs=lambda w: [store.artifact(f"b{w.params['i']}-{w.params['copy']}", "out")],
    )
    async def consume(work: runcue.WorkUnit) -> None:
        store.write(f"b{work.params['i']}-{work.params['copy']}")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            consumers = {
                (i, copy): await cue.submit("consume", {"i": i, "copy": copy})
                for i in range(4)
                for copy in (0, 1)
            }
            if producers == "submitted-later":
                await recorder.until("waiting", times=8)
                await anyio.wait_all_tasks_blocked()  # settled while nothing produces a0..a3
            for i in range(4):
                await cue.submit("produce", {"i": i})
            await recorder.until("waiting", times=8)
            await recorder.until("started", times=4)
            before = Counter(store.exists_calls)
            release[0].set()
            await cue.wait(consumers[(0, 0)])
            await cue.wait(consumers[(0, 1)])
            await no_new_parks(recorder)
            for copy in (0, 1):
                role = ("a0", f"consumer{copy}")
                assert store.exists_calls[role] == before[role] + 1, role
            others = {
                (f"a{i}", f"consumer{copy}"): store.exists_calls[(f"a{i}", f"consumer{copy}")]
                - before[(f"a{i}", f"consumer{copy}")]
                for i in range(1, 4)
                for copy in (0, 1)
            }
            for event in release.values():
                event.set()
    assert others == dict.fromkeys(others, 0), "other consumers were rechecked"
    assert all(f"b{i}-{copy}" in store.stamps for i in range(4) for copy in (0, 1))


async def test_undeclared_work_keeps_the_completion_sweep(make_cue: CueFactory) -> None:
    """Work without declarations is still rechecked when any work completes."""
    cue = make_cue(recheck_interval=60.0, checks="inline")
    gate = {"open": False}

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return gate["open"] or work.task != "gated"

    @cue.task("gated")
    async def gated(work: runcue.WorkUnit) -> str:
        return "ran"

    @cue.task("other")
    async def other(work: runcue.WorkUnit) -> None:
        gate["open"] = True

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            waiting = await cue.submit("gated")
            await recorder.until("waiting", waiting)
            await cue.submit("other")
            assert await cue.wait(waiting) == "ran"


# --------------------------------------------------------------------------- 4. diagnostics


async def test_blocked_work_names_its_missing_input_and_its_producer(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """debug_blocked()/explain() name the missing input and whether anything will produce it."""
    cue = make_cue(recheck_interval=60.0, checks="inline")
    cue.service("serial", concurrent=1)
    release = anyio.Event()
    made, queued_out, nobody = tmp_path / "made.txt", tmp_path / "queued.txt", tmp_path / "nb.txt"

    @cue.task("produce", uses="serial", outputs="out")
    async def produce(work: runcue.WorkUnit) -> None:
        await release.wait()
        Path(work.params["out"]).write_text("x")

    @cue.task("consume", inputs="src", outputs="out")
    async def consume(work: runcue.WorkUnit) -> None:
        Path(work.params["out"]).write_text("y")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            running = await cue.submit("produce", {"out": made})
            pending = await cue.submit("produce", {"out": queued_out})
            await recorder.until("started", running)
            on_running = await cue.submit("consume", {"src": made, "out": tmp_path / "c1"})
            on_pending = await cue.submit("consume", {"src": queued_out, "out": tmp_path / "c2"})
            orphan = await cue.submit("consume", {"src": nobody, "out": tmp_path / "c3"})
            for work_id in (on_running, on_pending, orphan):
                await recorder.until("waiting", work_id)

            details = blocked(cue, on_running)["details"]
            assert f"missing input {made}" in details
            assert f"running work {running} (produce) will produce it" in details
            details = blocked(cue, on_pending)["details"]
            assert f"missing input {queued_out}" in details
            assert f"pending work {pending} (produce) will produce it" in details
            entry = blocked(cue, orphan)
            assert entry["reason"] == "not_ready"
            assert (
                f"missing input {nobody}: no pending or running work produces it"
                in (entry["details"])
            )
            assert "will produce it" in cue.explain(on_running)
            assert "no pending or running work produces it" in cue.explain(orphan)

            report = cue.check_graph()
            assert not report.ok
            assert report.cycles == ()
            assert [(work.id, item) for work, item in report.orphans] == [(orphan, str(nobody))]
            assert str(nobody) in str(report)

            assert await cue.cancel(orphan)
            report = cue.check_graph()
            assert report.ok
            assert "sound" in str(report)
            release.set()
    assert (tmp_path / "c1").exists()
    assert (tmp_path / "c2").exists()


async def test_failed_producer_leaves_its_consumer_an_orphan(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """When the only producer fails, the waiting consumer says nothing will produce its input."""
    cue = make_cue(recheck_interval=60.0, checks="inline")
    release = anyio.Event()
    mid = tmp_path / "mid.txt"

    @cue.task("produce", outputs="out")
    async def produce(work: runcue.WorkUnit) -> None:
        await release.wait()
        raise RuntimeError("upstream broke")

    @cue.task("consume", inputs="src", outputs="out")
    async def consume(work: runcue.WorkUnit) -> None:
        raise AssertionError("never runs")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            producer = await cue.submit("produce", {"out": mid})
            consumer = await cue.submit("consume", {"src": mid, "out": tmp_path / "final.txt"})
            await recorder.until("waiting", consumer)
            await recorder.until("started", producer)
            assert "will produce it" in cue.explain(consumer)
            assert cue.check_graph().ok
            release.set()
            with pytest.raises(RuntimeError, match="upstream broke"):
                await cue.wait(producer)
            await recorder.until("waiting", consumer, times=2)
            assert "no pending or running work produces it" in cue.explain(consumer)
            report = cue.check_graph()
            assert [(work.id, item) for work, item in report.orphans] == [(consumer, str(mid))]
            assert await cue.cancel(consumer)


async def test_check_graph_finds_a_cycle(make_cue: CueFactory, tmp_path: Path) -> None:
    """A needs B's output and B needs A's: check_graph() reports the cycle, not orphans."""
    cue = make_cue(recheck_interval=60.0, checks="inline")
    x, y = tmp_path / "x.txt", tmp_path / "y.txt"

    @cue.task("step", inputs="src", outputs="out")
    async def step(work: runcue.WorkUnit) -> None:
        raise AssertionError("never runs")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            a = await cue.submit("step", {"src": y, "out": x})
            b = await cue.submit("step", {"src": x, "out": y})
            await recorder.until("waiting", a)
            await recorder.until("waiting", b)
            report = cue.check_graph()
            assert not report.ok
            assert report.orphans == ()
            assert [sorted(work.id for work in cycle) for cycle in report.cycles] == [
                sorted([a, b])
            ]
            assert "cycle:" in str(report)
            assert "will produce it" in blocked(cue, a)["details"]
            assert await cue.cancel(a)
            assert await cue.cancel(b)


async def test_check_graph_is_ok_for_a_sound_pipeline(make_cue: CueFactory, tmp_path: Path) -> None:
    """A chain whose every missing input has a live producer is sound."""
    cue = make_cue(recheck_interval=60.0, checks="inline")
    release = anyio.Event()
    paths = [tmp_path / f"stage{n}.txt" for n in range(4)]
    make_file(paths[0], "seed")

    @cue.task("stage", inputs="src", outputs="out")
    async def stage(work: runcue.WorkUnit) -> None:
        if work.params["out"] == paths[1]:
            await release.wait()
        Path(work.params["out"]).write_text("x")

    recorder = Recorder(cue)
    with anyio.fail_after(10):
        async with cue:
            ids = [
                await cue.submit("stage", {"src": paths[n], "out": paths[n + 1]})
                for n in reversed(range(3))
            ]
            await recorder.until("started", ids[-1])
            await recorder.until("waiting", ids[0])
            await recorder.until("waiting", ids[1])
            report = cue.check_graph()
            assert report.ok, str(report)
            release.set()
    assert paths[3].exists()


# --------------------------------------------------------------------------- 5. safe outputs


async def test_failed_attempt_removes_the_outputs_it_wrote(
    make_cue: CueFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On failure, outputs created or changed are removed; an untouched old output stays."""
    store = MemoryStore()
    src = make_file(tmp_path / "src.txt", "s", OLD + 50)
    created = tmp_path / "created.txt"
    changed = make_file(tmp_path / "changed.txt", "before", OLD)
    untouched = make_file(tmp_path / "untouched.txt", "keep me", OLD)
    outputs = [created, changed, untouched]

    cue = make_cue()

    @cue.task(
        "build",
        inputs=lambda w: [src],
        outputs=lambda w: [*outputs, store.artifact("memory-out")],
    )
    def build(work: runcue.WorkUnit) -> None:  # sync: runs in a worker thread
        created.write_text("half")
        changed.write_text("half")
        store.write("memory-out")
        raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="runcue"), anyio.fail_after(10):
        async with cue:
            with pytest.raises(RuntimeError, match="boom"):
                await cue.wait(await cue.submit("build"))
    assert not created.exists()
    assert not changed.exists()
    assert untouched.read_text() == "keep me"
    assert store.deleted == ["memory-out"]
    removed = [r.getMessage() for r in caplog.records if "removed the output" in r.getMessage()]
    assert len(removed) == 3


async def test_delete_on_error_false_keeps_outputs(make_cue: CueFactory, tmp_path: Path) -> None:
    """delete_on_error=False leaves what a failed attempt wrote."""
    out = tmp_path / "out.txt"
    cue = make_cue()

    @cue.task("build", outputs="out", delete_on_error=False)
    async def build(work: runcue.WorkUnit) -> None:
        out.write_text("partial")
        raise RuntimeError("boom")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(RuntimeError, match="boom"):
                await cue.wait(await cue.submit("build", {"out": out}))
    assert out.read_text() == "partial"


def test_atomic_write_keeps_the_old_file_when_the_block_raises(tmp_path: Path) -> None:
    """atomic_write never exposes a half-written file and leaves the old one on error."""
    target = make_file(tmp_path / "data.txt", "old")
    seen_inside: list[str] = []

    def write_half_then_fail() -> None:
        with runcue.atomic_write(target) as handle:
            handle.write("half of the new")
            handle.flush()
            seen_inside.append(target.read_text())
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        write_half_then_fail()
    assert seen_inside == ["old"]
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt"]

    with runcue.atomic_write(target) as handle:
        handle.write("new")
        handle.flush()
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    with runcue.atomic_write(tmp_path / "fresh.bin", "wb") as binary:
        binary.write(b"\x00\x01")
    assert (tmp_path / "fresh.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.txt", "fresh.bin"]
    with pytest.raises(ValueError, match="mode"), runcue.atomic_write(target, "r"):
        pass


async def test_failing_handler_with_atomic_write_leaves_the_old_output(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """A handler that fails inside atomic_write leaves the previous output as it was."""
    src = make_file(tmp_path / "src.txt", "s", OLD + 10)
    out = make_file(tmp_path / "out.txt", "previous", OLD)
    cue = make_cue()

    @cue.task("build", inputs="src", outputs="out")
    async def build(work: runcue.WorkUnit) -> None:
        with runcue.atomic_write(work.params["out"]) as handle:
            handle.write("partial")
            raise RuntimeError("died mid-write")

    with anyio.fail_after(10):
        async with cue:
            with pytest.raises(RuntimeError, match="mid-write"):
                await cue.wait(await cue.submit("build", {"src": src, "out": out}))
    assert out.read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "src.txt"]


async def test_handler_that_forgets_its_output_is_reported(
    make_cue: CueFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A completed handler whose output still reads as stale logs a warning on 'runcue'."""
    out = tmp_path / "never-written.txt"
    cue = make_cue()

    @cue.task("lazy", outputs="out")
    async def lazy(work: runcue.WorkUnit) -> str:
        return "done"

    with caplog.at_level(logging.WARNING, logger="runcue"), anyio.fail_after(10):
        async with cue:
            assert await cue.wait(await cue.submit("lazy", {"out": out})) == "done"
    warnings = [r for r in caplog.records if r.name == "runcue" and "forget" in r.getMessage()]
    assert len(warnings) == 1
    assert str(out) in warnings[0].getMessage()
    assert warnings[0].levelno == logging.WARNING


# ------------------------------------------------------------------ 6. rebuild what changed


async def _build_all(
    make_cue: CueFactory, register: Callable[[runcue.Cue, list[str]], None], submit: list[Any]
) -> tuple[list[str], list[str]]:
    """Run one fresh cue over every submission; return (what ran, what was skipped) by label."""
    cue = make_cue()
    ran: list[str] = []
    skipped: list[str] = []
    register(cue, ran)

    @cue.on_skip
    def on_skip(work: runcue.WorkUnit) -> None:
        skipped.append(work.params["label"])

    with anyio.fail_after(10):
        async with cue:
            for task, params in submit:
                await cue.submit(task, params)
    return sorted(ran), sorted(skipped)


async def test_touched_input_rebuilds_only_its_output(make_cue: CueFactory, tmp_path: Path) -> None:
    """Touching one input makes only its output stale; a new Cue rebuilds it and skips the rest."""
    items = ["a", "b", "c"]

    def register(cue: runcue.Cue, ran: list[str]) -> None:
        @cue.task("build", inputs="src", outputs="out")
        async def build(work: runcue.WorkUnit) -> None:
            ran.append(work.params["label"])
            Path(work.params["out"]).write_text(Path(work.params["src"]).read_text().upper())

    submit = [
        ("build", {"label": n, "src": tmp_path / f"{n}.in", "out": tmp_path / f"{n}.out"})
        for n in items
    ]
    for name in items:
        make_file(tmp_path / f"{name}.in", name, OLD)
    assert await _build_all(make_cue, register, submit) == (items, [])
    for name in items:
        set_mtime(tmp_path / f"{name}.out", OLD + 10)
    assert await _build_all(make_cue, register, submit) == ([], items)

    (tmp_path / "b.in").write_text("b2")
    set_mtime(tmp_path / "b.in", OLD + 20)
    assert await _build_all(make_cue, register, submit) == (["b"], ["a", "c"])
    assert (tmp_path / "b.out").read_text() == "B2"
    assert (tmp_path / "a.out").read_text() == "A"
    assert await _build_all(make_cue, register, submit) == ([], items)


async def test_touched_input_rebuilds_its_downstream_chain(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """Two stages, all resubmitted (downstream first): only the touched item's chain rebuilds."""
    items = ["a", "b", "c"]

    def register(cue: runcue.Cue, ran: list[str]) -> None:
        @cue.task("stage", inputs="src", outputs="out")
        async def stage(work: runcue.WorkUnit) -> None:
            ran.append(work.params["label"])
            Path(work.params["out"]).write_text(Path(work.params["src"]).read_text() + "+")

    submit: list[Any] = []
    for name in items:  # downstream first, so it is checked before its upstream rebuilds
        submit.append(
            (
                "stage",
                {"label": f"{name}2", "src": tmp_path / f"{name}.mid", "out": tmp_path / name},
            )
        )
    for name in items:
        submit.append(
            (
                "stage",
                {
                    "label": f"{name}1",
                    "src": tmp_path / f"{name}.raw",
                    "out": tmp_path / f"{name}.mid",
                },
            )
        )
    for name in items:
        make_file(tmp_path / f"{name}.raw", name, OLD)
    everything = sorted(label for _, params in submit for label in [params["label"]])
    assert await _build_all(make_cue, register, submit) == (everything, [])
    for name in items:
        set_mtime(tmp_path / f"{name}.mid", OLD + 10)
        set_mtime(tmp_path / name, OLD + 20)

    (tmp_path / "b.raw").write_text("B")
    set_mtime(tmp_path / "b.raw", OLD + 30)
    ran, skipped = await _build_all(make_cue, register, submit)
    assert (ran, skipped) == (["b1", "b2"], ["a1", "a2", "c1", "c2"])
    assert (tmp_path / "b").read_text() == "B++"
    assert (tmp_path / "a").read_text() == "a++"


async def test_work_waiting_on_an_unproduced_input_is_not_swept_by_completions(
    make_cue: CueFactory,
) -> None:
    """A declared input nobody produces can only appear from outside: 50 unrelated
    completions do not re-ask for it; poke() (like the periodic recheck) does, and the work
    then runs."""
    store = MemoryStore()
    cue = make_cue(recheck_interval=3600)
    built = anyio.Event()

    @cue.task(
        "build",
        inputs=lambda work: [store.artifact("src", "input")],
        outputs=lambda work: [store.artifact("out", "output")],
    )
    async def build(work: runcue.WorkUnit) -> None:
        store.write("out")
        built.set()

    @cue.task("other")
    async def other(work: runcue.WorkUnit) -> None:
        return None

    with anyio.fail_after(20):
        async with cue:
            await cue.submit("build")
            while store.exists_calls[("src", "input")] == 0:
                await anyio.sleep(0.001)
            before = store.exists_calls[("src", "input")]
            for index in range(50):
                await cue.wait(await cue.submit("other", {"i": index}))
            assert store.exists_calls[("src", "input")] == before
            store.write("src")  # from outside
            cue.poke()
            await built.wait()
