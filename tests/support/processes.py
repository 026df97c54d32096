"""Child processes and raw HTTP for end-to-end tests.

This module owns how tests start the code under test as a real process
(``AppProcess``, ``gunicorn_command``, ``venv_bin``), how they talk HTTP to it
(``http_request``, ``HTTPResult``), how they pick ports (``free_port``) and
how they wait for a process to reach a state (``wait_until``).

``AppProcess`` runs each command in its own session and process group, with
output going to files (never pipes, so a chatty child cannot block on a full
pipe), and a *minimal* environment: only the variables in
``INHERITED_ENV_VARS`` (and ``LC_*``) are copied from the test runner, so a
stray ``OTEL_*`` or ``DATABASE_URL`` in the developer's shell never leaks into
a test. Everything else comes from the ``env`` argument.

Usage::

    port = free_port()
    command = gunicorn_command("app:app", port=port, workers=2)
    with AppProcess(command, env={"OTEL_SERVICE_NAME": "web"}, cwd=app_dir) as app:
        app.wait_http(f"http://127.0.0.1:{port}/healthz")
        result = http_request(f"http://127.0.0.1:{port}/", headers=[("X-Odd", "a")])
        assert result.status == 200
        assert app.stop() == 0
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal as signals
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "INHERITED_ENV_VARS",
    "AppProcess",
    "AppProcessError",
    "HTTPResult",
    "child_pids",
    "free_port",
    "gunicorn_command",
    "http_request",
    "pid_is_gone",
    "venv_bin",
    "wait_until",
]

# Variables copied from the test runner's environment into every AppProcess.
INHERITED_ENV_VARS: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "CI",
)

# How much of a child's output goes into an error message.
_OUTPUT_TAIL_CHARS = 8000


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Returns the last (falsy) value once ``timeout`` seconds have passed, so the
    caller's assertion can show what was seen. For states of other processes,
    which no clock of ours can advance.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def venv_bin(name: str) -> str:
    """Path of console script ``name`` in the virtualenv running the tests.

    Looks next to ``sys.executable`` (not resolving symlinks, which would
    leave the virtualenv), e.g. ``venv_bin("gunicorn")``.
    """
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{name!r} is not installed in the test virtualenv ({path.parent}); "
            "install the test dependencies (`make test` does)"
        )
    return str(path)


def gunicorn_command(
    app: str,
    *,
    port: int,
    workers: int = 2,
    preload: bool = False,
    worker_class: str = "sync",
    timeout: int | None = None,
    instrument: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """Command line serving WSGI ``app`` (``"module:callable"``) with gunicorn.

    With ``instrument=True`` it is prefixed by ``opentelemetry-instrument``,
    as a user of zero-code instrumentation would run it on Render. ``extra``
    arguments go just before ``app``.
    """
    command = [venv_bin("opentelemetry-instrument")] if instrument else []
    command += [venv_bin("gunicorn"), "-b", f"127.0.0.1:{port}", "-w", str(workers)]
    if preload:
        command.append("--preload")
    command += ["-k", worker_class]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    command += [*extra, app]
    return command


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class HTTPResult:
    """An HTTP response, whatever its status."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    """In the order received; a repeated header appears once per line."""
    body: bytes

    def header(self, name: str) -> str | None:
        """First value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """All values of header ``name`` (case-insensitive)."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(
    url: str,
    method: str = "GET",
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    body: bytes | str | None = None,
    timeout: float = 5.0,
) -> HTTPResult:
    """Send one HTTP/1.1 request on a fresh connection and read the response.

    Headers are sent exactly as given, in order (pass a list of pairs to
    repeat a header or use odd casing); only ``Host`` and, when there is a
    body, ``Content-Length`` are added if missing. Never raises for an HTTP
    error status; raises ``OSError`` (e.g. ``ConnectionRefusedError``,
    ``TimeoutError``) or ``http.client.HTTPException`` when there is no
    valid response at all.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs are supported, not {url!r}")
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
    names = {name.lower() for name, _ in pairs}
    data = body.encode() if isinstance(body, str) else body
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"

    connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        connection.putrequest(method, target, skip_host="host" in names, skip_accept_encoding=True)
        for name, value in pairs:
            connection.putheader(name, value)
        if data is not None and "content-length" not in names and "transfer-encoding" not in names:
            connection.putheader("Content-Length", str(len(data)))
        connection.endheaders(data)
        response = connection.getresponse()
        return HTTPResult(
            status=response.status,
            reason=response.reason,
            headers=response.getheaders(),
            body=response.read(),
        )
    finally:
        connection.close()


