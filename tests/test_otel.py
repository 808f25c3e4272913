"""runcue.instrument(): OpenTelemetry spans per attempt and metrics per service, checked with
the SDK's in-memory exporter and reader; and no OpenTelemetry at all unless it is asked for."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import runcue
from runcue._otel import window_use

pytestmark = pytest.mark.anyio

CueFactory = Callable[..., runcue.Cue]
QUICK_RETRY = runcue.Backoff(base=0.001, jitter=False)


@dataclass
class Otel:
    """An SDK tracer and meter provider whose spans and metrics the test can read."""

    spans: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def instrument(self, cue: runcue.Cue, **options: Any) -> runcue.Instrumentation:
        """Instrument ``cue`` with these providers."""
        return runcue.instrument(cue, self.tracer_provider, self.meter_provider, **options)

    def finished(self) -> list[ReadableSpan]:
        """The spans ended so far, in the order they ended."""
        return list(self.spans.get_finished_spans())

    def metrics(self) -> dict[str, list[tuple[dict[str, Any], Any]]]:
        """Collect now (in this thread): each metric's points as (attributes, value or point)."""
        return _points(self.reader.get_metrics_data())


def _points(data: Any) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    points: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", point)
                    points.setdefault(metric.name, []).append((dict(point.attributes), value))
    return points


def value_of(points: dict[str, list[tuple[dict[str, Any], Any]]], name: str, **where: Any) -> Any:
    """The one point of metric ``name`` whose attributes include ``where``."""
    found = [
        value
        for attributes, value in points.get(name, [])
        if all(attributes.get(f"runcue.{key}") == wanted for key, wanted in where.items())
    ]
    assert len(found) == 1, f"{name} {where}: {points.get(name)}"
    return found[0]


def held_cue(make_cue: CueFactory, **limits: Any) -> tuple[runcue.Cue, anyio.Event, anyio.Event]:
    """A cue whose one-slot service "api" runs "hold" works that wait for the second event
    (release); the first event is set as each one starts."""
    cue = make_cue()
    cue.service("api", concurrent=1, **limits)
    started = anyio.Event()
    release = anyio.Event()

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        started.set()
        await release.wait()

    return cue, started, release


@pytest.fixture
def otel() -> Iterator[Otel]:
    """Fresh SDK providers with in-memory export, shut down after the test."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Otel(spans, tracer_provider, reader, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


# ---------------------------------------------------------------------------- spans


async def test_each_attempt_is_a_span_with_its_attributes(make_cue: CueFactory, otel: Otel) -> None:
    """One span per attempt, named after the task, carrying task, service, work, attempt,
    outcome and the seconds it waited."""
    cue = make_cue()
    cue.service("api", concurrent=2)

    @cue.task("fetch", uses="api")
    async def fetch(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0)

    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            ids = [await cue.submit("fetch", {"n": n}) for n in range(3)]
    spans = otel.finished()
    assert sorted(str(dict(span.attributes or {})["runcue.work.id"]) for span in spans) == sorted(
        ids
    )
    for span in spans:
        assert span.name == "fetch"
        attributes = dict(span.attributes or {})
        assert attributes["runcue.task"] == "fetch"
        assert attributes["runcue.service"] == "api"
        assert attributes["runcue.attempt"] == 1
        assert attributes["runcue.outcome"] == "completed"
        assert isinstance(attributes["runcue.wait_seconds"], float)
        assert attributes["runcue.wait_seconds"] >= 0
        assert span.status.status_code is StatusCode.UNSET
        assert span.parent is None  # submitted outside any span
        assert not span.links


@pytest.mark.parametrize(
    ("raised", "outcome", "attempts"),
    [("error", "retried", (1, 2)), ("rate limit", "rate_limited", (1, 1))],
)
async def test_the_next_attempt_is_linked_to_the_one_before(
    make_cue: CueFactory, otel: Otel, raised: str, outcome: str, attempts: tuple[int, int]
) -> None:
    """An attempt that failed and is retried, or that ran into RateLimited, is an error span
    with that outcome; the work's next attempt links to it."""
    cue = make_cue()
    calls: list[int] = []

    @cue.task("call", retry=2, backoff=QUICK_RETRY)
    async def call(work: runcue.WorkUnit) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first time") if raised == "error" else runcue.RateLimited(0.01)

    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("call")
    first, second = otel.finished()
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["runcue.attempt"], second.attributes["runcue.attempt"]) == attempts
    assert first.attributes["runcue.outcome"] == outcome
    assert first.status.status_code is StatusCode.ERROR
    assert ("first time" if raised == "error" else "paused") in (first.status.description or "")
    assert second.attributes["runcue.outcome"] == "completed"
    assert first.context is not None
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert second.context is not None and second.context.trace_id != 0


