"""What a PromQL expression references: metric selectors and label names.

This module owns a small, dependency-free reader for the PromQL used in the
bundled dashboards and alert rules. It is not a full parser: it finds

- every metric selector (``name{label=~"..."}``) with the labels it matches on;
- every label named in ``by``/``without``/``on``/``ignoring``/``group_left``/
  ``group_right`` clauses;
- every function or aggregation called (so a misspelt function fails a test).

Grafana template variables (``$service``, ``${instance}``, ``$__rate_interval``)
may appear inside strings and range brackets, where they are ignored.

Usage::

    refs = references('sum by (http_route) (rate(x_count{job=~"$service"}[5m]))')
    refs.selectors   # [Selector(name='x_count', labels=('job',))]
    refs.grouping    # {'http_route'}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Functions and aggregation operators of PromQL (Prometheus 2.x).
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
    day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction
    histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters hour idelta
    increase irate label_join label_replace ln log2 log10 minute month predict_linear rate resets
    round scalar sgn sort sort_desc sqrt time timestamp vector year avg_over_time min_over_time
    max_over_time sum_over_time count_over_time quantile_over_time stddev_over_time
    stdvar_over_time last_over_time present_over_time
    sum min max avg group stddev stdvar count count_values bottomk topk quantile
    """.split()
)
_GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_OPERATOR_WORDS = frozenset({"and", "or", "unless", "bool", "atan2"})

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[a-zA-Z]*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<var>\$\{[^}]*\}|\$[a-zA-Z_][a-zA-Z0-9_]*)
  | (?P<punct>=~|!~|!=|==|>=|<=|[{}(),=<>+\-*/%^])
  | (?P<space>\s+)
    """,
    re.VERBOSE,
)


class PromQLReadError(ValueError):
    """The expression has a character this reader does not understand."""


@dataclass(frozen=True)
class Selector:
    """One metric selector: its name and the labels it matches on."""

    name: str
    labels: tuple[str, ...]


@dataclass
class References:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)

    @property
    def metric_names(self) -> set[str]:
        return {selector.name for selector in self.selectors}


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            raise PromQLReadError(f"cannot read {expression[position:position + 20]!r} in {expression!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _read_labels(tokens: list[tuple[str, str]], start: int, close: str) -> tuple[list[str], int]:
    """Label names from ``start`` (just after the opening bracket) to ``close``."""
    labels: list[str] = []
    index = start
    expect_name = True
    while index < len(tokens) and tokens[index][1] != close:
        kind, text = tokens[index]
        if kind == "ident" and expect_name:
            labels.append(text)
            expect_name = False
        elif text == ",":
            expect_name = True
        index += 1
    return labels, index + 1


def references(expression: str) -> References:
    """Selectors, grouping labels and functions used by ``expression``."""
    tokens = _tokens(expression)
    refs = References()
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "ident" and text in _GROUPING:
            if following == "(":
                labels, index = _read_labels(tokens, index + 2, ")")
                refs.grouping.update(labels)
                continue
            index += 1
            continue
        if kind == "ident" and text == "offset":
            index += 2
            continue
        if kind == "ident" and (following == "(" or (text in FUNCTIONS and following in ("by", "without"))):
            refs.functions.add(text)
            index += 1
            continue
        if kind == "ident" and text not in _OPERATOR_WORDS:
            labels: list[str] = []
            index += 1
            if index < len(tokens) and tokens[index][1] == "{":
                labels, index = _read_labels(tokens, index + 1, "}")
            refs.selectors.append(Selector(text, tuple(labels)))
            continue
        if text == "{":
            raise PromQLReadError(f"a selector without a metric name in {expression!r}: name every metric")
        index += 1
    return refs


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.*?)\s*,\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def label_values_query(query: str) -> tuple[References, str] | None:
    """A Grafana ``label_values(selector, label)`` variable query, or None."""
    match = _LABEL_VALUES.match(query)
    if match is None:
        return None
    return references(match.group("selector")), match.group("label")


_LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


def legend_labels(legend_format: str) -> set[str]:
    """Labels a Grafana legend format such as ``{{http_route}} p95`` reads."""
    return set(_LEGEND_LABEL.findall(legend_format or ""))
