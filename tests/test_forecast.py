"""``await cue.forecast()`` (issue 16): the cue's own services, limits, checks and dependencies
run with stand-in handlers on a virtual clock; finish time, binding service, waits."""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]
OLD = time.time() - 10_000.0


def never_called(work: runcue.WorkUnit) -> None:
    """A handler a forecast must never call."""
    raise AssertionError("a forecast called a real handler")


def forty_calls(make_cue: CueFactory) -> runcue.Cue:
    """40 handlers of 20 ms under rate="10/0.3s" and concurrent=5 (nothing run yet)."""
    cue = make_cue()
    cue.service("api", rate="10/0.3s", concurrent=5)

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.02)

    return cue


async def test_forecast_agrees_with_a_real_run(make_cue: CueFactory) -> None:
    """The forecast's finish time is within 5 % of a real run of the same cue, handlers
    really sleeping. A loaded machine only makes a real run late, never early: the best of
    up to three real runs is compared."""
    real_runs: list[float] = []
    forecasts: list[float] = []
    ends: list[float] = []
    while len(real_runs) < 3:
        cue = forty_calls(make_cue)
        for index in range(40):
            await cue.submit("call", {"i": index})
        report = await cue.forecast(durations={"call": 0.02})
        assert (report.works, report.completed, report.binding) == (40, 40, "api")
        forecasts.append(report.finish)
        ends.clear()
        cue.subscribe(lambda event: ends.append(event.time) if event.kind == "completed" else None)
        with anyio.fail_after(10):
            begun = anyio.current_time()
            async with cue:
                pass
        real_runs.append(max(ends) - begun)
        if abs(min(real_runs) - report.finish) / min(real_runs) < 0.05:
            break
    # Four windows of ten starts, each window in two rounds of five: the last ends at 0.94 s.
    assert forecasts == [pytest.approx(0.94)] * len(forecasts)
    best = min(real_runs)
    assert abs(best - 0.94) / best < 0.05, real_runs


async def test_limits_binding_utilisation_and_waits(make_cue: CueFactory) -> None:
    """Ten 2-second works at 60/min and 5 at once: two rounds, concurrency binds fully,
    the rate is barely used; half the works wait one round."""
    cue = make_cue()
    cue.service("api", rate="60/min", concurrent=5)
    cue.task("extract", uses="api")(never_called)
    for index in range(10):
        await cue.submit("extract", {"i": index})
    report = await cue.forecast(durations={"extract": 2.0})
    assert report.finish == pytest.approx(4.0)
    assert (report.binding, report.binding_limit) == ("api", "concurrent 5")
    api = report.services["api"]
    assert api.limits == "rate=60/min, concurrent=5"
    assert api.started == 10
    assert api.busy == pytest.approx(20.0)
    assert dict(api.by_limit) == {
        "rate 60/min": pytest.approx(10 / 60),
        "concurrent 5": pytest.approx(1.0),
    }
    assert api.utilisation == pytest.approx(1.0)
    assert report.waits.count == 10
    assert report.waits.max == pytest.approx(2.0)
    assert report.waits.p50 == pytest.approx(1.0)
    assert report.waits.p95 == pytest.approx(2.0)
    assert dict(report.costs) == {}
    assert dict(api.costs) == {}
    text = str(report)
    assert text.startswith("forecast: 10 works finish in 4s (10 run, 0 skipped")
    assert "binding: service 'api' (concurrent 5)" in text
    assert cue.stats().submitted == 10
    assert cue.stats().completed == 0  # the cue itself ran nothing
    await cue.stop()


async def test_several_rate_windows_hold(make_cue: CueFactory) -> None:
    """Both windows of "2/s;3/10s" apply: nine instant works start at 0, 0, 1, 10, 10, 11,
    20, 20, 21."""
    cue = make_cue()
    cue.service("api", rate="2/s;3/10s")
    cue.task("ping", uses="api")(never_called)
    for index in range(9):
        await cue.submit("ping", {"i": index})
    report = await cue.forecast(default=0.0)
    assert report.finish == pytest.approx(21.0)
    assert report.binding_limit == "rate 3/10s"
    await cue.stop()


