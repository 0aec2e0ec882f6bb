"""Where the grounding stage's wall time goes, per benchmark variant (``bench_grounding.py --breakdown``).

The driver's own parts are timed by wrapping the functions that do them: reading a
partition, building its requests (``prepare`` and, when it returns an iterator, every
draw from it), adding a request to vLLM (``submit``; a rescoring's ``enqueue`` is apart),
the engine steps (the driver waiting for and collecting the engine core's outputs),
``finish`` and the commit.  The engine core runs in its own process, so its work overlaps
these parts; what the driver spends waiting on it is the ``step`` part.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict

PARTS = ("read", "prepare", "add", "step", "rescore", "finish", "commit")


class Breakdown:
    """Installs the timers at once; ``start(variant)`` opens a new run's tally."""

    def __init__(self, engine) -> None:
        import pipeline.engine.admission as admission
        import pipeline.run.runner as runner
        from stages.grounding import GroundingStage

        self.runs: dict[str, list[dict]] = defaultdict(list)
        self.current: dict = defaultdict(float)
        timed = self._timed
        runner._read_rows = timed("read", runner._read_rows)
        runner._commit = timed("commit", runner._commit)
        admission.submit = timed("add", admission.submit)
        admission.rescore_uncached = timed("rescore", admission.rescore_uncached)
        llm_engine = engine.llm.llm_engine
        llm_engine.step = timed("step", llm_engine.step)
        GroundingStage.finish = self._timed_gen("finish", GroundingStage.finish)
        prepare = GroundingStage.prepare
        draws = self._draws

        def timed_prepare(stage, rows, ctx):
            state, requests = timed("prepare", prepare)(stage, rows, ctx)
            return state, draws(requests)

        GroundingStage.prepare = timed_prepare

    def _timed(self, part: str, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.current[part] += time.perf_counter() - t
        return wrapper

    def _timed_gen(self, part: str, fn):
        """A generator function whose every resumption is timed (``finish``)."""
        def wrapper(*a, **k):
            it = iter(fn(*a, **k))
            while True:
                t = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    return
                finally:
                    self.current[part] += time.perf_counter() - t
                yield item
        return wrapper

    def _draws(self, requests):
        if isinstance(requests, list):
            return requests
        return self._timed_gen("prepare", lambda: requests)()

    def start(self, variant: str) -> None:
        self.current = defaultdict(float)
        self.runs[variant].append(self.current)

    def report(self, times: dict[str, list[float]]) -> None:
        """One line per variant: the median of each part over its rounds, and the rest."""
        print("breakdown (driver wall time per part, medians over rounds, s):")
        print("  " + "variant".ljust(10) + "".join(p.rjust(9) for p in (*PARTS, "other", "total")))
        for variant, runs in self.runs.items():
            med = {p: statistics.median(r.get(p, 0.0) for r in runs) for p in PARTS}
            total = statistics.median(times[variant])
            other = total - sum(med.values())
            print("  " + variant.ljust(10) + "".join(f"{med[p]:9.3f}" for p in PARTS) + f"{other:9.3f}{total:9.3f}")
