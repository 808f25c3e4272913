"""The cue a forecast runs: a private copy of a cue's registrations and pending work, with
stand-in handlers and virtual artifacts, and what its run is measured by.

``_forecast.py`` owns the public side (durations, the report, the virtual clock in a thread);
this module owns the copy:

- :class:`Replica` reads a cue (synchronously, on the caller's loop, so the snapshot is
  consistent) and, in the forecast's thread, builds a fresh ``Cue`` with the same services and
  limits, the same tasks (every field of each ``TaskSpec``: retry, timeout, declarations...)
  whose handlers are stand-ins that ``await anyio.sleep(duration)``, the same ``priority`` and,
  when asked to, the same ``is_ready``/``is_stale``; then submits the pending work in its order.
- :class:`VirtualFiles` is the forecast's file system: every declared artifact as it is when the
  forecast starts (asked lazily, once), plus what the stand-ins made, stamped in virtual time.
- :class:`Recorder` listens to the copy: starts, busy time per service, waits, outcomes; and
  tells the driver when nothing can move any more (everything left is parked: not ready).
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio

from ._artifacts import artifact_key, describe
from ._durations import Sampler
from ._events import WorkEvent
from ._work import WorkState

if TYPE_CHECKING:
    from ._cue import Cue
    from ._task import TaskSpec
    from ._work import WorkUnit

__all__ = ["Recorder", "Replica", "ServiceCopy", "VirtualFiles"]

SETTLE = 1.0  # virtual seconds after a poke before "nothing can move" is believed


class ServiceCopy(NamedTuple):
    """What ``cue.service()`` was given for one service (the copy declares the same)."""

    name: str | None  # None: work of tasks without a service
    rate: str | None
    concurrent: int | None
    costs: dict[str, str] | None
    adaptive: bool
    tenants: Any  # runcue.Tenants | None
    max_wait: float | None


class VirtualFiles:
    """Declared artifacts in a forecast: their real state when first asked, then what the
    stand-ins made (``mtime`` in wall-clock seconds, advancing with the virtual clock)."""

    def __init__(self) -> None:
        self.real: dict[Hashable, tuple[bool, float | None] | Exception] = {}
        self.made: dict[Hashable, float | None] = {}  # None: deleted by a failed attempt
        self.wall_at_start = time.time()
        self.clock_at_start = 0.0

    def start(self) -> None:
        """The virtual clock starts now (inside the forecast's event loop)."""
        self.clock_at_start = anyio.current_time()

    def wall(self) -> float:
        return self.wall_at_start + (anyio.current_time() - self.clock_at_start)

    def twins(self, items: list[Any]) -> list[VirtualArtifact]:
        return [VirtualArtifact(self, item) for item in items]

    def produce(self, outputs: list[Any]) -> None:
        stamp = self.wall()
        for output in outputs:
            self.made[output.key] = stamp

    def state(self, artifact: VirtualArtifact) -> tuple[bool, float | None]:
        key = artifact.key
        if key in self.made:
            made = self.made[key]
            return (made is not None, made)
        known = self.real.get(key)
        if known is None:
            try:
                real = artifact.real
                there = bool(real.exists())
                known = (there, real.mtime() if there else None)
            except Exception as exc:
                known = exc
            self.real[key] = known
        if isinstance(known, Exception):
            raise known
        return known


class VirtualArtifact:
    """A declared artifact as the forecast sees it (see :class:`VirtualFiles`)."""

    __slots__ = ("files", "key", "path", "real")

    def __init__(self, files: VirtualFiles, real: Any) -> None:
        self.files = files
        self.real = real
        self.key = artifact_key(real)
        self.path = getattr(real, "path", None)  # (messages name it as the real one)

    def exists(self) -> bool:
        return self.files.state(self)[0]

    def mtime(self) -> float | None:
        return self.files.state(self)[1]

    def delete(self) -> None:
        self.files.made[self.key] = None

    def __repr__(self) -> str:
        return describe(self.real)


class Recorder:
    """Subscribed to the copy: what the report is made of."""

    def __init__(self, cue: Cue) -> None:
        self.engine = cue._engine
        self.clock_at_start = 0.0
        self.attempt_began: dict[str, float] = {}
        self.starts: Counter[str | None] = Counter()
        self.busy: dict[str | None, float] = {}
        self.costs: dict[str | None, dict[str, float]] = {}  # estimates, per attempt started
        self.waits: list[float] = []
        self.outcomes: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.last_end = 0.0
        self.wake = anyio.Event()

    def start(self) -> None:
        self.clock_at_start = anyio.current_time()

    def __call__(self, event: WorkEvent) -> None:
        kind = event.kind
        work = event.work
        if kind == "started":
            self.attempt_began[work.id] = event.time
            self.starts[event.service] += 1
            cost = work.cost
            if cost:
                spent = self.costs.setdefault(event.service, {})
                for dimension, amount in cost.items():
                    spent[dimension] = spent.get(dimension, 0.0) + amount
            if work.attempt == 1:
                self.waits.append(event.time - self.clock_at_start)
            return
        began = self.attempt_began.pop(work.id, None)
        if began is not None:
            self.busy[event.service] = self.busy.get(event.service, 0.0) + event.time - began
        if kind in ("completed", "failed", "skipped"):
            self.outcomes[kind] += 1
            self.last_end = event.time - self.clock_at_start
            if kind == "failed" and work.exception is not None:
                self.failures[type(work.exception).__name__] += 1
        if self.stuck():
            self.wake.set()

    def stuck(self) -> bool:
        """Nothing runs and everything left is parked: only a change outside could help."""
        engine = self.engine
        return engine.running == 0 and 0 < engine.pending == len(engine.parking)


class Replica:
    """A cue's registrations and pending work, read at once; :meth:`build` makes the copy."""

    def __init__(self, cue: Cue, *, ask_callbacks: bool) -> None:
        engine = cue._engine
        self.tasks: dict[str, TaskSpec] = dict(cue._tasks)
        # (What cue.service() was given: a new option of cue.service() must be added here.)
        self.services = [
            ServiceCopy(
                name,
                service.rate_text,
                service.concurrent,
                service.costs_text,
                service.adaptive is not None,
                service.tenants,
                service.max_wait,
            )
            for name, service in cue._services.items()
            if name is not None
        ]
        hooks = engine.hooks
        self.is_ready = hooks.is_ready if ask_callbacks else None
        self.is_stale = hooks.is_stale if ask_callbacks else None
        self.priority = hooks.priority
        deadlines = engine.deadlines
        self.options: dict[str, Any] = {
            "pending_timeout": deadlines.pending_timeout,
            "stall_timeout": deadlines.stall_timeout,
            "recheck_interval": engine.sweeps.recheck_interval,
            "priority_aging": engine.priority_aging,
            "max_threads": engine.max_threads,
            # No check_timeout: while an async check waits on real I/O, every task waits and
            # the virtual clock jumps; a timeout would fire at once.
            "check_timeout": None,
        }
        live = [w for w in engine.works.values() if not w.state.finished]
        # Running work first (it started first), then pending work in submission order.
        live.sort(key=lambda w: (w.state is not WorkState.RUNNING, w._seq))
        self.works = live
        self.running_since = {
            w.id: time.time() - (w.started_at or time.time())
            for w in live
            if w.state is WorkState.RUNNING
        }
        # Sync handlers of services without `concurrent` share the cue's worker threads.
        unbounded: set[str | None] = {None}
        unbounded.update(s.name for s in self.services if s.concurrent is None)
        self.threaded = {
            name
            for name, spec in self.tasks.items()
            if not spec.is_async and spec.service in unbounded
        }
        self.originals: dict[str, WorkUnit] = {}  # copy's work id -> the cue's work

    async def build(
        self,
        samplers: dict[str, Sampler],
        rng: random.Random,
        files: VirtualFiles,
        *,
        seed: int | None,
    ) -> tuple[Cue, Recorder]:
        """The copy, its work submitted (it has not started); call inside the forecast's loop."""
        from ._cue import Cue

        copy = Cue(keep_finished=0, checks="inline", seed=seed, **self.options)
        for service in self.services:
            assert service.name is not None
            copy.service(
                service.name,
                rate=service.rate,
                concurrent=service.concurrent,
                costs=service.costs,
                adaptive=service.adaptive,
                tenants=service.tenants,
                max_wait=service.max_wait,
            )
        threads = anyio.CapacityLimiter(self.options["max_threads"])
        current: list[WorkUnit] = []  # the cue's work being submitted to the copy
        for name, spec in self.tasks.items():
            stand_in = self._stand_in(name, samplers[name], rng, files, threads)
            # Stand-ins return no result: what work costs is its estimate (``cost=``).
            replaced: dict[str, Any] = {"handler": stand_in, "is_async": True, "actual_cost": None}
            if spec.inputs is not None:
                replaced["inputs"] = lambda _w: files.twins(current[0]._inputs)
            if spec.outputs is not None:
                replaced["outputs"] = lambda _w: files.twins(current[0]._outputs)
            copy._tasks[name] = dataclasses.replace(spec, **replaced)
            if spec.declares:
                copy._engine.checks.declarations = True
        if self.is_ready is not None:
            copy.is_ready(self.is_ready)
        if self.is_stale is not None:
            copy.is_stale(self.is_stale)
        if self.priority is not None:
            copy.priority(self.priority)
        copy._engine.checks.refresh()
        recorder = Recorder(copy)
        copy.subscribe(recorder)
        for work in self.works:
            current[:] = [work]
            # (The copy has not started: submit() runs through without awaiting anything, so
            # the declarations above read the right work. Every option submit() took for
            # this work is passed on: a new one must be added here.)
            copy_id = await copy.submit(
                work.task, work.params, priority=work.priority, key=work.key, tenant=work.tenant
            )
            self.originals[copy_id] = work
        return copy, recorder

    def _stand_in(
        self,
        task: str,
        sampler: Sampler,
        rng: random.Random,
        files: VirtualFiles,
        threads: anyio.CapacityLimiter,
    ) -> Callable[[WorkUnit], Any]:
        threaded = task in self.threaded
        originals = self.originals
        running_since = self.running_since

        async def stand_in(work: WorkUnit) -> None:
            seconds = sampler(rng)
            if not (isinstance(seconds, (int, float)) and 0 <= seconds < math.inf):
                msg = f"the duration of task {task!r} came out as {seconds!r}; it must be >= 0"
                raise ValueError(msg)
            original = originals.get(work.id)
            if original is not None and original.id in running_since:
                seconds = max(0.0, seconds - running_since[original.id])  # already under way
            if threaded:
                async with threads:
                    await anyio.sleep(seconds)
            else:
                await anyio.sleep(seconds)
            if work._outputs:
                files.produce(work._outputs)

        return stand_in

    async def run(
        self, copy: Cue, recorder: Recorder, *, stopping: Callable[[], None]
    ) -> list[tuple[str, str, str]]:
        """Run the copy until its work is done or nothing can move; returns what was left as
        ``(task, reason, details)`` (``debug_blocked()`` of the copy, naming the cue's own
        work ids). ``stopping()`` is called right before the copy is stopped."""
        left: list[tuple[str, str, str]] = []
        async with anyio.create_task_group() as tg:
            recorder.start()
            await tg.start(copy.run)
            joined = anyio.Event()

            async def join() -> None:
                await copy.join()
                joined.set()
                recorder.wake.set()

            tg.start_soon(join)
            while not joined.is_set():
                await recorder.wake.wait()
                recorder.wake = anyio.Event()
                if recorder.stuck() and not joined.is_set():
                    copy.poke()  # one last look at everything, then believe it
                    await anyio.sleep(SETTLE)
                    if recorder.stuck() and not joined.is_set():
                        left = [self._named(copy, item) for item in copy.debug_blocked()]
                        break
            stopping()
            await copy.stop(timeout=0)
            tg.cancel_scope.cancel()
        return left

    def _named(self, copy: Cue, item: dict[str, Any]) -> tuple[str, str, str]:
        """A ``debug_blocked()`` item of the copy, its work ids made the cue's own."""
        originals = self.originals

        def own(match: re.Match[str]) -> str:
            original = originals.get(match.group(0))
            return match.group(0) if original is None else original.id

        details = re.sub(re.escape(copy._id_prefix) + r"-\d+", own, str(item["details"]))
        return item["work"].task, str(item["reason"]), details
