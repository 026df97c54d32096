"""The Blueprints' start commands, run as Render runs them (``bash -c`` from the
repository root) against the example app, with loopback stand-ins for what only
Render provides: ``$PORT``, the collector's ``host:port`` (the loopback OTLP
receiver) and the database URL (a throwaway PostgreSQL).

Checks that the exact command comes up, answers the app's routes, replaced
the shell with gunicorn under opentelemetry-instrument (so gunicorn gets
Render's SIGTERM), built the OTLP endpoint URL from ``fromService``'s
``host:port``, started ``WEB_CONCURRENCY`` workers, passes Render's health
check on ``/health``, and stops cleanly within ``maxShutdownDelaySeconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from bundle import blueprint
from support.processes import AppProcess, free_port, http_request

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def check_health(base_url: str, path: str) -> None:
    """What Render's health check needs from ``healthCheckPath`` (``/health``): a 200."""
    assert path == "/health"
    result = http_request(base_url + path, timeout=10)
    assert result.status == 200, f"{path} answered {result.status}: {result.text[:500]}"
    assert result.json()["status"] in ("healthy", "degraded"), result.text


def _proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _proc_cmdline(pid: int) -> list[str]:
    return [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]


def _wait_for_workers(app: AppProcess, count: int, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = app.children()
        if len(workers) == count:
            return workers
        time.sleep(0.05)
    raise AssertionError(f"expected {count} workers, found {app.children()}\n{app.describe()}")


def _serve_and_stop(web: dict, env: dict[str, str], cwd: Path, check: Callable[[AppProcess], None] = lambda app: None) -> None:
    port = int(env["PORT"])
    base_url = f"http://127.0.0.1:{port}"
    app = AppProcess(["bash", "-c", web["startCommand"]], env=env, cwd=cwd)
    with app:
        first = app.wait_http(base_url + "/items/1", timeout=60, expect_status=200)
        assert first.json() == {"id": 1, "name": "item 1"}
        for number in (2, 3, 4):
            result = http_request(f"{base_url}/items/{number}", timeout=10)
            assert result.status == 200 and result.json()["id"] == number
        assert http_request(base_url + "/items/9999", timeout=10).status == 404

        # `exec`: the process Render started is now gunicorn, run through opentelemetry-instrument.
        cmdline = " ".join(_proc_cmdline(app.pid))
        assert "gunicorn" in cmdline and "examples.app:app" in cmdline, cmdline
        assert "opentelemetry/instrumentation/auto_instrumentation" in _proc_environ(app.pid).get("PYTHONPATH", "")
        _wait_for_workers(app, int(env["WEB_CONCURRENCY"]))

        check(app)
        check_health(base_url, web["healthCheckPath"])

        code = app.stop(timeout=float(web["maxShutdownDelaySeconds"]))
        assert code == 0, app.output()
        assert not app.killed_after_timeout and not app.stragglers


def test_render_yaml_start_command_serves_the_example_app(otlp_receiver, postgres):
    web = blueprint.web_service(blueprint.load(ROOT / "render.yaml"))
    collector_hostport = otlp_receiver.endpoint.removeprefix("http://").rstrip("/")
    assert "/" not in collector_hostport and ":" in collector_hostport
    postgres.psql("DROP TABLE IF EXISTS items", dbname="app")
    env = blueprint.environment(
        web,
        blueprint.RenderInputs(
            port=free_port(),
            from_service=lambda reference: collector_hostport,
            from_database=lambda reference: postgres.url(driver=None),
        ),
    )
    assert env["DATABASE_URL"].startswith("postgresql://")
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in env, "the start command builds it"


    def endpoint_built_from_hostport(app: AppProcess) -> None:
        assert _proc_environ(app.pid)["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{collector_hostport}"

    _serve_and_stop(web, env, ROOT, endpoint_built_from_hostport)
    # The example app's rows went to the PostgreSQL that fromDatabase named.
    assert postgres.psql("SELECT count(*) FROM items", dbname="app") == "20"


def test_render_direct_yaml_start_command_serves_the_example_app(tmp_path):
    web = blueprint.web_service(blueprint.load(ROOT / "render.direct.yaml"))
    env = blueprint.environment(
        web,
        blueprint.RenderInputs(port=free_port(), from_service=lambda ref: "", from_database=lambda ref: ""),
    )
    assert "DATABASE_URL" not in env
    # Without DATABASE_URL the example app keeps SQLite in its working
    # directory: run it from a scratch directory, importing the app from the repo.
    env["PYTHONPATH"] = str(ROOT)
    _serve_and_stop(web, env, tmp_path)
    assert (tmp_path / "example.db").is_file()
