"""The README's sample answers of the local endpoints stay true to the schemas.

The README shows a real answer of each endpoint (cut short where lists are
long). They were captured from `make demo`; this test keeps them from drifting
away from what the endpoints promise when a field is renamed or added.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from support.endpoint_schemas import FILES, validate

README = Path(__file__).resolve().parent.parent / "README.md"
SAMPLES_HEADING = "## The local endpoints, as they answer"
JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
ENDPOINT = re.compile(r"(/api/health|/api/metrics|/api/diagnostics|/health)\b")


def readme_samples() -> list[tuple[str, object]]:
    """(endpoint, body) for every JSON block of the samples section, the
    endpoint being the last one named in the text before the block."""
    text = README.read_text()
    start = text.index(SAMPLES_HEADING)
    end = text.find("\n## ", start)
    section = text[start : end if end != -1 else len(text)]
    samples, previous_end = [], 0
    for block in JSON_BLOCK.finditer(section):
        named = ENDPOINT.findall(section[previous_end : block.start()])
        assert named, f"no endpoint named before the JSON block at {block.start()}"
        samples.append((named[-1], json.loads(block.group(1))))
        previous_end = block.end()
    return samples


def test_the_readme_shows_an_answer_of_every_endpoint():
    assert {endpoint for endpoint, _ in readme_samples()} == set(FILES)


def test_every_readme_answer_matches_its_schema():
    for endpoint, body in readme_samples():
        validate(endpoint, body)
