"""`cnnkit serve`: predictions and explanations of cnnkit artifacts over HTTP (FastAPI + uvicorn), with
dynamic batching, limits, health and Prometheus metrics. `create_app` builds the app for loaded models;
`serve` loads artifacts and runs it; `cnnkit.serve.client.Client` talks to it.

Every client is bounded in time by `ServeOptions.timeout_s` (--timeout), at each stage: its headers (else the
connection is closed, cnnkit.serve.connections), its body (408, the app's Guard), its answer (504, queueing
included), a stalled read of the answer (dropped); and a shutdown (SIGTERM, SIGINT) waits at most that long
for the requests in flight. Connections are bounded in number below the process's open-file limit.

Modules: `server` (artifacts loaded, the socket, uvicorn, `serve`), `app` (`create_app`), `routes/` (one router
per group: health, catalog, inference, explore), `guard` (the middleware in front of every route), `bodies`
(request bodies into image batches), `service` (the models and their batchers), `problems` (error answers),
`options`, `metrics`, `batcher`, `connections`, `models` (a served model), `explore` (the explorer), `client`."""

from cnnkit.serve.app import create_app
from cnnkit.serve.connections import connection_limit
from cnnkit.serve.models import ServedModel
from cnnkit.serve.options import ServeOptions, is_loopback, parse_origins, resolve_token
from cnnkit.serve.server import bind, load_models, serve, server_config

__all__ = ["ServeOptions", "ServedModel", "create_app", "load_models", "serve", "bind", "connection_limit",
           "parse_origins", "is_loopback", "resolve_token", "server_config"]
