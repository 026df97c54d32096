"""The WSGI layer: one server span per request, the stable HTTP meters, the
request's correlation id, error contexts, and the watchdog for stuck requests.

Usage, for any WSGI app (the gunicorn, Flask and Django hooks do this for you
under ``opentelemetry-instrument``)::

    import otel_render
    app = otel_render.wrap_wsgi(app)

Per request, in this order:

1. ``local_routes.match(PATH_INFO)``: the package's own endpoints answer
   ``/health`` and ``/api/*`` ahead of the app, with no span.
2. If another otel-render layer already owns the request (the gunicorn hook
   outside, the Flask or Django hook inside) or another instrumentation's span
   is active (contrib Flask/Django when ``opentelemetry-distro`` loaded them),
   the request passes through untouched: there is never a second server span.
3. Otherwise :func:`handle_request` starts the server span (trace context
   from the propagators, else a request id adopted as the trace id, see
   :mod:`otel_render.correlation`), begins the request's
   :class:`~otel_render.request_context.WorkRecord` (the database layer counts
   its statements there), calls the app, adds ``X-Request-ID`` and
   ``traceresponse`` to the response, and ends everything when the server
   closes the response body (PEP 3333), recording
   ``http.server.request.duration``, ``http.server.active_requests`` and the
   per-request database meters of ``docs/metrics.md``.

Framework hooks tell the request its route template (:func:`set_route`) and
hand it unhandled exceptions (:meth:`ServerRequest.capture_error`); plain WSGI
apps get their exceptions captured here when they escape. The request path
never waits on the network and never lets a telemetry error reach the app:
a failure to start the telemetry of one request is logged once and the request
runs without it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.wsgi import wsgi_getter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.http import sanitize_method

from otel_render import correlation, diagnostics, lifecycle, logs, request_context
from otel_render.config import Settings, get_settings
from otel_render.lifecycle import BackgroundLoop
from otel_render.scrub import default as scrubber
from otel_render.version import __version__
from otel_render.web import gunicorn, local_routes

_logger = logging.getLogger("otel_render.web")

#: Where the current request's :class:`ServerRequest` lives in the WSGI environ.
ENVIRON_KEY = "otel_render.request"

SCOPE = "otel_render.web"

# Recommended by the HTTP semantic conventions for http.server.request.duration.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_QUERY_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)
DB_TIME_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: The share of gunicorn's worker ``--timeout`` our request timeout may use.
WORKER_TIMEOUT_SHARE = 0.8

_KNOWN_METHODS = {
    method: method
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY")
}
_MAX_USER_AGENT = 512
_MAX_QUERY = 2048
_ROOT_CONTEXT = otel_context.Context()

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def effective_timeout_s(configured_s: float, worker_timeout_s: float | None) -> float:
    """The request timeout: ``OTEL_RENDER_REQUEST_TIMEOUT_S``, but at most 80% of
    gunicorn's worker timeout, so it fires before the arbiter kills the worker."""
    if worker_timeout_s:
        return min(configured_s, worker_timeout_s * WORKER_TIMEOUT_SHARE)
    return configured_s


def overdue(requests: Iterable[ServerRequest], now: float, limit_s: float) -> list[ServerRequest]:
    """The requests running for ``limit_s`` or longer at ``now`` not reported yet."""
    return [request for request in requests if not request.timed_out and now - request.started >= limit_s]


def client_address(environ: dict[str, Any]) -> str | None:
    """The first ``X-Forwarded-For`` hop (Render's proxy sets it), else the peer address."""
    forwarded = environ.get("HTTP_X_FORWARDED_FOR")
    candidate = forwarded.split(",", 1)[0].strip() if forwarded else environ.get("REMOTE_ADDR")
    if candidate and len(candidate) <= 45 and all(ch in "0123456789abcdefABCDEF:." for ch in candidate):
        return candidate
    return None


def set_route(environ: dict[str, Any], route: str) -> None:
    """Tell the current request its route template (``/items/{id}``), for apps
    and frameworks the package has no hook for. Never the raw path."""
    request = environ.get(ENVIRON_KEY)
    if request is not None:
        request.route = route


