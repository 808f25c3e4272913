"""A live terminal dashboard for a running cue, and the same view of any stats snapshot.

Both draw with `rich <https://rich.readthedocs.io>`_, which runcue itself does not depend on:
it is imported only when :func:`progress` or :func:`render_stats` is called, and its absence
is reported with the command that installs it (``pip install 'runcue[sim]'``).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from ._events import WorkEvent
from ._fit import FittedTable, PackedLine, ProgressLine
from ._hooks import logger
from ._stats import CueStats, ServiceStats

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.text import Text

    from ._cue import Cue

__all__ = ["progress", "render_stats"]

INSTALL_HINT = "pip install 'runcue[sim]'"
_FINAL_KINDS = frozenset({"completed", "failed", "skipped", "cancelled"})
_RATE_WINDOW = 10.0  # seconds of finishes the live view averages its throughput over
_EVENT_STYLES = {
    "queued": "dim",
    "waiting": "yellow",
    "started": "cyan",
    "completed": "green",
    "failed": "bold red",
    "skipped": "blue",
    "retrying": "magenta",
    "paused": "yellow",
    "cancelled": "red",
}


def _require_rich(caller: str) -> None:
    try:
        import rich  # noqa: F401
    except ImportError as exc:
        msg = (
            f"{caller} draws with the 'rich' package, which is not installed;"
            f" install it with: {INSTALL_HINT}"
        )
        raise ImportError(msg, name="rich") from exc


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss`` under an hour)."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _eta(stats: CueStats, throughput: float) -> str:
    """The time left at ``throughput`` finishes per second: ``m:ss``, ``done`` or ``-``."""
    remaining = stats.pending + stats.running
    if remaining == 0:
        return "done" if stats.submitted else "-"
    return _clock(remaining / throughput) if throughput > 0 else "-"


def _period(seconds: float) -> str:
    """A window length the way rate strings write it: ``s``, ``min``, ``h``, ``15min``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size and (seconds / size).is_integer():
            count = int(seconds / size)
            return unit if count == 1 else f"{count}{unit}"
    return "s" if seconds == 1 else f"{seconds:g}s"


def _bar(used: float, limit: float, width: int = 10) -> Text:
    from rich.text import Text

    share = 0.0 if limit <= 0 or math.isinf(limit) else min(1.0, used / limit)
    filled = round(share * width)
    style = "red" if share >= 1.0 else "yellow" if share >= 0.75 else "green"
    bar = Text("█" * filled, style=style)
    bar.append("░" * (width - filled), style="dim")
    return bar


def _state(service: ServiceStats) -> Text:
    from rich.text import Text

    if service.paused_for > 0:
        return Text(f"paused {service.paused_for:.1f}s", style="bold yellow")
    blocked = service.blocked
    if service.pending and blocked is not None and blocked[0] == "cost_limited":
        dimension = blocked[1].split("waiting for ", 1)[-1].split(":", 1)[0]
        return Text(f"waiting for {dimension}", style="yellow")
    if service.concurrent is not None and service.running >= service.concurrent:
        return Text("full", style="yellow")
    # A free slot can read as a few microseconds away: the snapshot's clock reads differ.
    if service.pending and service.next_free_slot >= 0.001:
        return Text(f"rate-limited {_duration(service.next_free_slot)}", style="yellow")
    if service.running:
        return Text("running", style="green")
    if service.pending:
        return Text("waiting", style="dim")
    return Text("idle", style="dim")


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"


def _rate_use(service: ServiceStats, *, bars: bool) -> Text:
    """Each rate window's use on a line: ``48/60/min``, or with a bar, ``███░ 48/60 per min``;
    then each cost window's: ``7,210/10,000 tokens/min``."""
    from rich.text import Text

    windows = service.windows
    costs = [limit for limit in service.limits if limit.kind == "cost"]
    if not windows and not costs:
        return Text("-", style="dim")
    lines = Text()
    for index, cost in enumerate(costs):
        if index:
            lines.append("\n")
        dimension, _, spec = cost.name.partition(" ")
        period = _period(float(spec.split("/", 1)[1].rstrip("s")))
        if bars:
            lines.append_text(_bar(cost.used, cost.limit, width=8))
            lines.append(f" {cost.used:,.0f}/{cost.limit:,.0f} {dimension} per {period}")
        else:
            lines.append(f"{cost.used:,.0f}/{cost.limit:,.0f} {dimension}/{period}")
    if costs and windows:
        lines.append("\n")
    for index, window in enumerate(windows):
        if index:
            lines.append("\n")
        if bars:
            lines.append_text(_bar(window.used, window.limit, width=8))
            lines.append(f" {window.used}/{window.limit} per {_period(window.period)}")
        else:  # (the count padded to the limit's width: the column keeps its width)
            used = f"{window.used:>{len(str(window.limit))}}"
            lines.append(f"{used}/{window.limit}/{_period(window.period)}")
    return lines


