"""The built-in scenarios: small runcue programs, written as a user would, over fake artifacts.

Each module has a ``NAME``, a one-line ``DESCRIPTION``, a longer ``DETAILS`` and
``setup(cue, sim)``, which registers its services, tasks and checks on the cue and returns
``submit(item)``: the coroutine that submits all the work of one input item.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import runcue

from ..fake import Sim
from . import dynamic, fanout, llm, pipeline, single_queue

__all__ = ["SCENARIOS", "Scenario", "SubmitItem"]

SubmitItem = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Scenario:
    """One built-in scenario, as ``--list-scenarios`` shows it."""

    name: str
    description: str
    details: str
    setup: Callable[[runcue.Cue, Sim], SubmitItem]
    default_rate: str | None = None
    """The rate its services use when the command line gives none."""


SCENARIOS: dict[str, Scenario] = {
    module.NAME: Scenario(
        module.NAME,
        module.DESCRIPTION,
        module.DETAILS,
        module.setup,
        getattr(module, "DEFAULT_RATE", None),
    )
    for module in (single_queue, pipeline, fanout, dynamic, llm)
}
