"""Fake artifacts and fake remote calls: what the scenarios use instead of files and APIs.

Every random draw is keyed on what is being done (the task, its params, and how many times that
exact work ran before) and on the seed, never on the order things happen to run in: the same
seed gives the same latencies, the same slow outliers and the same failures, on either backend.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

import runcue

__all__ = ["Artifact", "ArtifactStore", "Sim", "SimulatedError", "Workload", "label"]


class SimulatedError(Exception):
    """The failure a fake call raises, as often as ``--error-rate`` asks."""


@dataclass(frozen=True)
class Workload:
    """The knobs of a simulated run (see ``runcue-sim --help``)."""

    latency: float = 0.05
    """Seconds a fake call takes, before jitter."""
    jitter: float = 0.2
    """Each call takes ``latency * (1 ± jitter)``, uniformly."""
    outliers: float = 0.0
    """The share of calls that are slow..."""
    outlier_mult: float = 10.0
    """...by this factor."""
    error_rate: float = 0.0
    """The share of calls that raise :class:`SimulatedError`."""
    missing_inputs: float = 0.0
    """The share of items whose input never appears (their first stage is never ready)."""
    rate: str | None = None
    """The rate limit of every service, in runcue's grammar (``"20/sec"``)."""
    concurrent: int | None = 10
    """The concurrency limit of every service."""
    tokens: str | None = None
    """The tokens per window of the llm scenario's fake API (``"20000/min"``)."""
    seed: int = 0

    @property
    def slowest_call(self) -> float:
        """The longest a single fake call can take."""
        mult = self.outlier_mult if self.outliers > 0 else 1.0
        return self.latency * (1 + self.jitter) * mult


@dataclass(frozen=True)
class Artifact:
    """A fake output: which version it is, and when it was made (``anyio.current_time()``)."""

    version: int
    made_at: float


class ArtifactStore:
    """An in-memory stand-in for files on disk: artifact name -> :class:`Artifact`."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self._clock = clock
        self._items: dict[str, Artifact] = {}

    def put(self, name: str) -> Artifact:
        """Make (or remake) an artifact: a new version, made now."""
        old = self._items.get(name)
        artifact = Artifact(1 if old is None else old.version + 1, self._clock())
        self._items[name] = artifact
        return artifact

    def get(self, name: str) -> Artifact | None:
        """The artifact, or None when it was never made."""
        return self._items.get(name)

    def exists(self, name: str) -> bool:
        """Was it ever made?"""
        return name in self._items

    def age(self, name: str) -> float | None:
        """Seconds since it was made, or None when it was never made."""
        artifact = self._items.get(name)
        return None if artifact is None else self._clock() - artifact.made_at

    def __len__(self) -> int:
        return len(self._items)


def label(work: runcue.WorkUnit) -> str:
    """A readable name for a work unit, stable across runs: ``transform:7``, ``process:3.1``."""
    return f"{work.task}:" + ".".join(str(value) for value in work.params.values())


class Sim:
    """What a scenario gets: the artifact store, the limits to declare, and the fake call."""

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self.store = ArtifactStore()
        self._runs: Counter[str] = Counter()
        # What a scenario adds to the summary (the llm scenario: what its server saw).
        self.report: Callable[[], dict[str, Any]] | None = None

    def service(self, cue: runcue.Cue, name: str) -> None:
        """Declare service ``name`` with the limits given on the command line."""
        cue.service(name, rate=self.workload.rate, concurrent=self.workload.concurrent)

    def _draw(self, key: str) -> random.Random:
        return random.Random(f"{self.workload.seed}/{key}")

    def provide_input(self, item: int) -> None:
        """Make the input of ``item`` (``input/<item>``) -- unless it is one of the missing."""
        if self._draw(f"missing/{item}").random() >= self.workload.missing_inputs:
            self.store.put(f"input/{item}")

    async def call(self, work: runcue.WorkUnit, *, scale: float = 1.0) -> float:
        """Pretend to call a remote service for ``work``; returns the seconds it took.

        :param scale: how much longer than ``--latency`` this kind of call takes.
        :raises SimulatedError: as often as ``--error-rate`` says.
        """
        workload = self.workload
        name = label(work)
        self._runs[name] += 1
        draw = self._draw(f"{name}/{self._runs[name]}/{work.attempt}")
        seconds = workload.latency * scale * (1 + draw.uniform(-workload.jitter, workload.jitter))
        if draw.random() < workload.outliers:
            seconds *= workload.outlier_mult
        fails = draw.random() < workload.error_rate
        await anyio.sleep(max(seconds, 0.0))
        if fails:
            msg = f"simulated error in {name}"
            raise SimulatedError(msg)
        return seconds
