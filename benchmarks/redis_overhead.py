"""Shared (RedisStore) vs in-process dispatch on its own: row B10 of the suite, standalone.

``python -m benchmarks.redis_overhead [--url redis://...] [--items 2000] [--repeat 7]``

Runs B10 (:mod:`benchmarks.b10_shared_store`) on asyncio and trio and prints its rows. Without
``--url`` it starts a private ``redis-server`` on a free loopback port and stops it at the end;
with ``--url`` it measures against that server (a remote one shows the network's cost). The
exit status is 0 when every backend adds at most 2 ms per item, 1 otherwise, 2 when Redis
cannot be used. ``python -m benchmarks --only B10`` runs the same as part of the suite.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ._harness import BACKENDS, Row, Settings, quiet_runcue_logger, render_table
from .b10_shared_store import ITEMS, RedisUnavailable, measure, private_redis, unavailable


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the rows; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.redis_overhead", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--url", help="a running Redis server (default: start a private one)")
    parser.add_argument("--items", type=int, default=ITEMS, help=f"default: {ITEMS}")
    parser.add_argument("--repeat", type=int, default=7, help="rounds per backend (default: 7)")
    options = parser.parse_args(argv)
    if options.items < 1 or options.repeat < 1:
        parser.error("--items and --repeat must be >= 1")
    reason = unavailable()
    if reason is not None and (options.url is None or "library" in reason):
        print(reason, file=sys.stderr)
        return 2
    quiet_runcue_logger()
    settings = Settings(repeat=options.repeat)
    rows: list[Row] = []
    try:
        with private_redis() if options.url is None else _given(options.url) as url:
            for backend in BACKENDS:
                print(f"B10 [{backend}] against {url}", file=sys.stderr, flush=True)
                rows += measure(backend, settings, url, options.items)
    except RedisUnavailable as missing:
        print(missing, file=sys.stderr)
        return 2
    print(render_table(rows))
    return 0 if all(row.ok is not False for row in rows) else 1  # (None: informative)


if __name__ == "__main__":
    sys.exit(main())
