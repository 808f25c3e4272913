"""Every script in examples/ runs as a program: it exits 0 and prints the account it promises.

Each example runs in its own interpreter (``sys.executable``, warnings turned into errors), as
a reader would run it; some also run a second time on trio. The declared-style examples must
stay shorter than their callback-style twins, and say by how much in their first line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# (script, arguments, patterns its standard output must contain: re.search, one per line)
CASES: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    (
        "llm_tokens.py",
        (),
        (
            r"runcue: 60 answers, [\d,]+ tokens, \d+ 429s met; the other app: [\d,]+ tokens",
            r"server: most [\d,]+ of 6,000 tokens and \d+ of 40 requests accepted in any 2s",
        ),
    ),
    ("pipeline.py", (), (r"first run: 8 completed, 0 failed; second run: 8 skipped",)),
    ("pipeline.py", ("trio",), (r"second run: 8 skipped, 0 completed",)),
    (
        "apple_pie.py",
        (),
        (
            r"day 1: 6 steps done; at most 1 job on the knife and 2 in the ovens at once",
            r"day 2: 2 steps redone \(pie-2 only\), 4 skipped",
        ),
    ),
    (
        "apple_pie_declared.py",
        ("trio",),
        (
            r"day 1: 6 steps done; at most 1 job on the knife",
            r"day 2: 2 steps redone \(pie-2 only\), 4 skipped",
        ),
    ),
    (
        "pdf_pipeline.py",
        (),
        (
            r"first run: 20 done; 16 vision calls",
            r"second run: 7 redone \(6 pages, 1 summary, 0 splits\), 13 skipped",
        ),
    ),
    (
        "pdf_pipeline_declared.py",
        ("trio",),
        (r"second run: 7 redone \(6 pages, 1 summary, 0 splits\), 13 skipped",),
    ),
    (
        "orders.py",
        (),
        (
            r"first run: 8 done, 4 failed",
            r"second run: 4 done, 8 skipped",
            r"4 charges for 4 orders; charged twice: nobody; confirmations sent: 4",
        ),
    ),
    (
        "orders_declared.py",
        ("trio",),
        (r"4 charges for 4 orders; charged twice: nobody; confirmations sent: 4",),
    ),
    (
        "subprocess_pipeline.py",
        (),
        (
            r"first run: 16 commands run, 0 failed",
            r"second run: 4 commands run again, 12 skipped",
        ),
    ),
    (
        "http_429.py",
        (),
        (
            r"24 words looked up",
            r"429s honoured: [1-9]\d*",
            r"requests started while the service was paused: 0",
        ),
    ),
    ("http_429.py", ("trio",), (r"429s honoured: [1-9]\d*", r"while the service was paused: 0")),
    (
        "trio_program.py",
        (),
        (r"crawled 20 of 20 pages", r"at most [1-3] requests in flight at once"),
    ),
    (
        "webapp_embedding.py",
        (),
        (
            r"startup: cue started",
            r"burst: 8 requests, 8 answered 200",
            r"again: 5 requests, 5 answered 200",
            r"unknown image: 404",
            r"shutdown: cue stopped; 5 thumbnails made, 5 skipped, 0 failed",
        ),
    ),
    (
        "plan_forecast.py",
        (),
        (
            r"plan of 503 works: 461 would run \(2 after their inputs\), 40 skipped, 0 wait, 2 can",
            r"ocr \w+-429: no work produces scans/letters/p007.png",
            r"forecast: 503 works finish in 7m\d\ds \(461 run, 40 skipped, 0 failed, 2 never",
            r"binding: service 'vision' \(rate 10/10s\)",
        ),
    ),
    ("plan_forecast.py", ("trio",), (r"binding: service 'vision' \(rate 10/10s\)",)),
]

TWINS = ["apple_pie", "pdf_pipeline", "orders"]


@pytest.mark.parametrize(
    ("script", "arguments", "expected"),
    CASES,
    ids=[" ".join((script, *arguments)) for script, arguments, _ in CASES],
)
def test_example_runs_and_reports(
    script: str, arguments: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    """The example exits 0 within its time budget and prints each expected line."""
    finished = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / script), *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=EXAMPLES.parent,
        check=False,
    )
    account = f"stdout:\n{finished.stdout}\nstderr:\n{finished.stderr}"
    assert finished.returncode == 0, account
    for pattern in expected:
        assert re.search(pattern, finished.stdout), f"{pattern!r} not printed\n{account}"


def test_every_example_is_run_here() -> None:
    """A new script in examples/ cannot be forgotten: each one has a case above."""
    assert {path.name for path in EXAMPLES.glob("*.py")} == {script for script, _, _ in CASES}


@pytest.mark.parametrize("name", TWINS)
def test_declared_twin_is_shorter_and_says_so(name: str) -> None:
    """The declared version is shorter than the callback one; its first line gives both counts."""
    callback = len((EXAMPLES / f"{name}.py").read_text().splitlines())
    declared_text = (EXAMPLES / f"{name}_declared.py").read_text()
    declared = len(declared_text.splitlines())
    assert declared < callback
    claim = re.match(r"# Declared style: (\d+) lines here against (\d+) ", declared_text)
    assert claim is not None, "the first line must state both line counts"
    assert (int(claim[1]), int(claim[2])) == (declared, callback)
