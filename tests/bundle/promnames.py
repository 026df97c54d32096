"""OpenTelemetry metric names to the Prometheus names Grafana Cloud shows.

This module owns the translation, as pure functions, so that the dashboards,
the alert rules and the Prometheus column of ``docs/metrics.md`` can be checked
against what the package emits. It follows the OTLP-to-Prometheus rules of the
OpenTelemetry specification ("OTLP metric points to Prometheus") in the form
Prometheus' ``otlptranslator`` applies them with suffixes on and UTF-8 escaping
to underscores, which is what Grafana Cloud's OTLP endpoint does:

- the name is split on every character outside ``[a-zA-Z0-9:]`` (so ``.``,
  ``-`` and runs of ``_`` all become one ``_``);
- the unit becomes a suffix: ``s`` -> ``seconds``, ``By`` -> ``bytes``, ... ;
  ``X/Y`` becomes ``X_per_Y``; a unit in braces (``{request}``) is an
  annotation and adds nothing; a suffix already present as a word is not
  repeated;
- a gauge with unit ``1`` ends in ``ratio``;
- a monotonic sum (a Counter) ends in ``total``;
- a histogram is queried through its ``_bucket``, ``_sum`` and ``_count``
  series.

Attribute keys become label names the same way (``http.route`` ->
``http_route``).

Usage::

    prometheus_name("http.server.request.duration", "s", HISTOGRAM)
    # 'http_server_request_duration_seconds'
    series_names("http_server_request_duration_seconds", HISTOGRAM)
    # ('http_server_request_duration_seconds_bucket', ..._sum, ..._count)
"""

from __future__ import annotations

import re

# OTLP data kinds, as the collector and the Prometheus translator see them.
GAUGE = "gauge"
SUM = "sum"  # non-monotonic: UpDownCounter
COUNTER = "counter"  # monotonic sum
HISTOGRAM = "histogram"
KINDS = (GAUGE, SUM, COUNTER, HISTOGRAM)

# UCUM units to Prometheus words (otlptranslator's unitMap).
UNIT_WORDS: dict[str, str] = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}

# The unit after "/" (otlptranslator's perUnitMap): singular.
PER_UNIT_WORDS: dict[str, str] = {
    "s": "second",
    "m": "minute",
    "h": "hour",
    "d": "day",
    "w": "week",
    "mo": "month",
    "y": "year",
}

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

_NOT_NAME_CHAR = re.compile(r"[^a-zA-Z0-9:]+")
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def _words(text: str) -> list[str]:
    return [word for word in _NOT_NAME_CHAR.split(text) if word]


def _unit_word(unit: str, table: dict[str, str]) -> str:
    unit = unit.strip()
    if not unit or "{" in unit or "}" in unit:
        return ""
    word = table.get(unit, unit)
    return "_".join(_words(word))


def unit_suffixes(unit: str) -> tuple[str, str]:
    """The main and the "per" suffix for a UCUM unit: ``By/s`` -> ("bytes", "per_second")."""
    main, _, per = unit.partition("/")
    main_word = _unit_word(main, UNIT_WORDS)
    per_word = _unit_word(per, PER_UNIT_WORDS) if per else ""
    return main_word, (f"per_{per_word}" if per_word else "")


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """The Prometheus metric name (without histogram series suffixes)."""
    if kind not in KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; expected one of {', '.join(KINDS)}")
    tokens = _words(name)
    main, per = unit_suffixes(unit)
    if main and main not in tokens:
        tokens.append(main)
    if per and per not in tokens:
        tokens.append(per)
    if kind == COUNTER:
        tokens = [token for token in tokens if token != "total"] + ["total"]
    if unit.strip() == "1" and kind == GAUGE:
        tokens = [token for token in tokens if token != "ratio"] + ["ratio"]
    result = "_".join(tokens)
    if result[:1].isdigit():
        result = "_" + result
    if not result.strip("_"):
        raise ValueError(f"metric name {name!r} translates to nothing")
    return result


def series_names(prom_name: str, kind: str) -> tuple[str, ...]:
    """The series a query can select: the name itself, or a histogram's three."""
    if kind == HISTOGRAM:
        return tuple(prom_name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return (prom_name,)


def label_name(attribute: str) -> str:
    """The Prometheus label for an attribute key: ``http.route`` -> ``http_route``."""
    label = _NOT_LABEL_CHAR.sub("_", attribute)
    if label[:1].isdigit():
        return "key_" + label
    if label.startswith("_") and not label.startswith("__"):
        return "key" + label
    return label
