"""The Render Blueprints (render.yaml with the collector, render.direct.yaml
without): services wired to each other the way Render wires them, settings that
the package and the collector accept, and timeouts that fit together.

The start command itself is run against the example app in
tests/integration/test_render_start_command.py.
"""

from __future__ import annotations

import re

import pytest
import yaml

from bundle import blueprint, collector_config, contract
from otel_render import distro
from otel_render.config import Settings, declared_variables

ROOT = contract.ROOT
WITH_COLLECTOR = ROOT / "render.yaml"
DIRECT = ROOT / "render.direct.yaml"

# The seed's request timeout and query timeout: the worker timeout stays above both.
SEED_DEADLINE_S = 30.0


@pytest.fixture(params=blueprint.BLUEPRINTS, ids=[path.name for path in blueprint.BLUEPRINTS])
def any_blueprint(request):
    return blueprint.load(request.param)


def test_the_web_service(any_blueprint):
    web = blueprint.web_service(any_blueprint)
    assert web["runtime"] == "python"
    assert web["buildCommand"].startswith("pip install")
    assert "opentelemetry-instrument gunicorn " in web["startCommand"]
    assert re.search(r"exec opentelemetry-instrument gunicorn", web["startCommand"]), "gunicorn must get SIGTERM itself"
    assert "--bind 0.0.0.0:$PORT" in web["startCommand"]
    assert web["healthCheckPath"] == "/health"
    assert isinstance(web["maxShutdownDelaySeconds"], int) and 1 <= web["maxShutdownDelaySeconds"] <= 300
    env = blueprint.env_entries(web)
    assert env["OTEL_PYTHON_DISTRO"]["value"] == distro.DISTRO_NAME
    assert env["OTEL_PYTHON_CONFIGURATOR"]["value"] == distro.CONFIGURATOR_NAME
    assert env["OTEL_RENDER_TOKEN"] == {"key": "OTEL_RENDER_TOKEN", "generateValue": True}
    assert int(env["WEB_CONCURRENCY"]["value"]) >= 1


def test_the_distro_names_are_the_entry_points_users_pin():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'{distro.DISTRO_NAME} = "otel_render.distro:OtelRenderDistro"' in pyproject
    assert f'{distro.CONFIGURATOR_NAME} = "otel_render.distro:OtelRenderConfigurator"' in pyproject


def test_timeouts_fit_together(any_blueprint):
    web = blueprint.web_service(any_blueprint)
    options = blueprint.gunicorn_options(web["startCommand"])
    worker_timeout = float(options["timeout"])
    graceful = float(options["graceful-timeout"])
    settings, problems = Settings.from_environ(dict(blueprint.literal_values(web)))
    assert problems == []
    # Deadlines the package enforces inside a request must fire before gunicorn kills the worker.
    deadlines = {"seed request/query timeout": SEED_DEADLINE_S}
    for variable in declared_variables():
        is_deadline = variable.env.endswith("_S") and ("TIMEOUT" in variable.env or "DEADLINE" in variable.env)
        if variable.section in ("Web requests", "Database") and is_deadline:
            attribute = next(f for f in Settings.__dataclass_fields__.values() if f.metadata.get("variable") is variable)
            deadlines[variable.env] = float(getattr(settings, attribute.name))
    for name, seconds in deadlines.items():
        assert worker_timeout > seconds, f"--timeout {worker_timeout} must exceed {name} ({seconds} s)"
    # Graceful stop, then the final telemetry flush, before Render's SIGKILL.
    assert graceful + settings.shutdown_timeout_s < web["maxShutdownDelaySeconds"]


def test_every_otel_render_variable_is_declared_and_parses(any_blueprint):
    declared = {variable.env for variable in declared_variables()}
    for entry in any_blueprint["services"]:
        env = blueprint.env_entries(entry)
        ours = {key for key in env if key.startswith("OTEL_RENDER_") or key.startswith("HONEYCOMB_")}
        if entry["type"] == "web":
            unknown = ours - declared
            assert unknown == set(), f"{entry['name']}: not declared in otel_render/config.py: {unknown}"
    settings, problems = Settings.from_environ(dict(blueprint.literal_values(blueprint.web_service(any_blueprint))))
    assert problems == []


