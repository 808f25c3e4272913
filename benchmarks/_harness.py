"""The shared harness: settings, interleaved repetitions, medians and ratios, the results table.

Every scenario module exposes ``ID``, ``TITLE`` and ``run(backend, settings) -> list[Row]``.
A scenario measures runcue and its baselines in the same process, one repetition of each in
turn (runcue, baseline, runcue, baseline, ...), each repetition on a fresh event loop
(``anyio.run``) after a garbage collection, and reports medians and the median of the paired
ratios (repetition ``k`` of runcue against repetition ``k`` of the baseline), which cancels
most of the drift a noisy machine adds.
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import importlib.metadata
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import anyio

import runcue

__all__ = [
    "BACKENDS",
    "Backend",
    "MachineLoad",
    "NeverReady",
    "SourceAtStart",
    "Row",
    "Settings",
    "fmt_bytes",
    "fmt_ratio",
    "fmt_seconds",
    "interleave",
    "machine_info",
    "median",
    "on_loop",
    "paired_ratios",
    "percentile",
    "quiet_runcue_logger",
    "render_table",
    "stopwatch",
    "write_results",
]

Backend = Literal["asyncio", "trio"]
BACKENDS: tuple[Backend, ...] = ("asyncio", "trio")

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """How hard to measure: ``--quick`` shortens every scenario, ``--repeat`` fixes the rounds."""

    quick: bool = False
    repeat: int | None = None
    verbose: bool = True

    def rounds(self, full: int, quick: int) -> int:
        """Repetitions per variant: ``--repeat`` if given, else the scenario's default."""
        if self.repeat is not None:
            return self.repeat
        return quick if self.quick else full

    def say(self, message: str) -> None:
        """One progress line on stderr (stdout stays for the table)."""
        if self.verbose:
            print(f"  {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the results table: a measured claim and whether it holds.

    ``ok`` is None for rows that only inform (no target attached), and for skipped rows:
    ``skipped`` marks a scenario that could not run here (a missing optional tool), which is
    reported but neither passes nor fails the run.
    """

    bench: str
    backend: str
    scenario: str
    runcue: str
    baselines: str
    ratio: str
    target: str
    ok: bool | None
    notes: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def verdict(self) -> str:
        """The table's last column."""
        if self.skipped:
            return "skipped"
        if self.ok is None:
            return "info"
        return "PASS" if self.ok else "**MISS**"


def on_loop(backend: Backend, func: Callable[[], Awaitable[T]]) -> T:
    """Run ``func()`` on a fresh event loop of ``backend`` after a full garbage collection."""
    gc.collect()
    return anyio.run(func, backend=backend)


def interleave(
    variants: Mapping[str, Callable[[], float]],
    rounds: int,
    *,
    warmup: int = 1,
    say: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Call every variant once per round, in turn; return each one's measurements.

    ``warmup`` rounds run first and are thrown away (imports, caches, thread pools).
    """
    results: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(warmup + rounds):
        for name, measure in variants.items():
            value = measure()
            if index >= warmup:
                results[name].append(value)
        if say is not None and index >= warmup:
            shown = ", ".join(f"{name} {results[name][-1]:.4g}" for name in variants)
            say(f"round {index - warmup + 1}/{rounds}: {shown}")
    return results


def median(values: Sequence[float]) -> float:
    """The median (nan for no values)."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile by linear interpolation (``0.5`` is the median)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved measurement series."""
    return [a / b if b else math.inf for a, b in zip(numerators, denominators)]


def fmt_seconds(seconds: float) -> str:
    """``1.23 s``, ``45.6 ms`` or ``7.89 µs``."""
    if math.isnan(seconds):
        return "n/a"
    if seconds >= 1.0:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


def fmt_ratio(ratio: float) -> str:
    """``2.4x``."""
    return "n/a" if math.isnan(ratio) else f"{ratio:.3g}x"


def fmt_bytes(count: float) -> str:
    """``312 B``."""
    return f"{count:.0f} B"


def quiet_runcue_logger() -> None:
    """Hide runcue's expected warnings (work cancelled at stop) so the output stays readable."""
    logging.getLogger("runcue").setLevel(logging.ERROR)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _source() -> str:
    """The git commit the measured runcue came from, and whether src/ had local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{commit} + uncommitted changes in src/" if dirty else commit


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _source_digest() -> str:
    """A digest of every file under src/ (to notice the measured code changing mid-run)."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent / "src"
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    return digest.hexdigest()


@dataclass(frozen=True)
class SourceAtStart:
    """The source of the runcue being measured, taken when the run starts.

    The code is imported at start, so the commit and local changes of that moment are what
    ran; :meth:`changed` tells whether src/ was edited (or a commit checked out) meanwhile.
    """

    description: str = field(default_factory=_source)
    digest: str = field(default_factory=_source_digest)

    def changed(self) -> bool:
        """Whether src/ differs now from when the run started."""
        return _source_digest() != self.digest


def machine_info(source: SourceAtStart | None = None) -> dict[str, str]:
    """What the numbers were measured on (``source``: as taken at the start of the run)."""
    described = source.description if source is not None else _source()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu count": str(os.cpu_count()),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "runcue": f"{_version('runcue')} (source {described} at the start of the run)",
        "anyio": _version("anyio"),
        "trio": _version("trio"),
        "aiometer": _version("aiometer"),
        "aiolimiter": _version("aiolimiter"),
        "load average (1/5/15 min) when written": " / ".join(
            f"{load:.2f}" for load in os.getloadavg()
        ),
    }


def _cpu_ticks() -> tuple[int, int] | None:
    """``(busy, steal)`` clock ticks of every core from ``/proc/stat`` (None off Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system + irq + softirq, steal


def _own_cpu() -> float:
    """CPU seconds of this process and its waited-for children (the private redis-server)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class MachineLoad:
    """What the rest of the machine did while the suite ran.

    From ``/proc/stat``: the CPU every process used minus what this process (and the servers
    it started and stopped) used, as cores on average over the run; the hypervisor's steal;
    and the 1-minute load average, sampled before every scenario.
    """

    def __init__(self) -> None:
        self._ticks = _cpu_ticks()
        self._own = _own_cpu()
        self._elapsed = stopwatch()
        self.loads: list[float] = []
        self.sample()

    def sample(self) -> None:
        """Record the 1-minute load average now."""
        self.loads.append(os.getloadavg()[0])

    def others(self) -> tuple[float, float] | None:
        """``(cores used by other processes, cores stolen)`` on average so far."""
        now = _cpu_ticks()
        if self._ticks is None or now is None:
            return None
        hertz = os.sysconf("SC_CLK_TCK")
        wall = self._elapsed()
        if wall <= 0:
            return None
        busy = (now[0] - self._ticks[0]) / hertz
        steal = (now[1] - self._ticks[1]) / hertz
        own = _own_cpu() - self._own
        return max(busy - own, 0.0) / wall, steal / wall

    def describe(self) -> tuple[dict[str, str], str | None]:
        """Rows for the machine table, and a warning when others clearly loaded the machine."""
        cores = os.cpu_count() or 1
        info = {
            "load average (1 min) before each scenario": (
                f"min {min(self.loads):.2f}, median {median(self.loads):.2f},"
                f" max {max(self.loads):.2f}"
            ),
        }
        measured = self.others()
        if measured is None:
            return info, None
        others, steal = measured
        info["CPU used by other processes during the run"] = (
            f"{others:.2f} of {cores} cores on average (steal {steal:.2f})"
        )
        if others + steal < 0.25 * cores:
            return info, None
        warning = (
            f"The machine was shared: other processes used {others:.2f} of its {cores} cores"
            f" on average during the run (hypervisor steal {steal:.2f}); absolute times are"
            " inflated, the paired ratios less so (both sides of a round saw the same load)."
        )
        return info, warning


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: Sequence[Row]) -> str:
    """The markdown results table."""
    lines = [
        "| # | backend | scenario | runcue | baseline(s) | ratio | target | result |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = (
            row.bench,
            row.backend,
            row.scenario,
            row.runcue,
            row.baselines,
            row.ratio,
            row.target,
            row.verdict,
        )
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def write_results(
    path: Path,
    rows: Sequence[Row],
    *,
    command: str,
    settings: Settings,
    elapsed: float,
    method: str,
    load: MachineLoad | None = None,
    source: SourceAtStart | None = None,
) -> None:
    """Write RESULTS.md: the machine, the table, the notes, how it was measured."""
    info = machine_info(source)
    warnings: list[str] = []
    if source is not None and source.changed():
        warnings.append(
            "src/ changed while the suite ran (an edit or a commit by someone else); the"
            f" numbers are for the code imported at the start ({source.description}), and"
            " the current source was not measured."
        )
    if load is not None:
        extra, warning = load.describe()
        info.update(extra)
        if warning is not None:
            warnings.append(warning)
    missed = [row for row in rows if row.ok is False]
    checked = [row for row in rows if row.ok is not None]
    if missed:
        names = ", ".join(sorted({f"{row.bench} ({row.backend})" for row in missed}))
        status = f"{len(checked) - len(missed)} of {len(checked)} targets met; missed: {names}"
    elif checked:
        status = f"all {len(checked)} targets met"
    else:
        status = "no target checked"
    skipped = [row for row in rows if row.skipped]
    if skipped:
        names = ", ".join(sorted({f"{row.bench} ({row.backend})" for row in skipped}))
        status += f"; skipped: {names}"
    parts = [
        "# runcue benchmark results",
        "",
        f"Written by `{command}` ({'quick' if settings.quick else 'full'} run,"
        f" {elapsed:.0f} s). **{status}.**",
        "",
        *(line for warning in warnings for line in (f"> {warning}", "")),
        "| machine | |",
        "|---|---|",
        *(f"| {key} | {_cell(value)} |" for key, value in info.items()),
        "",
        "## Results",
        "",
        render_table(rows),
        "",
    ]
    notes = [(row, note) for row in rows for note in row.notes]
    if notes:
        parts += ["## Notes", ""]
        parts += [f"- {row.bench} ({row.backend}): {note}" for row, note in notes]
        parts.append("")
    parts += ["## How it is measured", "", method.strip(), ""]
    path.write_text("\n".join(parts), encoding="utf-8")


