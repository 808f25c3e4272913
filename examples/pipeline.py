"""A three-step document pipeline against fake, offline services.

split a document into pages -> extract text per page (a rate-limited "OCR API") -> summarize.
Artifacts are files in a temporary folder; the checks look at them, like Make. The second run
resubmits everything and skips all of it, because every output is already there.

Run:  python examples/pipeline.py            (asyncio)
      python examples/pipeline.py trio       (trio)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import anyio

import runcue

PAGES = 6


def build_cue(root: Path) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=30)
    cue.service("local", concurrent=2)
    cue.service("ocr", rate="20/sec", concurrent=3)

    def pages_dir(doc: str) -> Path:
        return root / doc / "pages"

    @cue.task("split", uses="local")
    def split(work: runcue.WorkUnit) -> int:
        folder = pages_dir(work.params["doc"])
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(PAGES):
            (folder / f"{number:03d}.png").write_text(f"image of page {number}")
        return PAGES

    @cue.task("extract", uses="ocr", retry=3, backoff=runcue.Backoff(base=0.05))
    async def extract(work: runcue.WorkUnit) -> str:
        await anyio.sleep(0.02)  # the fake OCR call
        page = Path(work.params["page"])
        text = page.read_text().replace("image", "text")
        page.with_suffix(".txt").write_text(text)
        return text

    @cue.task("summarize", uses="local")
    def summarize(work: runcue.WorkUnit) -> str:
        texts = sorted(pages_dir(work.params["doc"]).glob("*.txt"))
        summary = root / work.params["doc"] / "summary.txt"
        summary.write_text(f"{len(texts)} pages")
        return str(summary.read_text())

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "extract":
            return Path(work.params["page"]).exists()
        if work.task == "summarize":
            return len(list(pages_dir(work.params["doc"]).glob("*.txt"))) == PAGES
        return True

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        if work.task == "split":
            return not pages_dir(work.params["doc"]).exists()
        if work.task == "extract":
            return not Path(work.params["page"]).with_suffix(".txt").exists()
        return not (root / work.params["doc"] / "summary.txt").exists()

    @cue.on_complete
    def done(work: runcue.WorkUnit, result: object, duration: float) -> None:
        what = Path(work.params.get("page", work.params.get("doc", ""))).name
        print(f"  done     {work.task:<9} {what:<8} ({duration * 1000:.0f} ms)")

    @cue.on_skip
    def skipped(work: runcue.WorkUnit) -> None:
        print(f"  skipped  {work.task:<9} output already there")

    return cue


async def run_once(root: Path, label: str) -> runcue.CueStats:
    print(label)
    async with build_cue(root) as cue:
        # Everything is submitted at once; the checks decide the order.
        await cue.submit("summarize", {"doc": "report"})
        for number in range(PAGES):
            page = root / "report" / "pages" / f"{number:03d}.png"
            await cue.submit("extract", {"page": str(page)})
        await cue.submit("split", {"doc": "report"})
    return cue.stats()


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        first = await run_once(root, "first run:")
        second = await run_once(root, "second run (everything already built):")
    print(
        f"first run: {first.completed} completed, {first.failed} failed;"
        f" second run: {second.skipped} skipped, {second.completed} completed"
    )


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
