"""``python -m benchmarks``: run the suite, print and write the results, fail on a missed target.

Examples::

    python -m benchmarks                      # everything, asyncio and trio (several minutes)
    python -m benchmarks --quick              # shorter runs (about two minutes)
    python -m benchmarks --only B1,B3 --backend trio --repeat 3

The exit status is 0 when every target is met, 1 when one is missed, 2 for bad options.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from . import (
    b1_throughput,
    b1b_callbacks,
    b2_scaling,
    b3_latency,
    b4_rate,
    b5_dependencies,
    b6_idle_cpu,
    b7_memory,
    b8_sync_handlers,
    b9_pipeline,
    b10_shared_store,
    b11_tokens,
    b12_stream,
    b12b_long_window,
    b13_otel,
    b14_forecast,
)
from ._harness import (
    BACKENDS,
    Backend,
    MachineLoad,
    Row,
    Settings,
    SourceAtStart,
    quiet_runcue_logger,
    render_table,
    write_results,
)

SCENARIOS: dict[str, ModuleType] = {
    module.ID: module
    for module in (
        b1_throughput,
        b1b_callbacks,
        b2_scaling,
        b3_latency,
        b4_rate,
        b5_dependencies,
        b6_idle_cpu,
        b7_memory,
        b8_sync_handlers,
        b9_pipeline,
        b10_shared_store,
        b11_tokens,
        b12_stream,
        b12b_long_window,
        b13_otel,
        b14_forecast,
    )
}

RESULTS = Path(__file__).with_name("RESULTS.md")

METHOD = """
Each scenario runs runcue and its baselines in this one process, one repetition of each in
turn (runcue, baseline, runcue, baseline, ...), after a warm-up round that is thrown away
(B1, B2, B5, B8; the long B4, B6, B7 and B9 rounds run after them without one); each
repetition gets a fresh event loop (`anyio.run`) after `gc.collect()`. Times are medians over
the repetitions; a ratio is the median of the per-round ratios (round k of runcue over round k
of the baseline), so drift on a noisy machine mostly cancels. All handlers are no-ops unless
the scenario says otherwise; times include entering and leaving the cue (or the baseline's
task group).

- **B1/B2** time from before the first `submit()` to after `join()` and leaving the cue.
- **B3** alternates one runcue trial and one stream trial, 300 each; latency is
  `time.perf_counter()` before `await cue.submit()` to the first line of the handler, the cue
  idle (joined, then 2 ms of quiet) before each trial.
- **B4** records `anyio.current_time()` as each handler starts; a violation is any
  half-open window `[t, t + 1 s)` (t at a recorded start) holding more than 50 starts; the
  steady rate is the starts after the first 50 over the time they took. aiolimiter is
  asyncio-only; its baseline runs on asyncio alone. Baselines run shorter (150 items) so the
  full suite stays near ten minutes; each round runs all of them. The times of the cue's
  `started` events (taken as the scheduler admits the work) are shown beside the handler
  starts.
- **B5** counts `is_ready` calls for consumers with a counter in the check.
- **B6** is `time.process_time()` (every thread of the process) over a quiet window after
  the cue settled (every pending work asked once, then 0.5 s), as a share of one core.
- **B7** is `tracemalloc` current memory after all work was submitted, asked once and parked
  (not while a sweep re-asks it), minus
  the memory of the started cue holding one such work, over the item count, after
  `gc.collect()`. It includes the params dict (`{'i': n}`), as the baseline record does.
  A second baseline, the least scheduler record, holds only what runcue's API needs at a
  minimum (a 7-field record with a string id, an index by id, a de-duplication index by
  content digest, a waiting list): it shows the bound under the target.
- **B9**'s theoretical time is `items x d / concurrent + 2 x d` (the bottleneck stage plus
  filling the pipe). `d` is the handler's duration: nominally 1 ms, but `anyio.sleep(0.001)`
  takes longer on any event loop (timer granularity), so `d` is calibrated in the same run,
  interleaved: `3 x concurrent` tasks doing back-to-back `anyio.sleep(0.001)`, wall time per
  sleep. The target is judged against that bound; the nominal 1 ms figure is shown too. The
  hand-written AnyIO pipeline (workers and memory object streams, the same limits and
  sleeps) shows what the event loop itself reaches. `concurrent=2` per stage keeps the limits,
  not the CPU, binding (at 50, the bound of 100 ms for 15,000 handler runs is out of reach
  of any Python event loop).
