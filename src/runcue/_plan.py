"""``await cue.plan()``: what would run, and why, before anything runs -- ``make -n`` for a cue.

For every work submitted and not yet running (pending, or waiting in the intake of a cue that
has not started), a verdict and its reason in words, without calling any handler:

``run``
    it would run: now (as soon as its service has room), or -- with ``depends_on`` -- after
    the works that make its inputs. Make's answer for a consumer whose producer would run: it
    runs after it, since the rebuilt input will be newer than its outputs. Its own checks are
    then not asked: they would see the artifacts as they are *before* the producer ran.
``skip``
    its outputs are up to date (``"report.pdf is newer than data.csv"``), or ``is_stale``
    returned False.
``wait``
    it waits for an input the plan cannot promise: ``is_ready`` returned False (callbacks do
    not say which input, nor who makes it), or a work it needs waits or failed its checks.
``never``
    it can never start: a declared input that is missing and that no pending or running work
    produces (``"no work produces scans/p7.png"``), a cycle of works waiting for each other's
    outputs, a producer that can never start, or a service nobody declared.
``error``
    one of its checks raised (or did not answer within ``check_timeout``): the cue would keep
    it pending and ask again.

Declared artifacts give precise reasons and the ``depends_on`` ids; callback checks give what
they can (``is_ready`` / ``is_stale`` returned False). Works that are running now are not
entries: they are producers whose outputs will appear (``Plan.running``).

**No side effects on the cue.** The checks are asked directly, not through the scheduler: no
work is parked, queued or claimed, no counter moves, nothing is logged; a check that raises is
an ``error`` entry. Sync checks are called on the event loop, a yield every 256 works (in a
worker thread, one at a time, when the cue was made with ``checks="thread"``); async checks
are awaited, each bounded by ``check_timeout``. On a running cue the plan is a snapshot of
the pending work when ``plan()`` was called; what finishes meanwhile is not seen.
"""

from __future__ import annotations

import builtins
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._artifacts import artifact_key, describe, freshness
from ._graph import _cycles
from ._task import is_async_callable
from ._work import WorkState

if TYPE_CHECKING:
    from ._scheduler import Scheduler
    from ._work import WorkUnit

__all__ = ["VERDICTS", "Plan", "PlanEntry", "make_plan"]

PlanVerdict = Literal["run", "skip", "wait", "never", "error"]
VERDICTS: tuple[PlanVerdict, ...] = ("run", "skip", "wait", "never", "error")
_SHOWN_FIRST: tuple[PlanVerdict, ...] = ("never", "error", "wait", "run", "skip")
_HEADINGS = {
    "never": "can never start",
    "error": "a check raised",
    "wait": "wait for an input",
    "run": "would run",
    "skip": "would be skipped",
}
YIELD_EVERY = 256  # works planned between two yields to the event loop


@dataclass(frozen=True)
class PlanEntry:
    """One work's verdict in a :class:`Plan`."""

    work_id: str
    task: str
    verdict: PlanVerdict
    """``"run"``, ``"skip"``, ``"wait"``, ``"never"`` or ``"error"`` (see :class:`Plan`)."""
    reason: str
    """Why, in words: ``"report.pdf is older than data.csv"``."""
    depends_on: tuple[str, ...] = ()
    """The ids of the works (pending or running) that make its declared inputs."""
    service: str | None = None


