"""runcue.trace() and runcue.Timeline: a run as a Trace Event Format file (Perfetto,
chrome://tracing), checked against the format's documented fields."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]
Event = dict[str, Any]

# The Trace Event Format's phases, and the metadata events it names.
PHASES = set("BEXiIbneCMsftPONDcR")
METADATA_ARGS = {
    "process_name": ("name", str),
    "process_labels": ("labels", str),
    "process_sort_index": ("sort_index", int),
    "thread_name": ("name", str),
    "thread_sort_index": ("sort_index", int),
}
EPSILON = 0.01  # µs: timestamps are rounded to the nanosecond


def is_number(value: object) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_trace_event_format(document: Any) -> list[Event]:
    """Assert that ``document`` follows the JSON Object Format of the Trace Event Format.

    The fields, from the format's definition: an object with a ``traceEvents`` array (and
    optionally ``displayTimeUnit`` "ms" or "ns", and ``otherData``, an object); each event
    has ``name``, ``ph`` (one character), ``ts`` (microseconds), ``pid`` and ``tid``;
    ``cat`` is a string and ``args`` an object when present. Complete events (``X``) have a
    ``dur``; async events (``b``/``n``/``e``) have a ``cat`` and an ``id`` (events with the
    same category and id belong together) and every ``b`` is closed by an ``e``; instant
    events' scope ``s`` is ``g``, ``p`` or ``t``; counter events (``C``) carry numbers in
    ``args``; metadata events (``M``) are ``process_name``/``thread_name`` with
    ``args.name``, ``process_labels`` with ``args.labels`` or ``*_sort_index`` with
    ``args.sort_index``.
    """
    assert isinstance(document, dict)
    events = document["traceEvents"]
    assert isinstance(events, list)
    assert document.get("displayTimeUnit", "ms") in ("ms", "ns")
    assert isinstance(document.get("otherData", {}), dict)
    open_async: dict[tuple[str, str], float] = {}
    for event in events:
        assert isinstance(event, dict), event
        assert isinstance(event["name"], str), event
        assert isinstance(event["ph"], str) and event["ph"] in PHASES, event
        assert is_number(event["ts"]) and event["ts"] >= 0, event
        assert isinstance(event["pid"], int) and isinstance(event["tid"], int), event
        assert isinstance(event.get("cat", ""), str), event
        assert isinstance(event.get("args", {}), dict), event
        phase = event["ph"]
        if phase == "X":
            assert is_number(event["dur"]) and event["dur"] >= 0, event
        elif phase in "bne":
            assert isinstance(event["cat"], str), event
            assert isinstance(event["id"], (str, int)), event
            key = (event["cat"], str(event["id"]))
            if phase == "b":
                assert key not in open_async, f"a second begin for {key}"
                open_async[key] = event["ts"]
            elif phase == "e":
                assert key in open_async, f"an end without a begin: {event}"
                assert event["ts"] >= open_async.pop(key) - EPSILON, event
        elif phase in "iI":
            assert event.get("s", "t") in ("g", "p", "t"), event
        elif phase == "C":
            assert event["args"] and all(is_number(v) for v in event["args"].values()), event
        elif phase == "M":
            key_name, kind = METADATA_ARGS[event["name"]]
            assert isinstance(event["args"][key_name], kind), event
    assert not open_async, f"async events never closed: {open_async}"
    return events


def load(path: Path) -> list[Event]:
    """The events of a trace file, after checking the file against the format."""
    return check_trace_event_format(json.loads(path.read_text(encoding="utf-8")))


def of(events: list[Event], phase: str) -> list[Event]:
    """The events of one phase."""
    return [event for event in events if event["ph"] == phase]


def names(events: list[Event], metadata: str) -> dict[tuple[int, int], str]:
    """(pid, tid) -> the name a ``process_name`` or ``thread_name`` event gives."""
    return {
        (e["pid"], e["tid"]): e["args"]["name"] for e in of(events, "M") if e["name"] == metadata
    }


def process_of(events: list[Event], service: str) -> int:
    """The pid of a service's process."""
    (pid,) = [pid for (pid, _), name in names(events, "process_name").items() if name == service]
    return pid


