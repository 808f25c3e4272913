"""The ``runcue-sim`` command: parse the options, run a scenario, print what happened.

Exit codes: 0 the run ended on its own (simulated failures included), 1 the stall timeout
fired, 2 bad options or a missing dependency, 130 interrupted (Ctrl-C), 141 the output was
closed before the end (``runcue-sim -v | head``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import random
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import anyio

import runcue

from .fake import Workload

__all__ = ["build_parser", "main"]

PROG = "runcue-sim"
INSTALL_HINT = "pip install 'runcue[sim]'"

EXAMPLES = """\
examples:
  runcue-sim --scenario single_queue --count 100
  runcue-sim --scenario pipeline -n 50 --latency 200 --error-rate 0.1
  runcue-sim --scenario single_queue -n 200 --rate-limit 20/sec --json
  runcue-sim --scenario dynamic -n 10 -v
  runcue-sim --scenario fanout --missing-inputs 0.1 --stall-timeout 3
  runcue-sim --scenario pipeline -n 50 --trace run.json   # open in ui.perfetto.dev
  runcue-sim -n 100000 -r 60/min -l 2000 --virtual  # a 28-hour run, in seconds
"""


OUTPUT_CLOSED = 141  # what a shell reports for a process killed by SIGPIPE


class UsageError(Exception):
    """A bad command line: reported on one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _number(
    name: str, *, low: float, high: float | None = None, strict: bool = False
) -> Callable[[str], float]:
    if high is not None:
        wanted = f"a number from {low:g} to {high:g}"
    else:
        wanted = f"a number {'>' if strict else '>='} {low:g}"

    def convert(text: str) -> float:
        try:
            value: float | None = float(text)
        except ValueError:
            value = None
        if (
            value is None
            or math.isnan(value)
            or (value <= low if strict else value < low)
            or (high is not None and value > high)
        ):
            msg = f"{name} must be {wanted}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return convert


