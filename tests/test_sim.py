"""The runcue-sim command: options, scenarios, summaries, stalls, the TUI and the real script."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from runcue_sim.cli import main
from runcue_sim.report import max_in_window, percentile
from runcue_sim.scenarios import SCENARIOS

BACKENDS = ["asyncio", "trio"]
FAST = ["-l", "1", "--no-tui"]  # 1 ms fake calls, plain output


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """Run the CLI with --json; stdout must hold nothing but the JSON summary."""
    code, out, _ = run(capsys, *args, "--json")
    summary: dict[str, Any] = json.loads(out)
    return code, summary


def log_lines(output: str) -> list[str]:
    """The event-log lines of the output (they start with the elapsed time)."""
    return [line for line in output.splitlines() if re.match(r"\s*\d+\.\d{3}s ", line)]


def service(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """One service's row of a JSON summary."""
    rows: list[dict[str, Any]] = [row for row in summary["services"] if row["service"] == name]
    assert rows, f"no service {name!r} in {summary['services']}"
    return rows[0]


def ledger_adds_up(summary: dict[str, Any]) -> bool:
    """Every submitted work ended in exactly one outcome."""
    works = summary["works"]
    finished = works["completed"] + works["failed"] + works["skipped"] + works["cancelled"]
    return bool(works["submitted"] == finished + works["left"])


# ---------------------------------------------------------------------- scenarios


def test_list_scenarios_describes_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    """--list-scenarios names and describes each of the four scenarios, then exits 0."""
    code, out, _ = run(capsys, "--list-scenarios")
    assert code == 0
    for name in ("single_queue", "pipeline", "fanout", "dynamic"):
        assert name in out
        assert SCENARIOS[name].description in out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_scenario_runs_to_the_end(
    capsys: pytest.CaptureFixture[str], scenario: str, backend: str
) -> None:
    """Without errors every scenario finishes all its work on both backends, exit code 0."""
    code, summary = run_json(
        capsys, "--scenario", scenario, "-n", "20", *FAST, "--seed", "1", "--backend", backend
    )
    assert code == 0
    assert summary["scenario"] == scenario
    assert summary["backend"] == backend
    assert summary["items"] == 20
    works = summary["works"]
    assert works["failed"] == works["cancelled"] == works["left"] == 0
    assert works["completed"] + works["skipped"] == works["submitted"]
    assert summary["exit_code"] == 0
    assert summary["stalled"] is False


def test_pipeline_runs_every_stage_once_per_item(capsys: pytest.CaptureFixture[str]) -> None:
    """pipeline submits extract, transform and load per item and completes each once."""
    code, summary = run_json(capsys, "--scenario", "pipeline", "-n", "7", *FAST)
    assert code == 0
    assert {task: counts["completed"] for task, counts in summary["by_task"].items()} == {
        "extract": 7,
        "transform": 7,
        "load": 7,
    }
    assert [row["service"] for row in summary["services"]] == ["source", "compute", "warehouse"]


def test_fanout_processes_four_parts_per_item(capsys: pytest.CaptureFixture[str]) -> None:
    """fanout runs one split, four process parts and one aggregate per item."""
    code, summary = run_json(capsys, "--scenario", "fanout", "-n", "5", *FAST)
    assert code == 0
    completed = {task: counts["completed"] for task, counts in summary["by_task"].items()}
    assert completed == {"split": 5, "process": 20, "aggregate": 5}