class ServerRequest:
    """One request in flight: its span, ids, timings and outcome."""

    __slots__ = (
        "context",
        "correlation_id",
        "environ",
        "error_captured",
        "error_type",
        "finished",
        "method",
        "response_headers",
        "route",
        "runtime",
        "scheme",
        "server_start_response",
        "span",
        "started",
        "status_code",
        "thread_id",
        "timed_out",
        "trace_id",
        "work",
    )

    def __init__(self, runtime: WebRuntime, environ: dict[str, Any]) -> None:
        self.runtime = runtime
        self.environ = environ
        self.route: str | None = None
        self.status_code = 0
        self.error_type: str | None = None
        self.timed_out = False
        self.error_captured = False
        self.finished = False
        self.server_start_response: Callable[..., Any] | None = None

    # -- the response -------------------------------------------------------

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        """The ``start_response`` the app sees: notes the status, adds our headers."""
        try:
            self.status_code = int(status[:3])
            extra = self.response_headers
            for name, _ in headers:
                if name.lower() == "x-request-id":  # the app set its own: keep it
                    extra = extra[1:]
                    break
            headers = [*headers, *extra]
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_failure_once("reading the response status")
        assert self.server_start_response is not None
        if exc_info is None:
            return self.server_start_response(status, headers)
        return self.server_start_response(status, headers, exc_info)

    # -- outcome ------------------------------------------------------------

    def capture_error(self, exc: BaseException) -> None:
        """An unhandled exception: error context (ring, span event, one log line).

        Called by the framework hooks where the framework catches it, and here
        when it escapes a plain WSGI app. Once per request; never raises.
        """
        self.error_type = type(exc).__qualname__
        if self.error_captured:
            return
        self.error_captured = True
        try:
            self.runtime.capture_error(self, exc)
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_failure_once("capturing an error context")

    def current_route(self) -> str | None:
        return self.route

    def path(self) -> str:
        return (self.environ.get("SCRIPT_NAME") or "") + (self.environ.get("PATH_INFO") or "")

    def finish(self) -> None:
        """End the span and record the meters (once; the server closed the body)."""
        if self.finished:
            return
        self.finished = True
        try:
            self.runtime.finish(self)
        except Exception:  # pylint: disable=broad-except
            self.runtime.log_failure_once("ending a request")


class _ResponseBody:
    """The body the server iterates: ends the request when the server closes it.

    Lists (most frameworks' finished bodies) are iterated directly; anything
    else (generators, streaming) is iterated with the request's trace context
    and work record active around each chunk, so log lines and queries made
    while streaming belong to the request. The context is never left attached
    between chunks, so a server or test client that stops iterating without
    closing cannot leak it into the next request.
    """

    __slots__ = ("_iterable", "_request")

    def __init__(self, iterable: Iterable[bytes], request: ServerRequest) -> None:
        self._iterable = iterable
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        iterable = self._iterable
        if type(iterable) is list or type(iterable) is tuple:  # pylint: disable=unidiomatic-typecheck
            return iter(iterable)
        return _ChunksInContext(iter(iterable), self._request)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            self._request.finish()


class _ChunksInContext:
    __slots__ = ("_iterator", "_request")

    def __init__(self, iterator: Iterator[bytes], request: ServerRequest) -> None:
        self._iterator = iterator
        self._request = request

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        request = self._request
        token = otel_context.attach(request.context)
        work_token = request_context.begin(request.work)
        try:
            return next(self._iterator)
        except StopIteration:
            raise
        except Exception as exc:
            request.capture_error(exc)
            raise
        finally:
            request_context.end(work_token)
            otel_context.detach(token)


