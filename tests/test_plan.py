"""``await cue.plan()`` (issue 16): what would run and why, before anything runs, without side
effects on the cue."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]
OLD = time.time() - 10_000.0


def make_file(path: Path, stamp: float) -> str:
    """Write a file dated ``stamp``; returns its path as a string."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(path.name)
    os.utime(path, (stamp, stamp))
    return str(path)


def declared_cue(make_cue: CueFactory) -> runcue.Cue:
    """A cue with one declared task, ``build``: reads ``src``, writes ``out``."""
    cue = make_cue()
    cue.service("api", rate="60/min")

    @cue.task("build", uses="api", inputs="src", outputs="out")
    async def build(work: runcue.WorkUnit) -> None:
        raise AssertionError("plan() must not call a handler")

    return cue


async def test_declared_reasons_name_the_files(make_cue: CueFactory, tmp_path: Path) -> None:
    """Declared works get Make's reasons: older than, newer than, run after its producer,
    nothing produces, a cycle, a producer that can never start."""
    data = make_file(tmp_path / "data.csv", OLD + 10)
    report = make_file(tmp_path / "report.pdf", OLD)
    fresh_in = make_file(tmp_path / "fresh.in", OLD)
    fresh_out = make_file(tmp_path / "fresh.out", OLD + 10)
    cue = declared_cue(make_cue)
    older = await cue.submit("build", {"src": data, "out": report})
    after = await cue.submit("build", {"src": report, "out": str(tmp_path / "final.pdf")})
    skipped = await cue.submit("build", {"src": fresh_in, "out": fresh_out})
    orphan = await cue.submit(
        "build", {"src": str(tmp_path / "scans/p7.png"), "out": str(tmp_path / "p7.txt")}
    )
    downstream = await cue.submit(
        "build", {"src": str(tmp_path / "p7.txt"), "out": str(tmp_path / "p8.txt")}
    )
    loop_a = await cue.submit("build", {"src": str(tmp_path / "x"), "out": str(tmp_path / "y")})
    loop_b = await cue.submit("build", {"src": str(tmp_path / "y"), "out": str(tmp_path / "x")})

    plan = await cue.plan()

    assert plan[older].verdict == "run"
    assert plan[older].reason == f"{report} is older than {data}"
    assert plan[after].verdict == "run"
    assert plan[after].depends_on == (older,)
    assert plan[after].reason == f"after build {older} makes {report}"
    assert plan[skipped].verdict == "skip"
    assert plan[skipped].reason == f"{fresh_out} is newer than {fresh_in}"
    assert plan[orphan].verdict == "never"
    assert plan[orphan].reason == f"no work produces {tmp_path / 'scans/p7.png'}"
    assert plan[downstream].verdict == "never"
    assert plan[downstream].depends_on == (orphan,)
    assert f"from build {orphan}, which can never start" in plan[downstream].reason
    for member in (loop_a, loop_b):
        assert plan[member].verdict == "never"
        assert plan[member].reason.startswith("a cycle of works waiting for each other: ")
        assert f"build {loop_a}" in plan[member].reason
        assert f"build {loop_b}" in plan[member].reason
    assert dict(plan.counts) == {"run": 2, "skip": 1, "wait": 0, "never": 4, "error": 0}
    assert not plan.ok
    assert plan.entries[0].service == "api"
    await cue.stop()


async def test_missing_output_and_producer_that_waits(make_cue: CueFactory, tmp_path: Path) -> None:
    """A missing output runs; a consumer of a producer held by is_ready waits, naming the
    input and the producer."""
    src = make_file(tmp_path / "src.txt", OLD)
    cue = declared_cue(make_cue)
    held: set[str] = set()

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return work.params["out"] not in held

    mid = str(tmp_path / "mid.txt")
    held.add(mid)
    producer = await cue.submit("build", {"src": src, "out": mid})
    consumer = await cue.submit("build", {"src": mid, "out": str(tmp_path / "end.txt")})
    plan = await cue.plan()
    assert plan[producer].verdict == "wait"
    assert plan[producer].reason == "is_ready returned False"
    assert plan[consumer].verdict == "wait"
    assert plan[consumer].reason == f"waits for {mid} from build {producer}, which waits too"
    assert plan[consumer].depends_on == (producer,)

    held.clear()
    plan = await cue.plan()
    assert plan[producer].verdict == "run"
    assert plan[producer].reason == f"{mid} does not exist"
    await cue.stop()


