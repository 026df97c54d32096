"""Per-statement cost of the SQLAlchemy instrumentation: an uninstrumented
engine, plain OpenTelemetry's contrib instrumentation and otel-render, measured
in the same run.

Every side runs ``workload_db.py`` in a fresh process, from a temporary
directory (so no egg-info leaks entry points), interleaved run by run so load
on the machine hits every side alike. All sides use the same SQLAlchemy 2.0
release (the newest series the contrib instrumentation accepts) and the same
SDK set-up; ``bare`` runs in the plain virtualenv with nothing instrumented.

Two databases: SQLite in memory (the instrumentation's own cost is most of
what is measured) and a throwaway PostgreSQL on loopback, when its binaries
are installed. Two workloads: statements on one connection, and a checkout per
statement (what a web request does). otel-render's default pre-ping adds one
round trip per PostgreSQL checkout; ``otel-render (no pre-ping)`` shows the
instrumentation alone (on SQLite, where no pre-ping is applied, the two
otel-render sides are the same configuration: their difference is the noise).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from venvs import ROOT, ensure_venv, fingerprint, installed_version, otel_render_requirements, plain_otel_requirements

WORKLOAD = Path(__file__).with_name("workload_db.py")
RUNS = int(os.environ.get("BENCH_DB_RUNS", "3"))
SQLALCHEMY = "sqlalchemy~=2.0.0"


def postgres_cluster():
    sys.path.insert(0, str(ROOT / "tests"))
    from support.postgres import PostgresCluster  # pylint: disable=import-outside-toplevel

    if not PostgresCluster.available():
        return None
    return PostgresCluster().start()


def main() -> dict[str, float]:
    contrib = installed_version("opentelemetry-instrumentation")
    plain_bin = ensure_venv(
        f"plain-otel-db-{fingerprint()}",
        plain_otel_requirements(f"opentelemetry-instrumentation-sqlalchemy=={contrib}", SQLALCHEMY, "psycopg2-binary"),
    )
    ours_bin = ensure_venv(f"otel-render-db-{fingerprint()}", otel_render_requirements(SQLALCHEMY, "psycopg2-binary"))
    cluster = postgres_cluster()
    urls = ["sqlite://"] + ([cluster.url(driver="psycopg2")] if cluster is not None else [])
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    sides = {
        "bare": ([str(plain_bin / "python"), str(WORKLOAD), "bare"], {}),
        "contrib": ([str(plain_bin / "python"), str(WORKLOAD), "contrib"], {}),
        "otel-render": ([str(ours_bin / "python"), str(WORKLOAD), "otel-render"], {}),
        "otel-render (no pre-ping)": (
            [str(ours_bin / "python"), str(WORKLOAD), "otel-render"],
            {"OTEL_RENDER_DB_PRE_PING": "false"},
        ),
    }
    samples: dict[str, list[dict]] = {name: [] for name in sides}
    try:
        with tempfile.TemporaryDirectory() as cwd:
            for _ in range(RUNS):
                for name, (command, extra_env) in sides.items():
                    output = subprocess.run(
                        [*command, *urls], env={**base_env, **extra_env}, cwd=cwd, check=True,
                        capture_output=True, text=True, timeout=600,
                    ).stdout  # fmt: skip
                    samples[name].append(json.loads(output.strip().splitlines()[-1]))
    finally:
        if cluster is not None:
            cluster.cleanup()

    figures: dict[str, float] = {}
    print(f"\n== per-statement cost of the SQLAlchemy instrumentation (median of {RUNS} runs, microseconds)")
    for database in samples["bare"][0]:
        for workload in ("statement_us", "checkout_and_statement_us"):
            medians = {name: statistics.median(run[database][workload] for run in runs) for name, runs in samples.items()}
            bare = medians["bare"]
            label = f"{database}: {'one statement' if workload == 'statement_us' else 'checkout + one statement'}"
            print(f"  {label}")
            for name, value in medians.items():
                overhead = value - bare
                shown = "" if name == "bare" else f"   +{overhead:6.1f} us ({value / bare:4.2f}x bare)"
                print(f"    {name:28s} {value:8.1f} us{shown}")
                figures[f"{database}.{workload}[{name}]"] = value
            contrib_overhead = medians["contrib"] - bare
            ours_overhead = medians["otel-render (no pre-ping)"] - bare
            if contrib_overhead > 0:
                ratio = ours_overhead / contrib_overhead
                figures[f"{database}.{workload}.overhead_ratio"] = ratio
                print(f"    otel-render overhead / contrib overhead (no pre-ping): {ratio:.2f}")
    return figures


if __name__ == "__main__":
    main()
