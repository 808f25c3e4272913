"""What a run saw: the event log, the stall report, and the summary (as rich tables or JSON)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

import runcue

from .fake import label

__all__ = [
    "BlockedGroup",
    "Recorder",
    "StallReport",
    "Summary",
    "event_line",
    "group_blocked",
    "max_in_window",
    "percentile",
]

FINAL_KINDS = ("completed", "failed", "skipped", "cancelled")
SYMBOLS = {
    "queued": "+",
    "waiting": "…",
    "started": "▶",
    "completed": "✓",
    "failed": "✗",
    "skipped": "↷",
    "retrying": "⟳",
    "paused": "‖",
    "cancelled": "⊘",
}
LOG_HEADER = f"{'TIME':>9}  {'EVENT':<12} {'TASK':<12} {'WORK_ID':<14} DETAILS"


def percentile(values: Sequence[float], share: float) -> float | None:
    """The ``share`` (0..1) percentile of ``values`` by linear interpolation; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * share
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def max_in_window(starts: Sequence[tuple[float, float]], period: float) -> int:
    """The most starts that certainly fell inside one window ``[t, t + period)``.

    Each start is ``(earliest, latest)``, in the order the starts happened: the scheduler
    admits a start and reports it in one synchronous step, so the admission lies between the
    previous event and the start's own event. Reading the clock for the event can come a
    little late (the process may be paused right there); counting from the earliest moment a
    window's first start could have been admitted to the latest each later one could have been
    never counts a start the limiter did not put in that window. With no delay, the bounds
    meet and this is the plain sliding-window count.
    """
    best = 0
    last = 0
    for first, (earliest, _) in enumerate(starts):
        last = max(last, first)
        while last + 1 < len(starts) and starts[last + 1][1] < earliest + period:
            last += 1
        best = max(best, last - first + 1)
    return best


def event_line(event: runcue.WorkEvent, elapsed: float) -> str:
    """One line of the ``--verbose`` event log."""
    if event.kind == "queued":
        details = ", ".join(f"{key}={value}" for key, value in event.work.params.items())
    elif event.duration is not None and event.kind == "completed":
        details = f"{event.duration * 1000:.0f}ms"
    elif event.duration is not None:
        details = f"{event.duration * 1000:.0f}ms {event.details}"
    else:
        details = event.details
    symbol = SYMBOLS.get(event.kind, " ")
    return (
        f"{elapsed:8.3f}s  {symbol} {event.kind:<10} {event.work.task:<12} "
        f"{event.work.id:<14} {details}"
    ).rstrip()


@dataclass(frozen=True)
class BlockedGroup:
    """Pending work that waits for the same reason."""

    reason: str
    count: int
    tasks: dict[str, int]
    example: str


@dataclass(frozen=True)
class StallReport:
    """What was blocked, and why, when nothing had started or finished for a while."""

    quiet_for: float
    pending: int
    groups: tuple[BlockedGroup, ...]

    def render(self) -> Text:
        """The report as the simulator prints it."""
        text = Text()
        text.append(
            f"⚠ Stall: nothing started or finished for {self.quiet_for:.1f}s;"
            f" {self.pending} work items blocked:\n",
            style="bold yellow",
        )
        for group in self.groups:
            tasks = ", ".join(f"{task} x{count}" for task, count in group.tasks.items())
            text.append(f"    {group.reason} ({group.count}): ", style="bold")
            text.append(f"{tasks} -- e.g. {group.example}\n")
        return text

    def to_json(self) -> dict[str, Any]:
        """The report as ``--json`` lists it."""
        return {
            "quiet_for": round(self.quiet_for, 3),
            "pending": self.pending,
            "blocked": {group.reason: group.count for group in self.groups},
        }


def group_blocked(blocked: Iterable[dict[str, Any]]) -> tuple[BlockedGroup, ...]:
    """Group ``cue.debug_blocked()`` by reason, the largest group first."""
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in blocked:
        by_reason[str(item["reason"])].append(item)
    groups = []
    for reason, items in by_reason.items():
        tasks = Counter(item["work"].task for item in items)
        first = items[0]
        groups.append(
            BlockedGroup(
                reason=reason,
                count=len(items),
                tasks=dict(tasks.most_common()),
                example=f"{label(first['work'])}: {first['details']}",
            )
        )
    groups.sort(key=lambda group: (-group.count, group.reason))
    return tuple(groups)


