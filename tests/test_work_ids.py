"""Work ids: ``"<the cue's prefix>-<number>"``, unique per cue (also across restarts and
de-duplicated submits), the same string every time it is read, known to the handler and to
declarations before the work runs; lookups by id accept exactly the ids the cue gave out."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import runcue

pytestmark = pytest.mark.anyio


async def test_ids_are_numbered_per_cue_and_read_the_same_everywhere() -> None:
    """Ids count up from 1 after the cue's prefix; the handler, the declarations, events and
    get() see the id submit() returned; another cue has another prefix."""
    cue = runcue.Cue()
    seen: dict[str, list[str]] = {"handler": [], "inputs": [], "events": []}

    def inputs(work: runcue.WorkUnit) -> list[Any]:
        seen["inputs"].append(work.id)
        return []

    @cue.task("t", inputs=inputs)
    async def handler(work: runcue.WorkUnit) -> str:
        seen["handler"].append(work.id)
        return work.id

    cue.subscribe(lambda event: seen["events"].append(event.work.id))
    with anyio.fail_after(5):
        async with cue:
            ids = [await cue.submit("t", {"i": n}) for n in range(3)]
            for work_id in ids:
                assert await cue.wait(work_id) == work_id
    prefix = ids[0].rpartition("-")[0]
    assert ids == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]
    assert seen["inputs"] == ids  # (asked at submit, in order)
    assert sorted(seen["handler"]) == ids  # (trio starts a batch of tasks in reverse)
    assert set(seen["events"]) == set(ids)
    work = await cue.get(ids[1])
    assert work is not None and work.id == ids[1] and work.id is not None
    assert repr(work).startswith(f"<WorkUnit {ids[1]} ")
    other = runcue.Cue()
    other.task("t")(lambda work: None)
    async with other:
        assert not (await other.submit("t")).startswith(prefix + "-")  # (1 in 16 million)


async def test_ids_stay_unique_across_restarts_and_duplicates() -> None:
    """A de-duplicated submit returns the live twin's id; ids never repeat, also after the
    cue was stopped and started again."""
    cue = runcue.Cue()
    release = anyio.Event()

    @cue.task("t", dedup=True)
    async def handler(work: runcue.WorkUnit) -> None:
        await release.wait()

    given: list[str] = []
    with anyio.fail_after(5):
        async with cue:
            first = await cue.submit("t", {"x": 1})
            assert await cue.submit("t", {"x": 1}) == first  # the twin's id
            given.append(first)
            given.append(await cue.submit("t", {"x": 2}))
            release.set()
        release = anyio.Event()
        release.set()
        async with cue:
            given.append(await cue.submit("t", {"x": 1}))
            await cue.join()
    assert len(set(given)) == 3


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda good, prefix: f"{prefix}-01",  # the number, spelled another way
        lambda good, prefix: f"{prefix}-999",  # never given out
        lambda good, prefix: f"other-{good.rpartition('-')[2]}",  # another cue's prefix
        lambda good, prefix: f"{prefix}-\u0661",  # a digit, but not an ASCII one
        lambda good, prefix: good + " ",
        lambda good, prefix: "",
        lambda good, prefix: 1,
        lambda good, prefix: None,
    ],
)
async def test_lookups_know_only_the_ids_given_out(make_bad: Any) -> None:
    """get() is None, cancel() is False and wait() raises WorkNotFound for an id the cue
    never gave out, however close to a real one; the real one is found."""
    cue = runcue.Cue()
    cue.task("t")(lambda work: None)
    with anyio.fail_after(5):
        async with cue:
            good = await cue.submit("t")
            await cue.join()
            prefix = good.rpartition("-")[0]
            bad = make_bad(good, prefix)
            assert await cue.get(good) is not None
            assert await cue.get(bad) is None
            assert await cue.cancel(bad) is False
            with pytest.raises(runcue.WorkNotFound):
                await cue.wait(bad)


def test_a_work_unit_built_by_hand_keeps_its_id() -> None:
    """runcue 0.2 code builds work units itself (fixtures for a priority function): the id
    it gives is the id it reads."""
    work = runcue.WorkUnit(id="job-7", task="t", params={"a": 1})
    assert work.id == "job-7"
    assert repr(work).startswith("<WorkUnit job-7 ")