def stopwatch() -> Callable[[], float]:
    """Seconds since the call, from ``time.perf_counter``."""
    begun = time.perf_counter()
    return lambda: time.perf_counter() - begun


class NeverReady:
    """One task on a started cue whose work is never ready (B6, B7): work submitted to it
    stays pending, and ``asked`` counts the ``is_ready`` calls."""

    def __init__(self, cue: runcue.Cue) -> None:
        self.cue = cue
        self.asked = 0
        cue.service("svc", concurrent=100)
        cue.task("noop", uses="svc")(self._noop)
        cue.is_ready(self._never)

    async def _noop(self, work: runcue.WorkUnit) -> None:
        return None

    def _never(self, work: runcue.WorkUnit) -> bool:
        self.asked += 1
        return False

    async def submit(self, items: int, first: int = 0) -> None:
        """Submit ``items`` works with params ``{"i": n}``, n from ``first``."""
        for index in range(first, first + items):
            await self.cue.submit("noop", {"i": index})

    async def asked_at_least(self, calls: int, timeout: float = 120) -> None:
        """Wait until ``is_ready`` was asked ``calls`` times in all."""
        with anyio.fail_after(timeout):
            while self.asked < calls:
                await anyio.sleep(0.01)

    async def all_parked(self, items: int, timeout: float = 120) -> None:
        """Wait until ``items`` works wait in the cue's parking, none in a queue: no sweep is
        re-asking them right now (a sweep puts every parked work back into its service's
        queue, for a moment, at about 100 bytes per work)."""
        engine = self.cue._engine
        with anyio.fail_after(timeout):
            while len(engine.parking) < items:
                await anyio.sleep(0.001)
