"""Bounds in time and number on the HTTP connections of `cnnkit serve`, at the protocol level.

Every connection must send a request's headers within `timeout` of connecting (or of its previous answer),
or it is closed (with a 408 when it had begun a request); a connection whose client stops reading its answer
for `timeout` is dropped. At most `max_connections` are open: a new one past the limit closes the connection
that has waited longest for headers (an idle keep-alive or a slow client's), and when every connection is in
the middle of a request, it is answered 503 with Retry-After and closed at once. So slow clients cannot hold
file descriptors beyond the limit, nor the server beyond `timeout`, and /healthz gets a connection as long as
not every connection is busy with a request (each of which is bounded by `timeout` too). The request body's
deadline (408) is the Guard middleware's (guard.py), where it goes through the app's answers and metrics.

Written by hand, as a subclass of uvicorn's httptools protocol, because uvicorn (0.54) does none of it: its
`timeout_keep_alive` starts only after a first answer and stops at the first byte of the next request, so a
client that sends one byte every few seconds keeps its connection (and its file descriptor) for ever; it has
no deadline for a client that stops reading; and its `limit_concurrency` counts connections but refuses only
once a request's headers are complete, so the connections that never complete theirs are all accepted and
kept, until accept() fails for lack of file descriptors and /healthz with it. The subclass keeps uvicorn's
parsing and ASGI handling and adds three timers and the limit.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from cnnkit.errors import ConfigError

_TICKETS = itertools.count()  # the order in which connections began to wait for headers (loop.time() ties)
FD_RESERVE = 64  # file descriptors kept for the server itself (a serving process holds ~16: model, loop, pipes)
DEFAULT_MAX_CONNECTIONS = 1000


def connection_limit(requested: int | None = None) -> int:
    """The connection limit: `requested`, or by default 1,000; either way below the process's limit on open
    files (RLIMIT_NOFILE, `ulimit -n`) less FD_RESERVE, so that accept() never runs out of file descriptors.
    ConfigError when `requested` does not fit."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        room = soft - FD_RESERVE if soft != resource.RLIM_INFINITY else 1 << 30
    except (ImportError, OSError, ValueError):  # no RLIMIT_NOFILE here (Windows)
        soft, room = None, 1 << 30
    if requested is None:
        requested = min(DEFAULT_MAX_CONNECTIONS, room)
        if requested < 1:
            raise ConfigError(f"this process may open only {soft} files (ulimit -n); cnnkit serve needs more than "
                              f"{FD_RESERVE}: raise ulimit -n")
    elif requested < 1:
        raise ConfigError(f"--max-connections must be at least 1, got {requested}")
    elif requested > room:
        raise ConfigError(f"--max-connections {requested} needs more file descriptors than this process may open "
                          f"({soft}, ulimit -n, less {FD_RESERVE} kept for the server): give at most {max(room, 0)} "
                          f"or raise ulimit -n")
    return requested


def raw_response(status: int, message: str, default_headers: list[tuple[bytes, bytes]],
                 extra: tuple[tuple[bytes, bytes], ...] = ()) -> bytes:
    """A whole HTTP/1.1 answer in the service's JSON error format, closing the connection: for answers given
    by the protocol itself, before or without a request the app sees."""
    body = json.dumps({"error": {"status": status, "message": message}}).encode()
    headers = [*default_headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *extra]
    return b"".join([STATUS_LINE[status], *(b"%s: %s\r\n" % h for h in headers), b"\r\n", body])


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for headers, one for a stalled reader, and a connection
    limit (see the module's docstring). `timeout`, `max_connections` and `metrics` are set on a subclass
    made by `protocol_class`."""

    timeout: float = 30.0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    metrics: Any = None  # cnnkit.serve.metrics.Metrics, or None
    # a connection is in `connections` from the start of the base class's connection_made, before the lines
    # below run: what others read of it (the limit's choice, the metrics) exists from then on
    _waiting: int | None = None  # while it waits for a request's headers: when it began (a ticket)

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer = self._write_timer = None
        self._waiting = None
        self._begun = False  # a request's first bytes came, not yet all its headers
        self._refused = False  # answered 503 at the limit: what the client sends is dropped
        self._expect_headers()
        if len(self.connections) > self.max_connections:
            self._make_room()
        self._gauge()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._write_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._write_timer = self._waiting = None
        super().connection_lost(exc)
        self._gauge()

    def data_received(self, data: bytes) -> None:
        if not self._refused:
            super().data_received(data)

    # -- headers ---------------------------------------------------------------------------------------------

    def _expect_headers(self) -> None:
        self._waiting = next(_TICKETS)
        self._header_timer = self.loop.call_later(self.timeout, self._headers_late)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self._waiting = None
        self._begun = False
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # the next request's headers are due within the timeout too (and the rest of a body the app did not
        # read: a GET with a trickled body would otherwise hold the connection, uvicorn's keep-alive timer being
        # stopped by every byte); not while a pipelined request runs (its headers are in)
        if not self.transport.is_closing() and self.cycle.response_complete and self._header_timer is None:
            self._expect_headers()

    def _headers_late(self) -> None:
        self._header_timer = self._waiting = None
        if self.transport.is_closing():
            return
        if self._begun:
            self.transport.write(raw_response(408, f"the request's headers did not arrive within {self.timeout:g} s "
                                                   f"(--timeout)", self.server_state.default_headers))
        self.transport.close()
        self._count("header_timeout" if self._begun else "idle_timeout")

    # -- a client that does not read its answer ----------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.timeout, self._write_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        self.transport.abort()  # close() would wait for the client to read what is buffered
        self._count("write_timeout")

    # -- the connection limit ----------------------------------------------------------------------------------

    def _make_room(self) -> None:
        """Past the limit: close the connection that has waited longest for headers, or refuse this one."""
        waiting = [c for c in self.connections if c is not self and getattr(c, "_waiting", None) is not None]
        if waiting:
            oldest = min(waiting, key=lambda c: c._waiting)
            oldest._waiting = None  # chosen: a burst of new connections picks the next ones
            oldest.transport.close()
            self._count("evicted")
            return
        self._refused = True
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self._waiting = None
        self.transport.write(raw_response(
            503, f"{len(self.connections) - 1} connections are open, each with a request in progress, the server's "
                 f"limit (--max-connections {self.max_connections}); retry shortly",
            self.server_state.default_headers, ((b"retry-after", b"1"),)))
        self._count("refused")
        # a lingering close, as nginx does: closed at once, with the client's request arriving unread, the socket
        # would send a reset, which can make the client lose the answer. Half-closed instead: the client reads
        # the answer and its end, closes, and the transport closes with it (eof_received); a second at most, and
        # at once when the refused ones pile up past half the file descriptors kept in reserve
        if len(self.connections) > self.max_connections + FD_RESERVE // 2 or not self.transport.can_write_eof():
            self.transport.close()
        else:
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.connections.set(len(self.connections))

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.closed_early.labels(reason).inc()


def protocol_class(timeout: float, max_connections: int, metrics: Any = None) -> type[BoundedHttpProtocol]:
    """A BoundedHttpProtocol with these bounds, for uvicorn.Config(http=...)."""
    return type("CnnkitHttpProtocol", (BoundedHttpProtocol,),
                {"timeout": float(timeout), "max_connections": int(max_connections), "metrics": metrics,
                 "__module__": __name__})


__all__ = ["BoundedHttpProtocol", "DEFAULT_MAX_CONNECTIONS", "FD_RESERVE", "connection_limit", "protocol_class",
           "raw_response"]
