"""Running the service: the artifacts loaded as served models, the listening socket, uvicorn's configuration
with the service's bounds, and `serve`, which runs it until SIGINT or SIGTERM."""

from __future__ import annotations

import gc
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from cnnkit.errors import ConfigError
from cnnkit.runtime import reuse_freed_memory
from cnnkit.serve.app import create_app
from cnnkit.serve.connections import connection_limit
from cnnkit.serve.models import ServedModel, parse_artifact
from cnnkit.serve.options import ServeOptions

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI


def load_models(specs: list[str], device: str = "auto", amp: str = "off", measure_layout: bool = True,
                score_threshold: float | None = None, nms_iou: float | None = None) -> dict[str, ServedModel]:
    """'PATH' or 'NAME=PATH' for each artifact (run directory, checkpoint, .onnx, .pt2), loaded;
    `measure_layout`: time NCHW against channels-last and keep the faster (off: NCHW, a faster start).
    `score_threshold` and `nms_iou`: the detection models' (see ServedModel); ConfigError when none is one."""
    from cnnkit.runtime import pick_device

    if not specs:
        raise ConfigError("give at least one artifact to serve (a run directory, checkpoint, .onnx or .pt2)")
    models: dict[str, ServedModel] = {}
    for spec in specs:
        name, path = parse_artifact(spec)
        if name in models:
            raise ConfigError(f"two artifacts would both be served as {name!r}; name them: NAME=PATH")
        models[name] = ServedModel(name, path, pick_device(device), amp, measure_layout, score_threshold, nms_iou)
    if (score_threshold is not None or nms_iou is not None) and all(m.task.name != "detect" for m in models.values()):
        raise ConfigError("--score-threshold and --nms-iou are for detection models; none of those given is one")
    return models


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), made before the server starts so the URL
    printed is the one that answers; ConfigError when the address is taken or not this machine's."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio turns Nagle's algorithm off only on sockets that say they are TCP, and
    # with it on, every response written in two parts waited 40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
                          f"(0 picks a free one)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_config(app: FastAPI, options: ServeOptions) -> uvicorn.Config:
    """uvicorn's Config for the app with the service's bounds: the protocol of cnnkit.serve.connections
    (headers' and stalled readers' deadlines, the connection limit) and a shutdown that waits at most
    --timeout for the requests in flight (uvicorn's default waits for ever; this module used to wait 30 s)."""
    import uvicorn

    from cnnkit.serve.connections import protocol_class

    limit = connection_limit(options.max_connections)
    service = getattr(app.state, "service", None)
    http = protocol_class(options.timeout_s, limit, service.metrics if service is not None else None)
    return uvicorn.Config(app, log_level=os.environ.get("CNNKIT_SERVE_LOG", "warning"), access_log=False,
                          http=http, timeout_graceful_shutdown=options.timeout_s, lifespan="on")


def serve(models: dict[str, ServedModel], host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions | None = None, on_ready: Callable[[str], None] | None = None,
          app_hook: Callable | None = None, sock: socket.socket | None = None) -> None:
    """Run the service until SIGINT or SIGTERM; then it stops accepting, finishes the requests in flight and
    returns. `on_ready(url)` is called with the address once the socket listens."""
    import uvicorn

    options = options or ServeOptions()
    app = create_app(models, options)
    if app_hook is not None:  # benchmarks add routes of their own (a constant endpoint)
        app_hook(app)
    sock = sock or bind(host, port)
    shown = host if ":" not in host else f"[{host}]"
    url = f"http://{shown}:{sock.getsockname()[1]}"
    server = uvicorn.Server(server_config(app, options))
    if on_ready is not None:
        on_ready(url)
    sys.stdout.flush()
    # uvicorn stops gracefully on SIGINT/SIGTERM, then raises the signal again under the handlers it found, so
    # that the process dies of it; a clean shutdown is a normal end of `cnnkit serve` (exit 0), so the handlers
    # it finds only note the signal
    caught: list[int] = []
    main_thread = threading.current_thread() is threading.main_thread()  # signals can only be set there
    previous = {s: signal.signal(s, lambda n, _f: caught.append(n))
                for s in ((signal.SIGINT, signal.SIGTERM) if main_thread else ())}
    # everything loaded so far (torch, the models, the app) lives as long as the server: moved out of the
    # garbage collector's view, so that its full collections, every few seconds under load, no longer walk all
    # of it and stall every request in flight for ~0.2 s (benchmarks/serve.py, ResNet-9 at 32 clients: p99
    # 233 ms before, 61 ms after)
    gc.collect()
    gc.freeze()
    # the event loop (pure Python, holding the GIL) and the model's thread (which needs the GIL for a moment
    # between its operators) share the GIL: at Python's default switch interval of 5 ms the model's thread
    # waited up to 5 ms per operator under load. ResNet-9 at 32 clients on 2 cores, benchmarks/serve.py's
    # server and load generator, 6-s levels interleaved: 789 and 860 requests/s at 5 ms, 942 and 724 at 1 ms,
    # 1,068 and 946 at 0.2 ms
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        with reuse_freed_memory():  # each batch's activations reuse the previous batch's memory
            server.run(sockets=[sock])
    finally:
        sys.setswitchinterval(switch)
        for s, h in previous.items():
            signal.signal(s, h)
