"""``make bench``: every benchmark, each side by side with plain OpenTelemetry
in the same run, reported as ratios. Pass names to run only some:
``make bench BENCH_ARGS=shutdown_exit``.

Benchmarks are programs, not tests: they never fail on a number, because these
machines are shared and noisy. Each module in ``BENCHMARKS`` has a ``main()``
that prints its table and returns its figures.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = ["shutdown_exit", "wsgi_overhead", "db_overhead", "scheduler_jobs", "health_latency"]


def main(argv: list[str]) -> int:
    chosen = argv or BENCHMARKS
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    results = {}
    for name in chosen:
        results[name] = importlib.import_module(name).main()
    print("\n" + json.dumps(results, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
