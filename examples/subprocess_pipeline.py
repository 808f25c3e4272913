"""A pipeline of real local commands: sort, wc and gzip, run with ``anyio.run_process``.

Five generated word lists go through three steps each -- ``sort`` them, count them with
``wc``, compress the sorted list with ``gzip`` -- and a final report runs a ``python -c``
one-liner (this very interpreter, ``sys.executable``) over all the sorted lists. The steps are
declared Make-style (``inputs=`` / ``outputs=``), at most four commands run at once (a "shell"
service with ``concurrent=4``), and every output is written with ``runcue.atomic_write``, so a
failed or interrupted command never leaves half a file behind.

The second run edits one word list: only that list's chain and the report run again; the rest
is skipped because its outputs are newer than its inputs.

Needs ``sort``, ``wc`` and ``gzip`` on the PATH (any Linux or macOS). Everything happens in a
temporary folder.

Run:  python examples/subprocess_pipeline.py            (asyncio)
      python examples/subprocess_pipeline.py trio       (trio)
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import anyio

import runcue

PARTS = 5
WORDS = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "quince", "grape", "melon"]
TOP_WORDS = """
import collections, pathlib, sys
words = [w for name in sys.argv[1:] for w in pathlib.Path(name).read_text().split()]
counts = collections.Counter(words)
print(" ".join(f"{word}={n}" for word, n in counts.most_common(3)))
"""
C_LOCALE = {**os.environ, "LC_ALL": "C"}  # byte order for sort, plain digits for wc


def build_cue(root: Path) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=30)
    cue.service("shell", concurrent=4)

    async def shell(work: runcue.WorkUnit, *command: str) -> str:
        """Run a command; its standard output becomes the work's target file."""
        finished = await anyio.run_process(command, env=C_LOCALE)  # raises on a non-zero exit
        with runcue.atomic_write(work.params["target"], "wb") as handle:
            handle.write(finished.stdout)
        return f"{Path(command[0]).name}: {len(finished.stdout)} bytes"

    @cue.task("sort", uses="shell", inputs="source", outputs="target")
    async def sort(work: runcue.WorkUnit) -> str:
        return await shell(work, "sort", work.params["source"])

    @cue.task("count", uses="shell", inputs="source", outputs="target")
    async def count(work: runcue.WorkUnit) -> str:
        return await shell(work, "wc", "-l", "-w", work.params["source"])

    @cue.task("compress", uses="shell", inputs="source", outputs="target")
    async def compress(work: runcue.WorkUnit) -> str:
        return await shell(work, "gzip", "-9", "-n", "-c", work.params["source"])

    @cue.task("report", uses="shell", inputs="sources", outputs="target")
    async def report(work: runcue.WorkUnit) -> str:
        return await shell(work, sys.executable, "-c", TOP_WORDS, *work.params["sources"])

    @cue.on_complete
    def done(work: runcue.WorkUnit, result: object, duration: float) -> None:
        target = Path(work.params["target"]).relative_to(root)
        print(f"  {work.task:<8} -> {target!s:<22} {result} ({duration * 1000:.0f} ms)")

    return cue


async def build(root: Path, label: str) -> runcue.CueStats:
    print(label)
    sorted_lists = []
    async with build_cue(root) as cue:
        for part in range(1, PARTS + 1):
            source, ordered = root / f"part-{part}.txt", root / "sorted" / f"part-{part}.txt"
            sorted_lists.append(str(ordered))
            await cue.submit("sort", {"source": str(source), "target": str(ordered)})
            counts = str(root / "counts" / f"part-{part}.wc")
            await cue.submit("count", {"source": str(ordered), "target": counts})
            archive = str(root / "archive" / f"part-{part}.txt.gz")
            await cue.submit("compress", {"source": str(ordered), "target": archive})
        await cue.submit("report", {"sources": sorted_lists, "target": str(root / "report.txt")})
    return cue.stats()


async def main() -> None:
    missing = [tool for tool in ("sort", "wc", "gzip") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"this example needs {', '.join(missing)} on the PATH")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for name in ("sorted", "counts", "archive"):
            (root / name).mkdir()
        for part in range(1, PARTS + 1):
            chosen = random.Random(part).choices(WORDS, k=2000)
            (root / f"part-{part}.txt").write_text("\n".join(chosen) + "\n")
        first = await build(root, "first run:")
        with (root / "part-3.txt").open("a") as edit:
            edit.write("fig\n" * 500)
        second = await build(root, "second run (part-3.txt edited):")
        report = (root / "report.txt").read_text().strip()
        with gzip.open(root / "archive" / "part-3.txt.gz", "rt") as archived:
            figs = archived.read().split().count("fig")
    print(f"first run: {first.completed} commands run, {first.failed} failed")
    print(f"second run: {second.completed} commands run again, {second.skipped} skipped")
    print(f"top words: {report}; the part-3 archive holds {figs} figs")
    if figs < 500:  # the 500 appended figs must have reached the archive
        raise SystemExit("the edit did not reach the part-3 archive: a downstream step was skipped")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
