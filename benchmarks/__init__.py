"""runcue's benchmark suite: runcue against the floor AnyIO sets and its peers.

Run ``python -m benchmarks`` (or ``nox -s bench``); see ``benchmarks/__main__.py`` for the
options and ``benchmarks/RESULTS.md`` for the last results. Each scenario is its own module
(``b1_throughput`` ... ``b10_shared_store``) over the shared ``_harness``.
"""
