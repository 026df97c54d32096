"""Correlation: which id a request is known by, and how that id becomes its trace.

A request arrives with zero or more ids. The rules, in order:

1. An inbound trace context (``traceparent``, or whatever ``OTEL_PROPAGATORS``
   extracts) wins: the request joins that trace.
2. Otherwise a request id (``X-Request-ID``, ``X-Correlation-ID``; the list is
   ``OTEL_RENDER_REQUEST_ID_HEADERS``) that is a UUID or 32 hex digits, not all
   zeros, becomes the trace id itself (``OTEL_RENDER_ADOPT_REQUEST_ID``), so the
   id a customer quotes is the id of the trace. It goes through the SDK's own
   seam, :class:`CorrelationIdGenerator`: the server span is a plain root span
   with that trace id, with no invented parent.
3. Any other valid id starts a new trace and is kept as ``correlation.id``.
4. Without any id, the trace id (32 hex digits) is the correlation id.

Ids from outside are validated before anything else sees them
(:func:`safe_id`): token characters only (RFC 9110), at most 128 of them.
Anything else is ignored and never echoed, so a header cannot inject a line
into a response or a log.

Adopted ids are not random in their low bits: a UUID carries fixed version and
variant bits, and the SDK's ``TraceIdRatioBased`` sampler tests only the low
64 bits, where a UUIDv4's variant bits sit at the top (below a ratio of 0.5 it
samples none of them). :class:`WholeTraceIdRatioSampler` hashes all 128 bits
instead; the configurator uses it whenever ``OTEL_TRACES_SAMPLER`` asks for
ratio sampling.

The response names its trace (:func:`trace_response_headers`): ``X-Request-ID``
and a W3C ``traceresponse`` header or ``Server-Timing: traceparent;desc=...``
(``OTEL_RENDER_RESPONSE_TRACE_HEADER``).
"""

from __future__ import annotations

import logging
import random
import re
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.span import SpanContext
from opentelemetry.util.types import Attributes

from otel_render.config import Settings

_logger = logging.getLogger("otel_render.correlation")

MAX_ID_LENGTH = 128

#: RFC 9110 token characters: what an id may consist of.
_SAFE_ID = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1," + str(MAX_ID_LENGTH) + "}")
_HEX32 = re.compile(r"[0-9a-fA-F]{32}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")

RESPONSE_ID_HEADER = "X-Request-ID"
RENDER_REQUEST_ID_ENVIRON_KEY = "HTTP_RNDR_ID"

_MASK_64 = (1 << 64) - 1


def safe_id(value: Any) -> str | None:
    """``value`` when it is a safe id (token characters, 1 to 128 of them), else None."""
    if isinstance(value, str) and _SAFE_ID.fullmatch(value):
        return value
    return None


def trace_id_from_request_id(value: str) -> int | None:
    """The trace id a request id stands for: a UUID or 32 hex digits, not all zeros."""
    if len(value) == 36 and _UUID.fullmatch(value):
        trace_id = int(value.replace("-", ""), 16)
    elif len(value) == 32 and _HEX32.fullmatch(value):
        trace_id = int(value, 16)
    else:
        return None
    return trace_id if trace_id != trace.INVALID_TRACE_ID else None


def environ_key(header: str) -> str:
    """The WSGI environ key of a request header (``X-Request-ID`` -> ``HTTP_X_REQUEST_ID``)."""
    return "HTTP_" + header.upper().replace("-", "_")


class RequestIds:
    """The correlation rules for one process, precomputed from the settings.

    :meth:`inbound` runs once per request and only reads a few environ keys.
    """

    def __init__(self, settings: Settings) -> None:
        self.keys: tuple[str, ...] = tuple(environ_key(name) for name in settings.request_id_headers)
        self.adopt = settings.adopt_request_id
        self.response_mode = settings.response_trace_header

    def inbound(self, environ: dict[str, Any]) -> tuple[str | None, int | None]:
        """``(correlation id, trace id to adopt)`` from the request headers.

        The first header that holds a *valid* id wins; invalid ones are skipped
        silently (they are never echoed or logged).
        """
        for key in self.keys:
            raw = environ.get(key)
            if raw is None:
                continue
            value = safe_id(raw)
            if value is not None:
                return value, (trace_id_from_request_id(value) if self.adopt else None)
        return None, None


# --------------------------------------------------------------------------
# The id generator seam
# --------------------------------------------------------------------------

_pending = threading.local()


def adopt_next_trace_id(trace_id: int | None) -> None:
    """Make the next root span started on this thread use ``trace_id``.

    The WSGI layer calls this right before it starts the server span (and
    again with None right after), so the id never leaks to another span.
    """
    _pending.trace_id = trace_id


