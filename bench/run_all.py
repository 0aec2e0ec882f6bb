"""Run every benchmark in bench/ one after the other and summarise them (`make bench`).

    python bench/run_all.py [--quick] [--only NAME ...] [--skip NAME ...]

Each ``bench_*.py`` runs as its own subprocess (one at a time: the numbers
are throughputs, and concurrent runs would steal each other's cores), with
its output passed through.  Its summary lines -- the lines that state a
target ("(target ...)") or a verdict (PASS / MISSED / BELOW / FAIL), and its
result lines that start with the script's name ("pairs ...:" for
bench_pairs.py) -- are collected, or its last lines when it states no target,
and a table at the end says
per script: ok, MISSED (a target not met) or CRASHED.

Exit status: non-zero when a script crashed; a missed target is reported
loudly but is not an error (benchmarks on a shared machine are noisy).
``--quick`` passes smaller sizes to the scripts that accept them.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
#: known scripts, in running order (cheap ones first); any other bench_*.py runs after them
ORDER = ("bench_matching.py", "bench_crop.py", "bench_write.py", "bench_ingest.py", "bench_dedup.py",
         "bench_report.py", "bench_pairs.py", "bench_generate.py", "bench_adaptive.py", "bench_prior.py",
         "bench_grounding.py", "bench_engine_memory.py", "bench_realsize.py", "bench_scale.py")
#: arguments for --quick, per script; scripts not listed get --quick if they accept it
QUICK_ARGS = {
    "bench_matching.py": ["--n", "10000", "--math-n", "160"],
    "bench_crop.py": ["--seconds", "1"],
    "bench_report.py": ["--rows", "100000"],
    # the preset follows the machine: cpu (0.15B) here, full (8.5B) where CUDA is available
    "bench_realsize.py": ["--quick"],
    # 20,000 prompts through the whole pipeline, then a killed run and its rerun (at most 10 min on 2 quiet cores)
    "bench_scale.py": ["--quick"],
}
_TARGET = re.compile(r"\(target\b", re.IGNORECASE)
_MISSED = re.compile(r"\b(MISSED|BELOW|FAIL|FAILED)\b")
_PASS = re.compile(r"\bPASS(ED)?\b")


def scripts(only: list[str], skip: list[str]) -> list[Path]:
    found = {p.name: p for p in BENCH.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)

    def want(name: str) -> bool:
        stem = name.removesuffix(".py").removeprefix("bench_")
        keys = {name, name.removesuffix(".py"), stem}
        return (not only or keys & set(only)) and not keys & set(skip)
    return [found[n] for n in names if want(n)]


def quick_args(path: Path) -> list[str]:
    if path.name in QUICK_ARGS:
        return QUICK_ARGS[path.name]
    return ["--quick"] if "--quick" in path.read_text() else []


def summary_of(name: str, lines: list[str]) -> list[str]:
    """Lines stating a target or verdict, plus the script's own ``<stem>...:`` result lines."""
    verdict = [ln for ln in lines if _TARGET.search(ln) or _MISSED.search(ln) or _PASS.search(ln)]
    if not verdict:
        return [ln for ln in lines if ln.strip()][-3:]
    stem = re.compile(rf"^{re.escape(name.removesuffix('.py').removeprefix('bench_'))}\b[^:]*:")
    return [ln for ln in lines if ln in verdict or stem.match(ln)]


def run_one(path: Path, extra: list[str]) -> tuple[int, float, list[str]]:
    cmd = [sys.executable, str(path), *extra]
    print(f"\n=== {path.name} {' '.join(extra)}".rstrip() + " ===", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with subprocess.Popen(cmd, cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=None, text=True,
                          bufsize=1, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line.rstrip("\n"))
        rc = proc.wait()
    return rc, time.perf_counter() - t0, lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes where the scripts accept them")
    ap.add_argument("--only", nargs="+", default=[], metavar="NAME", help="e.g. --only pairs generate")
    ap.add_argument("--skip", nargs="+", default=[], metavar="NAME")
    args = ap.parse_args()

    todo = scripts(args.only, args.skip)
    if not todo:
        print("no benchmark scripts selected", file=sys.stderr)
        return 2
    results = []
    for path in todo:
        extra = quick_args(path) if args.quick else []
        rc, secs, lines = run_one(path, extra)
        summary = summary_of(path.name, lines)
        if rc != 0:
            status = f"CRASHED (exit {rc})"
        elif any(_MISSED.search(ln) for ln in summary):
            status = "MISSED"
        else:
            status = "ok"
        results.append((path.name, status, secs, summary))

    width = max(len(r[0]) for r in results)
    print("\n" + "=" * 100)
    print(f"benchmark summary{' (--quick)' if args.quick else ''}")
    print("=" * 100)
    for name, status, secs, summary in results:
        print(f"{name:<{width}}  {status:<16} {secs:7.1f} s")
        for ln in summary or ["(no output)"]:
            flag = "  <-- MISSED" if _MISSED.search(ln) else ""
            print(f"    {ln.strip()}{flag}")
    missed = [r[0] for r in results if r[1] == "MISSED"]
    crashed = [r[0] for r in results if r[1].startswith("CRASHED")]
    print("=" * 100)
    if missed:
        print(f"MISSED targets in: {', '.join(missed)}")
    if crashed:
        print(f"CRASHED: {', '.join(crashed)}")
    if not missed and not crashed:
        print("all benchmarks ran; every stated target met")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