async def test_a_failed_work_records_its_exception(make_cue: CueFactory, otel: Otel) -> None:
    """The last attempt of a failed work is an error span with the exception as an event."""
    cue = make_cue()

    @cue.task("broken")
    def broken(work: runcue.WorkUnit) -> None:
        raise KeyError("missing")

    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            await cue.submit("broken")
    (span,) = otel.finished()
    assert span.attributes is not None and span.attributes["runcue.outcome"] == "failed"
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]
    assert "KeyError" in str(dict(span.events[0].attributes or {})["exception.type"])


async def test_the_span_around_submit_is_the_parent(make_cue: CueFactory, otel: Otel) -> None:
    """Work submitted inside a span becomes its child; work submitted outside is a root."""
    cue = make_cue()

    @cue.task("step")
    async def step(work: runcue.WorkUnit) -> None:
        return None

    tracer = otel.tracer_provider.get_tracer("test")
    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            with tracer.start_as_current_span("batch") as batch:
                inside = await cue.submit("step", {"where": "inside"})
            outside = await cue.submit("step", {"where": "outside"})
    by_work = {
        span.attributes["runcue.work.id"]: span for span in otel.finished() if span.attributes
    }
    child, root = by_work[inside], by_work[outside]
    assert child.parent is not None
    assert child.parent.span_id == batch.get_span_context().span_id
    assert child.context is not None
    assert child.context.trace_id == batch.get_span_context().trace_id
    assert root.parent is None


# ---------------------------------------------------------------------------- metrics


async def test_metrics_count_every_outcome_per_service(make_cue: CueFactory, otel: Otel) -> None:
    """Starts, completions, failures, retries, skips and cancellations are counted per service
    and task; queued and running return to zero; wait and run times are recorded per start."""
    cue = make_cue()
    cue.service("api", concurrent=2)

    @cue.task("ok", uses="api")
    async def ok(work: runcue.WorkUnit) -> None:
        return None

    @cue.task("flaky", uses="api", retry=2, backoff=QUICK_RETRY)
    async def flaky(work: runcue.WorkUnit) -> None:
        if work.attempt == 1:
            raise ValueError("once")

    @cue.task("bad", uses="api")
    async def bad(work: runcue.WorkUnit) -> None:
        raise ValueError("always")

    @cue.task("done_already")
    async def done_already(work: runcue.WorkUnit) -> None:
        raise AssertionError("is_stale said it is done")

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        return work.task != "done_already"

    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            for n in range(3):
                await cue.submit("ok", {"n": n})
            await cue.submit("flaky")
            await cue.submit("bad")
            await cue.submit("done_already")
            await cue.join()
            points = otel.metrics()
    assert value_of(points, "runcue.work.started", task="ok") == 3
    assert value_of(points, "runcue.work.started", task="flaky") == 2
    assert value_of(points, "runcue.work.completed", task="ok", service="api") == 3
    assert value_of(points, "runcue.work.completed", task="flaky") == 1
    assert value_of(points, "runcue.work.retried", task="flaky") == 1
    assert value_of(points, "runcue.work.failed", task="bad") == 1
    assert value_of(points, "runcue.work.skipped", task="done_already") == 1
    for name in ("runcue.work.queued", "runcue.work.running"):
        assert all(value == 0 for _, value in points[name])
    assert value_of(points, "runcue.work.wait_time", task="ok").count == 3
    assert value_of(points, "runcue.work.wait_time", task="flaky").count == 2
    assert value_of(points, "runcue.work.run_time", task="flaky", outcome="retried").count == 1
    assert value_of(points, "runcue.work.run_time", task="flaky", outcome="completed").count == 1
    assert value_of(points, "runcue.work.run_time", task="bad", outcome="failed").count == 1
    skipped_runs = [
        a for a, _ in points["runcue.work.run_time"] if a["runcue.task"] == "done_already"
    ]
    assert skipped_runs == []  # a skipped work never ran