async def test_a_forecast_is_the_same_from_asyncio_and_trio(
    make_cue: CueFactory, anyio_backend: str
) -> None:
    """Seeded distributions give the same forecast every time, whatever the caller's loop."""
    cue = make_cue()
    cue.service("ocr", concurrent=3)
    cue.task("ocr", uses="ocr")(never_called)
    for index in range(30):
        await cue.submit("ocr", {"i": index})
    durations = {"ocr": runcue.Uniform(1, 3)}
    first = await cue.forecast(durations, seed=7)
    second = await cue.forecast(durations, seed=7)
    assert first.finish == second.finish
    assert 10 <= first.finish <= 30  # ten rounds of 1 to 3 s
    assert first.durations == {"ocr": "uniform 1-3s"}
    other = await cue.forecast({"ocr": runcue.Exponential(2.0)}, seed=7)
    assert other.durations == {"ocr": "exponential, mean 2s"}
    drawn = await cue.forecast({"ocr": lambda rng: 1.0 + rng.random()})
    assert 10 <= drawn.finish <= 20
    await cue.stop()


async def test_declared_pipeline_runs_on_virtual_artifacts(
    make_cue: CueFactory, tmp_path: Path
) -> None:
    """Stand-ins produce their declared outputs in a virtual file system: consumers run
    after their producers, fresh outputs are skipped, and nothing real is written."""
    cue = make_cue()
    cue.service("a", concurrent=1)
    cue.service("b", concurrent=1)
    cue.task("extract", uses="a", inputs="src", outputs="out")(never_called)
    cue.task("transform", uses="b", inputs="src", outputs="out")(never_called)
    for item in range(3):
        source = tmp_path / f"in{item}.txt"
        source.write_text("x")
        os.utime(source, (OLD, OLD))
        await cue.submit("extract", {"src": str(source), "out": str(tmp_path / f"raw{item}")})
        await cue.submit(
            "transform",
            {"src": str(tmp_path / f"raw{item}"), "out": str(tmp_path / f"clean{item}")},
        )
    done = tmp_path / "done.txt"
    done.write_text("up to date")  # newer than its input: skipped
    await cue.submit("extract", {"src": str(tmp_path / "in0.txt"), "out": str(done)})
    before = sorted(path.name for path in tmp_path.iterdir())
    report = await cue.forecast(durations={"extract": 1.0, "transform": 1.0})
    # extracts end at 1, 2, 3; each transform runs right after its own extract.
    assert report.finish == pytest.approx(4.0)
    assert (report.completed, report.skipped, report.never_started) == (6, 1, 0)
    assert sorted(path.name for path in tmp_path.iterdir()) == before
    await cue.stop()


async def test_callbacks_are_asked_or_ignored(make_cue: CueFactory) -> None:
    """callbacks="ask": is_stale False skips, is_ready False never starts (with the reason);
    callbacks="ignore": every work runs."""
    cue = make_cue()
    cue.service("api", concurrent=2)
    cue.task("page", uses="api")(never_called)
    asked: list[str] = []

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        asked.append(work.params["state"])
        return bool(work.params["state"] != "blocked")

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return bool(work.params["state"] != "done")

    for state in ("new", "new", "done", "blocked"):
        await cue.submit("page", {"state": state})
    report = await cue.forecast(default=1.0)
    assert (report.completed, report.skipped, report.never_started) == (2, 1, 1)
    assert report.finish == pytest.approx(1.0)
    assert report.stuck == ("1 page: not_ready (e.g. is_ready returned False)",)
    assert "never started: 1 page: not_ready" in report.render()
    assert "hint: is_ready sees the real world" in report.render()
    assert "blocked" in asked

    asked.clear()
    ignored = await cue.forecast(default=1.0, callbacks="ignore")
    assert (ignored.completed, ignored.skipped, ignored.never_started) == (4, 0, 0)
    assert ignored.finish == pytest.approx(2.0)
    assert asked == []
    await cue.stop()