def test_dynamic_rebuilds_expired_quotes(capsys: pytest.CaptureFixture[str]) -> None:
    """dynamic fetches a quote again when it expired before its report could start."""
    # 40 serial reports of 4 ms need >= 156 ms; a quote expires after 10 ms, while the 10
    # first fetches are done after about 20 ms: the late reports can only run on rebuilds.
    code, summary = run_json(
        capsys, "--scenario", "dynamic", "-n", "40", "-l", "2", "-j", "0", "-c", "1", "--no-tui"
    )
    assert code == 0
    assert summary["by_task"]["report"]["completed"] == 40
    assert summary["by_task"]["fetch"]["completed"] > 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors_fail_work_and_cancel_what_depends_on_it(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    """--error-rate fails some work; the later stages of a failed item are cancelled, exit 0."""
    code, summary = run_json(
        capsys,
        "--scenario",
        "pipeline",
        "-n",
        "30",
        *FAST,
        "-e",
        "0.3",
        "--seed",
        "3",
        "--backend",
        backend,
    )
    assert code == 0
    works = summary["works"]
    assert works["failed"] > 0
    assert works["cancelled"] > 0
    assert works["left"] == 0
    assert ledger_adds_up(summary)
    failed_extracts = [name for name in summary["failed"] if name.startswith("extract:")]
    loads_done = summary["by_task"]["load"]["completed"]
    assert loads_done <= 30 - len(failed_extracts)


# ---------------------------------------------------------------------- limits


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_limit_never_exceeded_in_any_window(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    """With --rate-limit 20/sec the JSON summary shows no window with more than 20 starts."""
    code, summary = run_json(
        capsys, "-n", "30", *FAST, "-c", "30", "--rate-limit", "20/sec", "--backend", backend
    )
    assert code == 0
    row = service(summary, "api")
    assert row["rate"] == "20/sec"
    assert row["windows"] == [{"limit": 20, "period": 1.0, "max_starts": 20}]
    assert summary["works"]["completed"] == 30


def test_concurrency_limit_is_the_most_seen_running(capsys: pytest.CaptureFixture[str]) -> None:
    """-c 3 caps every service of the scenario at 3 handlers at once, and 3 is reached."""
    code, summary = run_json(capsys, "--scenario", "fanout", "-n", "10", *FAST, "-c", "3")
    assert code == 0
    for row in summary["services"]:
        assert row["concurrent"] == 3
        assert row["max_running"] == 3


def test_several_rate_windows_are_each_measured(capsys: pytest.CaptureFixture[str]) -> None:
    """A rate with two windows reports the peak starts of each against its own limit."""
    code, summary = run_json(capsys, "-n", "12", *FAST, "-r", "100/sec;10/0.1s")
    assert code == 0
    windows = service(summary, "api")["windows"]
    assert [(w["limit"], w["period"]) for w in windows] == [(100, 1.0), (10, 0.1)]
    assert windows[0]["max_starts"] <= 100
    assert windows[1]["max_starts"] <= 10


# ---------------------------------------------------------------------- the fake calls


def test_same_seed_same_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs with one --seed fail the same work; another seed fails other work."""
    args = ["--scenario", "fanout", "-n", "15", *FAST, "-e", "0.2", "--outliers", "0.2"]
    _, first = run_json(capsys, *args, "--seed", "42")
    _, again = run_json(capsys, *args, "--seed", "42", "--backend", "trio")
    _, other = run_json(capsys, *args, "--seed", "43")
    assert first["failed"]
    assert first["failed"] == again["failed"]
    assert first["by_task"] == again["by_task"]
    assert first["failed"] != other["failed"]


def test_seed_is_chosen_and_shown_when_not_given(capsys: pytest.CaptureFixture[str]) -> None:
    """Without --seed a seed is picked and reported, so the run can be repeated."""
    code, out, _ = run(capsys, "-n", "2", *FAST)
    assert code == 0
    assert "seed " in out


def test_latency_outliers_and_jitter_shape_the_calls(capsys: pytest.CaptureFixture[str]) -> None:
    """Outliers multiply the latency: with every call an outlier, p50 is at least 3 x 2 ms."""
    code, summary = run_json(
        capsys, "-n", "5", "-l", "2", "-j", "0", "--outliers", "1", "--outlier-mult", "3"
    )
    assert code == 0
    assert summary["latency"]["p50"] >= 0.0059
    assert summary["options"]["outlier_mult"] == 3.0
    code, summary = run_json(capsys, "-n", "5", "-l", "2", "-j", "0.9", "--no-tui")
    assert code == 0
    assert summary["options"]["jitter"] == 0.9


def test_submit_rate_spreads_the_submissions(capsys: pytest.CaptureFixture[str]) -> None:
    """--submit-rate submits items one by one; --count still bounds them."""
    code, summary = run_json(capsys, "-n", "10", *FAST, "--submit-rate", "500")
    assert code == 0
    assert summary["items"] == 10
    assert summary["works"]["completed"] == 10


def test_duration_stops_submitting(capsys: pytest.CaptureFixture[str]) -> None:
    """--duration with --submit-rate and no --count submits only while the duration lasts."""
    code, summary = run_json(capsys, *FAST, "--submit-rate", "200", "--duration", "0.1")
    assert code == 0
    # Item i is due at i / 200 s; nothing due at or after 0.1 s is submitted.
    assert 1 <= summary["items"] <= 20
    assert summary["works"]["completed"] == summary["items"]


# ---------------------------------------------------------------------- stalls


@pytest.mark.parametrize("backend", BACKENDS)
def test_stall_timeout_reports_what_is_blocked_and_exits_1(
    capsys: pytest.CaptureFixture[str], backend: str
) -> None:
    """Missing inputs stall the run: the blocked work is reported by reason, then exit 1."""
    code, out, _ = run(
        capsys,
        "--scenario",
        "pipeline",
        "-n",
        "10",
        *FAST,
        "--missing-inputs",
        "0.5",
        "--stall-timeout",
        "0.3",
        "--seed",
        "1",
        "--backend",
        backend,
    )
    assert code == 1
    assert "Stall" in out
    assert "not_ready" in out
    assert "extract" in out
    assert "stall timeout" in out


def test_stall_in_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """The JSON summary lists each stall report and marks the run as stalled."""
    code, summary = run_json(
        capsys,
        "-n",
        "4",
        *FAST,
        "-r",
        "1/min",
        "--stall-warn",
        "0.1",
        "--stall-timeout",
        "0.3",
    )
    assert code == 1
    assert summary["stalled"] is True
    assert summary["exit_code"] == 1
    assert summary["stalls"][0]["blocked"] == {"rate_limited": 3}
    assert summary["works"]["failed"] == 3
    assert ledger_adds_up(summary)


# ---------------------------------------------------------------------- output


def test_verbose_logs_one_line_per_event(capsys: pytest.CaptureFixture[str]) -> None:
    """-v prints a header and a line per event: time, event, task, work id, details."""
    code, out, _ = run(capsys, "-n", "3", *FAST, "-v")
    assert code == 0
    assert any(
        line.split() == ["TIME", "EVENT", "TASK", "WORK_ID", "DETAILS"] for line in out.splitlines()
    )
    lines = log_lines(out)
    for kind in ("queued", "started", "completed"):
        assert sum(f" {kind} " in line for line in lines) == 3
    assert all(line.split()[3] == "call_api" for line in lines)
    queued = next(line for line in lines if " queued " in line)
    assert "call_api" in queued
    assert "item=" in queued


def test_verbose_with_trio(capsys: pytest.CaptureFixture[str]) -> None:
    """The event log works the same on trio."""
    code, out, _ = run(capsys, "-n", "2", *FAST, "-v", "--backend", "trio")
    assert code == 0
    assert sum(" completed " in line for line in log_lines(out)) == 2


def test_plain_summary_shows_outcomes_and_service_numbers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The summary names the outcomes, wall time, latency percentiles and the services."""
    code, out, _ = run(capsys, "-n", "5", *FAST, "-r", "50/sec")
    assert code == 0
    for text in ("Summary", "5 completed", "wall time", "p50", "p95", "api", "50/sec"):
        assert text in out


def test_json_keeps_stdout_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    """With --json the human output goes to stderr and stdout is one JSON document."""
    code, out, err = run(capsys, "-n", "3", *FAST, "-v", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["works"]["completed"] == 3
    assert set(summary["latency"]) == {"count", "p50", "p95"}
    assert "Summary" in err
    assert " completed " in err


def test_tui_at_80_columns_shows_names_and_state_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an 80-column terminal the dashboard shows every service name and its state whole
    (they used to be cut to "servi…" and "sta…")."""
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run(
        capsys, "--scenario", "fanout", "-n", "20", "-r", "100/sec", "-l", "1", "--tui"
    )
    assert code == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out)
    rows = [line for line in text.splitlines() if line.startswith(("│ storage", "│ workers"))]
    assert rows
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    headers = next(line for line in text.splitlines() if line.startswith("│ service "))
    assert "state" in headers.split()


@pytest.mark.parametrize("backend", BACKENDS)
def test_trace_writes_a_timeline_of_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, backend: str
) -> None:
    """--trace FILE writes the run as trace events: a process per service and one complete
    slice per attempt."""
    path = tmp_path / "run.json"
    code, _, _ = run(
        capsys,
        "--scenario",
        "pipeline",
        "-n",
        "4",
        *FAST,
        "--backend",
        backend,
        "--trace",
        str(path),
    )
    assert code == 0
    events = json.loads(path.read_text())["traceEvents"]
    processes = {e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert processes == {"source", "compute", "warehouse"}
    assert sum(1 for e in events if e["ph"] == "X") == 12  # 4 items, 3 stages


def test_tui_in_process_draws_the_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    """--tui draws the live view (forced even off a terminal) before the summary."""
    code, out, _ = run(capsys, "-n", "5", "-l", "1", "--tui")
    assert code == 0
    for title in ("Queue", "Services", "Recent events", "Summary"):
        assert title in out


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "args",
    [
        ["--count", "0"],
        ["-n", "many"],
        ["--latency", "-5"],
        ["--jitter", "2"],
        ["--outliers", "1.5"],
        ["--outlier-mult", "0.5"],
        ["--error-rate", "nan"],
        ["--missing-inputs", "-1"],
        ["--concurrent", "0"],
        ["--rate-limit", "fast"],
        ["--rate-limit", "0/sec"],
        ["--submit-rate", "0"],
        ["--duration", "5"],
        ["--stall-timeout", "-1"],
        ["--stall-timeout", "0.2", "--stall-warn", "0.5"],
        ["--scenario", "nope"],
        ["--backend", "curio"],
        ["--seed", "x"],
        ["--tui", "--no-tui"],
        ["--trace", "/no/such/directory/run.json"],
        ["--no-such-option"],
    ],
)
def test_bad_options_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    """A bad option or value gives one clear error line on stderr and exit code 2."""
    code, out, err = run(capsys, *args)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("runcue-sim: error: ")


def test_bad_rate_message_comes_from_runcue(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --rate-limit is explained with runcue's own rate grammar."""
    code, _, err = run(capsys, "-r", "5/fortnight")
    assert code == 2
    assert "5/fortnight" in err
    assert "60/min" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """--help prints the usage with examples and exits 0."""
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "usage: runcue-sim" in out
    assert "--rate-limit" in out
    assert "examples:" in out


def test_missing_rich_names_the_install_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without rich the simulator says what to install and exits 2."""
    monkeypatch.setitem(sys.modules, "rich", None)
    code, _, err = run(capsys, "-n", "1")
    assert code == 2
    assert "pip install 'runcue[sim]'" in err


# ---------------------------------------------------------------------- helpers


def test_max_in_window_slides_over_every_start() -> None:
    """With exact times the peak counts starts inside any half-open window."""

    def exact(*times: float) -> list[tuple[float, float]]:
        return [(moment, moment) for moment in times]

    assert max_in_window([], 1.0) == 0
    assert max_in_window(exact(0.0, 0.5, 0.99, 1.0, 1.2), 1.0) == 4  # [0.5, 1.5)
    assert max_in_window(exact(0.0, 0.1, 0.2, 5.0), 1.0) == 3
    assert max_in_window(exact(0.0, 1.0, 2.0), 1.0) == 1


def test_max_in_window_never_counts_a_late_reading_as_an_extra_start() -> None:
    """A start reported late (admitted at 0.0, read at 0.01) does not pull in one at 1.005."""
    starts = [(0.0, 0.01), (0.01, 0.011), (0.011, 1.005)]  # (earliest, latest)
    assert max_in_window(starts, 1.0) == 2
    assert max_in_window([(0.0, 0.0), (0.0, 0.5), (0.5, 0.99)], 1.0) == 3


def test_percentile_interpolates() -> None:
    """Percentiles interpolate between the two nearest values; none for no values."""
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([0.0, 10.0], 0.95) == pytest.approx(9.5)


# ---------------------------------------------------------------------- real processes


def _script() -> list[str]:
    script = Path(sys.executable).parent / "runcue-sim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "runcue_sim"]


def test_console_script_runs_in_a_subprocess() -> None:
    """The installed runcue-sim command runs a scenario and prints a JSON summary."""
    result = subprocess.run(
        [*_script(), "--scenario", "pipeline", "-n", "10", "-l", "1", "--json", "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["works"]["completed"] == 30


def test_python_dash_m_reports_bad_options() -> None:
    """python -m runcue_sim exits 2 on a bad option, like the script."""
    result = subprocess.run(
        [sys.executable, "-m", "runcue_sim", "--count", "-3"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--count must be a whole number >= 1" in result.stderr


def _read_until_exit(fd: int, process: subprocess.Popen[bytes], deadline: float) -> bytes:
    output = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal (EIO on Linux)
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    return output


def test_tui_under_a_pseudo_terminal() -> None:
    """On a terminal the dashboard is drawn live (its panels appear) and the run exits 0."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "runcue_sim", "--tui", "-n", "30", "-l", "5", "--seed", "1"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=env,
        close_fds=True,
    )
    os.close(follower)
    try:
        output = _read_until_exit(leader, process, time.monotonic() + 30)
        code = process.wait(timeout=30)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
            process.wait()
    text = output.decode("utf-8", "replace")
    assert code == 0, text[-2000:]
    for title in ("Queue", "Services", "Recent events", "Summary"):
        assert title in text
    assert "\x1b[" in text  # drawn with terminal control codes, not as plain text


def _default_sigint() -> None:
    # A shell that runs the tests in the background ignores SIGINT, and children inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_interrupt_prints_the_summary_so_far(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) stops the run, prints what happened so far, still writes the --trace
    file whole (the running call unfinished) and exits 130."""
    trace = tmp_path / "interrupted.json"
    with subprocess.Popen(
        [
            *_script(),
            "-n",
            "100",
            "-l",
            "10000",
            "-c",
            "1",
            "--no-tui",
            "-v",
            "--trace",
            str(trace),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        preexec_fn=_default_sigint,
    ) as process:
        try:
            assert process.stdout is not None
            for line in process.stdout:  # wait until the first (10 s long) call has started
                if " started " in line:
                    break
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 130
    assert "interrupted" in out
    events = json.loads(trace.read_text())["traceEvents"]
    assert [e["args"]["outcome"] for e in events if e["ph"] == "X"] in (
        ["unfinished"],
        ["cancelled"],
    )


def test_closed_output_ends_the_run_quietly() -> None:
    """When the reader of the event log goes away (| head) the run ends with exit code 141."""
    with subprocess.Popen(
        [*_script(), "-n", "1000", "-l", "5", "-v", "--no-tui"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    ) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline().startswith(b"runcue-sim: scenario")
            process.stdout.close()  # the log is far larger than the pipe's buffer
            code = process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert code == 141


def test_the_llm_scenario_keeps_the_fake_api_within_its_limits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """runcue-sim --scenario llm: every call answered, and the fake server never accepted
    more requests or tokens in a window than its limits."""
    limits = ["-r", "20/sec", "--tokens", "4000/sec", "-l", "20"]
    code = main(["--scenario", "llm", "-n", "30", *limits, "--json", "--no-tui", "--seed", "3"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    server = data["server"]
    assert data["works"]["completed"] == 30
    assert server["most_tokens_in_window"] <= server["tokens_limit"] == 4000
    assert server["most_requests_in_window"] <= server["requests_limit"] == 20
    assert server["answered"] == 30


# --------------------------------------------------------------------------- --virtual (issue 16)


def test_help_lists_virtual(capsys: pytest.CaptureFixture[str]) -> None:
    """runcue-sim --help lists --virtual."""
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "--virtual" in out


def test_virtual_run_reports_virtual_times(capsys: pytest.CaptureFixture[str]) -> None:
    """--virtual runs 300 two-second calls at 60/min (over four minutes) in well under a
    second of real time; wall time, throughput and latency are virtual, the limit held."""
    code, summary = run_json(
        capsys, "-n", "300", "-r", "60/min", "-l", "2000", "--virtual", "--seed", "3"
    )
    assert code == 0
    assert summary["clock"] == "virtual"
    assert summary["backend"] == "trio"
    assert 240 < summary["wall_time"] < 260  # the fifth window of 60 opens at 240 s
    assert summary["real_time"] < 30
    api = service(summary, "api")
    assert api["throughput"] == pytest.approx(300 / summary["wall_time"], rel=0.01)
    assert api["windows"] == [{"limit": 60, "period": 60.0, "max_starts": 60}]
    assert summary["latency"]["p95"] > 200
    assert ledger_adds_up(summary)
    again = run_json(capsys, "-n", "300", "-r", "60/min", "-l", "2000", "--virtual", "--seed", "3")
    assert again[1]["wall_time"] == summary["wall_time"]  # same seed, same virtual run


def test_virtual_summary_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    """The printed summary labels the time virtual and shows the real time beside it."""
    code, out, _ = run(capsys, "--scenario", "pipeline", "-n", "20", "-r", "10/min", "--virtual")
    assert code == 0
    assert "virtual clock" in out
    assert re.search(r"virtual time\s+\d+\.\d+s \(\d+\.\d+s real\)", out)


@pytest.mark.parametrize(
    ("extra", "words"),
    [(["--backend", "asyncio"], "drop --backend asyncio"), (["--tui"], "drop --tui")],
)
def test_virtual_refuses_what_needs_real_time(
    capsys: pytest.CaptureFixture[str], extra: list[str], words: str
) -> None:
    """--virtual with asyncio or the live dashboard is a usage error (exit 2)."""
    code, _, err = run(capsys, "--virtual", *extra)
    assert code == 2
    assert words in err
