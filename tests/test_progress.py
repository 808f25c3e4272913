"""runcue.progress() and runcue.render_stats(): the live dashboard and the snapshot view."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import anyio
import pytest
from rich.console import Console

import runcue

pytestmark = pytest.mark.anyio


def make_console(width: int = 110) -> tuple[Console, io.StringIO]:
    """A terminal-like console that writes into a string."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=width, color_system=None)
    return console, buffer


def text_of(renderable: object, width: int = 110) -> str:
    """What a renderable looks like as plain text."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(renderable)
    return console.export_text()


def sample_stats() -> runcue.CueStats:
    """A snapshot with a paused rate-limited service and a plain one."""
    api = runcue.ServiceStats(
        name="api",
        concurrent=5,
        rate="60/min",
        pending=7,
        running=5,
        started=48,
        completed=40,
        failed=3,
        skipped=0,
        retried=1,
        max_running=5,
        windows=(runcue.RateWindowStats(limit=60, period=60.0, used=48),),
        next_free_slot=0.0,
        paused_for=2.5,
    )
    disk = runcue.ServiceStats(
        name="disk",
        concurrent=None,
        rate=None,
        pending=0,
        running=0,
        started=10,
        completed=10,
        failed=0,
        skipped=2,
        retried=0,
        max_running=4,
        windows=(),
        next_free_slot=0.0,
        paused_for=0.0,
    )
    return runcue.CueStats(
        submitted=67,
        pending=7,
        running=5,
        completed=50,
        failed=3,
        skipped=2,
        cancelled=0,
        retried=1,
        elapsed=11.0,
        throughput=53 / 11.0,
        services={"api": api, "disk": disk},
    )


async def test_render_stats_shows_queue_services_and_limits() -> None:
    """A snapshot renders its counts, progress, each service's limits, rate use and pause."""
    text = text_of(runcue.render_stats(sample_stats(), title="batch"))
    assert "batch · Queue" in text
    for fragment in ("pending 7", "running 5", "done 50", "failed 3", "skipped 2"):
        assert fragment in text
    assert "55/67" in text  # finished out of submitted
    assert "ETA 0:02" in text  # 12 left at 5/s (55 finished in 11 s)
    assert "Services" in text
    assert "5/5" in text
    assert "48/60 per min" in text
    assert "paused 2.5s" in text
    assert "disk" in text
    assert "0/∞" in text
    assert "Recent events" not in text  # only with events=


async def test_render_stats_with_events_and_a_throughput() -> None:
    """Given events the view adds a Recent events panel; a throughput sets the ETA."""
    lines = ["12:00:01 completed extract w-1", "12:00:02 failed load w-2"]
    text = text_of(runcue.render_stats(sample_stats(), events=lines, throughput=1.0))
    assert "Recent events" in text
    assert "completed extract w-1" in text
    assert "ETA 0:12" in text
    assert "1.0/s" in text
    empty = text_of(runcue.render_stats(sample_stats(), events=[]))
    assert "(none yet)" in empty


async def test_render_stats_of_an_idle_cue(make_cue: Callable[..., runcue.Cue]) -> None:
    """A cue that ran nothing renders without errors and without an ETA."""
    cue = make_cue()
    cue.service("api", rate="10/s")
    text = text_of(runcue.render_stats(cue.stats()))
    assert "0/0" in text
    assert "ETA -" in text
    assert "api" in text


async def test_progress_follows_the_work_to_its_end(make_cue: Callable[..., runcue.Cue]) -> None:
    """Leaving the progress block waits for the work; the last frame shows it all done."""
    cue = make_cue()
    cue.service("api", concurrent=2, rate="100/s")
    console, buffer = make_console()

    @cue.task("fetch", uses="api")
    async def fetch(work: runcue.WorkUnit) -> int:
        await anyio.sleep(0.001)
        return int(work.params["n"])

    with anyio.fail_after(10):
        async with cue, runcue.progress(cue, console=console, title="demo"):
            for n in range(10):
                await cue.submit("fetch", {"n": n})
    output = buffer.getvalue()
    for title in ("demo · Queue", "Services", "Recent events"):
        assert title in output
    assert "done 10" in output
    assert "10/10" in output
    assert "completed" in output


