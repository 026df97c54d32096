"""Reading and checking the collector configuration (collector/config.yaml).

This module owns the parts of the Collector's configuration model the tests
need, as pure functions: how ``${env:NAME:-default}`` references expand
(:func:`resolve`), which variables collector/README.md documents
(:func:`documented_variables`), and :func:`config_problems`, which lists
everything wrong with a configuration for a given environment. Both the
collector tests and the render.yaml tests (which set the collector's
environment) use it.
"""

from __future__ import annotations

import re
from typing import Any

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
