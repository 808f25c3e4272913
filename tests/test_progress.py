"""runcue.progress() and runcue.render_stats(): the live dashboard and the snapshot view."""

from __future__ import annotations

import dataclasses
import io
import logging
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


# ---------------------------------------------------------------------- fitting the terminal

LONG_NAMES = ("transcription-worker", "storage-uploads-east")  # 20 characters each


def busy_stats() -> runcue.CueStats:
    """Two services with 20-character names and six- and seven-digit counts."""
    base = sample_stats()
    worker = dataclasses.replace(
        base.services["api"],
        name=LONG_NAMES[0],
        concurrent=100,
        running=99,
        pending=123456,
        completed=98765,
        failed=4321,
        paused_for=0.0,
        next_free_slot=0.25,
    )
    uploads = dataclasses.replace(base.services["disk"], name=LONG_NAMES[1], completed=1234567)
    return dataclasses.replace(
        base,
        submitted=1500000,
        pending=123456,
        completed=1333332,
        services={worker.name: worker, uploads.name: uploads},
    )


def service_rows(text: str) -> dict[str, list[str]]:
    """The services table of a rendered view: its header words and each row's cells."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "Services" in line)
    rows: dict[str, list[str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("╰"):
            break
        cells = line.strip("│ ").split()
        rows[cells[0]] = cells
    return rows


def headers(text: str) -> set[str]:
    """The column headers of the services table ("rate use" counted as one)."""
    return set(" ".join(service_rows(text)["service"]).replace("rate use", "rate_use").split())


@pytest.mark.parametrize("width", [60, 80, 120])
async def test_services_fit_the_terminal_with_names_and_numbers_whole(width: int) -> None:
    """At 60, 80 and 120 columns every 20-character service name and every count shows whole
    and no line is wider than the terminal."""
    text = text_of(runcue.render_stats(busy_stats(), events=[]), width=width)
    assert all(len(line) <= width for line in text.splitlines())
    rows = service_rows(text)
    worker, uploads = rows[LONG_NAMES[0]], rows[LONG_NAMES[1]]
    for number in ("99/100", "123456", "98765", "4321"):
        assert number in worker
    for number in ("0", "1234567"):
        assert number in uploads
    assert "…" not in text.split("Services")[1]
    assert "pending 123456" in text
    assert "done 1333332" in text


async def test_wider_terminals_show_more_columns() -> None:
    """With 20-character names, 60 columns show the counts; 80 add the state; 100 the rate
    use; 120 the bars and skipped; 160 also the most running at once and retried."""
    essentials = {"service", "running", "pending", "done", "failed"}
    widths = (60, 80, 100, 120, 160)
    at = {w: text_of(runcue.render_stats(busy_stats()), width=w) for w in widths}
    assert headers(at[60]) == essentials
    assert headers(at[80]) == essentials | {"state"}
    assert "rate-limited 250ms" in at[80]
    assert headers(at[100]) >= essentials | {"state", "rate_use"}
    assert headers(at[120]) == essentials | {"rate_use", "state", "skipped"}
    assert "█" in service_rows(at[120])[LONG_NAMES[0]][1]  # the running slots' bar
    everything = essentials | {"rate_use", "state", "peak", "skipped", "retried"}
    assert headers(at[160]) == everything
    assert "48/60 per min" in at[120]


async def test_narrower_terminals_drop_columns_in_a_fixed_order() -> None:
    """From 200 columns down to 48, each narrower view shows a subset of the columns of the
    wider one, and the names and counts stay whole throughout."""
    previous: set[str] | None = None
    for width in range(200, 47, -2):
        text = text_of(runcue.render_stats(busy_stats()), width=width)
        shown = headers(text)
        if previous is not None:
            assert shown <= previous, f"at {width}: {shown} vs {previous}"
        previous = shown
        assert {"service", "pending", "done", "failed"} <= shown
        rows = service_rows(text)
        assert "123456" in rows[LONG_NAMES[0]]
        assert "1234567" in rows[LONG_NAMES[1]]
    assert previous == {"service", "pending", "done", "failed"}


async def test_names_are_cut_only_when_nothing_else_is_left() -> None:
    """On a 36-column terminal the counts still show whole; only the names give way."""
    text = text_of(runcue.render_stats(busy_stats()), width=36)
    rows = service_rows(text)
    assert all(len(line) <= 36 for line in text.splitlines())
    cut = [name for name in rows if name.endswith("…")]
    assert len(cut) == 2
    assert any("123456" in cells for cells in rows.values())
    assert any("1234567" in cells for cells in rows.values())


async def test_progress_logs_plain_lines_without_a_terminal(
    make_cue: Callable[..., runcue.Cue], caplog: pytest.LogCaptureFixture
) -> None:
    """Off a terminal there is no live view: one line per period, and one at the end, goes to
    the runcue logger at INFO, and nothing is drawn."""
    cue = make_cue()
    cue.service("api", concurrent=1, rate="100/s")
    buffer = io.StringIO()
    console = Console(file=buffer, width=80)
    release = anyio.Event()

    @cue.task("hold", uses="api")
    async def hold(work: runcue.WorkUnit) -> None:
        await release.wait()

    def progress_lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch:")]

    with caplog.at_level(logging.INFO, logger="runcue"), anyio.fail_after(10):
        async with cue, runcue.progress(cue, console=console, title="batch", log_every=0.02):
            for n in range(3):
                await cue.submit("hold", {"n": n})
            while not progress_lines():  # logged by the view's own task
                await anyio.sleep(0.01)
            release.set()
    lines = progress_lines()
    assert "1/3 running" in lines[0] or "0/3 finished" in lines[0]
    assert "api: " in lines[0]
    assert lines[-1].startswith("batch: 3/3 finished (100%)")
    assert "ETA done" in lines[-1]
    assert buffer.getvalue() == ""


async def test_progress_rejects_a_bad_log_interval(make_cue: Callable[..., runcue.Cue]) -> None:
    """log_every must be a positive number of seconds."""
    with pytest.raises(ValueError, match="log_every must be > 0 seconds, got 0"):
        async with runcue.progress(make_cue(), log_every=0):
            pass