async def test_progress_waits_for_the_cue_before_leaving(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """Right after the progress block the cue has nothing pending or running."""
    cue = make_cue()
    console, _ = make_console()

    @cue.task("nap")
    async def nap(work: runcue.WorkUnit) -> None:
        await anyio.sleep(0.01)

    with anyio.fail_after(10):
        async with cue:
            async with runcue.progress(cue, console=console):
                for n in range(5):
                    await cue.submit("nap", {"n": n})
            stats = cue.stats()
            assert stats.pending == stats.running == 0
            assert stats.completed == 5


async def test_progress_redraws_while_work_runs(make_cue: Callable[..., runcue.Cue]) -> None:
    """The view refreshes on its own while a handler runs, not only at the end."""
    cue = make_cue()
    cue.service("api", concurrent=1)
    console, buffer = make_console()
    release = anyio.Event()
    started = anyio.Event()

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        started.set()
        await release.wait()

    with anyio.fail_after(10):
        async with cue, runcue.progress(cue, console=console, refresh_per_second=50):
            await cue.submit("hold")
            await started.wait()
            while "running 1" not in buffer.getvalue():  # drawn by the refresh task
                await anyio.sleep(0.01)
            release.set()


async def test_progress_lets_the_body_exception_out_as_itself(
    make_cue: Callable[..., runcue.Cue],
) -> None:
    """An exception in the block comes out unwrapped, and the view is closed."""
    cue = make_cue()
    console, buffer = make_console()

    @cue.task("never")
    async def never(work: runcue.WorkUnit) -> None:
        await anyio.sleep_forever()

    async def fail_inside() -> None:
        async with cue, runcue.progress(cue, console=console):
            await cue.submit("never")
            raise KeyError("boom")

    with anyio.fail_after(10), pytest.raises(KeyError) as caught:
        await fail_inside()
    assert type(caught.value) is KeyError
    assert "Queue" in buffer.getvalue()


async def test_progress_without_events_panel(make_cue: Callable[..., runcue.Cue]) -> None:
    """events=0 leaves the Recent events panel out."""
    cue = make_cue()
    console, buffer = make_console()

    @cue.task("noop")
    def noop(work: runcue.WorkUnit) -> None:
        return None

    with anyio.fail_after(10):
        async with cue, runcue.progress(cue, console=console, events=0, transient=True):
            await cue.submit("noop")
    assert "Recent events" not in buffer.getvalue()


async def test_progress_rejects_bad_arguments(make_cue: Callable[..., runcue.Cue]) -> None:
    """A negative events count or a non-positive refresh rate is refused up front."""
    cue = make_cue()
    with pytest.raises(ValueError, match="events"):
        async with runcue.progress(cue, events=-1):
            pass
    with pytest.raises(ValueError, match="refresh_per_second"):
        async with runcue.progress(cue, refresh_per_second=0):
            pass


async def test_missing_rich_is_explained(
    make_cue: Callable[..., runcue.Cue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rich both functions raise ImportError naming the install command."""
    monkeypatch.setitem(sys.modules, "rich", None)
    with pytest.raises(ImportError, match=r"pip install 'runcue\[sim\]'"):
        runcue.render_stats(sample_stats())
    with pytest.raises(ImportError, match=r"pip install 'runcue\[sim\]'"):
        async with runcue.progress(make_cue()):
            pass


def test_exported_from_runcue() -> None:
    """progress and render_stats are public names of the runcue package."""
    assert "progress" in runcue.__all__
    assert "render_stats" in runcue.__all__
    assert runcue.progress.__module__ == "runcue"
