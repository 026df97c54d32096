"""Validate local endpoint bodies against the JSON Schemas in ``docs/schemas``.

Usage::

    from support.endpoint_schemas import validate
    validate("/api/metrics", body)   # raises jsonschema.ValidationError
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "docs" / "schemas"
FILES = {
    "/health": "health.schema.json",
    "/api/health": "api-health.schema.json",
    "/api/metrics": "api-metrics.schema.json",
    "/api/diagnostics": "api-diagnostics.schema.json",
}


@cache
def _validators() -> dict[str, Draft202012Validator]:
    schemas = {path: json.loads((SCHEMAS / name).read_text()) for path, name in FILES.items()}
    registry = Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas.values())
    validators = {}
    for path, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        validators[path] = Draft202012Validator(schema, registry=registry)
    return validators


def validate(endpoint: str, body: Any) -> None:
    """Raise ``jsonschema.ValidationError`` when ``body`` does not match ``endpoint``'s schema."""
    _validators()[endpoint].validate(body)