- **B10** runs B1's shape at 2,000 items twice per round, in-process and with `shared=True`
  through a `RedisStore` on a private `redis-server` (free loopback port, no persistence,
  started for the scenario and stopped after it); the time added per item is the median of
  the per-round differences over the item count. The Redis commands per item (the server's
  `total_commands_processed`) and the loopback `PING` round trip of the synchronous client are
  shown for scale. Its second row (informative) drives the store alone: 100 callers take
  2,000 starts with `acquire` + `release`, against `acquire(costs=)` + `settle` + `release`
  with one cost window, and against the same with 10,000 more starts recorded in the window,
  interleaved; it shows the time added per item, the server's time in scripts per item (its
  `commandstats`) and the Redis memory per recorded start. Without `redis-server` (or the
  `redis` library) the rows are skipped, and the run does not fail.
- **B12** streams 1,000,000 inputs through `cue.map` under `max_pending=10,000` (no-op
  handlers, `concurrent=100`): the time per item against B1's runcue per item (each round
  the median of five B1 runs, interleaved with the stream), and `tracemalloc`'s peak over
  the whole run against streaming 100,000 (the lower of two runs each).
- **B12b** (informative) measures a `RateLimiter("1000000/day")` alone, driven at its limit's
  pace by a fake clock (bytes per start with 1,000,000 in the window, `tracemalloc`; time
  per start once it is full), and 1,000,000 starts through a cue with that rate, with a 1 ms
  window of the same headroom and without a rate, interleaved.
- **B13** runs B1's workload plain, instrumented with the OpenTelemetry SDK (a
  `BatchSpanProcessor` feeding an exporter that drops the spans, a `MeterProvider` with an
  in-memory reader collected after the timing) and instrumented against the API alone (its
  no-op providers: runcue's listener by itself), interleaved; the cost per work is the
  median of the per-round differences over the item count. Informative (no target); skipped
  without `opentelemetry-sdk`.
- **B14** submits 100,000 works of a 2 s task to one `rate="60/min"` service of a cue that
  has not started and times `await cue.forecast()` alone (`time.perf_counter()`, submissions
  not counted). The forecast runs on trio's virtual clock in a worker thread whatever the
  caller's backend; its finish must be exactly 1,666 x 60 + 2 s (the last window of 60 starts
  plus one duration).
"""


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="runcue benchmarks: runcue against its baselines, asyncio and trio.",
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about two minutes)")
    parser.add_argument(
        "--only", default="", help="comma-separated scenario ids, e.g. B1,B3 (default: all)"
    )
    parser.add_argument(
        "--backend", choices=("asyncio", "trio", "both"), default="both", help="default: both"
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="repetitions per variant (default: per scenario)"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"markdown file (default: {RESULTS})"
    )
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    by_upper = {name.upper(): name for name in SCENARIOS}
    wanted = [
        by_upper.get(part.strip().upper(), part.strip())
        for part in args.only.split(",")
        if part.strip()
    ]
    unknown = [name for name in wanted if name not in SCENARIOS]
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    args.scenarios = wanted or list(SCENARIOS)
    return args


def _failed_row(bench: str, backend: str, title: str, error: BaseException) -> Row:
    text = f"{type(error).__name__}: {error}"
    return Row(bench, backend, title, "error", "", "", "runs", False, [f"crashed: {text}"])


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected scenarios; return the exit status."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    settings = Settings(quick=args.quick, repeat=args.repeat)
    backends: tuple[Backend, ...] = BACKENDS if args.backend == "both" else (args.backend,)
    quiet_runcue_logger()
    begun = time.perf_counter()
    load = MachineLoad()
    source = SourceAtStart()
    rows: list[Row] = []
    for name in args.scenarios:
        module = SCENARIOS[name]
        run: Callable[[Backend, Settings], list[Row]] = module.run
        for backend in backends:
            print(f"{name} [{backend}] {module.TITLE}", file=sys.stderr, flush=True)
            load.sample()
            started = time.perf_counter()
            try:
                produced = run(backend, settings)
            except Exception as error:
                traceback.print_exc()
                produced = [_failed_row(name, backend, module.TITLE, error)]
            for row in produced:
                print(f"  -> {row.verdict}: {row.runcue} | {row.ratio}", file=sys.stderr)
            print(f"  ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
            rows.extend(produced)
    elapsed = time.perf_counter() - begun
    command = " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)])
    if not args.no_write:
        write_results(
            args.output,
            rows,
            command=command,
            settings=settings,
            elapsed=elapsed,
            method=METHOD,
            load=load,
            source=source,
        )
        print(f"wrote {args.output}", file=sys.stderr)
    print(render_table(rows))
    missed = [row for row in rows if row.ok is False]
    print(
        f"{len(missed)} target(s) missed in {elapsed:.0f} s" if missed else "every target met",
        file=sys.stderr,
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
