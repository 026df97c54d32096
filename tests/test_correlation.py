"""Correlation ids: validation, adoption as trace ids, the id generator seam,
whole-id ratio sampling and the response headers."""

from __future__ import annotations

import random
import re
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, TraceFlags

from otel_render import correlation
from otel_render.config import Settings

SAFE = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,128}")


def settings_from(environ):
    parsed, problems = Settings.from_environ(environ)
    assert problems == []
    return parsed


@pytest.mark.parametrize(
    "value",
    ["abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "req_1.2~x", "a" * 128, "!#$%&'*+-.^_`|~"],
)
def test_token_ids_are_safe(value):
    assert correlation.safe_id(value) == value


@pytest.mark.parametrize(
    "value",
    ["", "a" * 129, "a b", "a\r\nSet-Cookie: x=1", "id\n", "caf\u00e9", "a,b", "a;b", "a=b", '"q"', "a/b", None, 42],
)
def test_anything_else_is_refused(value):
    assert correlation.safe_id(value) is None


def test_uuids_and_32_hex_digits_become_trace_ids():
    assert (
        correlation.trace_id_from_request_id("0F8FAD5B-D9CB-469F-A165-70867728950E")
        == 0x0F8FAD5BD9CB469FA16570867728950E
    )
    assert (
        correlation.trace_id_from_request_id("4bf92f3577b34da6a3ce929d0e0e4736") == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    )


@pytest.mark.parametrize(
    "value",
    [
        "00000000-0000-0000-0000-000000000000",
        "0" * 32,
        "req-123",
        "0f8fad5bd9cb469fa16570867728950",
        "g" * 32,
        "0f8fad5b-d9cb-469f-a165-70867728950e0",
    ],
)
def test_other_ids_and_the_zero_id_are_not_adopted(value):
    assert correlation.trace_id_from_request_id(value) is None


def test_the_first_valid_header_in_the_configured_order_wins():
    ids = correlation.RequestIds(settings_from({}))
    uuid_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    environ = {"HTTP_X_REQUEST_ID": "bad id\r\n", "HTTP_X_CORRELATION_ID": uuid_id}
    assert ids.inbound(environ) == (uuid_id, int(uuid_id.replace("-", ""), 16))
    assert ids.inbound({"HTTP_X_REQUEST_ID": "order-77", "HTTP_X_CORRELATION_ID": uuid_id}) == ("order-77", None)
    assert ids.inbound({}) == (None, None)


def test_adoption_and_the_header_list_are_configurable():
    uuid_id = "0f8fad5b-d9cb-469f-a165-70867728950e"
    ids = correlation.RequestIds(
        settings_from({"OTEL_RENDER_ADOPT_REQUEST_ID": "false", "OTEL_RENDER_REQUEST_ID_HEADERS": "X-Trace-Key"})
    )
    assert ids.inbound({"HTTP_X_REQUEST_ID": uuid_id}) == (None, None)
    assert ids.inbound({"HTTP_X_TRACE_KEY": uuid_id}) == (uuid_id, None)


@settings(max_examples=300, deadline=None)
@given(
    request_id=st.one_of(st.none(), st.text(max_size=300)),
    correlation_id=st.one_of(st.none(), st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=200)),
)
def test_inbound_never_raises_and_returns_only_safe_ids(request_id, correlation_id):
    ids = correlation.RequestIds(settings_from({}))
    environ = {}
    if request_id is not None:
        environ["HTTP_X_REQUEST_ID"] = request_id
    if correlation_id is not None:
        environ["HTTP_X_CORRELATION_ID"] = correlation_id
    found, adopted = ids.inbound(environ)
    assert found is None or SAFE.fullmatch(found)
    assert adopted is None or (found is not None and adopted != 0)


# --------------------------------------------------------------------------
# The id generator seam
# --------------------------------------------------------------------------


def test_an_adopted_id_is_used_once_and_is_not_flagged_random():
    generator = correlation.CorrelationIdGenerator()
    provider = TracerProvider(id_generator=generator)
    tracer = provider.get_tracer("t")
    correlation.adopt_next_trace_id(0x0F8FAD5BD9CB469FA16570867728950E)
    try:
        adopted = tracer.start_span("adopted")
    finally:
        correlation.adopt_next_trace_id(None)
    fresh = tracer.start_span("fresh")
    assert adopted.get_span_context().trace_id == 0x0F8FAD5BD9CB469FA16570867728950E
    assert adopted.parent is None  # a root span: no invented parent
    assert not adopted.get_span_context().trace_flags.random_trace_id
    assert fresh.get_span_context().trace_id != adopted.get_span_context().trace_id
    assert fresh.get_span_context().trace_flags.random_trace_id


