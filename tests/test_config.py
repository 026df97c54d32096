"""Settings: parsing, validation with clear messages, defaults, and the docs."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from otel_render import config
from otel_render.config import Settings, declared_variables, get_settings, use_settings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


def test_defaults_when_nothing_is_set():
    settings, problems = Settings.from_environ({})
    assert problems == []
    assert settings.backend == "auto"
    assert settings.memory_limit_mb == 0
    assert settings.shutdown_timeout_s == 3.0


def test_values_are_parsed_to_their_types():
    settings, problems = Settings.from_environ(
        {
            "OTEL_RENDER_BACKEND": " Honeycomb ",
            "OTEL_RENDER_MEMORY_LIMIT_MB": "512",
            "OTEL_RENDER_SHUTDOWN_TIMEOUT_S": "0.5",
            "HONEYCOMB_API_KEY": "abc",
        }
    )
    assert problems == []
    assert settings.backend == "honeycomb"
    assert settings.memory_limit_mb == 512
    assert settings.shutdown_timeout_s == 0.5
    assert settings.honeycomb_api_key == "abc"


@pytest.mark.parametrize(
    ("variable", "raw", "accepted"),
    [
        ("OTEL_RENDER_MEMORY_LIMIT_MB", "lots", "a whole number from 0 to 1048576 MiB"),
        ("OTEL_RENDER_MEMORY_LIMIT_MB", "-5", "a whole number from 0 to 1048576 MiB"),
        ("OTEL_RENDER_MEMORY_LIMIT_MB", "12.5", "a whole number"),
        ("OTEL_RENDER_SHUTDOWN_TIMEOUT_S", "nan", "a number from 0.1 to 25 seconds"),
        ("OTEL_RENDER_SHUTDOWN_TIMEOUT_S", "inf", "a number from 0.1 to 25 seconds"),
        ("OTEL_RENDER_SHUTDOWN_TIMEOUT_S", "100", "a number from 0.1 to 25 seconds"),
        ("OTEL_RENDER_BACKEND", "datadog", "one of auto, otlp, grafana, honeycomb, none"),
        ("OTEL_RENDER_GRAFANA_INSTANCE_ID", "12\n34", "without control characters"),
    ],
)
def test_bad_value_falls_back_to_default_with_one_clear_line(variable, raw, accepted):
    settings, problems = Settings.from_environ({variable: raw})
    assert len(problems) == 1
    message = problems[0].message
    assert message.startswith(f"{variable}=")
    assert accepted in message
    assert "using the default" in message
    assert "\n" not in message
    field = next(f for f in declared_variables() if f.env == variable)
    attribute = {v.env: name for name, v in _fields().items()}[variable]
    assert getattr(settings, attribute) == field.default


def test_secret_values_are_never_repeated_in_messages():
    _, problems = Settings.from_environ({"OTEL_RENDER_GRAFANA_TOKEN": "glc_top\nsecret"})
    assert len(problems) == 1
    assert "glc_top" not in problems[0].message
    assert "[redacted]" in problems[0].message


def test_empty_value_means_unset():
    settings, problems = Settings.from_environ({"OTEL_RENDER_MEMORY_LIMIT_MB": "  "})
    assert problems == []
    assert settings.memory_limit_mb == 0


def test_sdk_disabled_reads_the_standard_variable():
    assert Settings.from_environ({"OTEL_SDK_DISABLED": "TRUE"})[0].sdk_disabled()
    assert not Settings.from_environ({"OTEL_SDK_DISABLED": "false"})[0].sdk_disabled()
    assert not Settings.from_environ({})[0].sdk_disabled()


def test_get_settings_parses_once_and_logs_each_problem_once(monkeypatch, caplog):
    monkeypatch.setenv("OTEL_RENDER_MEMORY_LIMIT_MB", "lots")
    use_settings(None)
    try:
        with caplog.at_level(logging.WARNING, logger="otel_render.config"):
            first = get_settings()
            second = get_settings()
        assert first is second
        lines = [r.getMessage() for r in caplog.records if "OTEL_RENDER_MEMORY_LIMIT_MB" in r.getMessage()]
        assert len(lines) == 1
    finally:
        use_settings(None)


def test_every_variable_is_namespaced_documented_and_has_an_example():
    for variable in declared_variables():
        assert variable.env.startswith(("OTEL_RENDER_", "HONEYCOMB_")), variable.env
        assert variable.doc and variable.example and variable.section


def _fields():
    from dataclasses import fields

    return {f.name: f.metadata["variable"] for f in fields(Settings) if "variable" in f.metadata}


def _documented_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in DOCS.read_text().splitlines():
        match = re.match(r"^\| `((?:OTEL_RENDER|HONEYCOMB)_[A-Z0-9_]+)` \| ([^|]*) \| ([^|]*) \|", line)
        if match:
            rows[match.group(1)] = (match.group(2).strip(), match.group(3).strip())
    return rows


def test_docs_list_exactly_the_declared_variables_with_their_defaults():
    documented = _documented_rows()
    declared = {v.env: v for v in declared_variables()}
    assert set(documented) == set(declared), (
        f"only in docs: {sorted(set(documented) - set(declared))}; "
        f"only in code: {sorted(set(declared) - set(documented))}"
    )
    for name, (default, example) in documented.items():
        expected = "(empty)" if declared[name].default in ("", ()) else f"`{_render_default(declared[name].default)}`"
        assert default == expected, f"{name}: docs say {default}, code says {expected}"
        assert example.startswith("`") and len(example) > 2, f"{name} has no example in the docs"


def _render_default(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def test_only_the_config_module_reads_the_process_environment():
    package = Path(config.__file__).parent
    readers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "config.py" and re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text())
    ]
    assert readers == []


def test_sdk_self_metrics_are_on_only_while_the_pipeline_is_built(monkeypatch):
    from otel_render.config import SDK_SELF_METRICS_VARIABLE, sdk_self_metrics

    monkeypatch.delenv(SDK_SELF_METRICS_VARIABLE, raising=False)
    with sdk_self_metrics(Settings.from_environ({})[0]):
        assert os.environ[SDK_SELF_METRICS_VARIABLE] == "true"
    assert SDK_SELF_METRICS_VARIABLE not in os.environ
    # A value the user chose is theirs.
    monkeypatch.setenv(SDK_SELF_METRICS_VARIABLE, "false")
    with sdk_self_metrics(Settings.from_environ({SDK_SELF_METRICS_VARIABLE: "false"})[0]):
        assert os.environ[SDK_SELF_METRICS_VARIABLE] == "false"
    assert os.environ[SDK_SELF_METRICS_VARIABLE] == "false"