async def test_user_code_that_raises_is_reported(
    make_cue: CueFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A check that raises, or a duration function that raises, never ends the forecast: the
    work never starts or fails, the report says why, and the cue's log stays quiet."""
    cue = make_cue()
    cue.task("check")(never_called)
    cue.task("draw")(never_called)

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "check":
            raise OSError("the share is down")
        return True

    def broken(rng: random.Random) -> float:
        raise ZeroDivisionError("a broken distribution")

    await cue.submit("check")
    await cue.submit("draw")
    with caplog.at_level(logging.DEBUG, logger="runcue"):
        report = await cue.forecast({"check": 1.0, "draw": broken})
    assert (report.never_started, report.failed) == (1, 1)
    assert dict(report.failures) == {"ZeroDivisionError": 1}
    assert report.stuck[0].startswith("1 check: check_error (e.g. is_ready raised OSError(")
    assert any("is_ready raised" in note for note in report.notes)
    assert not [r for r in caplog.records if r.name == "runcue"]
    await cue.stop()


async def test_task_options_carry_over(make_cue: CueFactory) -> None:
    """Timeouts and retries of a task hold in the forecast: a 2 s stand-in under timeout=1
    fails its two attempts."""
    cue = make_cue()
    cue.task("slow", timeout=1, retry=2, backoff=runcue.Backoff(base=0.5, jitter=False))(
        never_called
    )
    await cue.submit("slow")
    report = await cue.forecast({"slow": 2.0})
    assert dict(report.failures) == {"HandlerTimeout": 1}
    assert report.finish == pytest.approx(2.5)
    await cue.stop()


async def test_durations_measured_by_the_cue(make_cue: CueFactory) -> None:
    """A task not named in durations takes the mean duration this cue measured for it."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    gate = [True]

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None: ...

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        return gate[0]

    with anyio.fail_after(10):
        async with cue:
            for index in range(2):
                await cue.wait(await cue.submit("call", {"i": index}))
            for work, seconds in zip(await cue.list(state="completed"), (2.0, 4.0)):
                assert work.started_at is not None
                work.completed_at = work.started_at + seconds  # (measured, made exact)
            gate[0] = False
            for index in range(3):
                await cue.submit("call", {"i": index})
            report = await cue.forecast(default=100.0, callbacks="ignore")
            gate[0] = True
            cue.poke()
    assert report.finish == pytest.approx(9.0)
    assert report.durations == {"call": "3s measured (2 works)"}


async def test_forecast_of_a_running_cue(make_cue: CueFactory) -> None:
    """On a running cue the forecast holds the running work (its time so far deducted) and
    the pending work; the cue goes on undisturbed."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    release = anyio.Event()
    started = anyio.Event()

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        started.set()
        await release.wait()

    with anyio.fail_after(10):
        async with cue:
            for index in range(3):
                await cue.submit("call", {"i": index})
            await started.wait()
            report = await cue.forecast({"call": 10.0})
            release.set()
    assert report.works == 3
    assert 29.0 < report.finish <= 30.0
    assert cue.stats().completed == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"durations": {"ocrr": 1.0}}, ValueError, "names task 'ocrr', which is not registered"),
        ({"durations": {"ocr": -1.0}}, ValueError, r"durations\['ocr'\] must be a number"),
        ({"durations": {"ocr": "2s"}}, TypeError, r"durations\['ocr'\] must be a number"),
        ({"durations": [1.0]}, TypeError, "durations must map task names"),
        ({"default": float("nan")}, ValueError, "default must be a number of seconds >= 0"),
        ({}, ValueError, "no duration for task 'ocr'"),
        ({"default": 1.0, "callbacks": "maybe"}, ValueError, "callbacks must be 'ask' or"),
    ],
)
async def test_bad_input_names_the_value_and_the_fix(
    make_cue: CueFactory, kwargs: dict[str, object], error: type[Exception], words: str
) -> None:
    """Bad durations and options are refused at the call, naming the bad value."""
    cue = make_cue()
    cue.task("ocr")(never_called)
    cue.task("idle")(never_called)  # no work: needs no duration
    await cue.submit("ocr")
    with pytest.raises(error, match=words):
        await cue.forecast(**kwargs)  # type: ignore[arg-type]
    await cue.stop()