class CorrelationIdGenerator(IdGenerator):
    """The SDK's random ids, except for a root span whose trace id was adopted
    from a request id (see :func:`adopt_next_trace_id`).

    ``is_trace_id_random`` tells the truth per id (the SDK asks right after
    generating one): an adopted id does not get the W3C random flag.
    Also published as the ``otel_render`` entry point of the
    ``opentelemetry_id_generator`` group (``OTEL_PYTHON_ID_GENERATOR=otel_render``)
    for processes where another configurator builds the SDK.
    """

    def generate_span_id(self) -> int:
        span_id = random.getrandbits(64)
        while span_id == trace.INVALID_SPAN_ID:
            span_id = random.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        adopted = getattr(_pending, "trace_id", None)
        if adopted is not None:
            _pending.trace_id = None
            _pending.last_random = False
            return adopted
        _pending.last_random = True
        trace_id = random.getrandbits(128)
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = random.getrandbits(128)
        return trace_id

    def is_trace_id_random(self) -> bool:
        return getattr(_pending, "last_random", True)


# --------------------------------------------------------------------------
# Ratio sampling over the whole trace id
# --------------------------------------------------------------------------


def _mix64(value: int) -> int:
    """MurmurHash3's 64-bit finalizer: every input bit flips each output bit with p~0.5."""
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & _MASK_64
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & _MASK_64
    value ^= value >> 33
    return value


def trace_id_hash(trace_id: int) -> int:
    """A uniform 64-bit hash of all 128 bits of a trace id (same in every process)."""
    return _mix64((trace_id >> 64) ^ _mix64(trace_id & _MASK_64))


class WholeTraceIdRatioSampler(Sampler):
    """Samples a fraction ``ratio`` of traces by a hash of the *whole* trace id.

    Unlike ``TraceIdRatioBased`` it does not assume the low 64 bits are random,
    so trace ids adopted from UUID request ids are sampled at the configured
    ratio too. Deterministic: every process decides the same for one trace id.
    """

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError("ratio must be in [0.0, 1.0]")
        self.ratio = ratio
        self.bound = round(ratio * (1 << 64))

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if trace_id_hash(trace_id) < self.bound else Decision.DROP
        span_context = trace.get_current_span(parent_context).get_span_context()
        return SamplingResult(decision, None, span_context.trace_state if span_context.is_valid else None)

    def get_description(self) -> str:
        return f"WholeTraceIdRatioSampler{{{self.ratio}}}"


def _ratio_from(raw: Any) -> float:
    try:
        ratio = float(raw)
    except (TypeError, ValueError):
        _logger.warning("otel-render: OTEL_TRACES_SAMPLER_ARG=%r is not a ratio; sampling everything", raw)
        return 1.0
    if not 0.0 <= ratio <= 1.0:
        _logger.warning("otel-render: OTEL_TRACES_SAMPLER_ARG=%r is not within [0, 1]; sampling everything", raw)
        return 1.0
    return ratio


def whole_trace_id_ratio(arg: Any = None) -> Sampler:
    """Entry point ``otel_render_traceidratio`` (``opentelemetry_traces_sampler``)."""
    return WholeTraceIdRatioSampler(_ratio_from(1.0 if arg is None else arg))


def parent_based_whole_trace_id_ratio(arg: Any = None) -> Sampler:
    """Entry point ``otel_render_parentbased_traceidratio``."""
    return ParentBased(root=whole_trace_id_ratio(arg))


def sampler_for(settings: Settings) -> Sampler | None:
    """The sampler the configurator installs, or None to keep the SDK's choice.

    ``OTEL_TRACES_SAMPLER`` keeps its standard meaning; the two ratio samplers
    get our whole-id hash (same ratio, same parent rules).
    """
    name = (settings.standard("OTEL_TRACES_SAMPLER") or "").lower()
    arg = settings.standard("OTEL_TRACES_SAMPLER_ARG")
    if name in ("traceidratio", "otel_render_traceidratio"):
        return whole_trace_id_ratio(arg)
    if name in ("parentbased_traceidratio", "otel_render_parentbased_traceidratio"):
        return parent_based_whole_trace_id_ratio(arg)
    return None


# --------------------------------------------------------------------------
# Response headers
# --------------------------------------------------------------------------


def traceparent_value(span_context: SpanContext) -> str:
    """``00-<trace id>-<span id>-<flags>`` (W3C Trace Context)."""
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags) & 0xFF:02x}"


def trace_response_headers(correlation_id: str, span_context: SpanContext | None, mode: str) -> list[tuple[str, str]]:
    """The headers every response gets: ``X-Request-ID`` and, per ``mode``,
    ``traceresponse`` or ``Server-Timing``. Values are built only from
    validated ids and hex digits, so they never contain CR or LF."""
    headers = [(RESPONSE_ID_HEADER, correlation_id)]
    if span_context is not None and span_context.is_valid:
        if mode == "traceresponse":
            headers.append(("traceresponse", traceparent_value(span_context)))
        elif mode == "server-timing":
            headers.append(("Server-Timing", f'traceparent;desc="{traceparent_value(span_context)}"'))
    return headers
