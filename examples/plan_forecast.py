"""Before anything runs: what would run and why (``cue.plan()``), and when it would all end and
which limit binds (``cue.forecast()``) -- without calling a single handler.

A declared OCR pipeline over three scanned documents: every page goes through a rate-limited
vision API, then each document is summarised by an LLM once all its pages are read. Some pages
were read yesterday (their text is newer than the scan: skipped), one scan is missing (that
page, and so its summary, can never start). The plan says so page by page; the forecast runs
the same cue -- its limits, its declarations -- on a virtual clock, in a fraction of a second.

Run:  python examples/plan_forecast.py            (asyncio)
      python examples/plan_forecast.py trio       (trio)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import anyio

import runcue

DOCUMENTS = {"contract": 120, "invoices": 300, "letters": 80}  # name -> pages
READ_YESTERDAY = 40  # the first pages of "contract" were read already
LOST = ("letters", 7)  # a scan that never arrived


def page_files(root: Path, document: str, page: int) -> tuple[Path, Path]:
    """A page's scan, and the text the vision API reads from it."""
    return root / document / f"p{page:03d}.png", root / document / f"p{page:03d}.txt"


def prepare(root: Path) -> None:
    """The scans (yesterday's), and the text of the pages already read (this morning's)."""
    yesterday = time.time() - 86_400
    for document, count in DOCUMENTS.items():
        (root / document).mkdir()
        for page in range(1, count + 1):
            scan, text = page_files(root, document, page)
            if (document, page) != LOST:
                scan.write_bytes(b"png")
                os.utime(scan, (yesterday, yesterday))
            if document == "contract" and page <= READ_YESTERDAY:
                text.write_text("already read")


def declare(cue: runcue.Cue) -> None:
    """Services, tasks and their files; the handlers would call real APIs."""
    cue.service("vision", rate="60/min;10/10s", concurrent=5)
    cue.service("llm", rate="20/min", concurrent=2)

    @cue.task("ocr", uses="vision", inputs="scan", outputs="text", retry=3)
    async def ocr(work: runcue.WorkUnit) -> None:
        raise RuntimeError("not in this example: a plan and a forecast call no handler")

    @cue.task("summarize", uses="llm", inputs="texts", outputs="summary")
    async def summarize(work: runcue.WorkUnit) -> None:
        raise RuntimeError("not in this example: a plan and a forecast call no handler")


async def main() -> None:
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(temporary)
        prepare(root)
        cue = runcue.Cue()
        declare(cue)
        for document, count in DOCUMENTS.items():
            texts = []
            for page in range(1, count + 1):
                scan, text = page_files(root, document, page)
                await cue.submit("ocr", {"scan": str(scan), "text": str(text)})
                texts.append(str(text))
            summary = str(root / f"{document}.summary.txt")
            await cue.submit("summarize", {"texts": texts, "summary": summary})

        plan = await cue.plan()
        print(plan.render(limit=2).replace(temporary, "scans"))
        print()
        report = await cue.forecast(
            durations={"ocr": runcue.Uniform(1.0, 3.0), "summarize": 20.0}, seed=1
        )
        print(report.render().replace(temporary, "scans"))
        # The cue never started: nothing ran, nothing was written. To run it for real:
        # ``async with cue: pass`` (leaving the block waits until everything is done).


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
