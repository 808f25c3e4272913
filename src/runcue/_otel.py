"""OpenTelemetry for a cue: a span per attempt and metrics per service, built from its events.

Imported only by :func:`runcue.instrument` (the ``otel`` extra): ``import runcue`` never
loads OpenTelemetry. The instrumentation is a listener (``cue.subscribe``): called on the
event loop for every :class:`WorkEvent`, it starts and ends spans and records measurements.
The scheduler knows nothing about it.

The rate-window gauges are observed when a metric reader collects, which is often another
thread (a periodic exporter, a Prometheus scrape). A cue's state belongs to its event loop,
so the reading hops onto the loop (:func:`_on_loop`) and gives up after a second if the loop
does not answer; :func:`window_use` is the one place that reads the windows.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.trace import Link, Span, SpanContext, Status, StatusCode, Tracer

from ._events import ATTEMPT_OUTCOMES, WorkEvent
from ._hooks import logger
from ._instrument import Instrumentation

if TYPE_CHECKING:
    from ._cue import Cue

__all__ = ["OtelInstrumentation", "instrument", "window_use"]

T = TypeVar("T")

SCOPE = "runcue"
LOOP_TIMEOUT = 1.0  # seconds a collection waits for the cue's event loop to answer
# Seconds: from a cache hit to an hour-long wait behind a daily quota.
TIME_BUCKETS = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
WindowReading = tuple[str | None, int, float, int]  # service, limit, period, used


def window_use(cue: Cue) -> list[WindowReading]:
    """Each rate window of each service of ``cue`` now: (service, limit, period, used).

    The one place that reads the windows; call it on the cue's event loop.
    """
    return [
        (name, window.limit, window.period, window.used)
        for name, service in cue.stats().services.items()
        for window in service.windows
    ]


def _on_loop(token: anyio.lowlevel.EventLoopToken, read: Callable[[], T]) -> T | None:
    """``read()`` called on the event loop of ``token``, from another thread; None when the
    loop has ended or does not answer within :data:`LOOP_TIMEOUT`.

    The wait runs in a helper thread so that a loop blocked on this very collection (say, a
    ``meter_provider.shutdown()`` called on it) costs the collection one second, not a hang.
    """
    answer: list[T] = []

    def hop() -> None:
        try:
            answer.append(anyio.from_thread.run_sync(read, token=token))
        except anyio.RunFinishedError:
            pass
        except Exception:
            logger.exception("runcue: reading the rate windows for OpenTelemetry failed")

    helper = threading.Thread(target=hop, name="runcue-otel-read", daemon=True)
    helper.start()
    helper.join(LOOP_TIMEOUT)
    return answer[0] if answer else None


# What an instrumentation counts per service and task: plain ints kept on the event loop
# and read by the observable instruments when a reader collects (an int read is atomic).
QUEUED, RUNNING, STARTED, COMPLETED, FAILED, RETRIED, SKIPPED, CANCELLED = range(8)
ENDS = {"completed": COMPLETED, "failed": FAILED, "skipped": SKIPPED, "cancelled": CANCELLED}
COUNTERS = (  # index, name, unit, description
    (STARTED, "started", "{attempt}", "Attempts started"),
    (COMPLETED, "completed", "{work}", "Work completed"),
    (FAILED, "failed", "{work}", "Work failed for good"),
    (RETRIED, "retried", "{attempt}", "Attempts that failed and were retried"),
    (SKIPPED, "skipped", "{work}", "Work skipped: is_stale said its output was valid"),
    (CANCELLED, "cancelled", "{work}", "Work cancelled"),
)


class _Instruments:
    """The instruments of one meter provider, made once and shared by every cue reported to it.

    (A meter keeps the first instrument of a name and ignores the callbacks of a second; so
    the observable instruments ask every live instrumentation on this provider.) Only the
    two histograms are recorded per event: a synchronous measurement costs the SDK about
    6 µs, so the counts are plain ints that the observable instruments read.
    """

    def __init__(self, meter: Meter) -> None:
        self.live: list[OtelInstrumentation] = []

        def histogram(name: str, what: str) -> metrics.Histogram:
            return meter.create_histogram(
                f"runcue.work.{name}",
                unit="s",
                description=what,
                explicit_bucket_boundaries_advisory=TIME_BUCKETS,
            )

        self.wait_time = histogram("wait_time", "Seconds from queued (or a retry) to start")
        self.run_time = histogram("run_time", "Seconds an attempt ran, by outcome")
        meter.create_observable_up_down_counter(
            "runcue.work.queued",
            callbacks=[self._counts(QUEUED)],
            unit="{work}",
            description="Work waiting to start: submitted, not ready, or waiting for a retry",
        )
        meter.create_observable_up_down_counter(
            "runcue.work.running",
            callbacks=[self._counts(RUNNING)],
            unit="{work}",
            description="Handlers running now",
        )
        for index, name, unit, what in COUNTERS:
            meter.create_observable_counter(
                f"runcue.work.{name}", callbacks=[self._counts(index)], unit=unit, description=what
            )
        meter.create_observable_gauge(
            "runcue.limit.window.used",
            callbacks=[self._windows(lambda limit, used: used)],
            unit="{start}",
            description="Starts inside each rate window of a service now",
        )
        meter.create_observable_gauge(
            "runcue.limit.window.limit",
            callbacks=[self._windows(lambda limit, used: limit)],
            unit="{start}",
            description="Starts each rate window of a service admits",
        )

    def _counts(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for instrumentation in list(self.live):
                for attributes, tally in instrumentation.tallies():
                    yield Observation(tally[index], attributes)

        return observe

    def _windows(
        self, value: Callable[[int, int], int]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for instrumentation in list(self.live):
                for service, limit, period, used in instrumentation.windows_now():
                    attributes = {**instrumentation.attributes, "runcue.window.period": period}
                    if service is not None:
                        attributes["runcue.service"] = service
                    yield Observation(value(limit, used), attributes)

        return observe


_by_provider: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()


def _instruments_of(meter_provider: MeterProvider | None) -> _Instruments:
    from . import __version__

    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    instruments = _by_provider.get(provider)
    if instruments is None:
        meter = provider.get_meter(SCOPE, __version__)
        instruments = _by_provider[provider] = _Instruments(meter)
    return instruments


class _Track:
    """What the instrumentation remembers about one work until it finishes."""

    __slots__ = (
        "attributes",
        "parent",
        "previous",
        "queued",
        "running",
        "since",
        "span",
        "started",
        "tally",
    )

    def __init__(
        self,
        attributes: dict[str, Any],
        tally: list[int],
        since: float | None,
        parent: otel_context.Context,
    ) -> None:
        self.attributes = attributes  # the metric attributes of its service and task
        self.tally = tally  # the counts of its service and task
        self.since = since  # when it became pending for its next attempt (None: unknown)
        self.parent = parent  # the context submit() was called in
        self.queued = since is not None  # counted in tally[QUEUED] now
        self.running = False  # an attempt runs (counted in tally[RUNNING])
        self.span: Span | None = None  # the running attempt's span
        self.started = 0.0
        self.previous: SpanContext | None = None  # the last attempt's span, for links


class OtelInstrumentation(Instrumentation):
    """The listener behind :func:`runcue.instrument`."""

    def __init__(
        self,
        cue: Cue,
        tracer: Tracer,
        instruments: _Instruments,
        attributes: dict[str, Any],
    ) -> None:
        self.attributes = attributes
        self._cue = cue
        self._tracer = tracer
        self._instruments = instruments
        self._works: dict[str, _Track] = {}
        # per (service, task): its metric attributes and its counts
        self._groups: dict[tuple[str | None, str], tuple[dict[str, Any], list[int]]] = {}
        self._outcome_attributes: dict[tuple[str | None, str, str], dict[str, Any]] = {}
        self._closed = False
        self._token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None
        self._note_loop()
        instruments.live.append(self)
        self._unsubscribe = cue.subscribe(self)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """See :meth:`Instrumentation.close`."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        if self in self._instruments.live:
            self._instruments.live.remove(self)
        for track in self._works.values():
            if track.span is not None:
                track.span.set_attribute("runcue.outcome", "unfinished")
                track.span.end()
        self._works.clear()

    def tallies(self) -> list[tuple[dict[str, Any], list[int]]]:
        """Each service and task seen: its metric attributes and counts (any thread)."""
        return list(self._groups.values())

    def windows_now(self) -> list[WindowReading]:
        """The cue's rate windows, read on its event loop (empty when that cannot be done)."""
        if self._closed:
            return []
        if threading.get_ident() == self._loop_thread:
            return window_use(self._cue)
        if self._token is None:
            return []
        return _on_loop(self._token, lambda: window_use(self._cue)) or []

    def _note_loop(self) -> None:
        try:
            self._token = anyio.lowlevel.current_token()
        except RuntimeError:
            return  # not on an event loop yet: the first event tells
        self._loop_thread = threading.get_ident()

    # ------------------------------------------------------------------ events

    def __call__(self, event: WorkEvent) -> None:
        kind = event.kind
        if kind == "waiting":
            return
        if self._token is None:
            self._note_loop()
        work_id = event.work.id
        track = self._works.get(work_id)
        if kind == "queued":
            if track is None:
                attributes, tally = self._group_of(event)
                parent = otel_context.get_current()
                self._works[work_id] = _Track(attributes, tally, event.time, parent)
                tally[QUEUED] += 1
            return
        if track is None:
            if kind != "started":
                return  # queued before the instrumentation began, and never ran since
            attributes, tally = self._group_of(event)
            track = self._works[work_id] = _Track(attributes, tally, None, otel_context.Context())
        if kind == "started":
            self._start(track, event)
        elif track.running:
            self._end_attempt(track, event)
        else:  # ended before it ran: skipped, timed out, cancelled
            self._leave_queue(track)
            del self._works[work_id]
            track.tally[ENDS[kind]] += 1

    def _start(self, track: _Track, event: WorkEvent) -> None:
        # The counts first: they stay right whatever the tracer or meter does after.
        work = event.work
        tally = track.tally
        self._leave_queue(track)
        track.running = True
        track.started = event.time
        tally[RUNNING] += 1
        tally[STARTED] += 1
        span_attributes: dict[str, Any] = {
            **track.attributes,
            "runcue.work.id": work.id,
            "runcue.attempt": work.attempt,
        }
        if track.since is not None:
            waited = max(0.0, event.time - track.since)
            span_attributes["runcue.wait_seconds"] = waited
            self._instruments.wait_time.record(waited, track.attributes)
        links = [Link(track.previous)] if track.previous is not None else None
        track.span = self._tracer.start_span(
            work.task, context=track.parent, attributes=span_attributes, links=links
        )

    def _end_attempt(self, track: _Track, event: WorkEvent) -> None:
        kind = event.kind
        tally = track.tally
        span, track.span = track.span, None
        track.running = False
        tally[RUNNING] -= 1
        if kind in ("retrying", "paused"):  # pending again, for the next attempt
            track.since = event.time
            track.queued = True
            tally[QUEUED] += 1
            if kind == "retrying":
                tally[RETRIED] += 1
        else:
            del self._works[event.work.id]
            tally[ENDS[kind]] += 1
        outcome = ATTEMPT_OUTCOMES.get(kind, kind)
        ran = event.duration if event.duration is not None else event.time - track.started
        self._instruments.run_time.record(max(0.0, ran), self._with_outcome(event, outcome))
        if span is None:
            return  # the tracer failed to start one (and that was logged)
        track.previous = span.get_span_context()
        if span.is_recording():  # (a sampler may have dropped it: then all this is wasted)
            span.set_attribute("runcue.outcome", outcome)
            if kind != "completed" and kind != "cancelled":
                span.set_status(Status(StatusCode.ERROR, event.details or outcome))
                if kind == "failed" and event.work.exception is not None:
                    span.record_exception(event.work.exception)
        span.end()

    def _leave_queue(self, track: _Track) -> None:
        if track.queued:
            track.queued = False
            track.tally[QUEUED] -= 1

    def _group_of(self, event: WorkEvent) -> tuple[dict[str, Any], list[int]]:
        key = (event.service, event.work.task)
        group = self._groups.get(key)
        if group is None:
            attributes = {**self.attributes, "runcue.task": event.work.task}
            if event.service is not None:
                attributes["runcue.service"] = event.service
            group = self._groups[key] = (attributes, [0] * (CANCELLED + 1))
        return group

    def _with_outcome(self, event: WorkEvent, outcome: str) -> dict[str, Any]:
        key = (event.service, event.work.task, outcome)
        attributes = self._outcome_attributes.get(key)
        if attributes is None:
            attributes = {**self._group_of(event)[0], "runcue.outcome": outcome}
            self._outcome_attributes[key] = attributes
        return attributes


def instrument(
    cue: Cue,
    tracer_provider: Any,
    meter_provider: Any,
    attributes: dict[str, Any],
) -> OtelInstrumentation:
    """:func:`runcue.instrument` once its arguments are checked and OpenTelemetry is there."""
    from . import __version__

    if tracer_provider is not None and not isinstance(tracer_provider, trace.TracerProvider):
        msg = (
            "tracer_provider must be an OpenTelemetry TracerProvider (or None for the global"
            f" one), got {tracer_provider!r}"
        )
        raise TypeError(msg)
    if meter_provider is not None and not isinstance(meter_provider, MeterProvider):
        msg = (
            "meter_provider must be an OpenTelemetry MeterProvider (or None for the global"
            f" one), got {meter_provider!r}"
        )
        raise TypeError(msg)
    tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
    return OtelInstrumentation(cue, tracer, _instruments_of(meter_provider), attributes)
