"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# A missing trio must fail the run, not silently skip half of it.
import trio  # noqa: F401

import runcue


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each async test once per backend."""
    return str(request.param)


@pytest.fixture
def make_cue() -> Callable[..., runcue.Cue]:
    """A factory for cues with test-friendly defaults (a fixed seed)."""

    def factory(**options: object) -> runcue.Cue:
        options.setdefault("seed", 1)
        return runcue.Cue(**options)  # type: ignore[arg-type]

    return factory
