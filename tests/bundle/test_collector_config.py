"""The collector gateway: collector/config.yaml, its Dockerfile and README.

There is no Collector binary or Docker engine on the build machines, so the
configuration is parsed and cross-checked here: pipelines reference defined
components of known types, memory_limiter comes first, every ``${env:...}``
is documented (with the same default), the health-check filter matches what it
should, the memory sizing fits a 512 MB instance, and the Dockerfile pins the
image and puts the config where the image reads it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from bundle import contract
from bundle.collector_config import (
    CONFIG,
    DOCKERFILE,
    INSTANCE_MB,
    README,
    config_problems,
    resolve,
)


@pytest.fixture(scope="module")
def config_text() -> str:
    return CONFIG.read_text()


@pytest.fixture(scope="module")
def readme_text() -> str:
    return README.read_text()


@pytest.fixture(scope="module")
def config(config_text) -> dict[str, Any]:
    return resolve(yaml.safe_load(config_text), {})


def _exporter_choices(readme_text: str) -> dict[str, list[str]]:
    """The exporters README offers for each OTELCOL_*_EXPORTERS variable."""
    choices = {}
    for line in readme_text.splitlines():
        match = re.match(r"^\|\s*`(OTELCOL_(TRACES|METRICS|LOGS)_EXPORTERS)`\s*\|[^|]*\|(.*)\|\s*$", line)
        if match:
            choices[match.group(1)] = re.findall(r"`(otlp_[a-z]+/[a-z_]+)`", match.group(3))
    return choices


def test_the_config_has_no_problems_with_defaults(config_text, readme_text):
    assert config_problems(config_text, readme_text) == []


def test_every_documented_backend_choice_gives_a_valid_config(config_text, readme_text):
    choices = _exporter_choices(readme_text)
    assert set(choices) == {"OTELCOL_TRACES_EXPORTERS", "OTELCOL_METRICS_EXPORTERS", "OTELCOL_LOGS_EXPORTERS"}
    for variable, exporters in choices.items():
        assert len(exporters) >= 2, variable
        for chosen in ([exporters[0]], [exporters[1]], exporters):
            environ = {variable: "[" + ", ".join(chosen) + "]"}
            assert config_problems(config_text, readme_text, environ) == [], environ
            resolved = resolve(yaml.safe_load(config_text), environ)
            signal = variable.split("_")[1].lower()
            assert resolved["service"]["pipelines"][signal]["exporters"] == chosen
    # every defined exporter can be chosen through some variable
    offered = {exporter for exporters in choices.values() for exporter in exporters}
    assert offered == set(yaml.safe_load(config_text)["exporters"])


def test_receivers_listen_on_the_standard_otlp_ports(config):
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"


def test_exporters_authenticate_through_environment_variables(config_text, config):
    grafana = config["exporters"]["otlp_http/grafana"]
    assert grafana["auth"]["authenticator"] == "basicauth/grafana"
    client_auth = yaml.safe_load(config_text)["extensions"]["basicauth/grafana"]["client_auth"]
    assert client_auth["username"].startswith("${env:GRAFANA_CLOUD_INSTANCE_ID")
    assert client_auth["password"].startswith("${env:GRAFANA_CLOUD_API_TOKEN")
    raw_exporters = yaml.safe_load(config_text)["exporters"]
    assert raw_exporters["otlp_http/honeycomb"]["headers"]["x-honeycomb-team"].startswith("${env:HONEYCOMB_API_KEY")
    metrics_headers = raw_exporters["otlp_http/honeycomb_metrics"]["headers"]
    assert metrics_headers["x-honeycomb-dataset"].startswith("${env:HONEYCOMB_METRICS_DATASET")
    # no secret is written into the file itself
    assert not re.search(r"(glc_|hcaik_|Basic [A-Za-z0-9+/=]{8,})", config_text)
    for exporter in config["exporters"].values():
        assert exporter["endpoint"].startswith("https://"), exporter


def test_memory_is_sized_for_a_512_mb_instance(config):
    limiter = config["processors"]["memory_limiter"]
    assert limiter["limit_mib"] <= 0.8 * INSTANCE_MB
    assert 0 < limiter["spike_limit_mib"] < limiter["limit_mib"]
    gomemlimit = re.search(r"^ENV GOMEMLIMIT=(\d+)MiB$", DOCKERFILE.read_text(), re.M)
    assert gomemlimit, "the Dockerfile sets GOMEMLIMIT"
    assert int(gomemlimit.group(1)) < limiter["limit_mib"]
    for exporter in config["exporters"].values():
        assert exporter["sending_queue"]["queue_size"] <= 100, "an unbounded queue defeats the memory limiter"


def test_tail_sampling_keeps_errors_slow_traces_and_a_share_of_the_rest(config):
    sampling = config["processors"]["tail_sampling"]
    policies = {policy["type"]: policy for policy in sampling["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    assert policies["latency"]["latency"]["threshold_ms"] == 1000
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert sampling["num_traces"] > 0


@pytest.mark.parametrize(
    ("path", "dropped"),
    [("/health", True), ("/api/health", True), ("/healthz", True), ("/healthy", False), ("/items/1", False),
     ("/api/healthcheck", False), ("/", False)],
)
def test_the_health_check_filter_drops_health_checks_only(config, path, dropped):
    conditions = config["processors"]["filter/health_checks"]["traces"]["span"]
    patterns = [re.search(r'IsMatch\(attributes\["([a-z.]+)"\], "([^"]+)"\)', condition) for condition in conditions]
    assert all(patterns) and {match.group(1) for match in patterns} == {"http.route", "url.path"}
    assert all("kind == SPAN_KIND_SERVER" in condition for condition in conditions)
    assert any(bool(re.search(match.group(2), path)) for match in patterns) == dropped


def test_the_collector_reports_its_own_metrics_through_its_receiver(config):
    telemetry = config["service"]["telemetry"]
    assert telemetry["resource"]["service.name"] == "otel-collector"
    (reader,) = telemetry["metrics"]["readers"]
    endpoint = reader["periodic"]["exporter"]["otlp_http"]["endpoint"]
    assert endpoint == "http://127.0.0.1:4318/v1/metrics"
    # ... which the dashboards and alerts find under that service name
    assert 'job="otel-collector"' in (contract.ROOT / "dashboards/alerts/otel-render.rules.test.yaml").read_text()


def test_the_dockerfile_pins_the_contrib_image_and_copies_the_config():
    dockerfile = DOCKERFILE.read_text()
    image = re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1)
    assert re.fullmatch(r"otel/opentelemetry-collector-contrib:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", image), image
    copied = re.search(r"^COPY config\.yaml (\S+)$", dockerfile, re.M).group(1)
    assert copied == "/etc/otelcol-contrib/config.yaml"
    assert f'CMD ["--config={copied}"]' in dockerfile
    tag = image.split(":", 1)[1].split("@")[0]
    assert f"opentelemetry-collector-contrib:{tag}" in README.read_text()


def test_the_scaling_guide_routes_by_trace_id_to_the_samplers(config):
    readme = README.read_text()
    block = re.search(r"```yaml\n(.*?)```", readme, re.S).group(1)
    router = yaml.safe_load(block)
    balancer = router["exporters"]["load_balancing"]
    assert balancer["routing_key"] == "traceID"
    assert balancer["resolver"]["dns"]["hostname"].endswith("-discovery")
    processors = router["service"]["pipelines"]["traces"]["processors"]
    assert processors[0] == "memory_limiter" and "tail_sampling" not in processors
    assert set(processors) <= set(config["processors"])


# --------------------------------------------------------------------------
# the checks catch what they are for


def test_the_checks_catch_order_undefined_components_and_undocumented_variables(config_text, readme_text):
    mutant = config_text.replace(
        "processors: [memory_limiter, batch]\n      exporters: ${env:OTELCOL_METRICS_EXPORTERS:-[otlp_http/grafana]}",
        "processors: [batch, memory_limiter]\n      exporters: [otlp_http/grafna]",
    ).replace("${env:OTELCOL_LOG_LEVEL:-info}", "${env:OTELCOL_VERBOSITY:-info}")
    assert mutant != config_text
    text = "\n".join(config_problems(mutant, readme_text))
    assert "pipeline metrics: memory_limiter must come first" in text
    assert "pipeline metrics: exporter 'otlp_http/grafna' is not defined" in text
    assert "${env:OTELCOL_VERBOSITY} is not documented" in text
    wrong_default = config_text.replace("OTELCOL_SAMPLING_PERCENTAGE:-10}", "OTELCOL_SAMPLING_PERCENTAGE:-25}")
    assert "OTELCOL_SAMPLING_PERCENTAGE: README default '10'" in "\n".join(config_problems(wrong_default, readme_text))
    assert "not a list" in "\n".join(
        config_problems(config_text, readme_text, {"OTELCOL_TRACES_EXPORTERS": "otlp_http/grafana"})
    )