async def test_a_run_becomes_a_valid_trace_event_file(make_cue: CueFactory, tmp_path: Path) -> None:
    """A run with retries, a failure, a skip and a task without a service gives a file that
    follows the format: a process per service, a named thread per slot, one complete slice
    per attempt with its outcome, and a queue counter that ends at zero."""
    cue = make_cue()
    cue.service("api", concurrent=2, rate="1000/s")

    @cue.task("fetch", uses="api", retry=2, backoff=runcue.Backoff(base=0.001, jitter=False))
    async def fetch(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.001)
        if work.params["n"] == 0 and work.attempt == 1:
            raise ValueError("flaky")
        if work.params["n"] == 1:
            raise KeyError("broken")

    @cue.task("local")
    def local(work: runcue.WorkUnit) -> None:
        return None

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return work.params.get("n") != 5

    path = tmp_path / "run.json"
    with anyio.fail_after(10):
        async with cue, runcue.trace(cue, path):
            for n in range(6):
                await cue.submit("fetch", {"n": n})
            await cue.submit("local")
    events = load(path)
    stats = cue.stats()
    assert set(names(events, "process_name").values()) == {"api", "(no service)"}
    api = process_of(events, "api")
    labels = [e["args"]["labels"] for e in of(events, "M") if e["name"] == "process_labels"]
    assert labels == ["concurrent=2, rate=1000/s"]
    slices = of(events, "X")
    assert len(slices) == sum(service.started for service in stats.services.values()) == 8
    outcomes = sorted(event["args"]["outcome"] for event in slices)
    # n=0 retried then completed, n=1 retried then failed, 2-4 and local completed, 5 skipped
    assert outcomes == ["completed"] * 5 + ["failed", "retried", "retried"]
    failed = next(event for event in slices if event["args"]["outcome"] == "failed")
    assert failed["name"] == "fetch (failed)"
    assert "KeyError" in failed["args"]["error"]
    threads = names(events, "thread_name")
    for event in slices:
        assert threads[(event["pid"], event["tid"])] == f"slot {event['tid']}"
    assert {event["tid"] for event in slices if event["pid"] == api} <= {1, 2}
    counters = [event for event in of(events, "C") if event["pid"] == api]
    assert max(event["args"]["running"] for event in counters) <= 2
    assert counters[-1]["args"] == {"queued": 0, "running": 0}
    skipped = [e for e in of(events, "e") if e["args"].get("next") == "skipped"]
    assert len(skipped) == 1


async def test_an_attempt_takes_the_lowest_free_slot(make_cue: CueFactory, tmp_path: Path) -> None:
    """Three attempts at once sit on slots 1-3; the next one takes the slot freed first
    (the lowest free), not a new row."""
    cue = make_cue()
    cue.service("api", concurrent=3)
    gates = {name: anyio.Event() for name in "abcd"}
    running: dict[str, anyio.Event] = {name: anyio.Event() for name in "abcd"}

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        running[work.params["name"]].set()
        await gates[work.params["name"]].wait()

    path = tmp_path / "slots.json"
    with anyio.fail_after(10):
        async with cue, runcue.trace(cue, path):
            ids = {name: await cue.submit("hold", {"name": name}) for name in "abcd"}
            for name in "abc":
                await running[name].wait()
            gates["b"].set()
            await running["d"].wait()
            for gate in gates.values():
                gate.set()
    slot = {event["args"]["work"]: event["tid"] for event in of(load(path), "X")}
    # (a, b and c start together, in the order their runners run: on trio, any order)
    assert sorted(slot[ids[name]] for name in "abc") == [1, 2, 3]
    assert slot[ids["d"]] == slot[ids["b"]]


async def test_attempts_on_one_slot_never_overlap(make_cue: CueFactory, tmp_path: Path) -> None:
    """However busy the service, the slices on one slot follow one another."""
    cue = make_cue()
    cue.service("api", concurrent=4)

    @cue.task("nap", uses="api")
    async def nap(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.001 * (work.params["n"] % 3))

    path = tmp_path / "busy.json"
    with anyio.fail_after(10):
        async with cue, runcue.trace(cue, path):
            for n in range(40):
                await cue.submit("nap", {"n": n})
    by_slot: dict[tuple[int, int], list[Event]] = defaultdict(list)
    for event in of(load(path), "X"):
        by_slot[(event["pid"], event["tid"])].append(event)
    assert 1 <= len(by_slot) <= 4
    assert sum(len(slices) for slices in by_slot.values()) == 40
    for slices in by_slot.values():
        slices.sort(key=lambda event: event["ts"])
        for before, after in itertools.pairwise(slices):
            assert after["ts"] >= before["ts"] + before["dur"] - EPSILON


