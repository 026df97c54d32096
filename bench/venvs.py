"""Virtualenvs for benchmarks: each side of a comparison gets its own, so
otel-render's entry points can never leak into the plain OpenTelemetry run.

Venvs live in ``.bench/`` and are rebuilt when their requirement list changes.
The plain side pins the same OpenTelemetry versions the otel-render side
resolved, so the comparison is between configurations, not releases.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"


def ensure_venv(name: str, requirements: list[str], no_deps: list[str] | None = None) -> Path:
    """Create (or reuse) ``.bench/<name>`` with ``requirements``; return its bin dir.

    ``no_deps`` are installed afterwards without their dependencies (a contrib
    package whose release lags one beta behind the rest, say).
    """
    venv = BENCH_DIR / name
    marker = venv / ".requirements"
    wanted = json.dumps(sorted(requirements) + sorted(no_deps or []))
    if marker.exists() and marker.read_text() == wanted:
        return venv / "bin"
    BENCH_DIR.mkdir(exist_ok=True)
    print(f"[bench] creating {venv.relative_to(ROOT)} ({len(requirements)} requirements)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
        check=True,
        cwd=ROOT,
    )
    if no_deps:
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", *no_deps], check=True, cwd=ROOT
        )
    marker.write_text(wanted)
    return venv / "bin"


def installed_version(distribution: str) -> str:
    """The version of ``distribution`` in the interpreter running the benchmarks."""
    from importlib.metadata import version  # pylint: disable=import-outside-toplevel

    return version(distribution)


def plain_otel_requirements(*extra: str) -> list[str]:
    """Plain OpenTelemetry (the official distro) at the versions otel-render uses."""
    sdk = installed_version("opentelemetry-sdk")
    contrib = installed_version("opentelemetry-instrumentation")
    return [
        f"opentelemetry-sdk=={sdk}",
        f"opentelemetry-exporter-otlp=={sdk}",
        f"opentelemetry-distro=={contrib}",
        f"opentelemetry-instrumentation=={contrib}",
        *extra,
    ]


def otel_render_requirements(*extra: str) -> list[str]:
    return [f"-e{ROOT}", *extra]


def fingerprint() -> str:
    """Changes when the package's dependency list changes (rebuilds the venvs)."""
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
