"""Backend presets and the standard-variables-win rule, as pure functions."""

from __future__ import annotations

import base64

import pytest

from otel_render.backends import plan_export
from otel_render.config import Settings

GRAFANA = {
    "OTEL_RENDER_GRAFANA_ENDPOINT": "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp",
    "OTEL_RENDER_GRAFANA_INSTANCE_ID": "123456",
    "OTEL_RENDER_GRAFANA_TOKEN": "glc_secret_token",
}


def plan(environ):
    settings, problems = Settings.from_environ(environ)
    assert problems == []
    return plan_export(settings)


def test_nothing_configured_keeps_telemetry_local():
    result = plan({})
    assert result.backend == "none"
    assert not result.sends_over_network
    assert result.problems == ()


def test_grafana_preset_builds_basic_auth_and_signal_urls():
    result = plan(GRAFANA)
    assert result.backend == "grafana"
    traces = result.signals["traces"]
    assert traces.exporters == ("otlp",)
    assert traces.protocol == "http/protobuf"
    assert traces.endpoint == "https://otlp-gateway-prod-eu-west-2.grafana.net/otlp/v1/traces"
    assert result.signals["metrics"].endpoint.endswith("/otlp/v1/metrics")
    expected = "Basic " + base64.b64encode(b"123456:glc_secret_token").decode()
    assert traces.headers == {"authorization": expected}
    assert traces.compression == "gzip"
    # Logs are opt-in.
    assert result.signals["logs"].exporters == ()


def test_grafana_needs_all_three_variables():
    result = plan({**GRAFANA, "OTEL_RENDER_GRAFANA_TOKEN": "", "OTEL_RENDER_BACKEND": "grafana"})
    assert result.backend == "none"
    assert any("OTEL_RENDER_GRAFANA_TOKEN" in problem for problem in result.problems)


def test_honeycomb_preset_with_dataset_for_metrics_only():
    result = plan({"HONEYCOMB_API_KEY": "hc-key", "OTEL_SERVICE_NAME": "shop"})
    assert result.backend == "honeycomb"
    assert result.signals["traces"].endpoint == "https://api.honeycomb.io/v1/traces"
    assert result.signals["traces"].headers == {"x-honeycomb-team": "hc-key"}
    assert result.signals["metrics"].headers == {"x-honeycomb-team": "hc-key", "x-honeycomb-dataset": "shop-metrics"}


def test_honeycomb_eu_and_named_dataset():
    result = plan({"HONEYCOMB_API_KEY": "k", "HONEYCOMB_DATASET": "metrics", "OTEL_RENDER_HONEYCOMB_REGION": "eu"})
    assert result.signals["metrics"].endpoint == "https://api.eu1.honeycomb.io/v1/metrics"
    assert result.signals["metrics"].headers["x-honeycomb-dataset"] == "metrics"


def test_grafana_wins_over_honeycomb_under_auto_and_explicit_backend_wins_over_auto():
    both = {**GRAFANA, "HONEYCOMB_API_KEY": "k"}
    assert plan(both).backend == "grafana"
    assert plan({**both, "OTEL_RENDER_BACKEND": "honeycomb"}).backend == "honeycomb"


def test_collector_endpoint_selects_otlp_and_appends_signal_paths():
    result = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert result.backend == "otlp"
    assert result.signals["traces"].endpoint == "http://collector:4318/v1/traces"
    assert result.signals["traces"].compression is None


def test_standard_endpoint_and_headers_win_over_the_preset():
    result = plan(
        {
            **GRAFANA,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces-only:4318/custom",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20mine,x-extra=1",
        }
    )
    traces, metrics = result.signals["traces"], result.signals["metrics"]
    assert traces.endpoint == "http://traces-only:4318/custom"  # per-signal URL is used as is
    assert metrics.endpoint == "http://collector:4318/v1/metrics"
    assert traces.headers == {"authorization": "Bearer mine", "x-extra": "1"}


def test_standard_exporter_variables_win():
    result = plan({**GRAFANA, "OTEL_TRACES_EXPORTER": "console", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "otlp"})
    assert result.signals["traces"].exporters == ("console",)
    assert result.signals["metrics"].exporters == ()
    assert result.signals["logs"].exporters == ("otlp",)


def test_grpc_only_when_chosen_and_without_signal_path():
    assert plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).signals["traces"].protocol == "http/protobuf"
    result = plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert result.signals["traces"].protocol == "grpc"
    assert result.signals["traces"].endpoint == "http://c:4317"


def test_timeout_defaults_to_ours_unless_the_standard_variable_is_set():
    assert plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).signals["traces"].timeout_s == 5.0
    assert plan({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_TIMEOUT": "2000"}).signals["traces"].timeout_s is None


@pytest.mark.parametrize(
    "endpoint",
    ["collector:4318", "not a url", "ftp://collector", "http://", "http://host:99999", "http://c:43\n18"],
)
def test_malformed_endpoint_turns_otlp_off_with_one_message(endpoint):
    settings, _ = Settings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    result = plan_export(settings)
    assert not result.sends_over_network
    assert len(result.problems) == 1
    assert result.problems[0].startswith("OTEL_EXPORTER_OTLP_ENDPOINT=")
    assert "http:// or https:// URL" in result.problems[0]
    assert "\n" not in result.problems[0]


def test_unknown_protocol_falls_back_to_http_with_a_message():
    settings, _ = Settings.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    result = plan_export(settings)
    assert result.signals["traces"].protocol == "http/protobuf"
    assert result.problems == ("OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is not valid: expected one of http/protobuf, grpc; using http/protobuf",)


def test_header_with_a_newline_is_dropped_naming_the_header_not_the_value():
    settings, _ = Settings.from_environ(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "x-good=1,x-evil=abc%0D%0AInjected: yes,novalue,bad name=2",
        }
    )
    result = plan_export(settings)
    assert result.signals["traces"].headers == {"x-good": "1"}
    assert result.sends_over_network
    joined = " ".join(result.problems)
    assert "'x-evil'" in joined and "Injected" not in joined and "abc" not in joined
    assert len(result.problems) == 3  # reported once, not once per signal


def test_describe_masks_secrets():
    described = plan({**GRAFANA, "HONEYCOMB_DATASET": "m"}).describe()
    text = repr(described)
    assert "glc_secret_token" not in text
    assert base64.b64encode(b"123456:glc_secret_token").decode() not in text
    assert described["signals"]["traces"]["headers"]["authorization"].startswith("[redacted")