def test_the_web_service_reaches_the_collector_and_the_database():
    document = blueprint.load(WITH_COLLECTOR)
    web = blueprint.web_service(document)
    env = blueprint.env_entries(web)
    collector_ref = env["OTEL_COLLECTOR_HOSTPORT"]["fromService"]
    assert collector_ref["property"] == "hostport"
    collector = blueprint.service(document, collector_ref["name"])
    assert collector_ref["type"] == collector["type"] == "pserv"
    # hostport has no scheme: the start command builds the URL from it.
    assert 'OTEL_EXPORTER_OTLP_ENDPOINT="http://${OTEL_COLLECTOR_HOSTPORT}"' in web["startCommand"]
    database_ref = env["DATABASE_URL"]["fromDatabase"]
    assert database_ref["property"] == "connectionString"
    (database,) = [db for db in document["databases"] if db["name"] == database_ref["name"]]
    assert database["ipAllowList"] == [], "the database is reachable from the private network only"
    assert str(database["postgresMajorVersion"]).isdigit()
    regions = {entry["region"] for entry in document["services"] + document["databases"]}
    assert len(regions) == 1, f"the private network does not cross regions: {regions}"


def test_the_collector_service_builds_the_bundled_image_on_a_paid_plan():
    document = blueprint.load(WITH_COLLECTOR)
    collector = blueprint.service(document, "otel-collector")
    assert collector["runtime"] == "docker"
    assert collector["plan"] != "free", "private services are not available on the free plan"
    assert (ROOT / collector["dockerfilePath"]).resolve() == collector_config.DOCKERFILE
    assert (ROOT / collector["dockerContext"]).resolve() == collector_config.COLLECTOR
    # hostport gives the web service the OTLP/HTTP port (the package exports http/protobuf)
    config = collector_config.resolve(yaml.safe_load(collector_config.CONFIG.read_text()), {})
    http_endpoint = config["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
    assert http_endpoint.endswith(":" + blueprint.env_entries(collector)["PORT"]["value"])


def test_the_collector_environment_gives_a_valid_collector_config():
    collector = blueprint.service(blueprint.load(WITH_COLLECTOR), "otel-collector")
    env = blueprint.env_entries(collector)
    documented = collector_config.documented_variables(collector_config.README.read_text())
    for key, item in env.items():
        if key not in ("PORT",):
            assert key in documented, f"{key} is set on the collector but collector/README.md does not document it"
        assert "value" in item or item.get("sync") is False, key
    # every secret the config reads is asked for, never written in the file
    for secret in ("GRAFANA_CLOUD_API_TOKEN", "GRAFANA_CLOUD_INSTANCE_ID", "HONEYCOMB_API_KEY"):
        assert env[secret] == {"key": secret, "sync": False}
    problems = collector_config.config_problems(
        collector_config.CONFIG.read_text(), collector_config.README.read_text(), dict(blueprint.literal_values(collector))
    )
    assert problems == []


def test_the_direct_variant_has_no_collector_and_asks_for_either_backend():
    document = blueprint.load(DIRECT)
    assert [entry["type"] for entry in document["services"]] == ["web"]
    web = blueprint.web_service(document)
    env = blueprint.env_entries(web)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in web["startCommand"]
    assert not any("fromService" in item for item in env.values())
    for key in ("OTEL_RENDER_GRAFANA_ENDPOINT", "OTEL_RENDER_GRAFANA_INSTANCE_ID", "OTEL_RENDER_GRAFANA_TOKEN", "HONEYCOMB_API_KEY"):
        assert env[key] == {"key": key, "sync": False}
    # the same gunicorn invocation as the full Blueprint
    full = blueprint.web_service(blueprint.load(WITH_COLLECTOR))["startCommand"]
    assert web["startCommand"] in full