# --------------------------------------------------------------------------
# /proc
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcStat:
    pid: int
    state: str
    ppid: int
    pgrp: int


def _proc_stat(pid: int) -> _ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
    fields = raw.rpartition(")")[2].split()
    return _ProcStat(pid=pid, state=fields[0], ppid=int(fields[1]), pgrp=int(fields[2]))


def _live_processes() -> list[_ProcStat]:
    """Every process on the machine that is not a zombie."""
    stats = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) is not None and stat.state != "Z":
            stats.append(stat)
    return stats


def child_pids(pid: int, recursive: bool = False) -> list[int]:
    """Pids of the live (non-zombie) children of ``pid``, read from /proc.

    With ``recursive=True``, grandchildren and so on as well.
    """
    live = _live_processes()
    found: list[int] = []
    parents = {pid}
    while parents:
        level = [p.pid for p in live if p.ppid in parents]
        found += level
        parents = set(level) if recursive else set()
    return sorted(found)


def pid_is_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no such process, or only a zombie left)."""
    stat = _proc_stat(pid)
    return stat is None or stat.state == "Z"


# --------------------------------------------------------------------------
# AppProcess
# --------------------------------------------------------------------------


class AppProcessError(RuntimeError):
    """The child died, or did not become ready; the message has its output."""


def _minimal_env(overrides: Mapping[str, str | None] | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key in INHERITED_ENV_VARS or key.startswith("LC_")}
    # Console scripts of the test virtualenv come first on PATH.
    venv_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_dir, *[p for p in env.get("PATH", "").split(os.pathsep) if p]])
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class AppProcess:
    """A command run as a child in its own process group, for end-to-end tests.

    ``env`` is laid over a minimal copy of the runner's environment (see the
    module docstring); a ``None`` value removes a variable. Output goes to
    two files in a temporary directory, read back with ``output()``.

    ``signal()`` and ``stop()`` signal the child itself, as a platform such
    as Render does; only the SIGKILL fallback and the final clean-up act on
    the whole process group. Leaving the ``with`` block always stops the
    child and kills whatever is left of its group.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.command = [str(part) for part in command]
        self.env = _minimal_env(env)
        self.cwd = cwd
        self.killed_after_timeout = False
        self.stragglers: list[int] = []
        """Group members still alive after the child exited (killed then)."""
        self._popen: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._final_output: str | None = None

    def __repr__(self) -> str:
        pid = self._popen.pid if self._popen else None
        return f"<AppProcess pid={pid} {' '.join(self.command)!r}>"

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> AppProcess:
        """Start the child; returns self."""
        if self._popen is not None:
            raise RuntimeError(f"{self!r} already started")
        self._dir = tempfile.mkdtemp(prefix="otel-render-app-")
        with open(self._path("stdout"), "wb") as stdout, open(self._path("stderr"), "wb") as stderr:
            self._popen = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> AppProcess:
        return self if self._popen is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the child (if running), kill its group, and delete the output files.

        ``output()`` keeps working afterwards.
        """
        if self._popen is None or self._dir is None:
            return
        try:
            self.stop()
        finally:
            self._kill_group()
            self._final_output = self.output()
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """Exit code (negative: killed by that signal), or None while running."""
        return self._started().poll()

    def is_running(self) -> bool:
        return self.returncode is None

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to exit by itself; raises ``subprocess.TimeoutExpired``."""
        return self._started().wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child (not to its group)."""
        if self._started().poll() is None:
            os.kill(self.pid, sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig``, wait up to ``timeout`` s for exit, and return the exit code.

        If the child outlives the timeout, its whole process group is killed
        with SIGKILL, ``killed_after_timeout`` is set and a warning is issued.
        Group members that outlive the child (e.g. orphaned workers) are
        listed in ``stragglers`` and killed.
        """
        popen = self._started()
        if popen.poll() is None:
            os.kill(popen.pid, sig)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.killed_after_timeout = True
                warnings.warn(
                    f"{self!r} did not exit within {timeout}s of signal {signals.Signals(sig).name}; "
                    "killed its process group with SIGKILL",
                    stacklevel=2,
                )
                self._kill_group()
                popen.wait()
        self._kill_group()
        assert popen.returncode is not None
        return popen.returncode

    def _kill_group(self) -> None:
        if self._popen is None:
            return
        members = [p.pid for p in _live_processes() if p.pgrp == self._popen.pid and p.pid != self._popen.pid]
        if self._popen.poll() is not None:
            self.stragglers.extend(pid for pid in members if pid not in self.stragglers)
        with contextlib.suppress(ProcessLookupError, PermissionError):  # no member left
            os.killpg(self._popen.pid, signals.SIGKILL)
        if self._popen.poll() is None:
            self._popen.wait()
        # SIGKILL is delivered asynchronously: return once the members are gone.
        deadline = time.monotonic() + 10
        while not all(pid_is_gone(pid) for pid in members) and time.monotonic() < deadline:
            time.sleep(0.01)

    # -- inspection --------------------------------------------------------

    def children(self, recursive: bool = False) -> list[int]:
        """Pids of the child's live (non-zombie) children, e.g. gunicorn workers."""
        return child_pids(self.pid, recursive=recursive)

    def output(self) -> str:
        """Everything the child wrote so far: its stdout, then its stderr."""
        if self._final_output is not None:
            return self._final_output
        if self._dir is None:
            return ""
        return self._read("stdout") + self._read("stderr")

    def stdout(self) -> str:
        return self._read("stdout") if self._dir else ""

    def stderr(self) -> str:
        return self._read("stderr") if self._dir else ""

    def describe(self) -> str:
        """Command, state and the tail of each output stream, for error messages."""
        state = "running" if self.returncode is None else f"exited with {self.returncode}"
        parts = [f"command: {' '.join(self.command)}", f"pid {self.pid}: {state}"]
        if self._final_output is not None:
            parts.append(f"--- output ---\n{self._final_output[-_OUTPUT_TAIL_CHARS:]}")
        else:
            for stream in ("stdout", "stderr"):
                parts.append(f"--- {stream} ---\n{self._read(stream)[-_OUTPUT_TAIL_CHARS:]}")
        return "\n".join(parts)

    def wait_http(self, url: str, timeout: float = 20.0, expect_status: int | None = None) -> HTTPResult:
        """Poll ``url`` until it answers, and return that answer.

        Any HTTP status counts unless ``expect_status`` is given. Raises
        ``AppProcessError`` (with the child's output) when the child exits
        first or ``timeout`` seconds pass.
        """
        popen = self._started()
        deadline = time.monotonic() + timeout
        last = "no attempt"
        while True:
            if popen.poll() is not None:
                raise AppProcessError(f"process exited before {url} answered\n{self.describe()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AppProcessError(f"{url} did not answer within {timeout}s (last: {last})\n{self.describe()}")
            try:
                result = http_request(url, timeout=min(2.0, remaining))
            except (OSError, http.client.HTTPException) as error:
                last = repr(error)
            else:
                if expect_status is None or result.status == expect_status:
                    return result
                last = f"HTTP {result.status}"
            # Wait a little before the next attempt, returning early if the child exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=min(0.05, max(deadline - time.monotonic(), 0)))

    # -- helpers -----------------------------------------------------------

    def _started(self) -> subprocess.Popen[bytes]:
        if self._popen is None:
            raise RuntimeError(f"{self!r} not started")
        return self._popen

    def _path(self, stream: str) -> str:
        assert self._dir is not None
        return os.path.join(self._dir, f"{stream}.log")

    def _read(self, stream: str) -> str:
        try:
            return Path(self._path(stream)).read_text(errors="replace")
        except FileNotFoundError:
            return ""
