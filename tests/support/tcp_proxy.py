"""A loopback TCP proxy whose link can be cut, for deadline and outage tests.

This module owns ``TCPProxy``. Point the code under test at the proxy's
port instead of the real server (e.g. a PostgreSQL cluster), then switch
modes while it runs:

- ``forward()``: bytes flow both ways (the initial mode);
- ``blackhole()``: nothing flows, nothing is closed: existing connections
  stay open but silent, new connections are accepted and then hear nothing.
  A hung server or a dead network path: only the client's own timeouts end
  the wait. Switching back to ``forward()`` delivers what was held back and
  connects held connections to the target;
- ``refuse()``: every open connection is closed, and new ones are refused
  (``ECONNREFUSED``), like a server that is down;
- ``close()``: stop for good.

Each accepted connection gets one thread that pumps both directions.
``blackhole()`` returns only once every connection thread has stopped
moving bytes, so a test may send right after it and be sure nothing passes.

Usage::

    with TCPProxy("127.0.0.1", cluster.port) as proxy:
        conn = psycopg2.connect(host="127.0.0.1", port=proxy.port, ...)
        proxy.blackhole()
        ...  # the next query hangs until the client's deadline
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Literal

__all__ = ["Mode", "TCPProxy"]

Mode = Literal["forward", "blackhole", "refuse", "closed"]

_CHUNK = 65536


class TCPProxy:
    """Forwards connections on ``host:port`` (port picked free) to the target."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        connect_timeout: float = 5.0,
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.connect_timeout = connect_timeout
        self._cond = threading.Condition()
        self._mode: Mode = "forward"
        self._pipes: set[_Pipe] = set()
        self._accepted = 0
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"tcp-proxy-{self.port}", daemon=True)
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"<TCPProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} {self._mode}>"

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- modes -------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    def forward(self) -> None:
        """Let bytes flow (again); after ``refuse()``, listen again on the same port."""
        with self._cond:
            self._check_open()
            if self._mode == "refuse":
                self._reopen_listener()
            self._mode = "forward"
            self._wake_all()
            self._cond.notify_all()

    def blackhole(self, timeout: float = 5.0) -> None:
        """Stop moving bytes, keeping every connection open; see the module docstring.

        Waits (at most ``timeout`` s, e.g. behind a send blocked by a peer
        that does not read) until every connection thread has paused.
        """
        with self._cond:
            self._check_open()
            if self._mode == "refuse":
                self._reopen_listener()
            self._mode = "blackhole"
            self._wake_all()
            self._cond.notify_all()
            self._cond.wait_for(lambda: all(pipe.parked for pipe in self._pipes), timeout=timeout)

    def refuse(self) -> None:
        """Close every connection and refuse new ones until ``forward()``."""
        with self._cond:
            self._check_open()
            self._mode = "refuse"
            self._stop_listening_and_abort()

    def close(self) -> None:
        """Close everything and stop the threads. Idempotent."""
        with self._cond:
            if self._mode == "closed":
                return
            self._mode = "closed"
            self._stop_listening_and_abort()
            pipes = list(self._pipes)
        self._acceptor.join(timeout=5)
        for pipe in pipes:
            pipe.thread.join(timeout=5)

    # -- counters ----------------------------------------------------------

    def connections(self) -> int:
        """Number of client connections the proxy holds open right now.

        A client that hung up during ``blackhole()`` is counted until
        ``forward()`` lets the proxy notice.
        """
        with self._cond:
            return len(self._pipes)

    @property
    def accepted(self) -> int:
        """Number of client connections accepted since creation."""
        with self._cond:
            return self._accepted

    # -- internals (call with self._cond held unless said otherwise) -------

    def _check_open(self) -> None:
        if self._mode == "closed":
            raise RuntimeError(f"{self!r} is closed")

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        return listener

    def _reopen_listener(self) -> None:
        # The acceptor closes the old listener and clears self._listener
        # once it sees the "refuse" mode; wait for that, then listen anew.
        self._cond.notify_all()
        if not self._cond.wait_for(lambda: self._listener is None, timeout=5):
            raise RuntimeError(f"{self!r}: acceptor did not release the old listener")
        self._listener = self._listen(self.port)
        self._cond.notify_all()

    def _stop_listening_and_abort(self) -> None:
        if self._listener is not None:
            # shutdown() on a listening socket makes the kernel refuse new
            # connections at once and wakes the acceptor's accept(); the
            # acceptor thread closes it (so no fd is closed under its feet).
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
        for pipe in self._pipes:
            pipe.abort()
        self._cond.notify_all()

    def _wake_all(self) -> None:
        for pipe in self._pipes:
            pipe.wake()

    def _accept_loop(self) -> None:
        """Acceptor thread (does not hold the lock while blocked)."""
        while True:
            with self._cond:
                while self._mode in ("refuse", "closed"):
                    if self._listener is not None:
                        self._listener.close()
                        self._listener = None
                        self._cond.notify_all()
                    if self._mode == "closed":
                        return
                    self._cond.wait()
                listener = self._listener
            assert listener is not None
            try:
                client, _ = listener.accept()
            except OSError:
                continue  # shut down by refuse()/close(): the loop head closes it
            with self._cond:
                if self._mode in ("refuse", "closed"):
                    client.close()
                    continue
                pipe = _Pipe(self, client)
                self._pipes.add(pipe)
                self._accepted += 1
            pipe.thread.start()


class _Pipe:
    """One client connection and its upstream connection, pumped by one thread."""

    def __init__(self, proxy: TCPProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: socket.socket | None = None
        self.parked = False
        """True while paused by blackhole (or finished): moving no bytes."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.thread = threading.Thread(target=self._run, name=f"tcp-proxy-{proxy.port}-pipe", daemon=True)

    def wake(self) -> None:
        """Make the pump thread re-read the proxy mode (any thread)."""
        # OSError: buffer full (a wake-up is pending anyway) or already closed.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def abort(self) -> None:
        """Cut both connections (called with the proxy lock held)."""
        for sock in (self.client, self.upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self.wake()

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(_CHUNK):
                pass
        except (BlockingIOError, OSError):
            pass

    def _run(self) -> None:
        try:
            self._pump()
        except OSError:
            pass  # a connection broke: close both sides
        finally:
            with self.proxy._cond:
                for sock in (self.client, self.upstream, self._wake_r, self._wake_w):
                    if sock is not None:
                        sock.close()
                self.parked = True
                self.proxy._pipes.discard(self)
                self.proxy._cond.notify_all()

    def _pump(self) -> None:
        finished: set[socket.socket] = set()  # sides that sent EOF
        while True:
            with self.proxy._cond:
                mode = self.proxy._mode
                self.parked = mode == "blackhole"
                if self.parked:
                    self.proxy._cond.notify_all()
            if mode in ("refuse", "closed"):
                return
            if mode == "blackhole":
                select.select([self._wake_r], [], [])
                self._drain_wake()
                continue
            if self.upstream is None:
                self.upstream = socket.create_connection(self.proxy.target, timeout=self.proxy.connect_timeout)
                self.upstream.settimeout(None)
            upstream = self.upstream
            sources = [s for s in (self.client, upstream) if s not in finished]
            readable, _, _ = select.select([*sources, self._wake_r], [], [])
            if self._wake_r in readable:
                self._drain_wake()
                continue  # the mode may have changed: check before moving bytes
            for source in readable:
                destination = upstream if source is self.client else self.client
                data = source.recv(_CHUNK)
                if data:
                    destination.sendall(data)
                    continue
                finished.add(source)
                destination.shutdown(socket.SHUT_WR)  # pass the half-close on
                if len(finished) == 2:
                    return
