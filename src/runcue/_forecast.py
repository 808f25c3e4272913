"""``await cue.forecast()``: when a cue's work would finish, which service binds, what waits --
in virtual time, before anything runs.

**What runs.** A private copy of the cue (``_replica.py``): its real services and limits (rate
windows, several windows, concurrency), its tasks with every option (retries, timeouts,
declared inputs and outputs), its ``priority`` and, by default, its ``is_ready`` / ``is_stale``
-- but every handler replaced by a stand-in that only ``await anyio.sleep(duration)``. No
handler of yours is called. The copy holds the work submitted to the cue and not yet finished
(running work counts as started ``now`` minus how long it has run).

**Durations** per task (``_durations.py``): a number of seconds, a distribution (:class:`Uniform`,
:class:`Exponential`, or any function of a ``random.Random`` returning seconds), else the mean
of what this cue measured so far for that task (its finished, completed work), else
``default``. A task with pending work and none of these is an error that names it.

**The virtual clock.** The copy runs under trio with ``trio.testing.MockClock(autojump_threshold
=0)``: whenever every task waits, the clock jumps to the next deadline, so 100,000 works at
60/min (28 hours) forecast in seconds. It runs in a worker thread (``trio.run`` inside
``anyio.to_thread.run_sync``), so ``await cue.forecast()`` works from asyncio and trio and
never blocks the caller's loop; cancelling the caller cancels the forecast. This module is a
tool that needs a virtual clock: it is the one place besides ``_backend.py`` that uses trio
itself, and it needs trio installed (``pip install 'runcue[trio]'``; runcue's core does not).

**Artifacts** (the decision). Declared inputs and outputs live in a virtual file system: each
artifact is as it really is when the forecast first asks (asked once, read only), and a
stand-in that finishes *produces* its declared outputs, stamped with the virtual time. So the
copy's declared checks see the forecast's own progress: a consumer waits for its producer, runs
after it, and an up-to-date output is skipped, exactly as in a real run. Nothing real is ever
written or deleted.

**Callback checks** (``callbacks=``). ``is_ready`` / ``is_stale`` are your code and read the
real world, which a forecast never changes:

- ``"ask"`` (default): they are asked as written. ``is_stale`` returning False skips work that
  is done; ``is_ready`` returning False holds work for good -- its producer's stand-in writes
  nothing real -- and the report counts it as never started, with the reason. Right for
  declared pipelines and for callback-style work whose inputs already exist.
- ``"ignore"``: they are not asked; every work counts as ready and stale (declarations still
  apply). For callback-style pipelines, whose dependencies runcue cannot see, the finish time
  is then what the limits alone allow: a lower bound.

They run in the forecast's thread (sync checks inline on its loop, async ones under trio,
without ``check_timeout``: while one waits on real I/O the virtual clock runs on). A
check that raises, a duration function that raises, a priority callback that raises: none ends
the forecast. The work concerned fails or never starts, the report says how many and why, and
the ``runcue`` log lines the copy wrote are summed up in :attr:`ForecastReport.notes` instead
of being logged.

**Not forecast**: event callbacks and listeners (never called), work that handlers would submit
(stand-ins submit nothing), failures other than timeouts (stand-ins do not raise),
``RateLimited`` pauses, a store's shared limits (each service's limits apply as if this
process were alone) and the rate windows' history (they start empty). Sync handlers of
services without ``concurrent`` share ``max_threads`` as threads would, but their rate slot
counts from when they were admitted rather than from when a thread took them.

**Costs and tenants.** A service's cost windows (``costs=``), adaptive concurrency, tenants
and ``max_wait`` apply in the copy as declared, and each work keeps its tenant. Stand-ins
return no result, so every attempt costs its estimate (``@cue.task(cost=...)``; no
``actual_cost``, no ``work.charge``): :attr:`ForecastReport.costs` and
:attr:`ServiceForecast.costs` are the estimates summed per dimension, and each cost window's use
is in :attr:`ServiceForecast.by_limit`. Adaptive concurrency sees no ``RateLimited`` and grows
to its ceiling; work that would wait longer than ``max_wait`` fails with ``QuotaExhausted``
and is counted in :attr:`ForecastReport.failures`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import random
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.to_thread

from ._durations import Duration, Sampler, resolve_durations
from ._hooks import logger
from ._rate import parse_rate
from ._replica import Recorder, Replica, ServiceCopy, VirtualFiles

if TYPE_CHECKING:
    from ._cue import Cue

__all__ = [
    "ForecastReport",
    "ServiceForecast",
    "WaitForecast",
    "forecast",
]

Callbacks = Literal["ask", "ignore"]
BINDING_UTILISATION = 0.5  # below this, no limit binds: durations and dependencies set the end
NOTES_KEPT = 10  # distinct log messages the report keeps
INSTALL_TRIO = "pip install 'runcue[trio]'"


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class WaitForecast:
    """How long works wait from the start of the forecast until their handler starts
    (seconds; works that ran, first attempts)."""

    count: int
    p50: float
    p95: float
    max: float
    mean: float

    @classmethod
    def of(cls, waits: list[float]) -> WaitForecast:
        if not waits:
            return cls(0, 0.0, 0.0, 0.0, 0.0)
        ordered = sorted(waits)
        return cls(
            len(ordered),
            _percentile(ordered, 0.5),
            _percentile(ordered, 0.95),
            ordered[-1],
            sum(ordered) / len(ordered),
        )


def _percentile(ordered: list[float], share: float) -> float:
    position = (len(ordered) - 1) * share
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class ServiceForecast:
    """One service in a forecast."""

    name: str | None
    limits: str
    """Its limits as declared: ``"rate=60/min, concurrent=5"`` (``"none"``)."""
    started: int
    """Handler starts (attempts) in the forecast."""
    busy: float
    """Seconds of handler time, summed over its attempts."""
    utilisation: float | None
    """The highest use of any of its limits over the whole run, 0..1 (None: no limits)."""
    by_limit: Mapping[str, float]
    """The use of each limit: ``{"rate 60/min": 0.99, "concurrent 5": 0.4}``. A rate window's
    use is its starts over the most it could admit in the run; concurrency's is its busy time
    over ``concurrent`` times the run."""
    costs: Mapping[str, float] = field(default_factory=lambda: types.MappingProxyType({}))
    """Total estimated cost per dimension over its attempts (empty: no work had a cost)."""


@dataclass(frozen=True)
class ForecastReport:
    """What ``await cue.forecast()`` found (times in virtual seconds from its start).

    ``print(report)`` (or ``report.render()``) shows it; ``finish`` is when the last work ends,
    ``binding`` the service whose limit is used the most (None when no limit is used even half
    the time: then durations and dependencies, not limits, set the end).
    """

    finish: float
    """Seconds until the last work that can finish has finished."""
    binding: str | None
    """The service whose limits bind (None: no limit binds)."""
    binding_limit: str | None
    """Which of its limits: ``"rate 60/min"``, ``"concurrent 5"``."""
    services: Mapping[str | None, ServiceForecast]
    waits: WaitForecast
    costs: Mapping[str, float]
    """Total estimated cost per dimension over every service (empty: no work had a cost)."""
    works: int
    """Works forecast: every work submitted to the cue and not finished."""
    completed: int
    skipped: int
    failed: int
    never_started: int
    """Works still waiting when nothing could move any more (``stuck`` says why)."""
    failures: Mapping[str, int]
    """Failed works by error type (stand-ins only fail by timeouts, bad durations...)."""
    stuck: tuple[str, ...]
    """Why the works that never started wait, grouped: ``"3 ocr: not_ready (is_ready ...)"``."""
    durations: Mapping[str, str]
    """Per task, the duration used and where it came from."""
    notes: tuple[str, ...]
    """What the copy logged (a check that raised...), each with how often."""
    wall_time: float
    """Real seconds the forecast took."""

    def render(self) -> str:
        """The report as text."""
        lines = [
            f"forecast: {self.works} works finish in {_duration(self.finish)}"
            f" ({self.completed} run, {self.skipped} skipped, {self.failed} failed,"
            f" {self.never_started} never start)",
        ]
        if self.binding is not None:
            lines.append(f"binding: service {self.binding!r} ({self.binding_limit})")
        else:
            lines.append("binding: no limit binds (durations and dependencies set the end)")
        waits = self.waits
        lines.append(
            f"waits before starting: p50 {_duration(waits.p50)}, p95 {_duration(waits.p95)},"
            f" max {_duration(waits.max)} ({waits.count} works)"
        )
        for service in self.services.values():
            name = "(no service)" if service.name is None else service.name
            use = ", ".join(f"{limit} {share:.0%}" for limit, share in service.by_limit.items())
            lines.append(
                f"  {name}: {service.limits}; {service.started} starts, busy"
                f" {_duration(service.busy)}" + (f"; use: {use}" if use else "")
            )
        if self.costs:
            lines.append(
                "costs: " + ", ".join(f"{amount:g} {dim}" for dim, amount in self.costs.items())
            )
        lines += [f"never started: {line}" for line in self.stuck]
        if any("is_ready returned False" in line for line in self.stuck):
            lines.append(
                "hint: is_ready sees the real world, which a forecast never changes; declare"
                " inputs/outputs, or forecast(callbacks='ignore') for what the limits allow"
            )
        lines += [f"failed: {count} by {kind}" for kind, count in self.failures.items()]
        used = ", ".join(f"{task} {text}" for task, text in self.durations.items())
        lines.append(f"durations: {used or '(no work)'}")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"(forecast in {self.wall_time:.2f}s of real time)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s"


def _total(amounts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for spent in amounts:
        for dimension, amount in spent.items():
            total[dimension] = total.get(dimension, 0.0) + amount
    return total


def _service_forecast(copy: ServiceCopy, recorder: Recorder, finish: float) -> ServiceForecast:
    name, rate, concurrent = copy.name, copy.rate, copy.concurrent
    started = recorder.starts.get(name, 0)
    busy = recorder.busy.get(name, 0.0)
    spent = recorder.costs.get(name, {})
    by_limit: dict[str, float] = {}
    if rate is not None:
        for window in rate.split(";"):
            (spec,) = parse_rate(window)
            most = spec.limit * (math.floor(finish / spec.period) + 1)
            by_limit[f"rate {window.strip()}"] = min(1.0, started / most)
    for dimension, windows in (copy.costs or {}).items():
        for window in windows.split(";"):
            (spec,) = parse_rate(window)
            most = spec.limit * (math.floor(finish / spec.period) + 1)
            by_limit[f"{dimension} {window.strip()}"] = min(1.0, spent.get(dimension, 0.0) / most)
    if concurrent is not None:
        by_limit[f"concurrent {concurrent}"] = (
            min(1.0, busy / (concurrent * finish)) if finish > 0 else 0.0
        )
    costs = ", ".join(f"{dim}={windows}" for dim, windows in (copy.costs or {}).items())
    limits = ", ".join(
        part
        for part in (
            f"rate={rate}" if rate else "",
            f"concurrent={concurrent}" if concurrent else "",
            f"costs {costs}" if costs else "",
        )
        if part
    )
    return ServiceForecast(
        name=name,
        limits=limits or "no limits",
        started=started,
        busy=busy,
        utilisation=max(by_limit.values()) if by_limit else None,
        by_limit=types.MappingProxyType(by_limit),
        costs=types.MappingProxyType(dict(spent)),
    )


def _grouped(left: list[tuple[str, str, str]]) -> tuple[str, ...]:
    groups: dict[tuple[str, str], list[str]] = {}
    for task, reason, details in left:
        groups.setdefault((task, reason), []).append(details)
    return tuple(
        f"{len(details)} {task}: {reason} (e.g. {details[0]})"
        for (task, reason), details in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    )


# --------------------------------------------------------------------------- the run


class _Notes(logging.Filter):
    """Keeps the ``runcue`` log records of one thread (the forecast's) out of the log, and
    counts them for the report."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread
        self.seen: Counter[str] = Counter()
        self.closing = False  # the forecast stops its copy: what it logs then is no news

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread != self.thread:
            return True
        if self.closing:
            return False
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        if text in self.seen or len(self.seen) < NOTES_KEPT:
            self.seen[text] += 1
        return False

    def notes(self) -> tuple[str, ...]:
        return tuple(
            text if count == 1 else f"{text} ({count} times)" for text, count in self.seen.items()
        )


@contextlib.contextmanager
def _quiet_thread() -> Iterator[_Notes]:
    notes = _Notes(threading.get_ident())
    logger.addFilter(notes)
    try:
        yield notes
    finally:
        logger.removeFilter(notes)


class _Job:
    """One forecast, run by :meth:`run` in a worker thread; :meth:`cancel` from any thread."""

    def __init__(
        self,
        replica: Replica,
        samplers: dict[str, Sampler],
        seed: int | None,
        described: dict[str, str],
    ) -> None:
        self.replica = replica
        self.samplers = samplers
        self.seed = seed
        self.described = described
        self._lock = threading.Lock()
        self._cancelled = False
        self._cancel: Callable[[], None] | None = None
        self._notes: _Notes | None = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            cancel = self._cancel
        if cancel is not None:
            cancel()

    def run(self) -> ForecastReport:
        import trio
        import trio.testing

        begun = time.perf_counter()
        with _quiet_thread() as notes:
            self._notes = notes
            report = trio.run(self._main, clock=trio.testing.MockClock(autojump_threshold=0))
        return dataclasses.replace(
            report, notes=notes.notes(), wall_time=time.perf_counter() - begun
        )

    async def _main(self) -> ForecastReport:
        import trio

        token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:

            def cancel_soon() -> None:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(scope.cancel)

            with self._lock:
                self._cancel = cancel_soon
                if self._cancelled:
                    scope.cancel()
            replica = self.replica
            files = VirtualFiles()
            files.start()
            copy, recorder = await replica.build(
                self.samplers, random.Random(self.seed), files, seed=self.seed
            )
            left = await replica.run(copy, recorder, stopping=self.stopping)
            return self._report(recorder, left)
        msg = "the forecast was cancelled (its caller was)"
        raise RuntimeError(msg)

    def stopping(self) -> None:
        if self._notes is not None:
            self._notes.closing = True

    def _report(self, recorder: Recorder, left: list[tuple[str, str, str]]) -> ForecastReport:
        finish = recorder.last_end
        services: dict[str | None, ServiceForecast] = {
            copy.name: _service_forecast(copy, recorder, finish) for copy in self.replica.services
        }
        if recorder.starts.get(None):
            services[None] = _service_forecast(
                ServiceCopy(None, None, None, None, False, None, None),
                recorder,
                finish,
            )
        binding = max(
            (s for s in services.values() if s.utilisation is not None),
            key=lambda s: s.utilisation or 0.0,
            default=None,
        )
        if binding is not None and (binding.utilisation or 0.0) < BINDING_UTILISATION:
            binding = None
        binding_limit = None
        if binding is not None:
            binding_limit = max(binding.by_limit, key=lambda limit: binding.by_limit[limit])
        outcomes = recorder.outcomes
        return ForecastReport(
            finish=finish,
            binding=None if binding is None else binding.name,
            binding_limit=binding_limit,
            services=types.MappingProxyType(services),
            waits=WaitForecast.of(recorder.waits),
            costs=types.MappingProxyType(_total(recorder.costs.values())),
            works=len(self.replica.works),
            completed=outcomes["completed"],
            skipped=outcomes["skipped"],
            failed=outcomes["failed"],
            never_started=len(left),
            failures=types.MappingProxyType(dict(recorder.failures)),
            stuck=_grouped(left),
            durations=types.MappingProxyType(self.described),
            notes=(),
            wall_time=0.0,
        )


def require_trio() -> None:
    """Raise ImportError with the fix when trio is not installed."""
    if importlib.util.find_spec("trio") is None:
        msg = (
            "cue.forecast() runs your cue on trio's virtual clock, and trio is not installed:"
            f" {INSTALL_TRIO}"
        )
        raise ImportError(msg)


async def forecast(
    cue: Cue,
    durations: Mapping[str, Duration] | None,
    *,
    default: Duration | None,
    callbacks: Callbacks,
    seed: int | None,
) -> ForecastReport:
    """See :meth:`runcue.Cue.forecast`."""
    require_trio()
    if callbacks not in ("ask", "ignore"):
        msg = f"callbacks must be 'ask' or 'ignore', got {callbacks!r}"
        raise ValueError(msg)
    replica = Replica(cue, ask_callbacks=callbacks == "ask")
    needed = {work.task for work in replica.works}
    samplers, described = resolve_durations(cue, durations, default, needed)
    job = _Job(replica, samplers, seed, described)
    try:
        return await anyio.to_thread.run_sync(job.run, abandon_on_cancel=True)
    finally:
        job.cancel()  # (nothing left to cancel when it finished)
