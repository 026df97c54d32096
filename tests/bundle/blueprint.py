"""Reading a Render Blueprint (render.yaml) the way Render does.

This module owns what the tests need from a Blueprint: its services and
databases by name, the environment a service gets (literal values, generated
secrets, values from other services and databases, prompts), and the start
command's gunicorn options. Render-only inputs (``$PORT``, a private service's
address, a database URL) are passed in by the caller, so a test can run the
start command locally with loopback stand-ins.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bundle import contract

BLUEPRINTS = (contract.ROOT / "render.yaml", contract.ROOT / "render.direct.yaml")


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def service(blueprint: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in blueprint.get("services", []):
        if entry["name"] == name:
            return entry
    raise KeyError(name)


def web_service(blueprint: dict[str, Any]) -> dict[str, Any]:
    (web,) = [entry for entry in blueprint["services"] if entry["type"] == "web"]
    return web


def env_entries(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["key"]: item for item in entry.get("envVars", []) if "key" in item}


@dataclass(frozen=True)
class RenderInputs:
    """What only Render provides, with local stand-ins."""

    port: int
    from_service: Callable[[dict[str, Any]], str]
    """Value of a ``fromService`` reference (e.g. a loopback host:port)."""
    from_database: Callable[[dict[str, Any]], str]
    """Value of a ``fromDatabase`` reference (e.g. a throwaway PostgreSQL URL)."""


def environment(entry: dict[str, Any], inputs: RenderInputs) -> dict[str, str]:
    """The environment Render would give the service (``sync: false`` prompts left unset)."""
    env = {"PORT": str(inputs.port), "RENDER": "true", "RENDER_SERVICE_NAME": entry["name"]}
    for key, item in env_entries(entry).items():
        if "value" in item:
            env[key] = str(item["value"])
        elif item.get("generateValue"):
            env[key] = secrets.token_urlsafe(32)
        elif "fromService" in item:
            env[key] = inputs.from_service(item["fromService"])
        elif "fromDatabase" in item:
            env[key] = inputs.from_database(item["fromDatabase"])
    return env


def gunicorn_options(start_command: str) -> dict[str, str]:
    """``--name value`` options of the gunicorn part of a start command."""
    words = shlex.split(start_command)
    options: dict[str, str] = {}
    for index, word in enumerate(words):
        if word.startswith("--") and index + 1 < len(words) and not words[index + 1].startswith("-"):
            options[word[2:]] = words[index + 1]
    return options


def literal_values(entry: dict[str, Any]) -> Mapping[str, str]:
    return {key: str(item["value"]) for key, item in env_entries(entry).items() if "value" in item}
