"""B13: what OpenTelemetry instrumentation costs per work, on B1's workload.

B1 (20,000 no-op async handlers, one ``concurrent=100`` service, submit all then join) run
three ways, interleaved: plain; instrumented with the OpenTelemetry SDK (a
``TracerProvider`` whose ``BatchSpanProcessor`` hands every span to an exporter that drops
it, and a ``MeterProvider`` with an in-memory reader, collected once after the run); and
instrumented against OpenTelemetry's API alone (no SDK: its no-op tracer and meter), which
is the cost of runcue's listener itself. Without ``opentelemetry-sdk`` the row is skipped.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import runcue

from ._harness import (
    Backend,
    Row,
    Settings,
    fmt_ratio,
    fmt_seconds,
    interleave,
    median,
    on_loop,
    paired_ratios,
)
from .b1_throughput import ITEMS, runcue_join

ID = "B13"
TITLE = "OpenTelemetry on vs off, B1 (20,000 no-op handlers, concurrent=100)"
TARGET = "(informative)"


async def instrumented_join(items: int, providers: tuple[Any, Any] | None) -> float:
    """B1's runcue run, instrumented with ``providers`` (None: not instrumented)."""
    turned_on: list[runcue.Instrumentation] = []

    def turn_on(cue: runcue.Cue) -> None:
        if providers is not None:
            turned_on.append(runcue.instrument(cue, *providers))

    seconds = await runcue_join(items, prepare=turn_on)
    for instrumentation in turned_on:
        instrumentation.close()
    return seconds


def sdk_providers() -> tuple[Any, Any, Any]:
    """An SDK tracer provider that drops its spans, and a meter provider with its reader."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Drop(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    reader = InMemoryMetricReader()
    return tracer_provider, MeterProvider(metric_readers=[reader]), reader


def api_providers() -> tuple[Any, Any]:
    """OpenTelemetry's API alone: its no-op tracer and meter providers."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    return NoOpTracerProvider(), NoOpMeterProvider()


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Measure plain, SDK-instrumented and API-instrumented runs, interleaved."""
    if importlib.util.find_spec("opentelemetry.sdk") is None:
        reason = "skipped: opentelemetry-sdk not installed (pip install opentelemetry-sdk)"
        settings.say(reason)
        return [Row(ID, backend, TITLE, reason, "", "", TARGET, None, skipped=True)]

    def with_sdk() -> float:
        tracer_provider, meter_provider, reader = sdk_providers()
        try:
            seconds = on_loop(
                backend, lambda: instrumented_join(ITEMS, (tracer_provider, meter_provider))
            )
            reader.get_metrics_data()  # the run's measurements were really recorded
        finally:
            tracer_provider.shutdown()
            meter_provider.shutdown()
        return seconds

    results = interleave(
        {
            "off": lambda: on_loop(backend, lambda: instrumented_join(ITEMS, None)),
            "sdk": with_sdk,
            "api": lambda: on_loop(backend, lambda: instrumented_join(ITEMS, api_providers())),
        },
        settings.rounds(full=5, quick=2),
        say=settings.say,
    )
    off, sdk, api = results["off"], results["sdk"], results["api"]

    def per_work(values: list[float]) -> str:
        return fmt_seconds(median(values) / ITEMS)

    def added(values: list[float]) -> str:
        return fmt_seconds(median([(on - base) / ITEMS for on, base in zip(values, off)]))

    return [
        Row(
            ID,
            backend,
            TITLE,
            f"SDK on: {per_work(sdk)}/work (+{added(sdk)}); API only: {per_work(api)}/work"
            f" (+{added(api)})",
            f"off: {per_work(off)}/work",
            f"{fmt_ratio(median(paired_ratios(sdk, off)))} with the SDK;"
            f" {fmt_ratio(median(paired_ratios(api, off)))} API only",
            TARGET,
            None,
        )
    ]
