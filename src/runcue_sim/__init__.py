"""runcue-sim: run fake workloads through the real runcue scheduler."""
