"""nox sessions: tests, lint, typing, and bench (off by default)."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, on asyncio and trio."""
    session.install("-e", ".[test,redis]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over src and tests."""
    session.install("-e", ".[test,sim,redis]", "mypy")
    session.run("mypy")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The benchmark suite; writes benchmarks/RESULTS.md and fails when a target is missed."""
    session.install("-e", ".[test,sim,bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)
