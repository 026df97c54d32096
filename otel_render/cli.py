"""``otel-render doctor``: what otel-render will do in this environment, and
whether the backend can be reached.

Each check is a function returning :class:`Finding` objects (plain data, easy
to test); :func:`main` prints them and picks the exit code:

- 0: usable (telemetry goes where it should, or stays local by choice);
- 1: a problem to fix (bad configuration, unreachable or refusing backend);
- 2: otel-render will not be active (another distro or configurator wins, or
  ``OTEL_SDK_DISABLED=true``).

Secrets are masked in every line. The connectivity check sends one empty OTLP
request per endpoint with a 3 s timeout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.util._importlib_metadata import entry_points

from otel_render.backends import PROTOCOL_HTTP, plan_export
from otel_render.config import Settings, declared_variables, parse_process_environment
from otel_render.db import sizing
from otel_render.distro import CONFIGURATOR_NAME, DISTRO_NAME, SUPERSEDED_CONTRIB_INSTRUMENTORS, build_resource
from otel_render.platform import cpu_limit, detect_platform, instance_memory_in_use, memory_limit
from otel_render.scrub import default as scrubber
from otel_render.version import __version__

OK, WARN, FAIL, INACTIVE = "ok", "warn", "fail", "inactive"
CONNECT_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    check: str
    level: str  # ok | warn | fail | inactive
    message: str


def check_activation(settings: Settings) -> list[Finding]:
    """Which distro and configurator ``opentelemetry-instrument`` will load."""
    findings = []
    if settings.sdk_disabled():
        findings.append(Finding("activation", INACTIVE, "OTEL_SDK_DISABLED=true: otel-render does nothing"))
    for group, wanted, variable in (
        ("opentelemetry_distro", DISTRO_NAME, "OTEL_PYTHON_DISTRO"),
        ("opentelemetry_configurator", CONFIGURATOR_NAME, "OTEL_PYTHON_CONFIGURATOR"),
    ):
        names = [entry_point.name for entry_point in entry_points(group=group)]
        chosen_name = settings.standard(variable)
        # The launcher takes the named one, or else the first it finds.
        winner = chosen_name if chosen_name in names else (names[0] if names and chosen_name is None else None)
        kind = group.removeprefix("opentelemetry_")
        if winner == wanted:
            pinned = f" (pinned by {variable})" if chosen_name else ""
            others = [name for name in names if name != wanted]
            message = f"{kind} {winner!r} will load{pinned}"
            if others and not chosen_name:
                message += f"; {', '.join(others)} also installed: set {variable}={wanted} to be sure"
                findings.append(Finding("activation", WARN, message))
            else:
                findings.append(Finding("activation", OK, message))
        elif winner is None and chosen_name is not None:
            findings.append(
                Finding("activation", INACTIVE, f"{variable}={chosen_name!r} names no installed {kind} ({', '.join(names)})")
            )
        else:
            findings.append(
                Finding("activation", INACTIVE, f"{kind} {winner!r} will load, not otel-render: set {variable}={wanted}")
            )
    return findings


def check_configuration(settings: Settings, problems: Sequence[str]) -> list[Finding]:
    """Settings that did not parse, and export rules that could not be followed."""
    plan = plan_export(settings)
    findings = [Finding("configuration", FAIL, problem) for problem in [*problems, *plan.problems]]
    if not findings:
        findings.append(Finding("configuration", OK, "all OTEL_RENDER_* variables are valid"))
    return findings


def check_platform(settings: Settings) -> list[Finding]:
    resource = build_resource(settings)
    limit = memory_limit(settings.environ, settings.memory_limit_mb)
    in_use = instance_memory_in_use()
    cpus = cpu_limit(settings.environ)
    shown = {key: value for key, value in resource.attributes.items() if not key.startswith("telemetry.sdk")}
    usage = f"{in_use / 2**20:.0f} MiB in use, " if in_use is not None else ""
    return [
        Finding("platform", OK, f"platform: {detect_platform(settings.environ)}"),
        Finding("platform", OK, f"resource: {json.dumps(shown, sort_keys=True, default=str)}"),
        Finding("platform", OK, f"memory: {usage}limit {limit.bytes / 2**20:.0f} MiB ({limit.source})"),
        Finding("platform", OK, f"cpu: {cpus.cpus:g} ({cpus.source})"),
    ]


def check_instrumentations(settings: Settings) -> list[Finding]:
    """Which instrumentations the launcher will load, and why not the others."""
    from opentelemetry.instrumentation.dependencies import (  # pylint: disable=import-outside-toplevel
        get_dependency_conflicts,
        get_dist_dependency_conflicts,
    )

    disabled = {name.strip() for name in (settings.standard("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS") or "").split(",")}
    findings = []
    for entry_point in entry_points(group="opentelemetry_instrumentor"):
        ours = entry_point.value.startswith("otel_render")
        label = f"{entry_point.name} ({'otel-render' if ours else 'contrib'})"
        if "*" in disabled or entry_point.name in disabled:
            findings.append(Finding("instrumentation", OK, f"{label}: disabled by OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"))
            continue
        if not ours and entry_point.name in SUPERSEDED_CONTRIB_INSTRUMENTORS:
            findings.append(Finding("instrumentation", OK, f"{label}: skipped, otel-render instruments it"))
            continue
        try:
            if ours:
                conflict = get_dependency_conflicts(entry_point.load()().instrumentation_dependencies())
            else:
                conflict = get_dist_dependency_conflicts(entry_point.dist) if entry_point.dist else None
        except Exception as exc:  # pylint: disable=broad-except
            findings.append(Finding("instrumentation", WARN, f"{label}: cannot be loaded ({exc})"))
            continue
        if conflict is None:
            findings.append(Finding("instrumentation", OK, f"{label}: will load"))
        else:
            level = WARN if conflict.found else OK
            findings.append(Finding("instrumentation", level, f"{label}: will not load ({conflict})"))
    return findings


def check_connectivity(settings: Settings, timeout_s: float = CONNECT_TIMEOUT_S) -> list[Finding]:
    """One empty OTLP request per distinct endpoint: reachable, and credentials accepted."""
    plan = plan_export(settings)
    if not plan.sends_over_network:
        return [Finding("connectivity", OK, "no backend configured: telemetry stays local (see /api/metrics)")]
    findings = []
    seen = set()
    for signal, signal_plan in plan.signals.items():
        if not signal_plan.uses_otlp:
            continue
        if signal_plan.protocol != PROTOCOL_HTTP:
            findings.append(Finding("connectivity", WARN, f"{signal}: grpc endpoints are not probed"))
            continue
        endpoint = signal_plan.endpoint or f"http://localhost:4318/v1/{signal}"
        if endpoint in seen:
            continue
        seen.add(endpoint)
        findings.append(_probe(signal, endpoint, dict(signal_plan.headers or {}), timeout_s))
    return findings


def _probe(signal: str, endpoint: str, headers: dict[str, str], timeout_s: float) -> Finding:
    parts = urlsplit(endpoint)
    connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    kwargs: dict[str, Any] = {"timeout": timeout_s}
    if parts.scheme == "https":
        kwargs["context"] = ssl.create_default_context()
    started = time.monotonic()
    try:
        connection = connection_class(parts.hostname, parts.port, **kwargs)
        try:
            connection.request(
                "POST",
                parts.path or "/",
                body=b"",
                headers={**headers, "content-type": "application/x-protobuf"},
            )
            status = connection.getresponse().status
        finally:
            connection.close()
    except (OSError, http.client.HTTPException) as exc:
        return Finding("connectivity", FAIL, f"{signal}: {endpoint} unreachable ({type(exc).__name__}: {exc})")
    elapsed_ms = (time.monotonic() - started) * 1000
    if 200 <= status < 300:
        return Finding("connectivity", OK, f"{signal}: {endpoint} answered {status} in {elapsed_ms:.0f} ms")
    if status in (401, 403):
        return Finding("connectivity", FAIL, f"{signal}: {endpoint} refused the credentials ({status})")
    return Finding("connectivity", WARN, f"{signal}: {endpoint} answered {status} in {elapsed_ms:.0f} ms")


@dataclass(frozen=True)
class PoolOptions:
    """What doctor is told about the app's pools (see :mod:`otel_render.db.sizing`)."""

    database_url: str | None = None
    workers: int | None = None
    instances: int = 1
    pool_size: int = sizing.DEFAULT_POOL_SIZE
    max_overflow: int = sizing.DEFAULT_MAX_OVERFLOW