# The services table: every column it can show, and the layouts it picks from, richest
# first. A narrower terminal loses, in turn: the most-at-once column, retried, skipped, the
# bars of the rate windows, then of the running slots, the rate use, the state, and the
# running count. The counts of pending, done and failed work always show, whole; the
# service names too, unless the terminal is narrower than all of that (then they are cut).
_HEADERS = {
    "service": "service",
    "running_bar": "running",
    "running": "running",
    "peak": "peak",
    "pending": "pending",
    "done": "done",
    "failed": "failed",
    "skipped": "skipped",
    "retried": "retried",
    "rate_bar": "rate use",
    "rate": "rate use",
    "state": "state",
}
_NUMERIC = frozenset({"running", "peak", "pending", "done", "failed", "skipped", "retried"})
_ALWAYS = ("pending", "done", "failed")
_LAYOUTS = (
    ("service", "running_bar", "peak", *_ALWAYS, "skipped", "retried", "rate_bar", "state"),
    ("service", "running_bar", *_ALWAYS, "skipped", "retried", "rate_bar", "state"),
    ("service", "running_bar", *_ALWAYS, "skipped", "rate_bar", "state"),
    ("service", "running_bar", *_ALWAYS, "rate_bar", "state"),
    ("service", "running_bar", *_ALWAYS, "rate", "state"),
    ("service", "running", *_ALWAYS, "rate", "state"),
    ("service", "running", *_ALWAYS, "state"),
    ("service", "running", *_ALWAYS),
    ("service", *_ALWAYS),
)


def _service_cells(service: ServiceStats) -> dict[str, Text]:
    """Every cell the services table can show for one service."""
    from rich.text import Text

    limit = math.inf if service.concurrent is None else service.concurrent
    slots = f"{service.running}/{'∞' if math.isinf(limit) else service.concurrent}"
    running_bar = _bar(service.running, limit)
    running_bar.append(f" {slots}")
    return {
        "service": Text(service.name or "(no service)", style="bold"),
        "running_bar": running_bar,
        "running": Text(slots),
        "peak": Text(str(service.max_running)),
        "pending": Text(str(service.pending)),
        "done": Text(str(service.completed)),
        "failed": Text(str(service.failed), style="red" if service.failed else ""),
        "skipped": Text(str(service.skipped)),
        "retried": Text(str(service.retried)),
        "rate_bar": _rate_use(service, bars=True),
        "rate": _rate_use(service, bars=False),
        "state": _state(service),
    }


def _event_line(event: WorkEvent | RenderableType) -> RenderableType:
    return _event_text(event) if isinstance(event, WorkEvent) else event


def _event_text(event: WorkEvent) -> Text:
    from rich.text import Text

    line = Text()
    line.append(f"{event.kind:<10}", style=_EVENT_STYLES.get(event.kind, ""))
    line.append(f"{event.work.task:<14} ", style="bold")
    line.append(f"{event.work.id:<14} ", style="dim")
    if event.duration is not None:
        line.append(f"{event.duration * 1000:.0f}ms ")
    line.append(event.details)
    return line