async def test_each_wait_runs_from_queued_to_its_start(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """Every work's wait is an async slice named waiting, from its submission to the start of
    its attempt, on its service's process; a retry's wait is named retry backoff."""
    cue = make_cue()
    cue.service("api", concurrent=1)

    @cue.task("step", uses="api", retry=2, backoff=runcue.Backoff(base=0.005, jitter=False))
    async def step(work: runcue.WorkUnit) -> None:
        if work.params["n"] == 2 and work.attempt == 1:
            raise ValueError("again")

    path = tmp_path / "waits.json"
    with anyio.fail_after(10):
        async with cue, runcue.trace(cue, path):
            for n in range(3):
                await cue.submit("step", {"n": n})
    events = load(path)
    api = process_of(events, "api")
    begins = {(e["id"], e["name"]): e for e in of(events, "b")}
    ends = {(e["id"], e["name"]): e for e in of(events, "e")}
    for attempt in of(events, "X"):
        work, number = attempt["args"]["work"], attempt["args"]["attempt"]
        wait = "waiting" if number == 1 else "retry backoff"
        assert begins[(work, wait)]["pid"] == api
        assert begins[(work, wait)]["ts"] <= attempt["ts"]
        assert ends[(work, wait)]["ts"] == pytest.approx(attempt["ts"], abs=EPSILON)
        assert ends[(work, wait)]["args"]["next"] == "started"
    assert sum(1 for _, name in begins if name == "retry backoff") == 1


async def test_a_rate_limit_pause_is_shown(make_cue: CueFactory, tmp_path: Path) -> None:
    """A RateLimited attempt ends as rate_limited, the service gets an instant marking the
    pause, and the work waits in a rate-limit pause slice."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    calls: list[int] = []

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise runcue.RateLimited(retry_after=0.01)

    path = tmp_path / "pause.json"
    with anyio.fail_after(10):
        async with cue, runcue.trace(cue, path):
            await cue.submit("call")
    events = load(path)
    assert [e["args"]["outcome"] for e in of(events, "X")] == ["rate_limited", "completed"]
    (instant,) = of(events, "i")
    assert instant["s"] == "p"
    assert "paused" in instant["name"]
    assert [e["name"] for e in of(events, "b")] == ["waiting", "rate-limit pause"]


async def test_the_file_is_whole_when_the_block_raises(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """An exception in the block comes out as itself and the file is still written whole:
    the attempt still running and the work still waiting show as unfinished."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    started = anyio.Event()

    @cue.task("forever", uses="api")
    async def forever(work: runcue.WorkUnit) -> None:
        started.set()
        await anyio.sleep_forever()

    async def fail_inside() -> None:
        async with cue, runcue.trace(cue, path):
            await cue.submit("forever", {"n": 1})
            await cue.submit("forever", {"n": 2})
            await started.wait()
            raise KeyError("boom")

    path = tmp_path / "raised.json"
    with anyio.fail_after(10), pytest.raises(KeyError):
        await fail_inside()
    events = load(path)
    assert [e["args"]["outcome"] for e in of(events, "X")] == ["unfinished"]
    assert [e["args"]["next"] for e in of(events, "e") if e["name"] == "waiting"].count(
        "unfinished"
    ) == 1


async def test_the_file_is_whole_when_cancelled(make_cue: CueFactory, tmp_path: Path) -> None:
    """Cancelled from outside, the block still writes the whole file before it ends."""
    cue = make_cue()
    started = anyio.Event()

    @cue.task("forever")
    async def forever(work: runcue.WorkUnit) -> None:
        started.set()
        await anyio.sleep_forever()

    path = tmp_path / "cancelled.json"
    with anyio.fail_after(10):
        with anyio.CancelScope() as scope:
            async with cue, runcue.trace(cue, path):
                await cue.submit("forever")
                await started.wait()
                scope.cancel()
                await anyio.sleep_forever()
    assert scope.cancelled_caught
    events = load(path)
    assert len(of(events, "X")) == 1


async def test_a_bad_path_is_refused_before_anything_runs(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """A path in a missing directory, or something that is not a path, is refused at entry
    with the value and the fix in the message."""
    cue = make_cue()
    missing = tmp_path / "no" / "such" / "dir" / "run.json"
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        async with runcue.trace(cue, missing):
            raise AssertionError("never entered")
    with pytest.raises(TypeError, match="got 42"):
        async with runcue.trace(cue, 42):  # type: ignore[arg-type]
            raise AssertionError("never entered")
    assert not missing.parent.exists()


async def test_a_timeline_is_also_a_plain_listener(make_cue: CueFactory, tmp_path: Path) -> None:
    """Timeline() subscribed by hand records the run; write() gives the same kind of file."""
    cue = make_cue()

    @cue.task("job")
    async def job(work: runcue.WorkUnit) -> None:
        return None

    timeline = runcue.Timeline()
    unsubscribe = cue.subscribe(timeline)
    with anyio.fail_after(10):
        async with cue:
            for n in range(3):
                await cue.submit("job", {"n": n})
    unsubscribe()
    assert len(timeline) > 0
    path = tmp_path / "plain.json"
    timeline.write(path)
    events = load(path)
    assert len(of(events, "X")) == 3
    assert min(event["ts"] for event in events if event["ph"] != "M") == 0
