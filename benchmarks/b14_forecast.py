"""B14: a forecast of 100,000 works at 60/min -- a 28-hour run -- in real seconds.

One service ``rate="60/min"``, 100,000 works of a 2-second task submitted to a cue that has not
started, then ``await cue.forecast(durations={"extract": 2.0})``, timed with
``time.perf_counter()`` (the submissions are not counted). The expected finish is exact: the
last of the 1,667 windows of 60 starts opens at 1,666 x 60 s, and its works end 2 s later.
The forecast runs on trio's virtual clock in a worker thread whatever the caller's backend;
the caller's backend only changes the hop into that thread.
"""

from __future__ import annotations

import time

import runcue

from ._harness import Backend, Row, Settings, interleave, median, on_loop

ID = "B14"
TITLE = "forecast, 100,000 works at 60/min"
ITEMS = 100_000
DURATION = 2.0
EXPECTED_FINISH = (ITEMS - 1) // 60 * 60.0 + DURATION  # 99,962 s: 27h46m02s
TARGET = "< 60 s, finish exact"


async def forecast_seconds(finishes: list[float]) -> float:
    """Real seconds one forecast of the batch takes (its virtual finish goes to ``finishes``)."""
    cue = runcue.Cue()
    cue.service("api", rate="60/min")

    @cue.task("extract", uses="api")
    async def extract(work: runcue.WorkUnit) -> None:
        raise AssertionError("a forecast never calls a handler")

    for index in range(ITEMS):
        await cue.submit("extract", {"i": index})
    begun = time.perf_counter()
    report = await cue.forecast(durations={"extract": DURATION})
    seconds = time.perf_counter() - begun
    finishes.append(report.finish)
    await cue.stop()  # (the cue never ran: its pending work ends cancelled)
    return seconds


def run(backend: Backend, settings: Settings) -> list[Row]:
    """Time the forecast; check its finish against the exact figure."""
    finishes: list[float] = []
    results = interleave(
        {"forecast": lambda: on_loop(backend, lambda: forecast_seconds(finishes))},
        settings.rounds(full=2, quick=1),
        warmup=0,
        say=settings.say,
    )
    seconds = median(results["forecast"])
    exact = all(abs(finish - EXPECTED_FINISH) < 1e-6 for finish in finishes)
    hours = EXPECTED_FINISH / 3600
    return [
        Row(
            ID,
            backend,
            TITLE,
            f"{seconds:.1f} s real for {hours:.1f} h virtual ({EXPECTED_FINISH / seconds:,.0f}x)",
            f"arithmetic: finish {EXPECTED_FINISH:,.0f} s",
            "finish exact" if exact else f"finish {finishes} (off)",
            TARGET,
            seconds < 60 and exact,
        )
    ]