def test_distributions_refuse_bad_parameters() -> None:
    """Uniform and Exponential name the bad parameter."""
    with pytest.raises(ValueError, match="low <= high"):
        runcue.Uniform(3, 1)
    with pytest.raises(ValueError, match=r"Uniform\(low=...\) must be a number of seconds >= 0"):
        runcue.Uniform(-1, 1)
    with pytest.raises(ValueError, match="mean > 0"):
        runcue.Exponential(0)


async def test_without_trio_forecast_names_the_install(
    make_cue: CueFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without trio, forecast() raises ImportError naming pip install 'runcue[trio]'."""
    cue = make_cue()
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "trio" else real_find_spec(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match=r"pip install 'runcue\[trio\]'"):
        await cue.forecast()


async def test_a_cancelled_caller_cancels_the_forecast(make_cue: CueFactory) -> None:
    """A caller cancelled while the forecast runs gets its cancellation at once."""
    cue = make_cue()
    cue.service("api", rate="1/s")
    cue.task("call", uses="api")(never_called)
    for index in range(5_000):
        await cue.submit("call", {"i": index})
    with anyio.move_on_after(0.02) as scope:
        await cue.forecast(default=1.0)
    assert scope.cancelled_caught
    await cue.stop()


# --------------------------------------------------------------------------- costs and tenants


async def test_cost_windows_bind_and_are_summed(make_cue: CueFactory) -> None:
    """A tokens window binds: twelve works estimated at 400 tokens under 1,000 tokens per
    10 s start two per window (12 -> six windows: the last starts at 50 s); the estimates are
    summed per service and in all, and the tokens window is the binding limit."""
    cue = make_cue()
    cue.service("llm", rate="100/s", costs={"tokens": "1000/10s"})

    @cue.task("ask", uses="llm", cost={"tokens": 400}, actual_cost=lambda w, r: r["usage"])
    def ask(work: runcue.WorkUnit) -> None:
        raise AssertionError("a forecast called a real handler")

    for index in range(12):
        await cue.submit("ask", {"i": index})
    report = await cue.forecast(durations={"ask": 1.0})
    assert report.completed == 12
    assert report.finish == pytest.approx(51.0)
    assert (report.binding, report.binding_limit) == ("llm", "tokens 1000/10s")
    llm = report.services["llm"]
    assert dict(llm.costs) == {"tokens": pytest.approx(4800.0)}
    assert dict(report.costs) == {"tokens": pytest.approx(4800.0)}
    assert llm.by_limit["tokens 1000/10s"] == pytest.approx(4800 / 6000)
    assert llm.limits == "rate=100/s, costs tokens=1000/10s"
    assert "4800 tokens" in str(report)
    await cue.stop()


async def test_max_wait_and_tenants_carry_over(make_cue: CueFactory) -> None:
    """A service's max_wait fails, in the forecast, the work a spent window would hold too
    long (QuotaExhausted, counted); each work keeps its tenant, so a tenant's own rate holds
    its works and not the others'."""
    cue = make_cue()
    cue.service("api", rate="2/min", max_wait=5.0)
    cue.task("call", uses="api")(never_called)
    for index in range(5):
        await cue.submit("call", {"i": index})
    report = await cue.forecast(durations={"call": 1.0})
    assert (report.completed, report.failed) == (2, 3)
    assert dict(report.failures) == {"QuotaExhausted": 3}
    await cue.stop()

    cue = make_cue()
    cue.service("api", tenants=runcue.Tenants(rates={"big": "1/min"}))
    cue.task("call", uses="api")(never_called)
    for index in range(4):
        await cue.submit("call", {"i": index}, tenant="big")
    await cue.submit("call", {"i": 9}, tenant="small")
    report = await cue.forecast(durations={"call": 1.0})
    assert report.completed == 5
    assert report.finish == pytest.approx(181.0)  # big's fourth start is at 180 s
    assert report.waits.p50 == pytest.approx(60.0)  # small's start is not held
    assert report.waits.count == 5
    await cue.stop()
