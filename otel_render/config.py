"""Settings: every ``OTEL_RENDER_*`` variable (and the few vendor variables we
read, such as ``HONEYCOMB_API_KEY``) declared once, parsed once, validated once.

Each setting is a field of the frozen :class:`Settings` dataclass, declared with
:func:`_var`, which records the variable name, its parser, default, a one-line
description and an example. ``docs/configuration.md`` is checked against these
declarations by ``tests/test_config.py``.

Telemetry misconfiguration must never break the host app: a value that does not
parse becomes a :class:`ConfigProblem` (one line naming the variable and the
accepted values), the default is used, and :func:`get_settings` logs each problem
once. Standard ``OTEL_*`` variables are not parsed here; they keep their standard
meaning and are read by the SDK, or through :attr:`Settings.environ` where we
need to know whether the user set them.

Tests build a ``Settings`` from a plain dict with :meth:`Settings.from_environ`
and install it with :func:`use_settings`; nothing else in the package reads
``os.environ``.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Any

_logger = logging.getLogger("otel_render.config")

# --------------------------------------------------------------------------
# Parsers: each turns the raw string into a value or raises ValueError whose
# text says what is accepted. ``accepted`` is shown in docs and messages.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Parser:
    """Turns a raw environment string into a typed value."""

    accepted: str
    convert: Callable[[str], Any]

    def __call__(self, raw: str) -> Any:
        return self.convert(raw)


_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError


BOOL = Parser("true or false", _parse_bool)


def number(kind: type, low: float, high: float, unit: str = "") -> Parser:
    """A whole (``int``) or decimal (``float``) number within [low, high]."""
    noun = "a whole number" if kind is int else "a number"
    suffix = f" {unit}" if unit else ""
    accepted = f"{noun} from {_fmt(low)} to {_fmt(high)}{suffix}"

    def convert(raw: str) -> Any:
        value = kind(raw.strip())
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
        if not low <= value <= high:
            raise ValueError
        return value

    return Parser(accepted, convert)


def choice(*options: str) -> Parser:
    """One of a fixed set of lower-case words."""

    def convert(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError
        return value

    return Parser("one of " + ", ".join(options), convert)


def _parse_text(raw: str) -> str:
    # A value that would be sent in a header or written to a log must not be
    # able to inject a line: refuse control characters outright.
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in raw):
        raise ValueError
    return raw.strip()


TEXT = Parser("text without control characters (no newlines)", _parse_text)


def _parse_names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in _parse_text(raw).split(",") if part.strip())
    for name in names:
        if not all(ch.isalnum() or ch in "-_." for ch in name):
            raise ValueError
    return names


NAMES = Parser("a comma-separated list of names (letters, digits, '-', '_', '.')", _parse_names)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """What the docs and the parser need to know about one setting."""

    env: str
    parser: Parser
    default: Any
    doc: str
    example: str
    secret: bool = False
    section: str = ""


def _var(
    env: str,
    parser: Parser,
    default: Any,
    doc: str,
    example: str,
    *,
    secret: bool = False,
    section: str,
) -> Any:
    variable = Variable(env, parser, default, doc, example, secret, section)
    return field(default=default, metadata={"variable": variable})


_EXPORT = "Export and backends"
_PLATFORM = "Platform and resources"
_LIFECYCLE = "Process lifecycle"
_WEB = "Web requests"
_DB = "Database"
_SCHEDULER = "Scheduler"
_ENDPOINTS = "Local endpoints and health"
_RECOVERY = "Recovery"


@dataclass(frozen=True)
class Settings:
    """The package's configuration, immutable once parsed.

    ``environ`` is the mapping the settings were parsed from; code that needs a
    standard ``OTEL_*`` or ``RENDER_*`` variable reads it here, so that tests can
    hand the whole package a fake environment.
    """

    # --- Export and backends -------------------------------------------------
    backend: str = _var(
        "OTEL_RENDER_BACKEND",
        choice("auto", "otlp", "grafana", "honeycomb", "none"),
        "auto",
        "Where telemetry goes. `auto` picks Grafana Cloud or Honeycomb when their "
        "variables are set, a collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, "
        "and otherwise keeps telemetry local (nothing is sent over the network).",
        "grafana",
        section=_EXPORT,
    )
    grafana_endpoint: str = _var(
        "OTEL_RENDER_GRAFANA_ENDPOINT",
        TEXT,
        "",
        "Grafana Cloud OTLP gateway URL, as shown on the stack's OpenTelemetry page.",
        "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp",
        section=_EXPORT,
    )
    grafana_instance_id: str = _var(
        "OTEL_RENDER_GRAFANA_INSTANCE_ID",
        TEXT,
        "",
        "Grafana Cloud stack instance id (the Basic auth user).",
        "123456",
        section=_EXPORT,
    )
    grafana_token: str = _var(
        "OTEL_RENDER_GRAFANA_TOKEN",
        TEXT,
        "",
        "Grafana Cloud access policy token with the metrics, logs and traces write scopes "
        "(the Basic auth password).",
        "glc_eyJv...",
        secret=True,
        section=_EXPORT,
    )
    honeycomb_api_key: str = _var(
        "HONEYCOMB_API_KEY",
        TEXT,
        "",
        "Honeycomb ingest key; selects the Honeycomb backend under `auto`.",
        "hcaik_01j...",
        secret=True,
        section=_EXPORT,
    )
    honeycomb_dataset: str = _var(
        "HONEYCOMB_DATASET",
        TEXT,
        "",
        "Honeycomb dataset for metrics (traces go to the dataset named after `service.name`). "
        "Empty: the service name followed by `-metrics`.",
        "my-app-metrics",
        section=_EXPORT,
    )
    honeycomb_region: str = _var(
        "OTEL_RENDER_HONEYCOMB_REGION",
        choice("us", "eu"),
        "us",
        "Honeycomb region: `us` (api.honeycomb.io) or `eu` (api.eu1.honeycomb.io).",
        "eu",
        section=_EXPORT,
    )
    export_timeout_s: float = _var(
        "OTEL_RENDER_EXPORT_TIMEOUT_S",
        number(float, 0.5, 60, "seconds"),
        5.0,
        "Timeout of one OTLP export request when `OTEL_EXPORTER_OTLP_TIMEOUT` is not set "
        "(the SDK's own default is 10 s).",
        "5",
        section=_EXPORT,
    )

    # --- Platform and resources ----------------------------------------------
    memory_limit_mb: int = _var(
        "OTEL_RENDER_MEMORY_LIMIT_MB",
        number(int, 0, 1024 * 1024, "MiB"),
        0,
        "Memory limit of the instance. 0: detect it (cgroup, then Render plan, then 512 MiB "
        "on Render, then physical memory).",
        "512",
        section=_PLATFORM,
    )
    memory_source: str = _var(
        "OTEL_RENDER_MEMORY_SOURCE",
        choice("auto", "cgroup", "processes"),
        "auto",
        "Where the instance's memory in use is read: `cgroup` (the container's usage without inactive "
        "file cache), `processes` (the app's process tree by PSS, shared pages counted once), or `auto`: "
        "the cgroup on Render and wherever the cgroup has a memory limit, else the process tree.",
        "cgroup",
        section=_PLATFORM,
    )
    instance_dir: str = _var(
        "OTEL_RENDER_INSTANCE_DIR",
        TEXT,
        "",
        "Where the processes of one instance share files (worker snapshots, the scheduler's leader "
        "lock), in a private subdirectory per run of the gunicorn master. Empty: /dev/shm/otel-render-<uid> "
        "when /dev/shm exists, else the same under the temp directory.",
        "/dev/shm/otel-render",
        section=_PLATFORM,
    )

    # --- Process lifecycle ---------------------------------------------------
    shutdown_timeout_s: float = _var(
        "OTEL_RENDER_SHUTDOWN_TIMEOUT_S",
        number(float, 0.1, 25, "seconds"),
        3.0,
        "Total time the final flush of spans, metrics and logs may take when a process exits; "
        "past it the process exits and the rest is dropped.",
        "3",
        section=_LIFECYCLE,
    )

    # --- Web requests --------------------------------------------------------
    request_id_headers: tuple[str, ...] = _var(
        "OTEL_RENDER_REQUEST_ID_HEADERS",
        NAMES,
        ("X-Request-ID", "X-Correlation-ID"),
        "Request headers that carry a correlation id, in order of preference. A valid id "
        "(token characters, at most 128) is kept as `correlation.id` and echoed as `X-Request-ID`.",
        "X-Request-ID,X-Correlation-ID",
        section=_WEB,
    )
    adopt_request_id: bool = _var(
        "OTEL_RENDER_ADOPT_REQUEST_ID",
        BOOL,
        True,
        "Without an inbound `traceparent`, a request id that is a UUID or 32 hex digits becomes "
        "the trace id itself. Clients that reuse ids then merge their traces.",
        "false",
        section=_WEB,
    )
    response_trace_header: str = _var(
        "OTEL_RENDER_RESPONSE_TRACE_HEADER",
        choice("traceresponse", "server-timing", "none"),
        "traceresponse",
        "How each response names its trace besides `X-Request-ID`: a W3C `traceresponse` header, "
        "`Server-Timing: traceparent;desc=...` (readable by browser scripts), or nothing.",
        "server-timing",
        section=_WEB,
    )
    request_timeout_s: float = _var(
        "OTEL_RENDER_REQUEST_TIMEOUT_S",
        number(float, 0.1, 3600, "seconds"),
        30.0,
        "A request running longer is reported once with its thread's stack. Under gunicorn at most "
        "80% of the worker `--timeout`, so it fires before the arbiter kills the worker.",
        "30",
        section=_WEB,
    )
    capture_client_ip: bool = _var(
        "OTEL_RENDER_CAPTURE_CLIENT_IP",
        BOOL,
        False,
        "Record the client address (`client.address`, error contexts): first `X-Forwarded-For` hop, "
        "else the peer address.",
        "true",
        section=_WEB,
    )
    metric_cardinality_limit: int = _var(
        "OTEL_RENDER_METRIC_CARDINALITY_LIMIT",
        number(int, 10, 100_000),
        500,
        "Most attribute sets one instrument keeps (the SDK's cardinality limit, on every reader); "
        "further ones go to one series marked `otel.metric.overflow=true`.",
        "500",
        section=_WEB,
    )
    log_format: str = _var(
        "OTEL_RENDER_LOG_FORMAT",
        choice("text", "json", "none"),
        "text",
        "Console log lines: `text` appends trace, span and correlation ids to lines of the standard "
        "formatter; `json` writes one JSON object per line; `none` leaves them as they are.",
        "json",
        section=_WEB,
    )
    scrub_keys: tuple[str, ...] = _var(
        "OTEL_RENDER_SCRUB_KEYS",
        NAMES,
        (),
        "More key fragments whose values are redacted everywhere (headers, query strings, logs), "
        "besides the built-in ones.",
        "ssn,card_number",
        section=_WEB,
    )

    # --- Database ------------------------------------------------------------
    db_timeout_s: float = _var(
        "OTEL_RENDER_DB_TIMEOUT_S",
        number(float, 0, 3600, "seconds"),
        30.0,
        "Deadline of one SQL statement: set server-side (PostgreSQL `statement_timeout`, MySQL/MariaDB) "
        "and enforced client-side (the connection is cut shortly after it). Under gunicorn it stays below "
        "80 % of the worker timeout. 0 turns statement deadlines off.",
        "30",
        section=_DB,
    )
    db_connect_timeout_s: float = _var(
        "OTEL_RENDER_DB_CONNECT_TIMEOUT_S",
        number(float, 0, 300, "seconds"),
        5.0,
        "Connect timeout given to the driver (libpq `connect_timeout`, PyMySQL, asyncpg) unless the app sets "
        "its own; also the deadline of the pre-ping. 0 leaves the driver's default.",
        "5",
        section=_DB,
    )
    db_pre_ping: bool = _var(
        "OTEL_RENDER_DB_PRE_PING",
        BOOL,
        True,
        "Test each pooled connection on checkout (`pool_pre_ping`) unless the app passed `pool_pre_ping` "
        "itself, so that connections dropped by a database restart are replaced before a request uses them.",
        "false",
        section=_DB,
    )
    db_server_timeout: bool = _var(
        "OTEL_RENDER_DB_SERVER_TIMEOUT",
        BOOL,
        True,
        "Set the server-side statement timeout on each new connection (one `SET` per connection). "
        "Switch off when a connection pooler in front of the database does not keep session settings.",
        "false",
        section=_DB,
    )
    db_keepalives: bool = _var(
        "OTEL_RENDER_DB_KEEPALIVES",
        BOOL,
        True,
        "TCP keepalives (first probe after 30 s idle) and libpq `tcp_user_timeout` on new PostgreSQL "
        "connections, unless the app sets them, so that a lost network path ends the connection.",
        "false",
        section=_DB,
    )
    db_circuit_breaker: bool = _var(
        "OTEL_RENDER_DB_CIRCUIT_BREAKER",
        BOOL,
        True,
        "Fail checkouts at once while the database is unreachable (after a connection failure or a "
        "deadline), instead of letting every request wait for its own timeout.",
        "false",
        section=_DB,
    )
    db_half_open_s: float = _var(
        "OTEL_RENDER_DB_HALF_OPEN_S",
        number(float, 0.1, 60, "seconds"),
        1.0,
        "While the circuit is open, one trial checkout is let through this often; the first that "
        "succeeds closes it.",
        "1",
        section=_DB,
    )
    db_probe_interval_s: float = _var(
        "OTEL_RENDER_DB_PROBE_INTERVAL_S",
        number(float, 0, 3600, "seconds"),
        30.0,
        "How often the background probe checks a database that is up (a database that is down is probed "
        "with backoff: at most 1, 2, 4, 8, 16 s apart, fully jittered). 0: probe only while it is down.",
        "30",
        section=_DB,
    )
    db_query_text: bool = _var(
        "OTEL_RENDER_DB_QUERY_TEXT",
        BOOL,
        True,
        "Record `db.query.text` on statement spans, with every literal replaced by `?` and comments "
        "removed (bound values are never recorded).",
        "false",
        section=_DB,
    )
    db_fork_safety: bool = _var(
        "OTEL_RENDER_DB_FORK_SAFETY",
        BOOL,
        True,
        "In each forked gunicorn worker, drop the connections inherited from the master without closing "
        "them (`engine.dispose(close=False)`), and close the master's own before it forks.",
        "false",
        section=_DB,
    )

    # --- Scheduler -----------------------------------------------------------
    scheduler_leader: bool = _var(
        "OTEL_RENDER_SCHEDULER_LEADER",
        BOOL,
        True,
        "One process per instance runs the APScheduler jobs: a lock in the instance directory "
        "elects it (under gunicorn, one worker; never the master). `false`: every process that "
        "starts a scheduler runs it, as APScheduler does on its own.",
        "false",
        section=_SCHEDULER,
    )
    scheduler_leader_poll_s: float = _var(
        "OTEL_RENDER_SCHEDULER_LEADER_POLL_S",
        number(float, 0.1, 60, "seconds"),
        2.0,
        "How often a process on standby tries to take the jobs over; when the process running "
        "them dies, another one runs them within about this time.",
        "2",
        section=_SCHEDULER,
    )
    scheduler_leader_database_url: str = _var(
        "OTEL_RENDER_SCHEDULER_LEADER_DATABASE_URL",
        TEXT,
        "",
        "PostgreSQL URL: the runner also holds a PostgreSQL advisory lock, so that one process "
        "across all instances of the service runs the jobs. Empty: one runner per instance.",
        "postgresql://user:password@host:5432/app",
        secret=True,
        section=_SCHEDULER,
    )
    scheduler_stagger_s: float = _var(
        "OTEL_RENDER_SCHEDULER_STAGGER_S",
        number(float, 0, 300, "seconds"),
        5.0,
        "Delay between the starts of successive schedulers in one process, so that a cold start "
        "does not run every job at once. 0: start them all at once.",
        "5",
        section=_SCHEDULER,
    )
    scheduler_shutdown_timeout_s: float = _var(
        "OTEL_RENDER_SCHEDULER_SHUTDOWN_TIMEOUT_S",
        number(float, 0, 600, "seconds"),
        25.0,
        "At exit (SIGTERM), how long running jobs may take to finish before the schedulers shut "
        "down; no new run starts meanwhile. Render sends SIGKILL 30 s after SIGTERM.",
        "25",
        section=_SCHEDULER,
    )
    scheduler_max_runtime_s: float = _var(
        "OTEL_RENDER_SCHEDULER_MAX_RUNTIME_S",
        number(float, 0, 7 * 24 * 3600, "seconds"),
        300.0,
        "A job run longer than this has its stack captured into /api/diagnostics (once per run). "
        "0: never.",
        "300",
        section=_SCHEDULER,
    )
    scheduler_restart_limit: int = _var(
        "OTEL_RENDER_SCHEDULER_RESTART_LIMIT",
        number(int, 0, 1000),
        5,
        "Restarts of a dead scheduler allowed within `OTEL_RENDER_SCHEDULER_RESTART_WINDOW_S`; "
        "past it the scheduler is reported failed and left alone. 0: never restart.",
        "5",
        section=_SCHEDULER,
    )
    scheduler_restart_window_s: float = _var(
        "OTEL_RENDER_SCHEDULER_RESTART_WINDOW_S",
        number(float, 1, 7 * 24 * 3600, "seconds"),
        600.0,
        "The window in which `OTEL_RENDER_SCHEDULER_RESTART_LIMIT` restarts are counted.",
        "600",
        section=_SCHEDULER,
    )
    scheduler_restart_backoff_s: float = _var(
        "OTEL_RENDER_SCHEDULER_RESTART_BACKOFF_S",
        number(float, 0, 600, "seconds"),
        1.0,
        "Wait before restarting a dead scheduler; doubles with each restart in the window, up to "
        "60 s (or this value when larger).",
        "1",
        section=_SCHEDULER,
    )

    # --- Local endpoints and health ------------------------------------------
    token: str = _var(
        "OTEL_RENDER_TOKEN",
        TEXT,
        "",
        "Bearer token for `/api/metrics`, `/api/diagnostics` and the details of `/api/health` "
        "(`Authorization: Bearer <token>`). Empty: those answer 404 and `/api/health` shows statuses "
        "only, unless `OTEL_RENDER_PUBLIC_ENDPOINTS=true`.",
        "9f86d081884c7d659a2feaa0c55ad015",
        secret=True,
        section=_ENDPOINTS,
    )
    public_endpoints: bool = _var(
        "OTEL_RENDER_PUBLIC_ENDPOINTS",
        BOOL,
        False,
        "Serve every local endpoint, with details, without a token. For local runs only: the "
        "diagnostics show stacks, routes and configuration (secrets masked).",
        "true",
        section=_ENDPOINTS,
    )
    endpoint_prefix: str = _var(
        "OTEL_RENDER_ENDPOINT_PREFIX",
        TEXT,
        "/_otel",
        "Where a local endpoint moves when the app routes the same path itself (Flask, Django): "
        "`/health` becomes `/_otel/health`.",
        "/_otel",
        section=_ENDPOINTS,
    )
    health_interval_s: float = _var(
        "OTEL_RENDER_HEALTH_INTERVAL_S",
        number(float, 0.1, 300, "seconds"),
        5.0,
        "How often each process evaluates the health checks and publishes its metrics for the "
        "instance view. Health requests are answered from the last evaluation.",
        "5",
        section=_ENDPOINTS,
    )
    health_check_timeout_s: float = _var(
        "OTEL_RENDER_HEALTH_CHECK_TIMEOUT_S",
        number(float, 0.05, 60, "seconds"),
        2.0,
        "A check that has not answered within this time is reported degraded (it keeps running in "
        "the background; a health request never waits for it).",
        "2",
        section=_ENDPOINTS,
    )
    liveness_checks: tuple[str, ...] = _var(
        "OTEL_RENDER_LIVENESS_CHECKS",
        NAMES,
        ("memory", "schedulers"),
        "Checks whose `unhealthy` makes the instance unhealthy and `/health` answer 503. Any other "
        "check's `unhealthy` only degrades the instance (a database outage is not fixed by restarting "
        "the instance). `none`: `/health` answers 503 for nothing.",
        "memory,schedulers,database",
        section=_ENDPOINTS,
    )
    memory_warn_percent: float = _var(
        "OTEL_RENDER_MEMORY_WARN_PERCENT",
        number(float, 1, 100, "percent"),
        80.0,
        "Instance memory in use, as a share of the limit, above which memory is `degraded`.",
        "80",
        section=_ENDPOINTS,
    )
    memory_critical_percent: float = _var(
        "OTEL_RENDER_MEMORY_CRITICAL_PERCENT",
        number(float, 1, 100, "percent"),
        95.0,
        "Instance memory in use, as a share of the limit, above which memory is critical.",
        "95",
        section=_ENDPOINTS,
    )
    memory_critical_grace_s: float = _var(
        "OTEL_RENDER_MEMORY_CRITICAL_GRACE_S",
        number(float, 0, 3600, "seconds"),
        30.0,
        "How long memory may stay critical (the time recovery has to bring it back) before the "
        "memory check turns `unhealthy`; until then it is `degraded`.",
        "30",
        section=_ENDPOINTS,
    )
    health_window_s: float = _var(
        "OTEL_RENDER_HEALTH_WINDOW_S",
        number(float, 10, 3600, "seconds"),
        300.0,
        "The recent window over which the performance check (and the recent figures of "
        "`/api/health` and `/api/metrics`) measure p95 latency and error rate.",
        "300",
        section=_ENDPOINTS,
    )
    health_p95_s: float = _var(
        "OTEL_RENDER_HEALTH_P95_S",
        number(float, 0.001, 600, "seconds"),
        2.0,
        "p95 request latency over the window above which performance is `degraded`.",
        "1.5",
        section=_ENDPOINTS,
    )
    health_error_rate: float = _var(
        "OTEL_RENDER_HEALTH_ERROR_RATE",
        number(float, 0, 1),
        0.05,
        "Share of requests answered 5xx over the window above which performance is `degraded` "
        "(at least 20 requests in the window); twice this share is `unhealthy`.",
        "0.1",
        section=_ENDPOINTS,
    )

    # --- Recovery ------------------------------------------------------------
    recovery: str = _var(
        "OTEL_RENDER_RECOVERY",
        choice("on", "dry-run", "off"),
        "on",
        "The recovery manager: `on` acts, `dry-run` records what it would do (action log, counter, "
        "log line) without doing it, `off` evaluates nothing.",
        "dry-run",
        section=_RECOVERY,
    )
    recovery_interval_s: float = _var(
        "OTEL_RENDER_RECOVERY_INTERVAL_S",
        number(float, 0.5, 300, "seconds"),
        5.0,
        "How often each process evaluates the recovery rules over its latest meter values.",
        "5",
        section=_RECOVERY,
    )
    recovery_disabled_actions: tuple[str, ...] = _var(
        "OTEL_RENDER_RECOVERY_DISABLED_ACTIONS",
        NAMES,
        (),
        "Built-in actions to switch off: `relieve_memory` (gc.collect, malloc_trim, the app's "
        "on_memory_pressure callbacks), `recycle_worker`, `pause_schedulers`, `probe_database`, "
        "`restart_schedulers`.",
        "recycle_worker,pause_schedulers",
        section=_RECOVERY,
    )
    recovery_cooldown_s: float = _var(
        "OTEL_RENDER_RECOVERY_COOLDOWN_S",
        number(float, 0, 86400, "seconds"),
        60.0,
        "Quiet time after a memory rule fired before it may fire again; a rule still past its threshold "
        "after 3 firings escalates instead of firing again.",
        "60",
        section=_RECOVERY,
    )
    recovery_recycle_cooldown_s: float = _var(
        "OTEL_RENDER_RECOVERY_RECYCLE_COOLDOWN_S",
        number(float, 0, 86400, "seconds"),
        300.0,
        "At most one worker of the instance is recycled for memory within this window.",
        "300",
        section=_RECOVERY,
    )
    recovery_leak_kib_s: float = _var(
        "OTEL_RENDER_RECOVERY_LEAK_KIB_S",
        number(float, 0.1, 1024 * 1024, "KiB per second"),
        50.0,
        "A worker whose own memory (USS) grows faster than this, steadily over the leak window, is "
        "suspected of leaking (50 KiB/s is 176 MiB an hour).",
        "50",
        section=_RECOVERY,
    )
    recovery_leak_window_s: float = _var(
        "OTEL_RENDER_RECOVERY_LEAK_WINDOW_S",
        number(float, 10, 86400, "seconds"),
        600.0,
        "How long the growth must be sustained before a leak is suspected.",
        "600",
        section=_RECOVERY,
    )
    gc_freeze: bool = _var(
        "OTEL_RENDER_GC_FREEZE",
        BOOL,
        True,
        "Under gunicorn, call gc.freeze() in the master before it forks each worker, so that garbage "
        "collections in the workers never touch (and un-share) the objects the --preload master built.",
        "false",
        section=_RECOVERY,
    )

    # --- Not parsed: the raw environment ---------------------------------------
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> tuple[Settings, list[ConfigProblem]]:
        """Parse every declared variable; bad values fall back to their default."""
        values: dict[str, Any] = {}
        problems: list[ConfigProblem] = []
        for variable_field in fields(cls):
            variable: Variable | None = variable_field.metadata.get("variable")
            if variable is None:
                continue
            raw = environ.get(variable.env)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[variable_field.name] = variable.parser(raw)
            except (ValueError, TypeError):
                problems.append(ConfigProblem.invalid(variable, raw))
        return cls(environ=dict(environ), **values), problems

    def standard(self, name: str) -> str | None:
        """A standard variable (``OTEL_*``, ``RENDER_*``) when set and non-empty."""
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def sdk_disabled(self) -> bool:
        """``OTEL_SDK_DISABLED=true`` turns off every part of the package."""
        return (self.standard("OTEL_SDK_DISABLED") or "").lower() == "true"


def declared_variables() -> list[Variable]:
    """Every variable the package reads, in declaration order (for docs and doctor)."""
    return [f.metadata["variable"] for f in fields(Settings) if "variable" in f.metadata]


@dataclass(frozen=True)
class ConfigProblem:
    """One variable that could not be used; the message is the log line."""

    variable: str
    message: str

    @classmethod
    def invalid(cls, variable: Variable, raw: str) -> ConfigProblem:
        shown = "[redacted]" if variable.secret else repr(raw[:80])
        default = "empty" if variable.default in ("", ()) else repr(variable.default)
        return cls(
            variable.env,
            f"{variable.env}={shown} is not valid: expected {variable.parser.accepted}; "
            f"using the default ({default})",
        )


# --------------------------------------------------------------------------
# The process-wide instance
# --------------------------------------------------------------------------

_lock = threading.Lock()
_current: Settings | None = None


def parse_process_environment() -> tuple[Settings, list[ConfigProblem]]:
    """Parse this process's environment (the only place the package reads it)."""
    return Settings.from_environ(os.environ)


