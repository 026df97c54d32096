#!/usr/bin/env python3
"""Create the otel-render board in Honeycomb from board.json.

For each panel of the spec it creates the query (``POST /1/queries/{dataset}``)
and a query annotation naming it (``POST /1/query_annotations/{dataset}``),
then the flexible board that lays them out (``POST /1/boards``). Panels marked
``"dataset": "traces"`` go to ``--traces-dataset`` (named after your
``service.name``), those marked ``"metrics"`` to ``--metrics-dataset``
(``HONEYCOMB_DATASET``; by default the service name followed by ``-metrics``).

The key comes from the environment, never from the command line:
``HONEYCOMB_CONFIG_KEY``, a configuration key with the *Manage Queries and
Columns* and *Manage Public Boards* permissions (an ingest key cannot create
boards). ``--dry-run`` prints every request it would send, with the key
masked, and sends nothing.

Standard library only, so it runs anywhere Python 3.10+ does::

    HONEYCOMB_CONFIG_KEY=... python dashboards/honeycomb/create_board.py \\
        --traces-dataset my-app --metrics-dataset my-app-metrics [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

KEY_VARIABLE = "HONEYCOMB_CONFIG_KEY"
DEFAULT_API_URL = "https://api.honeycomb.io"
DEFAULT_SPEC = Path(__file__).resolve().parent / "board.json"
TIMEOUT_S = 30.0

Send = Callable[[str, str, Mapping[str, Any]], dict[str, Any]]


class HoneycombError(RuntimeError):
    """The API refused a request; the message says which and why."""


def mask(key: str) -> str:
    """Enough of a key to recognise it, not enough to use it."""
    return (key[:4] + "…" + f"({len(key)} characters)") if key else "(no key)"


def board_requests(spec: Mapping[str, Any], datasets: Mapping[str, str], send: Send) -> dict[str, Any]:
    """Create every query, annotation and the board through ``send``; return the board."""
    panels = []
    for panel in spec["panels"]:
        dataset = urllib.parse.quote(datasets[panel["dataset"]], safe="")
        query = send("POST", f"/1/queries/{dataset}", panel["query"])
        annotation = send(
            "POST",
            f"/1/query_annotations/{dataset}",
            {"name": panel["name"], "description": panel["description"], "query_id": query["id"]},
        )
        panels.append(
            {
                "type": "query",
                "position": panel["position"],
                "query_panel": {
                    "query_id": query["id"],
                    "query_annotation_id": annotation["id"],
                    "query_style": panel.get("style", "graph"),
                },
            }
        )
    board = {
        "name": spec["name"],
        "description": spec["description"],
        "type": "flexible",
        "preset_filters": spec.get("preset_filters", []),
        "panels": panels,
    }
    return send("POST", "/1/boards", board)


def http_sender(api_url: str, key: str) -> Send:
    """Send requests to the Honeycomb API (or anything that speaks it)."""

    def send(method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            api_url.rstrip("/") + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"X-Honeycomb-Team": key, "Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                answer = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            detail = error.read()[:500].decode("utf-8", "replace")
            raise HoneycombError(f"{method} {path} answered {error.code} {error.reason}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            raise HoneycombError(f"{method} {path} failed: {error}") from None
        except ValueError:
            raise HoneycombError(f"{method} {path} answered with something that is not JSON") from None
        if path != "/1/boards" and not isinstance(answer.get("id"), str):
            raise HoneycombError(f"{method} {path} answered without an id: {str(answer)[:200]}")
        return answer

    return send


def dry_run_sender(api_url: str, key: str, out: Any) -> Send:
    """Print each request instead of sending it; answer with placeholder ids."""
    counter = {"n": 0}

    def send(method: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        counter["n"] += 1
        print(f"{method} {api_url.rstrip('/')}{path}", file=out)
        print(f"X-Honeycomb-Team: {mask(key)}", file=out)
        print(json.dumps(body, indent=2), file=out)
        print(file=out)
        kind = path.split("/")[2]
        return {"id": f"<{kind} #{counter['n']}>", "links": {"board_url": "<board url>"}}

    return send


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(description="Create the otel-render board in Honeycomb.")
    parser.add_argument("--traces-dataset", required=True, help="dataset of your traces (your service.name)")
    parser.add_argument("--metrics-dataset", required=True, help="dataset of your metrics (HONEYCOMB_DATASET)")
    parser.add_argument("--api-url", default=environ.get("HONEYCOMB_API_URL", DEFAULT_API_URL),
                        help=f"Honeycomb API (default {DEFAULT_API_URL}; EU: https://api.eu1.honeycomb.io)")
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="board specification (default board.json)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    args = parser.parse_args(argv)

    spec = json.loads(args.spec.read_text(encoding="utf-8"))
    datasets = {"traces": args.traces_dataset, "metrics": args.metrics_dataset}
    key = environ.get(KEY_VARIABLE, "").strip()
    if args.dry_run:
        board_requests(spec, datasets, dry_run_sender(args.api_url, key, sys.stdout))
        print(f"dry run: {2 * len(spec['panels']) + 1} requests printed, nothing sent", file=sys.stderr)
        return 0
    if not key:
        print(f"{KEY_VARIABLE} is not set: export a Honeycomb configuration key "
              "(Manage Queries and Columns, Manage Public Boards)", file=sys.stderr)
        return 2
    try:
        board = board_requests(spec, datasets, http_sender(args.api_url, key))
    except HoneycombError as error:
        print(f"Honeycomb refused the board: {error}", file=sys.stderr)
        return 1
    url = (board.get("links") or {}).get("board_url") or f"board {board.get('id')}"
    print(f"created {len(spec['panels'])} queries and the board: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