class WebRuntime:
    """Per-process state of the WSGI layer: instruments, settings, requests in flight."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        worker_timeout_s: float | None = None,
    ) -> None:
        settings = settings or get_settings()
        self.ids = correlation.RequestIds(settings)
        self.capture_client_ip = settings.capture_client_ip
        self.timeout_s = effective_timeout_s(
            settings.request_timeout_s, worker_timeout_s or gunicorn.worker_timeout_s()
        )
        self.tracer = trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS_S),
        )
        # Observed from the requests in flight when the readers collect: the
        # request path records nothing for it.
        self._active_series: set[tuple[str, str]] = set()
        meter.create_observable_up_down_counter(
            "http.server.active_requests",
            callbacks=[self._observe_active_requests],
            unit="{request}",
            description="Number of active HTTP server requests.",
        )
        self.timeouts = meter.create_counter(
            "otel_render.http.request.timeouts",
            unit="{request}",
            description="Requests that ran past OTEL_RENDER_REQUEST_TIMEOUT_S.",
        )
        self.db_queries = meter.create_histogram(
            "otel_render.http.server.db_queries",
            unit="{query}",
            description="Database statements per request.",
            explicit_bucket_boundaries_advisory=list(DB_QUERY_BUCKETS),
        )
        self.db_time = meter.create_histogram(
            "otel_render.http.server.db_time",
            unit="s",
            description="Time spent in the database per request.",
            explicit_bucket_boundaries_advisory=list(DB_TIME_BUCKETS_S),
        )
        fields = propagate.get_global_textmap().fields
        self.propagation_keys = tuple(correlation.environ_key(name) for name in sorted(fields))
        self.in_flight: dict[int, ServerRequest] = {}
        self._failures: set[str] = set()
        self.watchdog = RequestWatchdog(self)
        lifecycle.add_loop(self.watchdog, start=False)
        lifecycle.on_fork_child(self.reset_after_fork)
        diagnostics.add_system_state("web", self.system_state)

    # -- begin ---------------------------------------------------------------

    def begin(self, environ: dict[str, Any]) -> ServerRequest:
        request = ServerRequest(self, environ)
        raw_method = environ.get("REQUEST_METHOD") or "GET"
        method = _KNOWN_METHODS.get(raw_method) or sanitize_method(raw_method)
        scheme = environ.get("wsgi.url_scheme") or "http"
        request.method = method
        request.scheme = scheme

        inbound_id, adopted = self.ids.inbound(environ)
        parent = _ROOT_CONTEXT
        for key in self.propagation_keys:
            if key in environ:
                parent = propagate.extract(environ, context=_ROOT_CONTEXT, getter=wsgi_getter)
                if trace.get_current_span(parent).get_span_context().is_valid:
                    adopted = None  # an inbound trace context wins
                break

        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.scheme": scheme,
            "url.path": request.path(),
        }
        if method != raw_method and correlation.safe_id(raw_method):
            attributes["http.request.method_original"] = raw_method
        query = environ.get("QUERY_STRING")
        if query:
            attributes["url.query"] = scrubber.query_string(query[:_MAX_QUERY])
        user_agent = environ.get("HTTP_USER_AGENT")
        if user_agent:
            attributes["user_agent.original"] = user_agent[:_MAX_USER_AGENT]
        if inbound_id is not None:
            attributes["correlation.id"] = inbound_id
        render_id = environ.get(correlation.RENDER_REQUEST_ID_ENVIRON_KEY)
        if render_id is not None and correlation.safe_id(render_id):
            attributes["render.request.id"] = render_id
        if self.capture_client_ip:
            address = client_address(environ)
            if address:
                attributes["client.address"] = address

        if adopted is not None:
            correlation.adopt_next_trace_id(adopted)
            try:
                span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
            finally:
                correlation.adopt_next_trace_id(None)
        else:
            span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        span_context = span.get_span_context()
        request.trace_id = f"{span_context.trace_id:032x}" if span_context.is_valid else None
        if inbound_id is None:
            # Generated: the trace id itself (a random one when no SDK is
            # configured). Not repeated as a span attribute: it is the trace id.
            inbound_id = request.trace_id or uuid.uuid4().hex
        request.correlation_id = inbound_id
        request.span = span
        request.context = trace.set_span_in_context(span, parent)
        request.response_headers = correlation.trace_response_headers(inbound_id, span_context, self.ids.response_mode)
        started = time.monotonic()
        request.work = request_context.WorkRecord(kind="request", correlation_id=inbound_id, started_monotonic=started)

        request.thread_id = threading.get_ident()
        request.started = started
        self.in_flight[id(request)] = request
        if not self.watchdog.running:
            self.watchdog.start()
        return request

    # -- end -----------------------------------------------------------------

    def finish(self, request: ServerRequest) -> None:
        elapsed = time.monotonic() - request.started
        self.in_flight.pop(id(request), None)
        route = request.route
        status = request.status_code
        error_type = request.error_type
        if error_type is None and status >= 500:
            error_type = str(status)
        span = request.span
        if span.is_recording():
            attributes: dict[str, Any] = {}
            if status:
                attributes["http.response.status_code"] = status
            if route:
                attributes["http.route"] = route
                span.update_name(f"{request.method} {route}")
            if error_type is not None:
                attributes["error.type"] = error_type
            if (status >= 500 or (error_type is not None and not status)) and not request.error_captured:
                span.set_status(Status(StatusCode.ERROR))  # a captured error set it, with its message
            work = request.work
            if work.db_queries:
                attributes["otel_render.db.queries"] = work.db_queries
                attributes["otel_render.db.duration"] = work.db_time_s
            if request.timed_out:
                attributes["otel_render.request.timed_out"] = True
            span.set_attributes(attributes)
        span.end()

        method = request.method
        duration_attributes: dict[str, Any] = {"http.request.method": method, "url.scheme": request.scheme}
        if status:
            duration_attributes["http.response.status_code"] = status
        if route:
            duration_attributes["http.route"] = route
        if error_type is not None:
            duration_attributes["error.type"] = error_type
        self.duration.record(elapsed, duration_attributes)
        work = request.work
        if work.db_queries:
            route_attributes = (
                {"http.request.method": method, "http.route": route} if route else {"http.request.method": method}
            )
            self.db_queries.record(work.db_queries, route_attributes)
            self.db_time.record(work.db_time_s, route_attributes)

    def _observe_active_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        counts: dict[tuple[str, str], int] = dict.fromkeys(self._active_series, 0)
        for request in list(self.in_flight.values()):
            key = (request.method, request.scheme)
            counts[key] = counts.get(key, 0) + 1
        self._active_series.update(counts)
        return [
            Observation(count, {"http.request.method": method, "url.scheme": scheme})
            for (method, scheme), count in counts.items()
        ]

    # -- errors and stalls ---------------------------------------------------

    def request_info(self, request: ServerRequest) -> diagnostics.RequestInfo:
        environ = request.environ
        headers = scrubber.headers(
            (key[5:].replace("_", "-").lower(), value) for key, value in environ.items() if key.startswith("HTTP_")
        )
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = scrubber.text(str(environ[key]))
        return diagnostics.RequestInfo(
            method=request.method,
            path=request.path(),
            route=request.current_route(),
            headers=headers,
            ip=client_address(environ) if self.capture_client_ip else None,
            userAgent=(environ.get("HTTP_USER_AGENT") or "")[:_MAX_USER_AGENT] or None,
        )

    def capture_error(self, request: ServerRequest, exc: BaseException) -> None:
        error = diagnostics.capture_error_context(
            exc,
            correlation_id=request.correlation_id,
            trace_id=request.trace_id,
            request=self.request_info(request),
            source="request",
        )
        span = request.span
        if span.is_recording():
            span.add_event(
                "exception",
                {
                    "exception.type": error.error.type,
                    "exception.message": error.error.message,
                    "exception.stacktrace": error.error.stack,
                },
            )
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {error.error.message[:200]}"))
        token = otel_context.attach(request.context)
        try:
            # The ids are in the text too: this line may reach the console
            # through Python's last-resort handler, which adds nothing.
            _logger.error(
                "unhandled %s in %s %s (correlation id %s): %s",
                type(exc).__qualname__,
                request.method,
                request.current_route() or request.path(),
                request.correlation_id,
                error.error.message,
                extra={"error_context": error.to_dict()},
            )
        finally:
            otel_context.detach(token)

    def report_stall(self, request: ServerRequest, now: float) -> None:
        """A request ran past the timeout: note it once, with its thread's stack."""
        request.timed_out = True
        running_s = now - request.started
        stack = diagnostics.thread_stack(request.thread_id) or "(the request's thread has no stack any more)"
        route = request.current_route()
        thread_names = {thread.ident: thread.name for thread in threading.enumerate()}
        record = diagnostics.StallRecord(
            kind="request",
            name=f"{request.method} {route or request.path()}",
            correlationId=request.correlation_id,
            traceId=request.trace_id,
            timestamp=diagnostics.utc_now_iso(),
            running_s=round(running_s, 3),
            limit_s=self.timeout_s,
            thread=thread_names.get(request.thread_id, str(request.thread_id)),
            stack=stack,
        )
        diagnostics.stalls.append(record)
        attributes = {"http.request.method": request.method}
        if route:
            attributes["http.route"] = route
        self.timeouts.add(1, attributes)
        if request.span.is_recording():
            request.span.add_event(
                "otel_render.request.timeout",
                {"otel_render.running_s": running_s, "otel_render.limit_s": self.timeout_s, "code.stacktrace": stack},
            )
        token = otel_context.attach(request.context)
        work_token = request_context.begin(request.work)
        try:
            _logger.warning(
                "request still running after %.1f s (request timeout %.1f s): %s (correlation id %s); "
                "its stack is in the diagnostics",
                running_s,
                self.timeout_s,
                record.name,
                request.correlation_id,
                extra={"stall": record.to_dict()},
            )
        finally:
            request_context.end(work_token)
            otel_context.detach(token)

    # -- process state ---------------------------------------------------------

    def system_state(self) -> dict[str, Any]:
        return {"inFlightRequests": len(self.in_flight)}

    def reset_after_fork(self) -> None:
        self.in_flight = {}
        self._active_series = set()
        self._failures = set()

    def log_failure_once(self, what: str) -> None:
        if what not in self._failures:
            self._failures.add(what)
            _logger.warning("otel-render: telemetry failed while %s; the request goes on", what, exc_info=True)