def _whole(name: str, *, low: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            msg = f"{name} must be a whole number >= {low}, got {text!r}"
            raise argparse.ArgumentTypeError(msg)
        return value

    return convert


def _rate(text: str) -> str:
    try:
        runcue.parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``runcue-sim``."""
    from .scenarios import SCENARIOS

    parser = _Parser(
        prog=PROG,
        description=(
            "Run fake workloads through the real runcue scheduler: check your dependency"
            " patterns, limits and failure handling without calling any real service."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to run")
    what.add_argument(
        "--scenario",
        default="single_queue",
        choices=sorted(SCENARIOS),
        help="the workload (default: single_queue; see --list-scenarios)",
    )
    what.add_argument(
        "--list-scenarios", action="store_true", help="describe the scenarios and exit"
    )
    what.add_argument(
        "-n",
        "--count",
        type=_whole("--count", low=1),
        help="input items to submit (default: 100; no limit with --duration and --submit-rate)",
    )
    what.add_argument(
        "-d",
        "--duration",
        type=_number("--duration", low=0, strict=True),
        help="stop submitting after this many seconds (needs --submit-rate)",
    )
    what.add_argument(
        "-s",
        "--submit-rate",
        type=_number("--submit-rate", low=0, strict=True),
        help="items submitted per second (default: all at once)",
    )
    what.add_argument(
        "--backend", choices=("asyncio", "trio"), help="the event loop (default: asyncio)"
    )
    what.add_argument(
        "--virtual",
        action="store_true",
        help=(
            "run on a virtual clock (trio's MockClock): any size, any limits, in seconds of"
            " real time; the summary's times are virtual (needs trio, implies --backend trio)"
        ),
    )
    what.add_argument(
        "--seed", type=int, help="seed for every random draw: same seed, same outcomes"
    )

    fake = parser.add_argument_group("the fake calls")
    fake.add_argument(
        "-l",
        "--latency",
        type=_number("--latency", low=0),
        default=50.0,
        help="milliseconds a fake call takes (default: 50)",
    )
    fake.add_argument(
        "-j",
        "--jitter",
        type=_number("--jitter", low=0, high=1),
        default=0.2,
        help="latency varies by up to this fraction either way (default: 0.2)",
    )
    fake.add_argument(
        "--outliers",
        type=_number("--outliers", low=0, high=1),
        default=0.0,
        help="fraction of calls that are slow outliers (default: 0)",
    )
    fake.add_argument(
        "--outlier-mult",
        type=_number("--outlier-mult", low=1),
        default=10.0,
        help="how many times slower an outlier is (default: 10)",
    )
    fake.add_argument(
        "-e",
        "--error-rate",
        type=_number("--error-rate", low=0, high=1),
        default=0.0,
        help="fraction of calls that fail (default: 0)",
    )
    fake.add_argument(
        "--missing-inputs",
        type=_number("--missing-inputs", low=0, high=1),
        default=0.0,
        help="fraction of items whose input never appears: their work is never ready (a stall)",
    )

    limits = parser.add_argument_group("limits (of every service in the scenario)")
    limits.add_argument(
        "-c",
        "--concurrent",
        type=_whole("--concurrent", low=1),
        default=10,
        help="handlers running at once, per service (default: 10)",
    )
    limits.add_argument(
        "-r",
        "--rate-limit",
        type=_rate,
        help="handler starts per window, per service, e.g. 20/sec, 600/min, 100/15min",
    )
    limits.add_argument(
        "--tokens",
        type=_rate,
        help="tokens per window of the llm scenario's API, e.g. 20000/min (default: 20000/min)",
    )
    limits.add_argument(
        "--stall-timeout",
        type=_number("--stall-timeout", low=0, strict=True),
        help="fail the pending work and exit 1 after this many seconds without progress",
    )
    limits.add_argument(
        "--stall-warn",
        type=_number("--stall-warn", low=0, strict=True),
        help="report what is blocked after this many seconds without progress (default: auto)",
    )

    out = parser.add_argument_group("output")
    view = out.add_mutually_exclusive_group()
    view.add_argument(
        "--tui",
        dest="tui",
        action="store_true",
        default=None,
        help="live dashboard (default: when the output is a terminal)",
    )
    view.add_argument("--no-tui", dest="tui", action="store_false", help="no live dashboard")
    out.add_argument("-v", "--verbose", action="store_true", help="log every event")
    out.add_argument(
        "--trace",
        metavar="FILE",
        help="write a timeline of the run to FILE (Trace Event JSON: ui.perfetto.dev)",
    )
    out.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON on stdout (everything else goes to stderr)",
    )
    return parser


def _describe_scenarios() -> str:
    from .scenarios import SCENARIOS

    lines = ["Scenarios (runcue-sim --scenario NAME):", ""]
    for scenario in SCENARIOS.values():
        lines.append(f"  {scenario.name:<13} {scenario.description}")
        for line in textwrap.wrap(" ".join(scenario.details.split()), width=78):
            lines.append(f"  {'':<13} {line}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _check_combination(args: argparse.Namespace) -> None:
    if args.duration is not None and args.submit_rate is None:
        msg = "--duration needs --submit-rate (without it every item is submitted at once)"
        raise UsageError(msg)
    if (
        args.stall_warn is not None
        and args.stall_timeout is not None
        and args.stall_warn >= args.stall_timeout
    ):
        msg = "--stall-warn must be shorter than --stall-timeout, or the report comes too late"
        raise UsageError(msg)
    if args.trace is not None and not Path(args.trace).parent.is_dir():
        msg = (
            f"--trace: the directory of {args.trace!r} does not exist; create it first"
            " or write the timeline elsewhere"
        )
        raise UsageError(msg)
    if args.virtual and args.backend == "asyncio":
        msg = "--virtual runs on trio's virtual clock; drop --backend asyncio"
        raise UsageError(msg)
    if args.virtual and args.tui:
        msg = "--virtual and --tui do not mix: a live dashboard needs real time; drop --tui"
        raise UsageError(msg)
    if (args.backend == "trio" or args.virtual) and importlib.util.find_spec("trio") is None:
        option = "--virtual" if args.virtual else "--backend trio"
        msg = f"{option} needs trio: pip install 'runcue[trio]'"
        raise UsageError(msg)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``runcue-sim`` with ``argv`` (default: the process's arguments); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_combination(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc} (see {PROG} --help)", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if importlib.util.find_spec("rich") is None:
        print(
            f"{PROG} draws with the 'rich' package, which is missing: {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    if args.list_scenarios:
        sys.stdout.write(_describe_scenarios())
        return 0
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from .console import QuietOnClose
    from .runner import RunOptions, RunState, simulate, summarize

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 100_000)
    stream = sys.stderr if args.json else sys.stdout
    console = QuietOnClose(file=stream, force_terminal=True if args.tui else None)
    tui = console.is_terminal if args.tui is None and not args.virtual else bool(args.tui)
    backend = "trio" if args.virtual else args.backend or "asyncio"
    options = RunOptions(
        scenario=args.scenario,
        count=args.count,
        duration=args.duration,
        submit_rate=args.submit_rate,
        workload=Workload(
            latency=args.latency / 1000,
            jitter=args.jitter,
            outliers=args.outliers,
            outlier_mult=args.outlier_mult,
            error_rate=args.error_rate,
            missing_inputs=args.missing_inputs,
            rate=args.rate_limit,
            tokens=args.tokens,
            concurrent=args.concurrent,
            seed=seed,
        ),
        stall_timeout=args.stall_timeout,
        stall_warn=args.stall_warn,
        backend=backend,
        virtual=args.virtual,
        tui=tui,
        verbose=args.verbose,
        trace=args.trace,
    )
    if not tui:
        clock = ", virtual clock" if options.virtual else ""
        console.print(
            f"runcue-sim: scenario {options.scenario}, seed {seed}, backend {options.backend}"
            + clock,
            markup=False,
            highlight=False,
        )
    state = RunState()
    backend_options: dict[str, object] = {}
    if options.virtual:
        import trio.testing

        backend_options["clock"] = trio.testing.MockClock(autojump_threshold=0)
    try:
        summary = anyio.run(
            simulate,
            options,
            console,
            state,
            backend=options.backend,
            backend_options=backend_options,
        )
    except KeyboardInterrupt:
        summary = summarize(options, state, interrupted=True)
    console.print(summary.render())
    if console.output_closed:
        return OUTPUT_CLOSED
    if args.json:
        try:
            sys.stdout.write(json.dumps(summary.to_json(), indent=2) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            return OUTPUT_CLOSED
    return summary.exit_code
