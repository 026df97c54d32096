"""A throwaway PostgreSQL server for database tests.

This module owns ``PostgresCluster``: a real PostgreSQL server in a temporary
directory, listening on a free port on 127.0.0.1, with

- superuser ``postgres``, no password (``trust``), for setup and inspection;
- role ``app`` with password ``s3cret-pw`` (``scram-sha-256``: a wrong
  password is refused) owning database ``app``: what the code under test uses.

It can be stopped and started again on the same data and port, or killed
with SIGKILL to simulate a crash (the next ``start()`` runs crash recovery).

PostgreSQL refuses to run as root: when the tests run as root, every server
command runs as the ``postgres`` OS user, in a directory owned by it.

The postmaster is started directly (``postgres -D ...``), not through
``pg_ctl``, so that it is a child of the test process: its exit is observed
and reaped at once. A postmaster started by ``pg_ctl`` is adopted by PID 1,
and where PID 1 does not reap orphans (as in many containers) a killed
postmaster lingers as a zombie, whose pid in ``postmaster.pid`` makes the next
start refuse with "lock file already exists". Readiness is read from
``postmaster.pid`` exactly as ``pg_ctl -w`` does.

Usage::

    cluster = PostgresCluster()
    cluster.start()
    engine = sqlalchemy.create_engine(cluster.url())
    conn = psycopg2.connect(cluster.dsn(connect_timeout=5))
    cluster.kill(); cluster.start()  # crash and recover
    cluster.cleanup()
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

from .processes import child_pids, free_port, pid_is_gone

__all__ = ["PostgresCluster", "PostgresError"]

_SERVER_USER = "postgres"
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}

_PG_HBA = """\
# TYPE  DATABASE  USER      ADDRESS        METHOD
local   all       postgres                 trust
host    all       postgres  127.0.0.1/32   trust
local   all       all                      scram-sha-256
host    all       all       127.0.0.1/32   scram-sha-256
"""


class PostgresError(RuntimeError):
    """A server command failed; the message ends with the relevant log."""


def _find_bin_dir() -> str | None:
    """The directory holding initdb/postgres/psql, or None."""
    candidates = []
    for name in ("pg_ctl", "initdb", "postgres"):
        found = shutil.which(name)
        if found:
            candidates.append(os.path.dirname(os.path.realpath(found)))

    def version(path: str) -> tuple[int, ...]:
        match = re.search(r"/postgresql/([\d.]+)/bin$", path)
        return tuple(int(part) for part in match.group(1).split(".")) if match else ()

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for directory in candidates:
        if all(os.access(os.path.join(directory, tool), os.X_OK) for tool in ("initdb", "postgres", "psql")):
            return directory
    return None


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _dsn_value(value: str) -> str:
    """Quote a value for a libpq ``key=value`` connection string."""
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class PostgresCluster:
    """A PostgreSQL server of its own for the tests; see the module docstring."""

    host = "127.0.0.1"
    app_user = "app"
    password = "s3cret-pw"
    """The ``app`` role's password."""
    app_database = "app"

    def __init__(self, *, bin_dir: str | None = None, timeout: float = 60.0) -> None:
        """``timeout`` bounds every server command (initdb, start, stop, psql)."""
        self.bin_dir = bin_dir or _find_bin_dir()
        self.timeout = timeout
        self._port: int | None = None
        self.base_dir: str | None = None
        self._postmaster: subprocess.Popen[bytes] | None = None
        self._initialized = False
        self._roles_created = False

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PostgresCluster {self.host}:{self._port} {state} in {self.base_dir}>"

    # -- discovery ---------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why a cluster cannot run here, or None when it can."""
        if _find_bin_dir() is None:
            return (
                "PostgreSQL server binaries (initdb, postgres, psql) were found neither on PATH "
                "nor in /usr/lib/postgresql/*/bin"
            )
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(_SERVER_USER)
            except KeyError:
                return f"running as root, but there is no {_SERVER_USER!r} OS user to run the server as"
        return None

    @classmethod
    def available(cls) -> bool:
        """Whether the binaries (and, as root, the ``postgres`` user) exist."""
        return cls.unavailable_reason() is None

    # -- paths -------------------------------------------------------------

    @property
    def data_dir(self) -> str:
        return os.path.join(self._base(), "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self._base(), "server.log")

    def _base(self) -> str:
        if self.base_dir is None:
            raise PostgresError("cluster was never started")
        return self.base_dir

    def _tool(self, name: str) -> str:
        if self.bin_dir is None:
            raise PostgresError(self.unavailable_reason() or "PostgreSQL binaries not found")
        return os.path.join(self.bin_dir, name)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> PostgresCluster:
        """Start the server (creating the cluster the first time); returns self.

        Waits until it accepts connections, i.e. after any crash recovery.
        """
        if self.is_running():
            return self
        if not self._initialized:
            self._initialize()
        self._spawn_postmaster()
        if not self._roles_created:
            self.psql(f"CREATE ROLE {self.app_user} LOGIN PASSWORD {_sql_literal(self.password)}")
            self.psql(f"CREATE DATABASE {self.app_database} OWNER {self.app_user}")
            self._roles_created = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Shut down like ``pg_ctl stop -m MODE`` (smart, fast or immediate)."""
        if mode not in _STOP_SIGNALS:
            raise ValueError(f"mode must be one of {sorted(_STOP_SIGNALS)}, not {mode!r}")
        postmaster = self._postmaster
        if postmaster is None or postmaster.poll() is not None:
            self._postmaster = None
            return
        postmaster.send_signal(_STOP_SIGNALS[mode])
        try:
            postmaster.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise self._error(f"server did not stop ({mode}) within {self.timeout}s") from None
        self._postmaster = None

    def restart(self, mode: str = "fast") -> PostgresCluster:
        """``stop(mode)`` then ``start()``: same data, same port."""
        self.stop(mode)
        return self.start()

    def kill(self) -> None:
        """Crash the server: SIGKILL the postmaster and all its processes at once.

        Like the container being OOM-killed: no shutdown checkpoint, so the
        next ``start()`` must run crash recovery. Returns once every server
        process is gone.
        """
        postmaster = self._postmaster
        if postmaster is None or postmaster.poll() is not None:
            raise PostgresError("server is not running")
        backends = child_pids(postmaster.pid)
        postmaster.kill()
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        postmaster.wait(timeout=self.timeout)
        deadline = time.monotonic() + self.timeout
        while not all(pid_is_gone(pid) for pid in backends):
            if time.monotonic() > deadline:
                raise self._error(f"server processes {backends} outlived SIGKILL")
            time.sleep(0.01)
        self._postmaster = None

    def is_running(self) -> bool:
        return self._postmaster is not None and self._postmaster.poll() is None

    def cleanup(self) -> None:
        """Stop the server (immediately if need be) and delete its directory."""
        try:
            if self.is_running():
                try:
                    self.stop("fast")
                except PostgresError:
                    self.stop("immediate")
        finally:
            if self._postmaster is not None and self._postmaster.poll() is None:
                self._postmaster.kill()
                self._postmaster.wait()
            self._postmaster = None
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None
                self._initialized = False
                self._roles_created = False

    def __enter__(self) -> PostgresCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def log(self) -> str:
        """The server log (all starts so far)."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except (FileNotFoundError, PostgresError):
            return ""

    # -- connecting --------------------------------------------------------

    def url(
        self,
        driver: str | None = "psycopg2",
        user: str = "app",
        password: str | None = "s3cret-pw",
        dbname: str = "app",
    ) -> str:
        """SQLAlchemy URL, e.g. ``postgresql+psycopg2://app:s3cret-pw@127.0.0.1:5433/app``.

        ``driver=None`` gives a plain ``postgresql://`` URL (also a libpq URI).
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        credentials = urllib.parse.quote(user, safe="")
        if password is not None:
            credentials += ":" + urllib.parse.quote(password, safe="")
        return f"{scheme}://{credentials}@{self.host}:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    def dsn(
        self,
        user: str = "app",
        password: str | None = "s3cret-pw",
        dbname: str = "app",
        **params: str | int,
    ) -> str:
        """libpq ``key=value`` string for ``psycopg2.connect``.

        Extra ``params`` are added as they are, e.g. ``connect_timeout=2``.
        """
        fields: dict[str, str | int] = {"host": self.host, "port": self.port, "user": user, "dbname": dbname}
        if password is not None:
            fields["password"] = password
        fields.update(params)
        return " ".join(f"{key}={_dsn_value(str(value))}" for key, value in fields.items())

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        """Run ``sql`` as superuser with psql and return its unaligned output."""
        command = [
            self._tool("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            "-h", self.host, "-p", str(self.port), "-U", _SERVER_USER, "-d", dbname, "-c", sql,
        ]  # fmt: skip
        result = self._run(command, as_server_user=False)
        return result.stdout.strip()

    @property
    def port(self) -> int:
        """TCP port on 127.0.0.1, chosen at the first ``start()`` and kept across restarts."""
        if self._port is None:
            raise PostgresError("cluster was never started, so it has no port yet")
        return self._port

    # -- internals ---------------------------------------------------------

    def _initialize(self) -> None:
        self._tool("initdb")  # fail early, with the reason, when binaries are missing
        self.base_dir = self._make_base_dir()
        self._port = free_port()
        self._run(
            [self._tool("initdb"), "-D", self.data_dir, "-A", "trust", "-U", _SERVER_USER,
             "--no-sync", "-E", "UTF8", "--locale=C"],
            as_server_user=True,
        )  # fmt: skip
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": _sql_literal(self.base_dir),
            "fsync": "off",
            "max_connections": "50",
            "shared_buffers": "16MB",
            "password_encryption": "'scram-sha-256'",
        }
        with open(os.path.join(self.data_dir, "postgresql.conf"), "a") as conf:
            conf.write("\n# otel-render test cluster\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        Path(self.data_dir, "pg_hba.conf").write_text(_PG_HBA)
        self._initialized = True

    def _make_base_dir(self) -> str:
        base = tempfile.mkdtemp(prefix="otel-render-pg-")
        if os.geteuid() != 0:
            return base
        # The server user must be able to reach the directory.
        if not all(os.stat(parent).st_mode & 0o001 for parent in Path(base).parents):
            os.rmdir(base)
            base = tempfile.mkdtemp(prefix="otel-render-pg-", dir="/tmp")
        server_user = pwd.getpwnam(_SERVER_USER)
        os.chown(base, server_user.pw_uid, server_user.pw_gid)
        return base

    @staticmethod
    def _server_user() -> tuple[int | None, int | None, list[int] | None]:
        """(uid, gid, supplementary groups) to run server commands as; Nones when not root."""
        if os.geteuid() != 0:
            return None, None, None
        server_user = pwd.getpwnam(_SERVER_USER)
        return server_user.pw_uid, server_user.pw_gid, []

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": self._base()}

    def _run(self, command: list[str], *, as_server_user: bool) -> subprocess.CompletedProcess[str]:
        uid, gid, groups = self._server_user() if as_server_user else (None, None, None)
        try:
            result = subprocess.run(
                command,
                env=self._env(),
                cwd=self._base(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        except subprocess.TimeoutExpired:
            raise self._error(f"{command[0]} did not finish within {self.timeout}s") from None
        if result.returncode != 0:
            raise self._error(
                f"{' '.join(command)} exited with {result.returncode}\n"
                f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
            )
        return result

    def _spawn_postmaster(self) -> None:
        uid, gid, groups = self._server_user()
        with open(self.log_path, "ab") as log:
            self._postmaster = subprocess.Popen(
                [self._tool("postgres"), "-D", self.data_dir],
                env=self._env(),
                cwd=self._base(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C in the terminal is pytest's, not the server's
                user=uid,
                group=gid,
                extra_groups=groups,
            )
        self._wait_ready(self._postmaster)

    def _wait_ready(self, postmaster: subprocess.Popen[bytes]) -> None:
        """Wait for ``postmaster.pid`` to say "ready", as ``pg_ctl -w`` does."""
        pid_file = Path(self.data_dir, "postmaster.pid")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                lines = pid_file.read_text().splitlines()
            except FileNotFoundError:
                lines = []
            if len(lines) >= 8 and lines[0].strip() == str(postmaster.pid) and lines[7].strip() == "ready":
                return
            if time.monotonic() > deadline:
                postmaster.kill()
                postmaster.wait()
                self._postmaster = None
                raise self._error(f"server was not ready within {self.timeout}s")
            try:
                postmaster.wait(timeout=0.02)  # a short poll that ends early if it dies
            except subprocess.TimeoutExpired:
                continue
            self._postmaster = None
            raise self._error(f"server exited with {postmaster.returncode} while starting")

    def _error(self, message: str) -> PostgresError:
        log = self.log() if self.base_dir else ""
        return PostgresError(f"{message}\n--- server log ({self.base_dir}) ---\n{log[-8000:]}")
