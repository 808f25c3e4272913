"""runcue-sim: run fake workloads through the real runcue scheduler.

Use the ``runcue-sim`` command (or ``python -m runcue_sim``); :func:`runcue_sim.cli.main`
runs it in-process and returns the exit code.
"""
