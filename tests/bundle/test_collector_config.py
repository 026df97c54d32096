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

COLLECTOR = contract.ROOT / "collector"
CONFIG = COLLECTOR / "config.yaml"
DOCKERFILE = COLLECTOR / "Dockerfile"
README = COLLECTOR / "README.md"

# Component types of the contrib distribution this config may use.
KNOWN_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "filter", "tail_sampling", "batch"},
    "exporters": {"otlp_http", "otlp_grpc", "load_balancing", "debug"},
    "extensions": {"health_check", "basicauth"},
}
INSTANCE_MB = 512

ENV_REFERENCE = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
WHOLE_ENV_REFERENCE = re.compile(r"^\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}$")


def documented_variables(readme: str) -> dict[str, str]:
    """``| `NAME` | `default` or (empty) | meaning |`` rows of the README -> {name: default}."""
    found: dict[str, str] = {}
    for line in readme.splitlines():
        match = re.match(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|\s*(.*?)\s*\|", line)
        if match:
            default = match.group(2)
            found[match.group(1)] = "" if default == "(empty)" else default.strip("`")
    return found


def env_references(text: str) -> dict[str, set[str]]:
    """Every ``${env:NAME[:-default]}`` in ``text``: {name: {defaults used}}."""
    references: dict[str, set[str]] = {}
    for name, default in ENV_REFERENCE.findall(text):
        references.setdefault(name, set()).add(default)
    return references


def resolve(node: Any, environ: dict[str, str]) -> Any:
    """Expand ``${env:...}`` the way the collector does: a reference that is
    the whole value is parsed as YAML (so it can be a list or a number), one
    inside a longer string is substituted as text."""
    if isinstance(node, dict):
        return {key: resolve(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, environ) for value in node]
    if isinstance(node, str):
        whole = WHOLE_ENV_REFERENCE.match(node)
        if whole:
            raw = environ.get(whole.group(1), whole.group(2) or "")
            return yaml.safe_load(raw) if raw else None
        return ENV_REFERENCE.sub(lambda m: environ.get(m.group(1), m.group(2) or ""), node)
    return node


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def config_problems(config_text: str, readme_text: str, environ: dict[str, str] | None = None) -> list[str]:
    """Everything wrong with a collector config for the given environment."""
    problems: list[str] = []
    documented = documented_variables(readme_text)
    for name, defaults in env_references(config_text).items():
        if name not in documented:
            problems.append(f"${{env:{name}}} is not documented in collector/README.md")
        elif documented[name] not in defaults or len(defaults) != 1:
            problems.append(f"{name}: README default {documented[name]!r}, config defaults {sorted(defaults)!r}")
    config = resolve(yaml.safe_load(config_text), environ or {})
    service = config.get("service") or {}
    for section, known in KNOWN_TYPES.items():
        for component_id in config.get(section) or {}:
            if component_type(component_id) not in known:
                problems.append(f"{section}: unknown component type {component_id!r}")
    for extension in service.get("extensions") or []:
        if extension not in (config.get("extensions") or {}):
            problems.append(f"service.extensions: {extension!r} is not defined")
    pipelines = service.get("pipelines") or {}
    for signal in ("traces", "metrics", "logs"):
        if signal not in pipelines:
            problems.append(f"no {signal} pipeline")
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            listed = pipeline.get(section)
            if section != "processors" and not listed:
                problems.append(f"pipeline {name}: no {section}")
                continue
            if not isinstance(listed or [], list):
                problems.append(f"pipeline {name}: {section} is {listed!r}, not a list")
                continue
            for component_id in listed or []:
                if component_id not in (config.get(section) or {}):
                    problems.append(f"pipeline {name}: {section[:-1]} {component_id!r} is not defined")
        processors = pipeline.get("processors") or []
        if not processors or processors[0] != "memory_limiter":
            problems.append(f"pipeline {name}: memory_limiter must come first, found {processors}")
        if processors and component_type(processors[-1]) != "batch":
            problems.append(f"pipeline {name}: batch should come last, found {processors}")
    traces = pipelines.get("traces") or {}
    processors = traces.get("processors") or []
    if "tail_sampling" in processors and "filter/health_checks" in processors:
        if processors.index("filter/health_checks") > processors.index("tail_sampling"):
            problems.append("traces: drop health checks before tail sampling holds them in memory")
    for exporter_id, exporter in (config.get("exporters") or {}).items():
        authenticator = ((exporter or {}).get("auth") or {}).get("authenticator")
        if authenticator and authenticator not in (service.get("extensions") or []):
            problems.append(f"exporter {exporter_id}: authenticator {authenticator!r} is not a started extension")
    return problems


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