def get_settings() -> Settings:
    """The process-wide settings, parsed from ``os.environ`` on first use.

    Problems are logged here, once per process, as warnings on the
    ``otel_render.config`` logger.
    """
    global _current
    settings = _current
    if settings is not None:
        return settings
    with _lock:
        if _current is None:
            parsed, problems = parse_process_environment()
            for problem in problems:
                _logger.warning("otel-render: %s", problem.message)
            _current = parsed
        return _current


def use_settings(settings: Settings | None) -> None:
    """Install ``settings`` as the process-wide settings (``None`` re-reads the environment)."""
    global _current
    with _lock:
        _current = settings


#: The SDK reads this one flag only from ``os.environ`` (no constructor
#: argument), when each processor, exporter and reader is built.
SDK_SELF_METRICS_VARIABLE = "OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED"


@contextmanager
def sdk_self_metrics(settings: Settings) -> Iterator[None]:
    """Turn the SDK's own ``otel.sdk.*`` metrics on while the pipeline is built.

    Processors, exporters and metric readers built inside the block count
    what they process, export, drop and fail (per batch: no cost per span).
    The flag is removed again afterwards, so tracers created later (one per
    instrumentation) do not add two counter updates to every span, and child
    processes do not inherit it. Only this non-secret flag is written; a
    value the user set (``true`` for everything, ``false`` for nothing) is
    left alone.
    """
    if settings.standard(SDK_SELF_METRICS_VARIABLE) is not None:
        yield
        return
    os.environ[SDK_SELF_METRICS_VARIABLE] = "true"
    try:
        yield
    finally:
        os.environ.pop(SDK_SELF_METRICS_VARIABLE, None)