def check_database_pool(settings: Settings, options: PoolOptions, *, connect: bool = True) -> list[Finding]:
    """Warn when instances x workers x (pool_size + max_overflow) exceeds ``max_connections``."""
    url = options.database_url or settings.standard("DATABASE_URL")
    workers, source = sizing.workers_from(settings.environ, options.workers)
    demand = sizing.PoolDemand(options.instances, workers, source, options.pool_size, options.max_overflow)
    if not url:
        return [Finding("database", OK, f"pool sizing: {demand.describe()}; no DATABASE_URL to compare with")]
    limits = None
    findings = []
    if connect:
        try:
            limits = sizing.read_server_limits(url)
        except Exception as exc:  # pylint: disable=broad-except
            reason = scrubber.text(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
            findings.append(
                Finding("database", WARN, f"{sizing.shown_url(url)}: cannot read max_connections ({type(exc).__name__}: {reason})")
            )
    fits, message = sizing.advice(demand, limits)
    findings.append(Finding("database", OK if fits else WARN, f"{sizing.shown_url(url)}: {message}"))
    return findings


def doctor(
    settings: Settings, problems: Sequence[str], *, connect: bool = True, pools: PoolOptions | None = None
) -> list[Finding]:
    findings = [
        *check_activation(settings),
        *check_configuration(settings, problems),
        *check_platform(settings),
        *check_instrumentations(settings),
    ]
    findings += [
        Finding("export", OK, f"export: {json.dumps(plan_export(settings).describe(), sort_keys=True)}"),
    ]
    if connect:
        findings += check_connectivity(settings)
    findings += check_database_pool(settings, pools or PoolOptions(), connect=connect)
    return findings


def exit_code(findings: Sequence[Finding]) -> int:
    levels = {finding.level for finding in findings}
    if INACTIVE in levels:
        return 2
    if FAIL in levels:
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-render", description=f"otel-render {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    doctor_parser = commands.add_parser("doctor", help="check the configuration and the backend")
    doctor_parser.add_argument("--json", action="store_true", help="print findings as JSON")
    doctor_parser.add_argument("--no-connect", action="store_true", help="skip the connectivity check")
    pools = doctor_parser.add_argument_group("database pool sizing")
    pools.add_argument("--database-url", help="database to compare with (default: DATABASE_URL)")
    pools.add_argument("--workers", type=int, help="gunicorn workers per instance (default: WEB_CONCURRENCY, GUNICORN_CMD_ARGS, 1)")
    pools.add_argument("--instances", type=int, default=1, help="instances of the service (default: 1)")
    pools.add_argument("--pool-size", type=int, default=sizing.DEFAULT_POOL_SIZE, help="pool_size of the app's engine (default: 5)")
    pools.add_argument("--max-overflow", type=int, default=sizing.DEFAULT_MAX_OVERFLOW, help="max_overflow (default: 10)")
    commands.add_parser("variables", help="list every variable otel-render reads")
    args = parser.parse_args(argv)

    if args.command == "variables":
        for variable in declared_variables():
            default = "" if variable.default in ("", ()) else variable.default
            print(f"{variable.env}={default}\t{variable.doc}")
        return 0

    settings, problems = parse_process_environment()
    pools = PoolOptions(args.database_url, args.workers, args.instances, args.pool_size, args.max_overflow)
    findings = doctor(settings, [problem.message for problem in problems], connect=not args.no_connect, pools=pools)
    code = exit_code(findings)
    if args.json:
        print(json.dumps({"exit_code": code, "findings": [asdict(f) for f in findings]}, indent=2))
    else:
        marks = {OK: "  ok ", WARN: "warn ", FAIL: "FAIL ", INACTIVE: "OFF  "}
        for finding in findings:
            print(f"{marks[finding.level]} [{finding.check}] {finding.message}")
        verdict = {0: "usable", 1: "needs attention", 2: "otel-render will not be active"}[code]
        print(f"\notel-render {__version__}: {verdict}")
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