@dataclass
class Recorder:
    """Subscribed to the cue: keeps what the summary needs from the stream of events."""

    queued_at: dict[str, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    starts: defaultdict[str | None, list[tuple[float, float]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    """Per service, each start as (earliest, latest) moment it was admitted; see
    :func:`max_in_window`."""
    outcomes: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failed: list[str] = field(default_factory=list)
    stall_failures: int = 0
    events: int = 0
    last_event: float | None = None

    def __call__(self, event: runcue.WorkEvent) -> None:
        self.events += 1
        work = event.work
        if event.kind == "queued":
            self.queued_at[work.id] = event.time
        elif event.kind == "started":
            earliest = event.time if self.last_event is None else self.last_event
            self.starts[event.service].append((earliest, event.time))
        elif event.kind in FINAL_KINDS:
            self.outcomes[work.task][event.kind] += 1
            submitted = self.queued_at.pop(work.id, None)
            if event.duration is not None and submitted is not None:  # its handler ran
                self.latencies.append(event.time - submitted)
            if event.kind == "failed":
                self.failed.append(label(work))
                if isinstance(work.exception, runcue.StallTimeout):
                    self.stall_failures += 1
        self.last_event = event.time


def _span(seconds: float) -> str:
    """A latency for people: milliseconds below a second, then seconds, then h:mm:ss."""
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass(frozen=True)
class Summary:
    """The end of a run, in numbers."""

    scenario: str
    backend: str
    seed: int
    items: int
    wall_time: float
    stats: runcue.CueStats
    recorder: Recorder
    stalls: tuple[StallReport, ...]
    options: dict[str, Any]
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """What the scenario adds (the llm scenario: what its fake server saw)."""
    virtual: bool = False
    """Run on a virtual clock: ``wall_time``, throughput and latency are virtual."""
    real_time: float | None = None
    """Real seconds the run took (it differs from ``wall_time`` on a virtual clock)."""

    @property
    def stalled(self) -> bool:
        """Did the stall timeout fire?"""
        return self.recorder.stall_failures > 0

    @property
    def exit_code(self) -> int:
        """0 when the run ended on its own, 1 when the stall timeout fired, 130 if interrupted."""
        if self.interrupted:
            return 130
        return 1 if self.stalled else 0

    def service_rows(self) -> list[dict[str, Any]]:
        """Per-service numbers: throughput, peak concurrency, peak starts per rate window."""
        rows = []
        for service in self.stats.services.values():
            if service.name is None and not service.started:
                continue
            starts = self.recorder.starts.get(service.name, [])
            rows.append(
                {
                    "service": service.name,
                    "concurrent": service.concurrent,
                    "rate": service.rate,
                    "started": service.started,
                    "completed": service.completed,
                    "failed": service.failed,
                    "skipped": service.skipped,
                    "throughput": round((service.completed + service.failed) / self.wall_time, 3)
                    if self.wall_time > 0
                    else 0.0,
                    "max_running": service.max_running,
                    "windows": [
                        {
                            "limit": window.limit,
                            "period": window.period,
                            "max_starts": max_in_window(starts, window.period),
                        }
                        for window in self.service_windows(service)
                    ],
                }
            )
        return rows

    def service_windows(self, service: runcue.ServiceStats) -> tuple[runcue.RateSpec, ...]:
        """The rate windows of a service, from its rate string."""
        return runcue.parse_rate(service.rate) if service.rate else ()

    def latency(self) -> dict[str, Any]:
        """Submit-to-finish latency of the work that ran (completed or failed)."""
        values = self.recorder.latencies
        return {
            "count": len(values),
            "p50": _seconds(percentile(values, 0.5)),
            "p95": _seconds(percentile(values, 0.95)),
        }

    def to_json(self) -> dict[str, Any]:
        """The summary as ``--json`` prints it."""
        stats = self.stats
        return {
            "scenario": self.scenario,
            "backend": self.backend,
            "seed": self.seed,
            "items": self.items,
            "options": self.options,
            "clock": "virtual" if self.virtual else "real",
            "wall_time": round(self.wall_time, 4),
            "real_time": None if self.real_time is None else round(self.real_time, 4),
            "works": {
                "submitted": stats.submitted,
                "completed": stats.completed,
                "failed": stats.failed,
                "skipped": stats.skipped,
                "cancelled": stats.cancelled,
                "left": stats.pending + stats.running,
                "retried": stats.retried,
            },
            "by_task": {
                task: {kind: counts[kind] for kind in FINAL_KINDS}
                for task, counts in sorted(self.recorder.outcomes.items())
            },
            "failed": sorted(self.recorder.failed),
            "latency": self.latency(),
            "services": self.service_rows(),
            "stalls": [stall.to_json() for stall in self.stalls],
            "stalled": self.stalled,
            "interrupted": self.interrupted,
            "exit_code": self.exit_code,
            **self.extra,
        }

    def render(self) -> RenderableType:
        """The summary as rich tables."""
        stats = self.stats
        latency = self.latency()
        head = Table.grid(padding=(0, 2))
        head.add_column(style="bold")
        head.add_column()
        works = Text(f"{stats.submitted} submitted from {self.items} items: ")
        for index, (name, value, style) in enumerate(
            (
                ("completed", stats.completed, "green"),
                ("failed", stats.failed, "red"),
                ("skipped", stats.skipped, "blue"),
                ("cancelled", stats.cancelled, "red"),
                ("left", stats.pending + stats.running, "yellow"),
            )
        ):
            works.append(", " if index else "")
            works.append(f"{value} {name}", style=style if value else "")
        head.add_row("works", works)
        if self.virtual:
            real = "" if self.real_time is None else f" ({self.real_time:.2f}s real)"
            head.add_row("virtual time", f"{self.wall_time:.3f}s{real}")
        else:
            head.add_row("wall time", f"{self.wall_time:.3f}s")
        p50, p95 = latency["p50"], latency["p95"]
        spread = "-"
        if p50 is not None:
            spread = f"p50 {_span(p50)}, p95 {_span(p95)}"
            spread += f" (submit to finish, {latency['count']} works)"
        head.add_row("latency", spread)
        head.add_row("run", f"seed {self.seed}, {self.backend}")
        server = self.extra.get("server")
        if server is not None:
            head.add_row(
                "server",
                f"most accepted in any {server['period']:g}s window:"
                f" {server['most_requests_in_window']} of {server['requests_limit']} requests,"
                f" {server['most_tokens_in_window']:,.0f} of {server['tokens_limit']:,} tokens;"
                f" {server['rejected_429']} answered 429",
            )

        tasks = Table(box=None, padding=(0, 1), header_style="bold")
        tasks.add_column("task")
        for kind in FINAL_KINDS:
            tasks.add_column(kind, justify="right")
        for task, counts in sorted(self.recorder.outcomes.items()):
            tasks.add_row(task, *(str(counts[kind]) for kind in FINAL_KINDS))

        services = Table(box=None, padding=(0, 1), header_style="bold")
        for column in ("service", "concurrent", "rate"):
            services.add_column(column)
        for column in ("started", "done/s", "max running", "max in window"):
            services.add_column(column, justify="right")
        for row in self.service_rows():
            services.add_row(
                str(row["service"] or "(no service)"),
                str(row["concurrent"] or "-"),
                row["rate"] or "-",
                str(row["started"]),
                f"{row['throughput']:.1f}",
                str(row["max_running"]),
                ", ".join(str(window["max_starts"]) for window in row["windows"]) or "-",
            )
        parts: list[RenderableType] = [head, Text(""), tasks, Text(""), services]
        if self.stalled:
            parts.append(
                Text(
                    f"\nstall timeout: {self.recorder.stall_failures} work items failed after no"
                    " progress",
                    style="bold red",
                )
            )
        if self.interrupted:
            parts.append(Text("\ninterrupted", style="bold red"))
        return Panel(Group(*parts), title=f"Summary · {self.scenario}", title_align="left")