class RequestWatchdog(BackgroundLoop):
    """Checks the requests in flight a few times per timeout; reports the overdue."""

    def __init__(self, runtime: WebRuntime) -> None:
        super().__init__("request-watchdog", min(1.0, max(0.05, runtime.timeout_s / 4)))
        self.runtime = runtime

    def tick(self, now: float | None = None) -> None:
        moment = time.monotonic() if now is None else now
        for request in overdue(list(self.runtime.in_flight.values()), moment, self.runtime.timeout_s):
            self.runtime.report_stall(request, moment)


_runtime: WebRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> WebRuntime:
    """The process's :class:`WebRuntime`, created at the first request."""
    global _runtime
    current = _runtime
    if current is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = WebRuntime()
            current = _runtime
    return current


def use_runtime(replacement: WebRuntime | None) -> None:
    """Install a runtime built with other settings or providers (tests); None
    makes the next request build the default one."""
    global _runtime
    with _runtime_lock:
        _runtime = replacement


# --------------------------------------------------------------------------
# Local routes the app owns itself
# --------------------------------------------------------------------------

RouteProbe = Callable[[Iterable[str]], Iterable[str]]
_route_probes: list[RouteProbe] = []
_routes_settled = False
_settle_lock = threading.Lock()


def add_route_probe(probe: RouteProbe) -> None:
    """A framework hook's ``probe(paths) -> the paths among them the app routes itself``."""
    global _routes_settled
    with _settle_lock:
        if probe not in _route_probes:
            _route_probes.append(probe)
        _routes_settled = False