async def test_callback_reasons(make_cue: CueFactory) -> None:
    """Callback checks give what they can: is_ready False waits, is_stale False skips,
    is_stale True runs, and a check that raises is an error entry."""
    cue = make_cue()
    cue.service("api", concurrent=2)

    @cue.task("ocr", uses="api")
    async def ocr(work: runcue.WorkUnit) -> None:
        raise AssertionError("plan() must not call a handler")

    @cue.is_ready
    async def is_ready(work: runcue.WorkUnit) -> bool:
        if work.params["page"] == "broken":
            raise ValueError("cannot read the scanner")
        return bool(work.params["page"] != "later")

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["page"] != "done")

    ids = {page: await cue.submit("ocr", {"page": page}) for page in ("new", "done", "later")}
    ids["broken"] = await cue.submit("ocr", {"page": "broken"})
    plan = await cue.plan()
    assert (plan[ids["new"]].verdict, plan[ids["new"]].reason) == ("run", "is_stale returned True")
    assert (plan[ids["done"]].verdict, plan[ids["done"]].reason) == (
        "skip",
        "is_stale returned False",
    )
    assert (plan[ids["later"]].verdict, plan[ids["later"]].reason) == (
        "wait",
        "is_ready returned False",
    )
    assert plan[ids["broken"]].verdict == "error"
    assert plan[ids["broken"]].reason == "is_ready raised ValueError('cannot read the scanner')"
    await cue.stop()


async def test_without_checks_everything_runs(make_cue: CueFactory) -> None:
    """With no checks and no declarations every work would run, and says so."""
    cue = make_cue()

    @cue.task("noop")
    def noop(work: runcue.WorkUnit) -> None: ...

    work_id = await cue.submit("noop")
    plan = await cue.plan()
    assert plan[work_id] == runcue.PlanEntry(
        work_id, "noop", "run", "nothing to check: without checks every work runs"
    )
    assert plan.ok
    await cue.stop()