def test_a_child_span_keeps_its_parents_trace_id():
    provider = TracerProvider(id_generator=correlation.CorrelationIdGenerator())
    tracer = provider.get_tracer("t")
    correlation.adopt_next_trace_id(0xABC)
    root = tracer.start_span("root")
    correlation.adopt_next_trace_id(None)
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    assert child.get_span_context().trace_id == 0xABC


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------


def uuid4_trace_ids(count: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [uuid.UUID(int=rng.getrandbits(128), version=4).int for _ in range(count)]


def sampled_fraction(sampler, trace_ids) -> float:
    return sum(sampler.should_sample(None, trace_id, "GET").decision.is_sampled() for trace_id in trace_ids) / len(
        trace_ids
    )


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_whole_id_sampling_keeps_the_ratio_for_uuid_trace_ids(ratio):
    trace_ids = uuid4_trace_ids(20_000)
    assert abs(sampled_fraction(correlation.WholeTraceIdRatioSampler(ratio), trace_ids) - ratio) < 0.02


def test_the_sdks_ratio_sampler_would_drop_every_uuid_trace_below_one_half():
    # Why we hash the whole id: a UUID's variant bits sit at the top of the
    # low 64 bits, which are all TraceIdRatioBased looks at.
    trace_ids = uuid4_trace_ids(5_000)
    assert sampled_fraction(TraceIdRatioBased(0.25), trace_ids) == 0.0
    assert sampled_fraction(correlation.WholeTraceIdRatioSampler(0.25), trace_ids) > 0.2


def test_whole_id_sampling_is_deterministic_and_bounded():
    sampler = correlation.WholeTraceIdRatioSampler(0.5)
    trace_id = uuid4_trace_ids(1)[0]
    decisions = {sampler.should_sample(None, trace_id, "x").decision for _ in range(5)}
    assert len(decisions) == 1
    assert sampled_fraction(correlation.WholeTraceIdRatioSampler(0.0), uuid4_trace_ids(500)) == 0.0
    assert sampled_fraction(correlation.WholeTraceIdRatioSampler(1.0), uuid4_trace_ids(500)) == 1.0
    with pytest.raises(ValueError):
        correlation.WholeTraceIdRatioSampler(1.5)


def test_ratio_sampler_names_keep_their_meaning_with_the_whole_id_hash():
    assert correlation.sampler_for(settings_from({})) is None
    assert correlation.sampler_for(settings_from({"OTEL_TRACES_SAMPLER": "always_off"})) is None
    ratio = correlation.sampler_for(
        settings_from({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.2"})
    )
    assert isinstance(ratio, correlation.WholeTraceIdRatioSampler) and ratio.ratio == 0.2
    parent = correlation.sampler_for(
        settings_from({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.3"})
    )
    assert isinstance(parent, ParentBased) and "0.3" in parent.get_description()
    broken = correlation.sampler_for(
        settings_from({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "lots"})
    )
    assert broken.ratio == 1.0


def test_samplers_and_id_generator_are_published_for_other_configurators():
    from importlib.metadata import entry_points

    assert {ep.name for ep in entry_points(group="opentelemetry_traces_sampler")} >= {
        "otel_render_traceidratio",
        "otel_render_parentbased_traceidratio",
    }
    generator = next(ep for ep in entry_points(group="opentelemetry_id_generator") if ep.name == "otel_render")
    assert generator.load() is correlation.CorrelationIdGenerator
    sampler = next(
        ep for ep in entry_points(group="opentelemetry_traces_sampler") if ep.name == "otel_render_traceidratio"
    )
    assert sampler.load()("0.5").ratio == 0.5


# --------------------------------------------------------------------------
# Response headers
# --------------------------------------------------------------------------

SPAN_CONTEXT = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, False, TraceFlags(1))


def test_traceresponse_names_the_trace_and_the_server_span():
    headers = correlation.trace_response_headers("req-1", SPAN_CONTEXT, "traceresponse")
    assert headers == [
        ("X-Request-ID", "req-1"),
        ("traceresponse", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ]


def test_server_timing_or_nothing_instead():
    assert correlation.trace_response_headers("r", SPAN_CONTEXT, "server-timing")[1] == (
        "Server-Timing",
        'traceparent;desc="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"',
    )
    assert correlation.trace_response_headers("r", SPAN_CONTEXT, "none") == [("X-Request-ID", "r")]
    assert correlation.trace_response_headers("r", trace.INVALID_SPAN_CONTEXT, "traceresponse") == [
        ("X-Request-ID", "r")
    ]