@dataclass(frozen=True)
class Plan:
    """What ``await cue.plan()`` found: a verdict per work that has not run yet.

    ``print(plan)`` (or ``plan.render()``) lists them, the problems first; ``plan.counts``
    maps every verdict to how many works got it; ``plan[work_id]`` is one entry.

    - ``run``: would run, now or (``depends_on``) after the works that make its inputs;
    - ``skip``: would be skipped, its output being up to date;
    - ``wait``: waits for an input the plan cannot promise (``is_ready`` returned False);
    - ``never``: can never start (an input nothing produces, a cycle, an unknown service);
    - ``error``: a check raised.
    """

    entries: tuple[PlanEntry, ...]
    """Every work submitted and not yet running, in submission order."""
    running: tuple[str, ...] = ()
    """The ids of the works running when the plan was made (not entries: producers)."""
    counts: Mapping[str, int] = field(init=False)
    """How many entries got each verdict (every verdict present, zeros included)."""

    def __post_init__(self) -> None:
        counts = dict.fromkeys(VERDICTS, 0)
        for entry in self.entries:
            counts[entry.verdict] += 1
        object.__setattr__(self, "counts", types.MappingProxyType(counts))
        object.__setattr__(self, "_by_id", {entry.work_id: entry for entry in self.entries})

    @property
    def ok(self) -> bool:
        """True when every work can start some day (no ``never``, no ``error``)."""
        return not self.counts["never"] and not self.counts["error"]

    def __getitem__(self, work_id: str) -> PlanEntry:
        entry: PlanEntry | None = self.__dict__["_by_id"].get(work_id)
        if entry is not None:
            return entry
        msg = f"work {work_id!r} is not in this plan (not submitted, running, or finished)"
        raise KeyError(msg)

    def __len__(self) -> int:
        return len(self.entries)

    def of(self, verdict: PlanVerdict) -> tuple[PlanEntry, ...]:
        """The entries with this verdict, in submission order."""
        if verdict not in VERDICTS:
            msg = f"verdict must be one of {', '.join(map(repr, VERDICTS))}, got {verdict!r}"
            raise ValueError(msg)
        return tuple(entry for entry in self.entries if entry.verdict == verdict)

    def summary(self) -> str:
        """One line of counts."""
        counts = self.counts
        after = sum(1 for entry in self.of("run") if entry.depends_on)
        parts = [
            f"{counts['run']} would run" + (f" ({after} after their inputs)" if after else ""),
            f"{counts['skip']} skipped",
            f"{counts['wait']} wait",
            f"{counts['never']} can never start",
        ]
        if counts["error"]:
            parts.append(f"{counts['error']} with a check that raised")
        running = f"; {len(self.running)} running now" if self.running else ""
        return f"plan of {len(self.entries)} works: " + ", ".join(parts) + running

    def render(self, limit: int | None = 20) -> str:
        """The plan as text: the summary, then the entries by verdict, problems first, at most
        ``limit`` of each verdict (None: all)."""
        lines = [self.summary()]
        for verdict in _SHOWN_FIRST:
            entries = self.of(verdict)
            if not entries:
                continue
            lines.append(f"{_HEADINGS[verdict]} ({len(entries)}):")
            shown = entries if limit is None else entries[:limit]
            for entry in shown:
                lines.append(f"  {entry.task} {entry.work_id}: {entry.reason}")
            if len(shown) < len(entries):
                lines.append(f"  ... and {len(entries) - len(shown)} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()


# --------------------------------------------------------------------------- the planner


def _label(work: WorkUnit) -> str:
    return f"{work.task} {work.id}"


def _listed(names: builtins.list[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return f"{names[0]}, {names[1]} and {len(names) - 2} more"


def _clauses(clauses: builtins.list[str]) -> str:
    shown = "; ".join(clauses[:2])
    return shown if len(clauses) <= 2 else f"{shown}; and {len(clauses) - 2} more"


class _Asker:
    """Calls a check on one work without touching the cue: the answer, or the exception."""

    def __init__(self, timeout: float, in_thread: bool) -> None:
        self.timeout = timeout
        self.in_thread = in_thread

    async def ask(self, check: Callable[[WorkUnit], Any], work: WorkUnit) -> Any:
        try:
            if is_async_callable(check):
                with anyio.move_on_after(self.timeout):
                    return await check(work)
                return TimeoutError(f"no answer within check_timeout={self.timeout:g}s")
            if self.in_thread:
                return await anyio.to_thread.run_sync(check, work, abandon_on_cancel=True)
            return check(work)
        except Exception as exc:
            return exc


def _inputs_of(
    work: WorkUnit, producers: Mapping[Any, Mapping[int, WorkUnit]]
) -> builtins.list[tuple[Any, builtins.list[WorkUnit]]]:
    """Each declared input with the live works (other than ``work``) that make it."""
    found = []
    for item in work._inputs:
        makers = producers.get(artifact_key(item), {})
        found.append((item, [maker for maker in makers.values() if maker is not work]))
    return found


def _missing_orphans(inputs: builtins.list[tuple[Any, builtins.list[WorkUnit]]]) -> Any:
    """The names of the inputs that nothing makes and that are missing."""
    return [describe(item) for item, makers in inputs if not makers and not item.exists()]


class _Planner:
    def __init__(self, engine: Scheduler) -> None:
        self.engine = engine
        checks = engine.checks
        self.asker = _Asker(checks.timeout, not checks.runs_here)
        self.verdicts: dict[str, PlanEntry] = {}

    def entry(
        self, work: WorkUnit, verdict: PlanVerdict, reason: str, depends_on: tuple[str, ...] = ()
    ) -> PlanEntry:
        made = PlanEntry(work.id, work.task, verdict, reason, depends_on, work._task.service)
        self.verdicts[work.id] = made
        return made

    async def plan(self) -> Plan:
        engine = self.engine
        live = list(engine.works.values())
        pending = sorted(
            (work for work in live if work.state is WorkState.PENDING), key=lambda w: w._seq
        )
        running = tuple(work.id for work in live if work.state is WorkState.RUNNING)
        producers = {key: dict(makers) for key, makers in engine.parking.producers.items()}
        inputs = {work.id: _inputs_of(work, producers) for work in pending}
        edges: dict[str, builtins.list[WorkUnit]] = {}
        nodes: dict[str, WorkUnit] = {}
        for work in pending:
            makers = [m for _, found in inputs[work.id] for m in found]
            pending_makers = [m for m in makers if m.state is WorkState.PENDING]
            if pending_makers:
                nodes[work.id] = work
                edges[work.id] = pending_makers
                for maker in pending_makers:
                    nodes[maker.id] = maker
        for cycle in _cycles(nodes, edges):
            text = " -> ".join(_label(w) for w in (*cycle, cycle[0]))
            for work in cycle:
                self.entry(work, "never", f"a cycle of works waiting for each other: {text}")
        for done, work in enumerate(self._producers_first(pending, edges), 1):
            if work.id not in self.verdicts:
                await self.judge(work, inputs[work.id])
            if done % YIELD_EVERY == 0:
                await anyio.lowlevel.checkpoint()
        return Plan(tuple(self.verdicts[work.id] for work in pending), running)

    @staticmethod
    def _producers_first(
        pending: builtins.list[WorkUnit], edges: Mapping[str, builtins.list[WorkUnit]]
    ) -> builtins.list[WorkUnit]:
        """The pending works, each after the pending works that make its inputs (works on a
        cycle come in some order: they are decided already)."""
        order: builtins.list[WorkUnit] = []
        seen: set[str] = set()
        for root in pending:
            if root.id in seen:
                continue
            seen.add(root.id)
            stack: builtins.list[tuple[WorkUnit, int]] = [(root, 0)]
            while stack:
                work, position = stack.pop()
                makers = edges.get(work.id, ())
                if position < len(makers):
                    stack.append((work, position + 1))
                    maker = makers[position]
                    if maker.id not in seen:
                        seen.add(maker.id)
                        stack.append((maker, 0))
                    continue
                order.append(work)
        return order

    async def judge(
        self, work: WorkUnit, inputs: builtins.list[tuple[Any, builtins.list[WorkUnit]]]
    ) -> None:
        engine = self.engine
        service = work._task.service
        if service not in engine.services:
            self.entry(work, "never", f"its service {service!r} is not declared")
            return
        orphans = await self.asker.ask(lambda _work: _missing_orphans(inputs), work)
        if isinstance(orphans, Exception):
            self.entry(work, "error", f"checking its inputs raised {orphans!r}")
            return
        if orphans:
            self.entry(work, "never", f"no work produces {_listed(orphans)}")
            return
        needs: dict[str, WorkUnit] = {}
        made_by: dict[str, builtins.list[str]] = {}
        for item, makers in inputs:
            for maker in makers:
                needs[maker.id] = maker
                made_by.setdefault(maker.id, []).append(describe(item))
        depends_on = tuple(needs)
        outcome: dict[str, builtins.list[str]] = {"never": [], "wait": [], "run": [], "skip": []}
        for maker in needs.values():
            what = _listed(made_by[maker.id])
            planned = self.verdicts.get(maker.id)
            if planned is None:  # (running when the plan began: it may have finished since)
                outcome["run"].append(f"running work {_label(maker)} makes {what}")
                continue
            known = planned.verdict
            if known == "never":
                outcome["never"].append(f"needs {what} from {_label(maker)}, which can never start")
            elif known in ("wait", "error"):
                why = "waits too" if known == "wait" else "has a check that raised"
                outcome["wait"].append(f"waits for {what} from {_label(maker)}, which {why}")
            elif known == "run":
                outcome["run"].append(f"{_label(maker)} makes {what}")
            else:
                outcome["skip"].append(_label(maker))
        if outcome["never"]:
            self.entry(work, "never", _clauses(outcome["never"]), depends_on)
        elif outcome["wait"]:
            self.entry(work, "wait", _clauses(outcome["wait"]), depends_on)
        elif outcome["run"]:
            self.entry(work, "run", "after " + _clauses(outcome["run"]), depends_on)
        else:
            verdict, reason = await self.own_checks(work)
            skipped = _listed(outcome["skip"])
            if skipped and verdict == "never":
                reason += f", and {skipped}, which would make it, would be skipped"
            elif skipped and verdict != "error":
                reason += f" (after {skipped}, which would be skipped)"
            self.entry(work, verdict, reason, depends_on)

    async def own_checks(self, work: WorkUnit) -> tuple[PlanVerdict, str]:
        """The work's own checks, in the cue's order: declared inputs, ``is_ready``, declared
        outputs, ``is_stale``."""
        hooks = self.engine.hooks
        declares = work._task.declares
        ask = self.asker.ask
        if declares and work._inputs:
            there = await ask(_absent_inputs, work)
            if isinstance(there, Exception):
                return "error", f"checking its inputs raised {there!r}"
            if there:
                return "never", f"{_listed(there)} is missing"
        if hooks.is_ready is not None:
            ready = await ask(hooks.is_ready, work)
            if isinstance(ready, Exception):
                return "error", f"is_ready raised {ready!r}"
            if not ready:
                return "wait", "is_ready returned False"
        why = ""
        if declares:
            fresh = await ask(_freshness_of, work)
            if isinstance(fresh, Exception):
                return "error", f"checking its outputs raised {fresh!r}"
            stale, why = fresh
            if not stale:
                return "skip", why
        if hooks.is_stale is not None:
            stale = await ask(hooks.is_stale, work)
            if isinstance(stale, Exception):
                return "error", f"is_stale raised {stale!r}"
            if not stale:
                later = f" (by its declarations alone it would run: {why})" if why else ""
                return "skip", f"is_stale returned False{later}"
            return "run", why or "is_stale returned True"
        if why:
            return "run", why
        if hooks.is_ready is not None:
            return "run", "is_ready returned True, and without is_stale every ready work runs"
        return "run", "nothing to check: without checks every work runs"


def _absent_inputs(work: WorkUnit) -> builtins.list[str]:
    return [describe(item) for item in work._inputs if not item.exists()]


def _freshness_of(work: WorkUnit) -> tuple[bool, str]:
    return freshness(work._inputs, work._outputs, work._task.max_age)


async def make_plan(engine: Scheduler) -> Plan:
    """The plan of every pending work of ``engine`` (see the module docstring)."""
    return await _Planner(engine).plan()