def render_stats(
    stats: CueStats,
    *,
    title: str = "runcue",
    events: Iterable[WorkEvent | RenderableType] | None = None,
    throughput: float | None = None,
) -> RenderableType:
    """Draw a :class:`CueStats` snapshot as a rich renderable: the same view as :func:`progress`.

    Print it (``rich.print(runcue.render_stats(cue.stats()))``) to report on any batch job.
    Take the snapshot while the cue runs: a stopped cue reports no elapsed time and empty
    rate windows.

    :param title: shown in the first panel's title.
    :param events: recent events (or ready-made lines: strings, rich renderables) for a
        "Recent events" panel; None
        leaves the panel out.
    :param throughput: finished work per second to show and to base the ETA on; None uses
        the average since the cue started.
    :raises ImportError: when rich is not installed (the message says how to install it).
    """
    _require_rich("runcue.render_stats()")
    from rich.console import Group
    from rich.panel import Panel
    from rich.progress_bar import ProgressBar
    from rich.text import Text

    finished = stats.finished
    if throughput is None:
        throughput = finished / stats.elapsed if stats.elapsed > 0 else 0.0
    eta = _eta(stats, throughput)

    counts: list[Text] = []
    for label, value, style in (
        ("pending", stats.pending, "yellow"),
        ("running", stats.running, "cyan"),
        ("done", stats.completed, "green"),
        ("failed", stats.failed, "red"),
        ("skipped", stats.skipped, "blue"),
        ("cancelled", stats.cancelled, "red"),
        ("retried", stats.retried, "magenta"),
    ):
        if label in ("cancelled", "retried") and not value:
            continue
        counts.append(Text.assemble((f"{label} ", "dim"), (f"{value}", f"bold {style}")))
    share = finished / stats.submitted if stats.submitted else 0.0
    progress_line = ProgressLine(
        ProgressBar(total=float(max(stats.submitted, 1)), completed=float(finished)),
        [
            f"{finished}/{stats.submitted} {share:4.0%}",
            f"ETA {eta}",
            f"{throughput:.1f}/s",
            f"elapsed {_clock(stats.elapsed)}",
        ],
    )
    queue = Panel(
        Group(PackedLine(counts), progress_line),
        title=f"[bold]{title}[/] · Queue",
        title_align="left",
    )
    rows = [
        _service_cells(service)
        for service in stats.services.values()
        # tasks without a service: only shown once they have been used
        if service.name is not None or service.started or service.pending or service.skipped
    ]
    # The state's text changes from frame to frame ("full", "rate-limited 120ms"): keep the
    # room its longest usual text needs, so that the columns do not come and go with it.
    rated = any(service.windows for service in stats.services.values())
    reserve = {"state": len("rate-limited 999ms" if rated else "paused 9.9s")}
    table = FittedTable(_HEADERS, rows, _LAYOUTS, numeric=_NUMERIC, reserve=reserve)
    parts: list[RenderableType] = [
        queue,
        Panel(table, title="Services", title_align="left"),
    ]
    if events is not None:
        lines = [_event_line(event) for event in events]
        body: RenderableType = Group(*lines) if lines else Text("(none yet)", style="dim")
        parts.append(Panel(body, title="Recent events", title_align="left"))
    return Group(*parts)


def _log_line(stats: CueStats, title: str, throughput: float | None) -> str:
    """The whole view on one plain line, for a log."""
    finished = stats.finished
    if throughput is None:
        throughput = finished / stats.elapsed if stats.elapsed > 0 else 0.0
    share = finished / stats.submitted if stats.submitted else 0.0
    parts = [
        f"{title}: {finished}/{stats.submitted} finished ({share:.0%})",
        f"pending {stats.pending}",
        f"running {stats.running}",
        f"failed {stats.failed}",
        f"{throughput:.1f}/s",
        f"ETA {_eta(stats, throughput)}",
        f"elapsed {_clock(stats.elapsed)}",
    ]
    line = " · ".join(parts)
    for service in stats.services.values():
        if service.name is None and not (service.started or service.pending):
            continue
        slots = "∞" if service.concurrent is None else str(service.concurrent)
        about = [f"{service.running}/{slots} running", f"{service.pending} pending"]
        about += [f"{w.used}/{w.limit} per {_period(w.period)}" for w in service.windows]
        about.append(_state(service).plain)
        line += f" | {service.name or '(no service)'}: {', '.join(about)}"
    return line


@asynccontextmanager
async def _every(
    interval: float, refresh: Callable[[], None], cue: Cue, wait: bool
) -> AsyncIterator[None]:
    """Call ``refresh()`` every ``interval`` seconds while the block runs (until the first
    exception it raises, which is logged); on a normal exit, first wait for the cue to be idle
    if ``wait``. An exception in the block comes out as itself, not in an exception group.
    """

    async def refresh_forever() -> None:
        while True:
            await anyio.sleep(interval)
            try:
                refresh()
            except Exception:
                logger.exception("runcue: the progress view failed to draw; it stops refreshing")
                return

    body_error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(refresh_forever)
        try:
            yield
            if wait:
                await cue.join()
        except BaseException as exc:  # re-raised below, outside the task group
            body_error = exc
        tg.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


