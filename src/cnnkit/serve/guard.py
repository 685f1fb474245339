"""The Guard: pure ASGI middleware in front of every route, which checks access (bearer token; Host and Origin
when there is no token), bounds the body (size and deadline) and counts every answer in the metrics."""

from __future__ import annotations

import asyncio
import hmac
import time

from cnnkit.serve.metrics import Metrics
from cnnkit.serve.options import ServeOptions
from cnnkit.serve.problems import Problem, error_response
from cnnkit.serve.service import Service


def _route_label(path: str) -> str:
    """Metric label of a path: model names kept, anything else unknown collapsed (bounded label values)."""
    parts = path.rstrip("/").split("/")
    if path in ("/healthz", "/readyz", "/metrics", "/v1/models", "/openapi.json"):
        return path
    if len(parts) == 4 and parts[1:3] == ["v1", "models"]:
        return "/v1/models/{name}"
    if len(parts) == 5 and parts[1:3] == ["v1", "models"] and parts[4] in ("predict", "explain"):
        return f"/v1/models/{{name}}/{parts[4]}"
    if len(parts) >= 5 and parts[1:3] == ["v1", "models"] and parts[4] == "explore":
        return "/v1/models/{name}/explore"
    if path == "/" or path.startswith("/explorer/"):
        return "/explorer"
    return "other"


class Guard:
    """Pure ASGI middleware in front of every route: bearer token (401); without a token, the Host and Origin
    allow-list (403); body size (413, the Content-Length checked first, then the bytes counted while the body
    is read, so a chunked body cannot pass the limit); the body's deadline (408); per-route request counts and
    latency. Buffering the (bounded) body here lets the routes read it normally.

    The allow-list, when there is no token: any web page can make a browser POST a form (multipart, no CORS
    preflight) to 127.0.0.1, and a page whose domain is made to resolve to 127.0.0.1 (DNS rebinding) can even
    read the answers. So a request must name this server in its Host header (its own address, localhost,
    127.0.0.1 or [::1], with its port), and a request from a page (Origin) must come from this server's own
    origin; `allow_origins` adds more. With a token, the token is the check (a browser cannot add it
    cross-origin without a CORS preflight, which the service never approves)."""

    OPEN = ("/healthz", "/readyz", "/openapi.json", "/", "/explorer/explorer.js", "/explorer/explorer.css")
    ANY_HOST = ("/healthz", "/readyz")  # health checkers know the server by names of their own; these say nothing

    def __init__(self, app, options: ServeOptions, metrics: Metrics, service: Service):
        self.app, self.options, self.metrics, self.service = app, options, metrics, service
        self.limit = int(options.max_body_mb * 2**20)
        # compared as bytes: the header's own (decoded as latin-1 below, so encoded back exactly), the token's UTF-8
        self.token = options.token.encode() if options.token else None
        self.origins = {o.strip().lower().rstrip("/") for o in options.allow_origins}
        self.extra_hosts = {o.partition("://")[2] for o in self.origins}
        self._hosts: dict[tuple, frozenset[str]] = {}  # per (server address, port, scheme)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = _route_label(scope["path"])
        t = time.perf_counter()
        status = [500, False]  # the answer's status, and whether it has started
        self.service.in_progress += 1

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0], status[1] = message["status"], True
            await send(message)

        try:
            problem = self._check(scope)
            if problem is None and scope["method"] in ("POST", "PUT", "PATCH"):
                body, problem = await self._read(receive)
                receive = _replay(body)
            if problem is not None:
                await error_response(problem.status, problem.message, problem.headers)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs once a shutdown has waited --timeout for it, then logs each with a
            # traceback and answers 500: this is the request's own task, so it answers 503 and ends normally
            if not status[1]:
                await error_response(503, "the server is shutting down; retry shortly", {"Connection": "close"})(
                    scope, receive, send_status)
        finally:
            self.service.in_progress -= 1
            self.metrics.requests.labels(route, str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - t)

    def _check(self, scope) -> Problem | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token is not None:
            if scope["path"] not in self.OPEN:
                scheme, _, given = headers.get("authorization", "").strip().partition(" ")
                # the scheme is case-insensitive (RFC 7235); the token compared in constant time
                if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("latin-1"), self.token):
                    return Problem(401, "missing or wrong bearer token (send Authorization: Bearer TOKEN)",
                                   {"WWW-Authenticate": "Bearer"})
        elif scope["path"] not in self.ANY_HOST:
            problem = self._check_host(scope, headers)
            if problem is not None:
                return problem
        length = headers.get("content-length")
        if length is not None and (not length.strip().isdigit() or int(length) > self.limit):
            return Problem(413, f"the body is {length[:20]} bytes; at most {self.limit} "
                                f"({self.options.max_body_mb:g} MB)")
        return None

    def _check_host(self, scope, headers: dict[str, str]) -> Problem | None:
        server = scope.get("server") or ("", None)
        scheme = scope.get("scheme", "http")
        key = (server[0], server[1], scheme)
        hosts = self._hosts.get(key)
        if hosts is None:
            name = str(server[0]).lower()
            names = {"localhost", "127.0.0.1", "[::1]", f"[{name}]" if ":" in name else name}
            hosts = {f"{n}:{server[1]}" for n in names} | self.extra_hosts
            if server[1] == (443 if scheme == "https" else 80):
                hosts |= names  # the default port may go unsaid
            hosts = self._hosts[key] = frozenset(hosts)
        host = headers.get("host", "").strip().lower()
        if host not in hosts:
            return Problem(403, f"Host {host[:80]!r} is not this server's address ({', '.join(sorted(hosts))}): "
                                f"without --token it answers only those (DNS rebinding); give --token, or "
                                f"--allow-origin for another name")
        origin = headers.get("origin")
        if origin is not None:
            o = origin.strip().lower().rstrip("/")
            if o != f"{scheme}://{host}" and o not in self.origins:
                return Problem(403, f"a request from the page of another origin ({origin[:80]}): without --token "
                                    f"only this server's own pages may call it; give --token, or --allow-origin "
                                    f"{origin[:80]} if you trust it")
        return None

    async def _read(self, receive) -> tuple[bytes, Problem | None]:
        """The body, within the deadline: a timer that cancels this task, as asyncio.timeout does (3.11+ only;
        asyncio.wait_for would make a task per request on the hot path)."""
        task, late = asyncio.current_task(), []

        def expire():
            late.append(True)
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.options.timeout_s, expire)
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":  # nobody will read the answer
                    return b"", Problem(400, "the client left before its request's body was complete")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    return b"", Problem(413, f"the body is over {self.limit} bytes ({self.options.max_body_mb:g} MB)")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        except asyncio.CancelledError:
            if not late:
                raise
            if hasattr(task, "uncancel"):  # 3.11+: this cancellation is handled
                task.uncancel()
            return b"", Problem(408, f"the request's body did not arrive within {self.options.timeout_s:g} s "
                                     f"(--timeout)", {"Connection": "close"})
        finally:
            timer.cancel()
        return b"".join(chunks), None


def _replay(body: bytes):
    sent = [False]

    async def receive():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)  # nothing more will come; the server cancels this when the client leaves
        return {"type": "http.disconnect"}

    return receive