def remove_route_probe(probe: RouteProbe) -> None:
    with _settle_lock:
        if probe in _route_probes:
            _route_probes.remove(probe)


def settle_local_routes() -> None:
    """Once, at the first request (the app's routes and logging are final by
    then): every local endpoint path the app routes itself is left to the app,
    and the log format is applied (``logs.on_app_ready``)."""
    global _routes_settled
    with _settle_lock:
        if _routes_settled:
            return
        _routes_settled = True
        probes = list(_route_probes)
    logs.on_app_ready()
    paths = list(local_routes.paths())
    if not paths:
        return
    for probe in probes:
        try:
            owned = set(probe(paths))
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: route probe %r failed", probe, exc_info=True)
            continue
        for path in paths:
            if path in owned:
                local_routes.yield_to_app(path)


# --------------------------------------------------------------------------
# The request path
# --------------------------------------------------------------------------

_begin_failed = False


def handle_request(app: WSGIApp, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Serve one request through ``app`` with its telemetry (see the module docstring)."""
    if not _routes_settled:
        settle_local_routes()
    local = local_routes.match(environ.get("PATH_INFO") or "/")
    if local is not None:
        return local(environ, start_response)
    if ENVIRON_KEY in environ or trace.get_current_span().get_span_context().is_valid:
        # Another layer (ours or another instrumentation) owns this request.
        return app(environ, start_response)
    try:
        request = runtime().begin(environ)
        request.server_start_response = start_response
        environ[ENVIRON_KEY] = request
        token = otel_context.attach(request.context)
        work_token = request_context.begin(request.work)
    except Exception:  # pylint: disable=broad-except
        _log_begin_failure()
        return app(environ, start_response)
    try:
        result = app(environ, request.start_response)
    except BaseException as exc:
        if isinstance(exc, Exception):  # not SystemExit (gunicorn's timeout abort) or KeyboardInterrupt
            request.capture_error(exc)
        request_context.end(work_token)
        otel_context.detach(token)
        request.finish()
        raise
    request_context.end(work_token)
    otel_context.detach(token)
    return _wrap_body(result, environ, request)


def _wrap_body(result: Iterable[bytes], environ: dict[str, Any], request: ServerRequest) -> Iterable[bytes]:
    file_wrapper = environ.get("wsgi.file_wrapper")
    if file_wrapper is not None and isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
        # Keep the server's sendfile path: end the request when it closes the file.
        original_close = getattr(result, "close", None)

        def close() -> None:
            try:
                if original_close is not None:
                    original_close()
            finally:
                request.finish()

        try:
            result.close = close  # type: ignore[attr-defined]
            return result
        except AttributeError:
            pass
    return _ResponseBody(result, request)


def _log_begin_failure() -> None:
    global _begin_failed
    if not _begin_failed:
        _begin_failed = True
        _logger.warning(
            "otel-render: could not start the telemetry of a request; requests run without it", exc_info=True
        )


class OtelRenderMiddleware:
    """WSGI middleware around ``app``; see the module docstring. Wrapping twice is a no-op."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        return handle_request(self.app, environ, start_response)

    def __getattr__(self, name: str) -> Any:
        # Code that reaches for the app's attributes (app.config, ...) still finds them.
        if name == "app":
            raise AttributeError(name)
        return getattr(self.app, name)


_app_observers: list[Callable[[Any], None]] = []


def add_app_observer(observer: Callable[[Any], None]) -> None:
    """``observer(app)`` sees every app :func:`wrap` wraps (framework hooks
    remember their apps this way, for :func:`settle_local_routes`)."""
    if observer not in _app_observers:
        _app_observers.append(observer)


def remove_app_observer(observer: Callable[[Any], None]) -> None:
    if observer in _app_observers:
        _app_observers.remove(observer)


def wrap(app: WSGIApp) -> WSGIApp:
    """``app`` behind :class:`OtelRenderMiddleware` (unless it already is)."""
    if isinstance(app, OtelRenderMiddleware):
        return app
    for observer in _app_observers:
        try:
            observer(app)
        except Exception:  # pylint: disable=broad-except
            _logger.debug("otel-render: app observer %r failed", observer, exc_info=True)
    return OtelRenderMiddleware(app)
