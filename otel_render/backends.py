"""Backend presets: which exporters to build, and the endpoint and headers each
one gets, from the settings and the standard ``OTEL_*`` variables.

:func:`plan_export` is a pure function of :class:`~otel_render.config.Settings`
(which carries the environment), so every rule below is tested without a
network:

- Standard variables win. ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER`` choose the
  exporters; ``OTEL_EXPORTER_OTLP_*ENDPOINT`` and ``*_HEADERS`` replace what a
  preset would set.
- Presets: Grafana Cloud (gateway URL + instance id + token -> Basic auth) and
  Honeycomb (``HONEYCOMB_API_KEY``, optional metrics dataset, US or EU).
- OTLP defaults to HTTP/protobuf, so grpc is only imported when chosen.
- No backend at all: nothing is exported over the network and nothing errors;
  telemetry stays in the local reader that the endpoints read.
- Bad values (unknown protocol, a malformed endpoint URL, a header with a
  newline) become one-line problems; the app keeps running with the rest.

Secrets (tokens, API keys, auth headers) only ever appear in
:attr:`SignalPlan.headers`, which is handed to the exporter and never logged;
:meth:`ExportPlan.describe` masks them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from otel_render.config import Settings

SIGNALS = ("traces", "metrics", "logs")
PROTOCOL_HTTP = "http/protobuf"
PROTOCOL_GRPC = "grpc"
_PROTOCOLS = (PROTOCOL_HTTP, PROTOCOL_GRPC)

HONEYCOMB_ENDPOINTS = {"us": "https://api.honeycomb.io", "eu": "https://api.eu1.honeycomb.io"}


@dataclass(frozen=True)
class SignalPlan:
    """How one signal is exported: exporter names and, for OTLP, its arguments.

    ``endpoint``/``headers`` are None when the exporter should read the standard
    variables itself (the user configured them).
    """

    signal: str
    exporters: tuple[str, ...] = ()
    protocol: str = PROTOCOL_HTTP
    endpoint: str | None = None
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    timeout_s: float | None = None
    compression: str | None = None

    @property
    def uses_otlp(self) -> bool:
        return "otlp" in self.exporters


@dataclass(frozen=True)
class ExportPlan:
    """The outcome of the backend rules, plus any problems found on the way."""

    backend: str  # grafana | honeycomb | otlp | none
    signals: Mapping[str, SignalPlan]
    problems: tuple[str, ...] = ()

    @property
    def sends_over_network(self) -> bool:
        return any(plan.exporters for plan in self.signals.values())

    def describe(self) -> dict[str, object]:
        """A view for logs and ``otel-render doctor``: secrets masked."""
        return {
            "backend": self.backend,
            "signals": {
                name: {
                    "exporters": list(plan.exporters),
                    "protocol": plan.protocol if plan.uses_otlp else None,
                    "endpoint": plan.endpoint,
                    "headers": {
                        key: value if key in _PUBLIC_HEADERS else mask(value)
                        for key, value in (plan.headers or {}).items()
                    },
                }
                for name, plan in self.signals.items()
            },
        }


#: Header values safe to show; every other header value is masked.
_PUBLIC_HEADERS = frozenset({"x-honeycomb-dataset", "content-type"})


def mask(secret: str) -> str:
    """Show that a secret is set without showing it."""
    if not secret:
        return ""
    return f"[redacted, {len(secret)} chars]"


def plan_export(settings: Settings) -> ExportPlan:
    """Decide exporters, endpoints and headers for each signal."""
    problems: list[str] = []
    backend = _choose_backend(settings, problems)
    preset_endpoint, preset_headers = _preset(settings, backend)
    signals = {}
    for signal in SIGNALS:
        exporters = _exporter_names(settings, signal, backend)
        protocol = _protocol(settings, signal, problems)
        endpoint, headers, valid = _endpoint_and_headers(
            settings, signal, protocol, preset_endpoint, preset_headers, problems
        )
        if not valid:
            exporters = tuple(name for name in exporters if name != "otlp")
        signals[signal] = SignalPlan(
            signal=signal,
            exporters=exporters,
            protocol=protocol,
            endpoint=endpoint,
            headers=headers,
            timeout_s=None if _any_set(settings, "OTEL_EXPORTER_OTLP_TIMEOUT", signal) else settings.export_timeout_s,
            compression=_compression(settings, signal, backend),
        )
    return ExportPlan(backend=backend, signals=signals, problems=tuple(problems))


# --------------------------------------------------------------------------


def _note(problems: list[str], message: str) -> None:
    """Record a problem once (the base variables are checked for every signal)."""
    if message not in problems:
        problems.append(message)


def _signal_var(prefix: str, signal: str) -> str:
    # OTEL_EXPORTER_OTLP_ENDPOINT -> OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    head, _, tail = prefix.rpartition("_")
    return f"{head}_{signal.upper()}_{tail}"


def _any_set(settings: Settings, prefix: str, signal: str) -> bool:
    return settings.standard(prefix) is not None or settings.standard(_signal_var(prefix, signal)) is not None


def _grafana_ready(settings: Settings) -> bool:
    return bool(settings.grafana_endpoint and settings.grafana_instance_id and settings.grafana_token)


def _choose_backend(settings: Settings, problems: list[str]) -> str:
    chosen = settings.backend
    if chosen == "auto":
        if _grafana_ready(settings):
            return "grafana"
        if settings.honeycomb_api_key:
            return "honeycomb"
        if any(_any_set(settings, "OTEL_EXPORTER_OTLP_ENDPOINT", s) for s in SIGNALS):
            return "otlp"
        if any(settings.standard(f"OTEL_{s.upper()}_EXPORTER") not in (None, "none") for s in SIGNALS):
            return "otlp"
        return "none"
    if chosen == "grafana" and not _grafana_ready(settings):
        _note(
            problems,
            "OTEL_RENDER_BACKEND=grafana needs OTEL_RENDER_GRAFANA_ENDPOINT, OTEL_RENDER_GRAFANA_INSTANCE_ID "
            "and OTEL_RENDER_GRAFANA_TOKEN; telemetry stays local"
        )
        return "none"
    if chosen == "honeycomb" and not settings.honeycomb_api_key:
        _note(problems, "OTEL_RENDER_BACKEND=honeycomb needs HONEYCOMB_API_KEY; telemetry stays local")
        return "none"
    return chosen


def _preset(settings: Settings, backend: str) -> tuple[str | None, dict[str, dict[str, str]]]:
    """Base endpoint and per-signal headers of a preset backend."""
    if backend == "grafana":
        credentials = f"{settings.grafana_instance_id}:{settings.grafana_token}".encode()
        auth = {"authorization": "Basic " + base64.b64encode(credentials).decode()}
        return settings.grafana_endpoint, {signal: auth for signal in SIGNALS}
    if backend == "honeycomb":
        team = {"x-honeycomb-team": settings.honeycomb_api_key}
        dataset = settings.honeycomb_dataset or f"{_service_name(settings)}-metrics"
        headers = {signal: dict(team) for signal in SIGNALS}
        headers["metrics"]["x-honeycomb-dataset"] = dataset
        return HONEYCOMB_ENDPOINTS[settings.honeycomb_region], headers
    return None, {}


def _service_name(settings: Settings) -> str:
    return settings.standard("OTEL_SERVICE_NAME") or settings.standard("RENDER_SERVICE_NAME") or "app"


def _exporter_names(settings: Settings, signal: str, backend: str) -> tuple[str, ...]:
    explicit = settings.standard(f"OTEL_{signal.upper()}_EXPORTER")
    if explicit is not None:
        names = tuple(name.strip().lower() for name in explicit.split(",") if name.strip())
        names = tuple(_canonical_exporter(name) for name in names if name != "none")
        return names
    if backend == "none":
        return ()
    # Logs go out only when asked for (OTEL_LOGS_EXPORTER): most apps already
    # ship stdout to Render's log stream, and double shipping costs money.
    return ("otlp",) if signal in ("traces", "metrics") else ()


def _canonical_exporter(name: str) -> str:
    return "otlp" if name in ("otlp", "otlp_proto_http", "otlp_proto_grpc") else name


def _protocol(settings: Settings, signal: str, problems: list[str]) -> str:
    for variable in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = settings.standard(variable)
        if value is None:
            continue
        if value in _PROTOCOLS:
            return value
        _note(problems, f"{variable}={value!r} is not valid: expected one of {', '.join(_PROTOCOLS)}; using {PROTOCOL_HTTP}")
        return PROTOCOL_HTTP
    explicit = (settings.standard(f"OTEL_{signal.upper()}_EXPORTER") or "").lower()
    if "otlp_proto_grpc" in explicit:
        return PROTOCOL_GRPC
    return PROTOCOL_HTTP


def _compression(settings: Settings, signal: str, backend: str) -> str | None:
    # Both SaaS backends accept gzip; it cuts egress several-fold. A collector
    # on Render's private network is left to the standard variable.
    if backend in ("grafana", "honeycomb") and not _any_set(settings, "OTEL_EXPORTER_OTLP_COMPRESSION", signal):
        return "gzip"
    return None


def _endpoint_and_headers(
    settings: Settings,
    signal: str,
    protocol: str,
    preset_endpoint: str | None,
    preset_headers: Mapping[str, Mapping[str, str]],
    problems: list[str],
) -> tuple[str | None, dict[str, str], bool]:
    """The signal's endpoint URL and headers, and whether the endpoint is usable.

    Precedence: the signal's own standard variable, then the base standard
    variable (with ``/v1/<signal>`` appended for HTTP, as the spec says), then
    the preset. None means "let the exporter use its default".
    """
    candidates = (
        (_signal_var("OTEL_EXPORTER_OTLP_ENDPOINT", signal), settings.standard(_signal_var("OTEL_EXPORTER_OTLP_ENDPOINT", signal)), False),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", settings.standard("OTEL_EXPORTER_OTLP_ENDPOINT"), True),
        ("OTEL_RENDER_GRAFANA_ENDPOINT", preset_endpoint, True),
    )
    endpoint: str | None = None
    valid = True
    for variable, value, is_base in candidates:
        if value is None:
            continue
        if not _valid_url(value):
            _note(problems, _bad_url(variable, value))
            valid = False
        elif is_base and protocol == PROTOCOL_HTTP:
            endpoint = value.rstrip("/") + f"/v1/{signal}"
        else:
            endpoint = value
        break

    headers = dict(preset_headers.get(signal, {}))
    for variable in ("OTEL_EXPORTER_OTLP_HEADERS", _signal_var("OTEL_EXPORTER_OTLP_HEADERS", signal)):
        raw = settings.standard(variable)
        if raw is not None:
            headers.update(_parse_headers(variable, raw, problems))
    return endpoint, headers, valid


def _valid_url(url: str) -> bool:
    if any(ch.isspace() for ch in url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _bad_url(variable: str, value: str) -> str:
    shown = value[:80].encode("unicode_escape").decode()
    return (
        f"{variable}={shown!r} is not valid: expected an http:// or https:// URL with a host; "
        "OTLP export for it is off, telemetry stays local"
    )


def _parse_headers(variable: str, raw: str, problems: list[str]) -> dict[str, str]:
    """Parse ``key=value,key2=value2`` (URL-encoded, as the spec says).

    A pair with a control character after decoding (a newline would let a
    value inject a header) or without ``=`` is dropped with a problem that names
    the key, never the value.
    """
    headers: dict[str, str] = {}
    for index, item in enumerate(raw.split(",")):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key, value = unquote(key.strip()).lower(), unquote(value.strip())
        if not sep or not key or not _is_token(key):
            _note(problems, f"{variable}: entry {index + 1} is not a key=value pair with a valid header name; ignored")
            continue
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            _note(problems, f"{variable}: the value of {key!r} contains a control character (newline?); header ignored")
            continue
        headers[key] = value
    return headers


_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    return all(ch in _TOKEN_CHARS for ch in name)