async def test_plan_has_no_side_effects(
    make_cue: CueFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """plan() parks nothing, counts nothing, logs nothing; the cue then runs as before."""
    cue = declared_cue(make_cue)
    calls: list[str] = []

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        calls.append(work.id)
        raise RuntimeError("a broken check")

    src = make_file(tmp_path / "src.txt", OLD)
    work_id = await cue.submit("build", {"src": src, "out": str(tmp_path / "out.txt")})
    before = (dict(cue._engine.checks.calls), cue._engine.checks.errors, cue.stats())
    with caplog.at_level(logging.DEBUG, logger="runcue"):
        plan = await cue.plan()
    assert plan[work_id].verdict == "error"
    assert plan[work_id].reason == "is_stale raised RuntimeError('a broken check')"
    assert calls == [work_id]
    assert (dict(cue._engine.checks.calls), cue._engine.checks.errors, cue.stats()) == before
    assert len(cue._engine.parking) == 0
    assert not [r for r in caplog.records if r.name == "runcue"]
    assert cue.debug_blocked()[0]["reason"] == "queued"
    await cue.stop()


async def test_running_cue_plans_pending_work_after_running_producers(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """On a running cue, running work is a producer (not an entry) and pending work that
    needs its output would run after it."""
    cue = make_cue(checks="inline")
    release = anyio.Event()
    started = anyio.Event()

    @cue.task("make", outputs="out")
    async def make(work: runcue.WorkUnit) -> None:
        started.set()
        await release.wait()
        make_file(Path(work.params["out"]), time.time())

    @cue.task("use", inputs="src", outputs="out")
    async def use(work: runcue.WorkUnit) -> None:
        make_file(Path(work.params["out"]), time.time())

    raw = str(tmp_path / "raw.txt")
    with anyio.fail_after(10):
        async with cue:
            maker = await cue.submit("make", {"out": raw})
            await started.wait()
            user = await cue.submit("use", {"src": raw, "out": str(tmp_path / "clean.txt")})
            plan = await cue.plan()
            release.set()
    assert plan.running == (maker,)
    assert [entry.work_id for entry in plan.entries] == [user]
    assert plan[user].verdict == "run"
    assert plan[user].reason == f"after running work make {maker} makes {raw}"
    assert plan[user].depends_on == (maker,)


async def test_consumer_of_a_skipped_producer_is_judged_on_its_own(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """A producer that would be skipped rebuilds nothing: its consumer's own checks decide."""
    src = make_file(tmp_path / "src.txt", OLD)
    mid = make_file(tmp_path / "mid.txt", OLD + 10)
    end = make_file(tmp_path / "end.txt", OLD + 20)
    cue = declared_cue(make_cue)
    producer = await cue.submit("build", {"src": src, "out": mid})
    consumer = await cue.submit("build", {"src": mid, "out": end})
    plan = await cue.plan()
    assert plan[producer].verdict == "skip"
    assert plan[consumer].verdict == "skip"
    assert plan[consumer].depends_on == (producer,)
    assert plan[consumer].reason == (
        f"{end} is newer than {mid} (after build {producer}, which would be skipped)"
    )
    await cue.stop()


async def test_unknown_service_never_starts(make_cue: CueFactory) -> None:
    """Work whose service is not declared (any more) can never start."""
    cue = make_cue()
    cue.service("gone")

    @cue.task("orphaned", uses="gone")
    def orphaned(work: runcue.WorkUnit) -> None: ...

    work_id = await cue.submit("orphaned")
    del cue._services["gone"]  # (the public API cannot do this; the plan still says it)
    plan = await cue.plan()
    assert plan[work_id].verdict == "never"
    assert plan[work_id].reason == "its service 'gone' is not declared"
    await cue.stop()


async def test_render_lists_problems_first_and_cuts_long_lists(make_cue: CueFactory) -> None:
    """print(plan) shows the summary, then the verdicts, problems first, ``limit`` of each."""
    cue = make_cue()

    @cue.task("noop")
    def noop(work: runcue.WorkUnit) -> None: ...

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return bool(work.params["ready"])

    for index in range(5):
        await cue.submit("noop", {"ready": index > 0})
    plan = await cue.plan()
    text = plan.render(limit=2)
    assert text.splitlines()[0] == (
        "plan of 5 works: 4 would run, 0 skipped, 1 wait, 0 can never start"
    )
    assert text.index("wait for an input (1):") < text.index("would run (4):")
    assert "  ... and 2 more" in text
    assert str(plan) == plan.render()
    assert len(plan) == 5
    assert len(plan.of("run")) == 4
    with pytest.raises(ValueError, match="verdict must be one of"):
        plan.of("ran")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="not in this plan"):
        plan["nope"]
    await cue.stop()


async def test_a_producer_that_finishes_while_planning(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """Work running when plan() began stays a producer in the plan even if it finishes while
    an async check is awaited."""
    cue = make_cue(checks="inline")
    cue.service("solo", concurrent=1)  # "other" queues behind "make": the cue asks it nothing
    release = anyio.Event()
    started = anyio.Event()

    @cue.task("make", uses="solo", outputs="out")
    async def make(work: runcue.WorkUnit) -> None:
        started.set()
        await release.wait()
        make_file(Path(work.params["out"]), time.time())

    @cue.task("use", inputs="src", outputs="out")
    async def use(work: runcue.WorkUnit) -> None: ...

    @cue.task("other", uses="solo")
    async def other(work: runcue.WorkUnit) -> None: ...

    maker_id: list[str] = []
    planning = [False]

    @cue.is_ready
    async def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "other" and planning[0]:
            release.set()
            await cue.wait(maker_id[0])  # the producer finishes in the middle of the plan
        return not planning[0]

    raw = str(tmp_path / "raw.txt")
    with anyio.fail_after(10):
        async with cue:
            maker_id.append(await cue.submit("make", {"out": raw}))
            await started.wait()
            await cue.submit("other")
            user = await cue.submit("use", {"src": raw, "out": str(tmp_path / "clean.txt")})
            planning[0] = True
            plan = await cue.plan()
            planning[0] = False
            cue.poke()
    assert plan[user].reason == f"after running work make {maker_id[0]} makes {raw}"
