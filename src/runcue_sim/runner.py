"""One simulated run: build the cue, submit the items, watch the events, summarize."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio
from rich.console import Console

import runcue

from .fake import Sim, Workload
from .report import LOG_HEADER, Recorder, StallReport, Summary, event_line, group_blocked
from .scenarios import SCENARIOS, SubmitItem

__all__ = ["RunOptions", "RunState", "simulate", "stall_warn_after"]

DEFAULT_COUNT = 100
MIN_STALL_WARN = 2.0  # seconds


@dataclass(frozen=True)
class RunOptions:
    """Everything the command line decides about a run."""

    scenario: str = "single_queue"
    count: int | None = None
    """Items to submit; None: 100, or no limit when ``duration`` and ``submit_rate`` end it."""
    duration: float | None = None
    submit_rate: float | None = None
    workload: Workload = field(default_factory=Workload)
    stall_timeout: float | None = None
    stall_warn: float | None = None
    backend: str = "asyncio"
    virtual: bool = False
    """On trio's virtual clock (``--virtual``): every time in the summary is virtual."""
    tui: bool = False
    verbose: bool = False
    trace: str | None = None
    """A file to write a timeline of the run to (``--trace``)."""

    @property
    def item_limit(self) -> float:
        """How many items the run submits at most."""
        if self.count is not None:
            return self.count
        if self.duration is not None and self.submit_rate is not None:
            return math.inf
        return DEFAULT_COUNT

    def to_json(self) -> dict[str, Any]:
        """The options as ``--json`` echoes them."""
        data = asdict(self)
        data.update(data.pop("workload"))
        del data["tui"]
        return data


@dataclass
class RunState:
    """Filled in while the run goes, so an interrupted run can still be summarized."""

    recorder: Recorder = field(default_factory=Recorder)
    stalls: list[StallReport] = field(default_factory=list)
    stats: runcue.CueStats | None = None
    items: int = 0
    started: float | None = None
    wall_time: float = 0.0
    """Seconds the run took on the loop's clock (virtual with ``--virtual``)."""
    real_time: float = 0.0
    """Seconds the run took in real time."""
    stop: anyio.CancelScope | None = None
    """Cancelled to end the run early (the output was closed)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What the scenario adds to the summary."""


def stall_warn_after(options: RunOptions) -> float:
    """How long without progress before the simulator reports what is blocked.

    Long enough that the slowest fake call and a full rate window look like work, not a stall;
    always well inside ``--stall-timeout`` so the report comes before the timeout fires.
    """
    if options.stall_warn is not None:
        return options.stall_warn
    workload = options.workload
    rates = [workload.rate or SCENARIOS[options.scenario].default_rate, workload.tokens]
    longest_period = max(
        (spec.period for rate in rates if rate for spec in runcue.parse_rate(rate)), default=0.0
    )
    warn = max(MIN_STALL_WARN, 5 * workload.slowest_call, 1.5 * longest_period)
    if options.stall_timeout is not None:
        warn = min(warn, options.stall_timeout / 2)
    return warn


async def _submit_items(submit: SubmitItem, sim: Sim, options: RunOptions, state: RunState) -> None:
    start = anyio.current_time()
    item = 0
    while item < options.item_limit:
        if options.submit_rate is not None:
            await anyio.sleep_until(start + item / options.submit_rate)
        if options.duration is not None and anyio.current_time() - start >= options.duration:
            break
        sim.provide_input(item)
        await submit(item)
        item += 1
        state.items = item


@contextlib.asynccontextmanager
async def _maybe_trace(cue: runcue.Cue, options: RunOptions) -> AsyncIterator[None]:
    if options.trace is None:
        yield
        return
    async with runcue.trace(cue, options.trace):
        yield


@contextlib.asynccontextmanager
async def _maybe_progress(
    cue: runcue.Cue, console: Console, options: RunOptions
) -> AsyncIterator[None]:
    if not options.tui:
        yield
        return
    title = f"runcue-sim · {options.scenario}"
    async with runcue.progress(cue, console=console, title=title, events=8):
        yield


async def simulate(options: RunOptions, console: Console, state: RunState | None = None) -> Summary:
    """Run one simulation to its end and summarize it.

    :param state: filled in as the run goes (pass one to summarize an interrupted run).
    """
    state = RunState() if state is None else state
    workload = options.workload
    sim = Sim(workload)
    cue = runcue.Cue(
        stall_warn_after=stall_warn_after(options),
        stall_timeout=options.stall_timeout,
        seed=workload.seed,
    )
    cue.subscribe(state.recorder)
    submit = SCENARIOS[options.scenario].setup(cue, sim)

    @cue.on_stall_warning
    def report_stall(quiet_for: float, pending: int) -> None:
        report = StallReport(quiet_for, pending, group_blocked(cue.debug_blocked()))
        state.stalls.append(report)
        console.print(report.render(), end="", soft_wrap=True)

    if options.verbose:
        console.print(LOG_HEADER, markup=False, highlight=False)
        console.print("-" * len(LOG_HEADER), markup=False, highlight=False)

        waiting_for: dict[str, str] = {}  # work id -> why it waits, logged once per reason

        def log(event: runcue.WorkEvent) -> None:
            work_id = event.work.id
            if event.kind == "waiting":
                if waiting_for.get(work_id) == event.details:
                    return
                waiting_for[work_id] = event.details
            else:
                waiting_for.pop(work_id, None)
            started = event.time if state.started is None else state.started
            console.print(
                event_line(event, event.time - started),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            if getattr(console, "output_closed", False) and state.stop is not None:
                state.stop.cancel()  # e.g. piped into `head`: nobody reads any more

        cue.subscribe(log)

    with anyio.CancelScope() as state.stop:
        async with _maybe_trace(cue, options), cue:  # the timeline outlives the cue's stop
            state.started = anyio.current_time()
            real_start = time.perf_counter()
            try:
                async with _maybe_progress(cue, console, options):
                    await _submit_items(submit, sim, options, state)
                    await cue.join()
            finally:
                state.stats = cue.stats()
                state.wall_time = anyio.current_time() - state.started
                if sim.report is not None:
                    state.extra = sim.report()
                state.real_time = time.perf_counter() - real_start
    return summarize(options, state, interrupted=state.stop.cancelled_caught)


def summarize(options: RunOptions, state: RunState, *, interrupted: bool = False) -> Summary:
    """The summary of a run from what its state recorded."""
    stats = state.stats
    if stats is None:  # interrupted before the cue started
        stats = runcue.CueStats(0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, {})
    return Summary(
        scenario=options.scenario,
        backend=options.backend,
        seed=options.workload.seed,
        items=state.items,
        wall_time=state.wall_time,
        real_time=state.real_time,
        virtual=options.virtual,
        stats=stats,
        recorder=state.recorder,
        stalls=tuple(state.stalls),
        options=options.to_json(),
        interrupted=interrupted,
        extra=state.extra,
    )
