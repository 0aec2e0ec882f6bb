"""Running a build: partitions through stages (runner), the Ray scheduler and executors, the whole-run orchestrator, pre-flight, report, terminal, signals."""
