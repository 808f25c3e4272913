"""Durations for a forecast: per task, a number of seconds, a distribution, a function of a
``random.Random``, what the cue measured so far, or a default -- each checked where it is
given, each turned into a *sampler* (``random.Random -> seconds``) and a description."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._work import WorkState

if TYPE_CHECKING:
    from ._cue import Cue

__all__ = ["Duration", "Exponential", "Sampler", "Uniform", "measured_means", "resolve_durations"]

Sampler = Callable[[random.Random], float]


def _check_seconds(label: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        msg = f"{label} must be a number of seconds, got {value!r}"
        raise TypeError(msg)
    if not (0 <= value < math.inf):
        msg = f"{label} must be a number of seconds >= 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


@dataclass(frozen=True)
class Uniform:
    """A duration drawn uniformly between ``low`` and ``high`` seconds."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _check_seconds("Uniform(low=...)", self.low)
        _check_seconds("Uniform(high=...)", self.high)
        if self.low > self.high:
            msg = f"Uniform needs low <= high, got low={self.low!r}, high={self.high!r}"
            raise ValueError(msg)

    def __call__(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return f"uniform {self.low:g}-{self.high:g}s"


@dataclass(frozen=True)
class Exponential:
    """A duration drawn from an exponential distribution of this ``mean`` (seconds)."""

    mean: float

    def __post_init__(self) -> None:
        if _check_seconds("Exponential(mean=...)", self.mean) <= 0:
            msg = f"Exponential needs a mean > 0 seconds, got {self.mean!r}"
            raise ValueError(msg)

    def __call__(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean)

    def __str__(self) -> str:
        return f"exponential, mean {self.mean:g}s"


Duration = float | Uniform | Exponential | Callable[[random.Random], float]


def _sampler(label: str, value: Duration) -> tuple[Sampler, str]:
    """A function drawing seconds, and its description."""
    if isinstance(value, (Uniform, Exponential)):
        return value, str(value)
    if callable(value):
        return value, f"drawn by {getattr(value, '__name__', repr(value))}"
    seconds = _check_seconds(label, value)
    return _fixed(seconds), f"{seconds:g}s"


def _fixed(seconds: float) -> Sampler:
    def fixed(rng: random.Random) -> float:
        return seconds

    return fixed


def measured_means(cue: Cue) -> dict[str, tuple[float, int]]:
    """Per task, the mean duration of the work this cue completed (and still keeps), and how
    many works that mean is over."""
    totals: dict[str, list[float]] = {}
    for work in list(cue._engine.finished.values()):
        if work.state is not WorkState.COMPLETED or work.skipped:
            continue
        if work.started_at is None or work.completed_at is None:
            continue
        totals.setdefault(work.task, []).append(max(0.0, work.completed_at - work.started_at))
    return {task: (sum(values) / len(values), len(values)) for task, values in totals.items()}


def resolve_durations(
    cue: Cue,
    durations: Mapping[str, Duration] | None,
    default: Duration | None,
    needed: set[str],
) -> tuple[dict[str, Sampler], dict[str, str]]:
    """A sampler and a description for every registered task; an error naming any task that
    has pending work and no duration, and any bad value."""
    tasks = cue._tasks
    durations = {} if durations is None else durations
    if not isinstance(durations, Mapping):
        msg = f"durations must map task names to seconds or distributions, got {durations!r}"
        raise TypeError(msg)
    known = ", ".join(repr(name) for name in tasks) or "none"
    for name in durations:
        if name not in tasks:
            msg = (
                f"durations names task {name!r}, which is not registered (registered: {known});"
                " check the spelling"
            )
            raise ValueError(msg)
    fallback = None if default is None else _sampler("default", default)
    measured = measured_means(cue)
    samplers: dict[str, Sampler] = {}
    described: dict[str, str] = {}
    for name in tasks:
        if name in durations:
            sampler, text = _sampler(f"durations[{name!r}]", durations[name])
        elif name in measured:
            mean, count = measured[name]
            sampler = _fixed(mean)
            text = f"{mean:.3g}s measured ({count} works)"
        elif fallback is not None:
            sampler, text = fallback[0], f"{fallback[1]} (default)"
        elif name in needed:
            msg = (
                f"no duration for task {name!r}, which has work to forecast: pass"
                f" durations={{{name!r}: seconds}}, or default=seconds, or let this cue complete"
                f" some {name!r} work first (its mean duration is then used)"
            )
            raise ValueError(msg)
        else:
            continue
        samplers[name] = sampler
        described[name] = text
    for name in tasks:  # tasks without work need no duration; their stand-in never runs
        samplers.setdefault(name, _fixed(0.0))
    return samplers, described