@asynccontextmanager
async def progress(
    cue: Cue,
    *,
    console: Console | None = None,
    title: str = "runcue",
    events: int = 8,
    refresh_per_second: float = 4.0,
    transient: bool = False,
    wait: bool = True,
    log_every: float = 10.0,
) -> AsyncIterator[None]:
    """Show a live dashboard of ``cue`` while the block runs.

    ::

        async with runcue.Cue() as cue, runcue.progress(cue):
            for page in pages:
                await cue.submit("extract", {"page": page})

    The view shows the queue counts, a progress bar with ETA and throughput, a row per service
    (running against its limit, done and failed, the use of each rate window, pauses) and the
    most recent events. It fits the terminal's width: names and numbers show whole, and a
    narrow terminal drops the least useful columns (the bars, then rate use and state) while
    a wide one adds some (skipped, retried, the most running at once). It refreshes from a
    task of its own, on the event loop, a few times a second; leaving the block normally
    first waits until the cue has nothing pending or running (as leaving the cue's own block
    would), so the view follows the work to its end and its last frame stays on screen. An
    exception in the block leaves at once and comes out as itself.

    Without a terminal (output to a file or a pipe, or a ``console`` that is not one) there
    is no live view: every ``log_every`` seconds, and once at the end, one plain line goes to
    the ``runcue`` logger at INFO level instead (configure logging to see it, e.g.
    ``logging.basicConfig(level=logging.INFO)``).

    :param console: the rich ``Console`` to draw on (default: a new one on stdout).
    :param title: shown in the first panel's title (and at the start of each log line).
    :param events: how many recent events to show (0 hides the panel).
    :param refresh_per_second: redraws per second.
    :param transient: erase the view when the block ends.
    :param wait: wait for the cue to be idle before leaving (see above).
    :param log_every: seconds between log lines without a terminal.
    :raises ImportError: when rich is not installed (the message says how to install it).
    """
    _require_rich("runcue.progress()")
    if isinstance(events, bool) or not isinstance(events, int) or events < 0:
        msg = f"events must be a whole number >= 0, got {events!r}"
        raise ValueError(msg)
    if not refresh_per_second > 0:
        msg = f"refresh_per_second must be > 0, got {refresh_per_second!r}"
        raise ValueError(msg)
    if not log_every > 0:
        msg = f"log_every must be > 0 seconds, got {log_every!r}"
        raise ValueError(msg)
    from rich.console import Console as RichConsole
    from rich.live import Live
    from rich.text import Text

    console = RichConsole() if console is None else console
    live_view = console.is_terminal
    recent: deque[tuple[float, WorkEvent]] = deque(maxlen=max(events, 1))
    finishes: deque[float] = deque()

    shown_waiting: set[str] = set()  # works whose current wait is already on screen

    def listen(event: WorkEvent) -> None:
        if events and live_view:
            if event.kind != "waiting":
                shown_waiting.discard(event.work.id)
                recent.append((time.time(), event))
            elif event.work.id not in shown_waiting:  # rechecks repeat it: show it once
                shown_waiting.add(event.work.id)
                recent.append((time.time(), event))
        if event.kind in _FINAL_KINDS:
            finishes.append(event.time)

    def recent_throughput(stats: CueStats) -> float | None:
        if stats.elapsed <= 0:
            return None
        now = anyio.current_time()
        while finishes and finishes[0] < now - _RATE_WINDOW:
            finishes.popleft()
        return len(finishes) / min(_RATE_WINDOW, stats.elapsed)

    def frame() -> RenderableType:
        stats = cue.stats()
        lines = None
        if events:
            lines = []
            for wall, event in list(recent):
                line = Text.assemble(
                    (time.strftime("%H:%M:%S", time.localtime(wall)), "dim"),
                    f".{int(wall % 1 * 1000):03d} ",
                    _event_text(event),
                )
                line.no_wrap, line.overflow = True, "ellipsis"  # one line per event
                lines.append(line)
        return render_stats(stats, title=title, events=lines, throughput=recent_throughput(stats))

    def log() -> None:
        stats = cue.stats()
        logger.info("%s", _log_line(stats, title, recent_throughput(stats)))

    unsubscribe = cue.subscribe(listen)
    if not live_view:
        try:
            async with _every(log_every, log, cue, wait):
                yield
        finally:
            unsubscribe()
            log()
        return
    live = Live(
        frame(),
        console=console,
        auto_refresh=False,  # rich's own refresh thread must not call cue.stats()
        transient=transient,
        redirect_stdout=True,
        redirect_stderr=True,
    )
    live.start()
    try:
        async with _every(
            1 / refresh_per_second, lambda: live.update(frame(), refresh=True), cue, wait
        ):
            yield
    finally:
        unsubscribe()
        try:
            live.update(frame(), refresh=True)
        finally:
            live.stop()