async def test_queued_and_running_follow_the_work(make_cue: CueFactory, otel: Otel) -> None:
    """While one handler holds the only slot, the three works behind it count as queued and
    it as running; work cancelled while it waited is counted as cancelled."""
    cue, started, release = held_cue(make_cue)
    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            for n in range(3):
                await cue.submit("hold", {"n": n})
            last = await cue.submit("hold", {"n": 3})
            await started.wait()
            points = otel.metrics()
            assert value_of(points, "runcue.work.queued", service="api") == 3
            assert value_of(points, "runcue.work.running", service="api") == 1
            await cue.cancel(last)
            assert value_of(otel.metrics(), "runcue.work.queued", service="api") == 2
            release.set()
            await cue.join()
            points = otel.metrics()
    assert value_of(points, "runcue.work.queued", service="api") == 0
    assert value_of(points, "runcue.work.running", service="api") == 0
    assert value_of(points, "runcue.work.cancelled", service="api") == 1
    assert value_of(points, "runcue.work.completed", service="api") == 3


async def test_window_gauges_read_the_rate_windows_from_a_reader_thread(
    make_cue: CueFactory, otel: Otel
) -> None:
    """A reader collecting in another thread sees each rate window's use and limit, as
    cue.stats() gives them (read on the cue's event loop)."""
    cue = make_cue()
    cue.service("api", rate="50/s;1000/h")
    cue.service("plain", concurrent=1)

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        return None

    otel.instrument(cue)
    with anyio.fail_after(10):
        async with cue:
            for n in range(5):
                await cue.submit("call", {"n": n})
            await cue.join()
            assert window_use(cue) == [("api", 50, 1.0, 5), ("api", 1000, 3600.0, 5)]
            data = await anyio.to_thread.run_sync(otel.reader.get_metrics_data)
    points = _points(data)
    used = {a["runcue.window.period"]: v for a, v in points["runcue.limit.window.used"]}
    limits = {a["runcue.window.period"]: v for a, v in points["runcue.limit.window.limit"]}
    assert used == {1.0: 5, 3600.0: 5}
    assert limits == {1.0: 50, 3600.0: 1000}
    assert {a["runcue.service"] for a, _ in points["runcue.limit.window.used"]} == {"api"}


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_window_gauges_go_quiet_once_the_loop_has_ended(
    otel: Otel, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After the cue's event loop ended, a reader thread still collects: the counts, no window
    gauges, and nothing logged."""
    cue = runcue.Cue(seed=1)
    cue.service("api", rate="10/s")

    @cue.task("call", uses="api")
    async def call(work: runcue.WorkUnit) -> None:
        return None

    async def main() -> None:
        otel.instrument(cue)
        async with cue:
            await cue.submit("call")

    anyio.run(main, backend=backend)
    collected: list[Any] = []
    reader = threading.Thread(target=lambda: collected.append(otel.reader.get_metrics_data()))
    with caplog.at_level(logging.DEBUG, logger="runcue"):
        reader.start()
        reader.join(timeout=10)
    points = _points(collected[0])
    assert value_of(points, "runcue.work.completed") == 1
    assert "runcue.limit.window.used" not in points
    assert not [r for r in caplog.records if r.name == "runcue"]


async def test_two_cues_on_one_meter_provider_are_told_apart(
    make_cue: CueFactory, otel: Otel
) -> None:
    """Two instrumented cues report through the same instruments, each with its attributes."""
    cues = [make_cue(), make_cue()]
    for index, cue in enumerate(cues):

        @cue.task("job")
        async def job(work: runcue.WorkUnit) -> None:
            return None

        otel.instrument(cue, attributes={"runcue.cue": f"cue{index}"})
    with anyio.fail_after(10):
        async with cues[0], cues[1]:
            await cues[0].submit("job")
            for n in range(2):
                await cues[1].submit("job", {"n": n})
            await cues[0].join()
            await cues[1].join()
            points = otel.metrics()
    assert value_of(points, "runcue.work.completed", cue="cue0") == 1
    assert value_of(points, "runcue.work.completed", cue="cue1") == 2
    assert {span.attributes["runcue.cue"] for span in otel.finished() if span.attributes} == {
        "cue0",
        "cue1",
    }


async def test_close_turns_it_off(make_cue: CueFactory, otel: Otel) -> None:
    """close() ends the running attempt's span as unfinished, stops new spans and takes the
    cue off the gauges; a second close() does nothing; the with-form closes too."""
    cue, started, release = held_cue(make_cue, rate="100/s")
    with anyio.fail_after(10):
        async with cue:
            with otel.instrument(cue) as instrumentation:
                await cue.submit("hold")
                await started.wait()
            assert instrumentation.closed
            instrumentation.close()
            (span,) = otel.finished()
            assert span.attributes is not None
            assert span.attributes["runcue.outcome"] == "unfinished"
            points = otel.metrics()
            assert "runcue.limit.window.used" not in points
            assert all(not values for name, values in points.items() if "queued" in name)
            release.set()
            await cue.submit("hold", {"n": 2})  # runs after close(): no span for it
    assert cue.stats().completed == 2
    assert len(otel.finished()) == 1


async def test_instrumentation_that_raises_never_stops_the_cue(
    make_cue: CueFactory, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """A tracer that raises is logged on the runcue logger; the work still completes and the
    counts still add up."""

    class BrokenProvider(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            tracer = super().get_tracer(*args, **kwargs)

            def start_span(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError("exporter on fire")

            tracer.start_span = start_span  # type: ignore[method-assign]
            return tracer

    cue = make_cue()

    @cue.task("job")
    async def job(work: runcue.WorkUnit) -> int:
        return 7

    runcue.instrument(cue, BrokenProvider(), otel.meter_provider)
    with caplog.at_level(logging.ERROR, logger="runcue"), anyio.fail_after(10):
        async with cue:
            work_id = await cue.submit("job")
            assert await cue.wait(work_id) == 7
            points = otel.metrics()
    raised = [r for r in caplog.records if r.exc_info and "exporter on fire" in str(r.exc_info[1])]
    assert len(raised) == 1
    assert "listener" in raised[0].getMessage()
    assert value_of(points, "runcue.work.started") == 1
    assert value_of(points, "runcue.work.completed") == 1
    assert value_of(points, "runcue.work.running") == 0
    assert value_of(points, "runcue.work.queued") == 0


async def test_bad_arguments_are_named(make_cue: CueFactory, otel: Otel) -> None:
    """Something else than a Cue, a provider of the wrong kind, or attributes OpenTelemetry
    cannot carry are refused with the bad value in the message."""
    cue = make_cue()
    with pytest.raises(TypeError, match="'not a cue'"):
        runcue.instrument("not a cue")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"TracerProvider.*got 42"):
        runcue.instrument(cue, tracer_provider=42)
    with pytest.raises(TypeError, match=r"MeterProvider.*got 'meters'"):
        runcue.instrument(cue, meter_provider="meters")
    with pytest.raises(TypeError, match=r"'tags': \[1, 2\]"):
        otel.instrument(cue, attributes={"tags": [1, 2]})


# ---------------------------------------------------------------------------- imports


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_runcue_never_imports_opentelemetry_unless_asked(backend: str) -> None:
    """import runcue and a whole cue run, progress and timeline included, load no
    opentelemetry module."""
    script = textwrap.dedent(
        f"""
        import io, sys, tempfile, os
        import anyio, runcue
        from rich.console import Console

        async def main():
            cue = runcue.Cue()
            cue.service("api", concurrent=2, rate="100/s")

            @cue.task("job", uses="api")
            async def job(work):
                return 1

            path = os.path.join(tempfile.mkdtemp(), "run.json")
            console = Console(file=io.StringIO())
            async with cue, runcue.progress(cue, console=console), runcue.trace(cue, path):
                for n in range(10):
                    await cue.submit("job", {{"n": n}})
            assert cue.stats().completed == 10

        anyio.run(main, backend={backend!r})
        print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_instrument_without_the_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without opentelemetry-api, instrument() raises ImportError saying what to install."""
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "runcue._otel", raising=False)
    monkeypatch.delattr(runcue, "_otel", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'runcue\[otel\]'") as caught:
        runcue.instrument(runcue.Cue())
    assert caught.value.name == "opentelemetry"


def test_exported_from_runcue() -> None:
    """instrument, Instrumentation, trace and Timeline are public names of runcue."""
    for name in ("instrument", "Instrumentation", "trace", "Timeline"):
        assert name in runcue.__all__
        assert getattr(runcue, name).__module__ == "runcue"
