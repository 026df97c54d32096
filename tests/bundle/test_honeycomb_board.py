"""The Honeycomb board: a spec whose queries ask documented questions of the
right dataset, and a script that creates it through the Honeycomb API.

The real API cannot be reached from the build machines: the script's real
mode is tested against a loopback HTTP server standing in for it.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from bundle import contract

HONEYCOMB = contract.ROOT / "dashboards" / "honeycomb"
SPEC = HONEYCOMB / "board.json"
SCRIPT = HONEYCOMB / "create_board.py"

# Fields Honeycomb adds to every span event.
SPAN_FIELDS = {"duration_ms", "name", "error", "span.kind", "status_code", "trace.trace_id", "trace.parent_id", "trace.span_id", "service.name"}
RESOURCE_FIELDS = {"service.name", "service.instance.id"}
CALCULATIONS = {"COUNT", "CONCURRENCY", "SUM", "AVG", "COUNT_DISTINCT", "HEATMAP", "MAX", "MIN",
                "P001", "P01", "P05", "P10", "P20", "P25", "P50", "P75", "P80", "P90", "P95", "P99", "P999",
                "RATE_AVG", "RATE_SUM", "RATE_MAX"}
# Honeycomb refuses these on a metrics dataset (they count events, not values).
NOT_ON_METRICS = {"COUNT", "CONCURRENCY", "RATE_AVG", "RATE_SUM", "RATE_MAX"}
FILTER_OPS = {"=", "!=", ">", ">=", "<", "<=", "starts-with", "does-not-start-with", "exists", "does-not-exist",
              "contains", "does-not-contain", "in", "not-in"}
QUERY_KEYS = {"calculations", "filters", "breakdowns", "orders", "time_range", "granularity", "limit", "filter_combination", "havings"}


def spec() -> dict[str, Any]:
    return json.loads(SPEC.read_text())


def query_columns(query: dict[str, Any]) -> set[str]:
    columns = {calc["column"] for calc in query.get("calculations", []) if "column" in calc}
    columns |= {flt["column"] for flt in query.get("filters", [])}
    columns |= set(query.get("breakdowns", []))
    columns |= {order["column"] for order in query.get("orders", []) if "column" in order}
    return columns


def spec_problems(board: dict[str, Any]) -> list[str]:
    """Queries that ask undocumented or impossible things, and a broken layout."""
    documented = contract.dashboard_contract().by_name()
    all_attributes = {attribute for row in documented.values() for attribute in row.attributes}
    problems: list[str] = []
    keys = [panel["key"] for panel in board["panels"]]
    problems += [f"panel key {key!r} is used twice" for key in contract.duplicates(keys)]
    placed: list[tuple[str, int, int, int, int]] = []
    for panel in board["panels"]:
        where = f"panel {panel['key']!r}"
        query = panel["query"]
        problems += [f"{where}: unknown query field {key!r}" for key in sorted(set(query) - QUERY_KEYS)]
        ops = {calc["op"] for calc in query.get("calculations", [])}
        problems += [f"{where}: unknown calculation {op}" for op in sorted(ops - CALCULATIONS)]
        problems += [f"{where}: unknown filter op {f['op']!r}" for f in query.get("filters", []) if f["op"] not in FILTER_OPS]
        if not 10 * query["granularity"] <= query["time_range"] <= 1000 * query["granularity"]:
            problems.append(f"{where}: granularity must be between time_range/1000 and time_range/10")
        columns = query_columns(query)
        if panel["dataset"] == "metrics":
            problems += [f"{where}: {op} counts events, not metric values" for op in sorted(ops & NOT_ON_METRICS)]
            metrics = {calc["column"] for calc in query["calculations"] if "column" in calc}
            for metric in sorted(metrics - set(documented)):
                problems.append(f"{where}: {metric} is not a documented metric")
            labels = {attribute for metric in metrics & set(documented) for attribute in documented[metric].attributes}
            for column in sorted(columns - metrics - labels - RESOURCE_FIELDS):
                problems.append(f"{where}: no metric of the query has the attribute {column!r}")
        elif panel["dataset"] == "traces":
            for column in sorted(columns - SPAN_FIELDS - RESOURCE_FIELDS - all_attributes):
                problems.append(f"{where}: {column!r} is neither a span field nor a documented attribute")
        else:
            problems.append(f"{where}: dataset must be 'traces' or 'metrics', not {panel['dataset']!r}")
        position = panel["position"]
        x, y, w, h = (position[key] for key in ("x_coordinate", "y_coordinate", "width", "height"))
        if not (0 <= x and x + w <= 12 and 1 <= w and 1 <= h and 0 <= y):
            problems.append(f"{where}: position {position} is off the 12-column grid")
        for other, ox, oy, ow, oh in placed:
            if x < ox + ow and ox < x + w and y < oy + oh and oy < y + h:
                problems.append(f"{where} overlaps {other}")
        placed.append((where, x, y, w, h))
    return problems


def test_the_spec_asks_documented_questions_of_the_right_dataset():
    assert spec_problems(spec()) == []


def test_the_spec_covers_the_dashboard_s_questions():
    board = spec()
    columns = set().union(*(query_columns(panel["query"]) for panel in board["panels"]))
    for wanted in ("duration_ms", "http.route", "otel_render.instance.memory.usage", "otel_render.instance.memory.limit",
                   "cpython.gc.collections", "otel_render.recovery.actions", "db.client.connection.count",
                   "db.client.connection.pending_requests", "db.client.connection.timeouts",
                   "db.client.operation.duration", "otel_render.db.status", "otel_render.scheduler.job.runs",
                   "otel_render.scheduler.job.duration", "otel_render.scheduler.job.last_success",
                   "otelcol_exporter_sent_spans", "otelcol_exporter_send_failed_spans"):
        assert wanted in columns, wanted
    latency = next(panel for panel in board["panels"] if panel["key"] == "latency")
    assert {"P50", "P95", "P99"} <= {calc["op"] for calc in latency["query"]["calculations"]}
    assert board["preset_filters"] == [{"column": "service.name", "alias": "Service"}]


def test_the_spec_check_catches_mistakes():
    board = spec()
    board["panels"][0]["query"]["breakdowns"] = ["http.path"]
    board["panels"][3]["query"]["calculations"] = [{"op": "COUNT"}, {"op": "MAX", "column": "process.memory.rss"}]
    board["panels"][4]["position"] = dict(board["panels"][3]["position"])
    board["panels"][5]["query"]["breakdowns"] = ["db.system.name"]
    text = "\n".join(spec_problems(board))
    assert "'http.path' is neither a span field nor a documented attribute" in text
    assert "COUNT counts events" in text
    assert "process.memory.rss is not a documented metric" in text
    assert "overlaps" in text
    assert "no metric of the query has the attribute 'db.system.name'" in text


# --------------------------------------------------------------------------
# the script


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--traces-dataset", "shop", "--metrics-dataset", "shop metrics", *args],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_dry_run_prints_every_request_and_masks_the_key():
    key = "hcxk_0123456789abcdefSECRET"
    result = run_script("--dry-run", "--api-url", "http://127.0.0.1:9", env={"HONEYCOMB_CONFIG_KEY": key})
    assert result.returncode == 0, result.stderr
    panels = len(spec()["panels"])
    lines = result.stdout.splitlines()
    posts = [line for line in lines if line.startswith("POST ")]
    assert len(posts) == 2 * panels + 1
    assert posts[0] == "POST http://127.0.0.1:9/1/queries/shop"
    assert "POST http://127.0.0.1:9/1/queries/shop%20metrics" in posts
    assert posts[-1] == "POST http://127.0.0.1:9/1/boards"
    assert key not in result.stdout + result.stderr and "SECRET" not in result.stdout
    assert f"{2 * panels + 1} requests printed, nothing sent" in result.stderr
    board_body = json.loads(result.stdout.split("POST http://127.0.0.1:9/1/boards\n", 1)[1].split("\n", 1)[1])
    assert board_body["type"] == "flexible" and len(board_body["panels"]) == panels


def test_without_a_key_the_real_mode_refuses_to_start():
    result = run_script("--api-url", "http://127.0.0.1:9")
    assert result.returncode == 2
    assert "HONEYCOMB_CONFIG_KEY is not set" in result.stderr


class FakeHoneycomb:
    """A loopback stand-in for the Honeycomb API: records requests, hands out ids."""

    def __init__(self, fail_with: int | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.fail_with = fail_with
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, dict(self.headers), body))
                if fake.fail_with:
                    self._answer(fake.fail_with, {"error": "unknown API key - check your credentials"})
                elif self.path.startswith("/1/queries/"):
                    self._answer(200, {"id": f"q{len(fake.requests)}", **body})
                elif self.path.startswith("/1/query_annotations/"):
                    self._answer(201, {"id": f"a{len(fake.requests)}", **body})
                elif self.path == "/1/boards":
                    self._answer(201, {"id": "b1", "links": {"board_url": "https://ui.honeycomb.io/t/board/b1"}, **body})
                else:
                    self._answer(404, {"error": "not found"})

            def _answer(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHoneycomb:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_honeycomb() -> Iterator[FakeHoneycomb]:
    with FakeHoneycomb() as fake:
        yield fake


def test_real_mode_creates_queries_annotations_and_the_board(fake_honeycomb):
    key = "hcxk_real_key_for_the_fake"
    result = run_script("--api-url", fake_honeycomb.url, env={"HONEYCOMB_CONFIG_KEY": key})
    assert result.returncode == 0, result.stderr
    assert "https://ui.honeycomb.io/t/board/b1" in result.stdout
    board_spec = spec()
    requests = fake_honeycomb.requests
    assert len(requests) == 2 * len(board_spec["panels"]) + 1
    for _, _, headers, _ in requests:
        assert headers["X-Honeycomb-Team"] == key
        assert headers["Content-Type"] == "application/json"
    datasets = {"traces": "/shop", "metrics": "/shop%20metrics"}
    expected_panels = []
    for index, panel in enumerate(board_spec["panels"]):
        (_, query_path, _, query_body), (_, annotation_path, _, annotation_body) = requests[2 * index : 2 * index + 2]
        assert query_path == "/1/queries" + datasets[panel["dataset"]]
        assert query_body == panel["query"]
        assert annotation_path == "/1/query_annotations" + datasets[panel["dataset"]]
        assert annotation_body == {"name": panel["name"], "description": panel["description"], "query_id": f"q{2 * index + 1}"}
        expected_panels.append(
            {"type": "query", "position": panel["position"],
             "query_panel": {"query_id": f"q{2 * index + 1}", "query_annotation_id": f"a{2 * index + 2}", "query_style": "graph"}}
        )
    _, board_path, _, board_body = requests[-1]
    assert board_path == "/1/boards"
    assert board_body == {
        "name": board_spec["name"], "description": board_spec["description"], "type": "flexible",
        "preset_filters": board_spec["preset_filters"], "panels": expected_panels,
    }


def test_real_mode_stops_at_the_first_refusal_without_echoing_the_key():
    key = "hcxk_wrong_key_SECRET"
    with FakeHoneycomb(fail_with=401) as fake:
        result = run_script("--api-url", fake.url, env={"HONEYCOMB_CONFIG_KEY": key})
    assert result.returncode == 1
    assert len(fake.requests) == 1
    assert "answered 401" in result.stderr and "unknown API key" in result.stderr
    assert key not in result.stdout + result.stderr
