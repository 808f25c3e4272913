"""The apple pie factory, callback style: one knife, two ovens, slices that go brown.

Slicing needs the only knife (``concurrent=1``: one job at a time); baking uses one of two
ovens. A pie needs its job's slices, and slices older than a day are no good. The program
answers runcue's two questions itself: ``@cue.is_ready`` (are fresh slices there?) and
``@cue.is_stale`` (must this step run?). The pies are submitted before the slicing; the checks
sort out the order. On day 2 one job's slices have gone stale: that job alone is sliced and
baked again, everything else is skipped.

The kitchen is a temporary folder of JSON files; nothing leaves the machine. The same factory
with declared inputs and outputs is ``apple_pie_declared.py``.

Run:  python examples/apple_pie.py            (asyncio)
      python examples/apple_pie.py trio       (trio)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import anyio

import runcue

DAY = 24 * 60 * 60.0
JOBS = {"pie-1": ["gala", "fuji"], "pie-2": ["bramley", "cox", "gala"], "pie-3": ["fuji"]}


def save(path: Path, data: object) -> None:
    """Write JSON all at once, so a check never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with runcue.atomic_write(path) as handle:
        json.dump(data, handle)


def build_cue(kitchen: Path) -> runcue.Cue:
    cue = runcue.Cue(stall_timeout=30)
    cue.service("knife", concurrent=1)
    cue.service("oven", concurrent=2)

    def slices_of(job: str) -> Path:
        return kitchen / "prep" / job / "slices.json"

    def pie_of(job: str) -> Path:
        return kitchen / "pies" / job / "pie.json"

    def fresh(path: Path) -> bool:
        """There, and younger than a day."""
        return path.exists() and time.time() - path.stat().st_mtime < DAY

    @cue.task("slice_apples", uses="knife")
    def slice_apples(work: runcue.WorkUnit) -> int:
        time.sleep(0.05)  # the knife at work (a sync handler runs in a worker thread)
        slices = [f"{apple} #{n}" for apple in work.params["apples"] for n in range(1, 9)]
        save(slices_of(work.params["job"]), {"slices": slices})
        return len(slices)

    @cue.task("make_pie", uses="oven")
    async def make_pie(work: runcue.WorkUnit) -> int:
        slices = json.loads(slices_of(work.params["job"]).read_text())["slices"]
        await anyio.sleep(0.1)  # baking
        save(pie_of(work.params["job"]), {"slices": len(slices)})
        return len(slices)

    @cue.is_ready
    def is_ready(work: runcue.WorkUnit) -> bool:
        if work.task == "make_pie":  # a pie waits for fresh slices
            return fresh(slices_of(work.params["job"]))
        return True

    @cue.is_stale
    def is_stale(work: runcue.WorkUnit) -> bool:
        job = work.params["job"]
        if work.task == "slice_apples":
            return not fresh(slices_of(job))
        pie = pie_of(job)  # missing, or baked from slices older than the current ones
        return not pie.exists() or pie.stat().st_mtime < slices_of(job).stat().st_mtime

    @cue.on_complete
    def done(work: runcue.WorkUnit, result: object, duration: float) -> None:
        print(f"  {work.task:<12} {work.params['job']}  done, {result} slices ({duration:.2f}s)")

    @cue.on_skip
    def skipped(work: runcue.WorkUnit) -> None:
        print(f"  {work.task:<12} {work.params['job']}  skipped: still good")

    return cue


async def bake(kitchen: Path, label: str) -> runcue.CueStats:
    print(label)
    async with build_cue(kitchen) as cue:
        for job in JOBS:  # the pies first: they wait until their slices are ready
            await cue.submit("make_pie", {"job": job})
        for job, apples in JOBS.items():
            await cue.submit("slice_apples", {"job": job, "apples": apples})
    return cue.stats()


async def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        kitchen = Path(folder)
        day1 = await bake(kitchen, "day 1:")
        brown = time.time() - DAY - 3600  # pie-2's slices were cut 25 hours ago
        os.utime(kitchen / "prep" / "pie-2" / "slices.json", (brown, brown))
        day2 = await bake(kitchen, "day 2 (pie-2's slices are 25 hours old):")
    knife, oven = day1.services["knife"], day1.services["oven"]
    print(
        f"day 1: {day1.completed} steps done; at most {knife.max_running} job on the knife"
        f" and {oven.max_running} in the ovens at once"
    )
    print(f"day 2: {day2.completed} steps redone (pie-2 only), {day2.skipped} skipped")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
