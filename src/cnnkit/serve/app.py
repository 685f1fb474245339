"""The HTTP service: FastAPI app, JSON errors everywhere, dynamic batching per model, Prometheus metrics.

Every request passes the Guard middleware first (bearer token, Host and Origin allow-list when there is no
token, body size and the body's deadline); connections are bounded in time and number below it, in
`cnnkit.serve.connections`. No answer shows a path of this machine (file names only). The OpenAPI schema is
at /openapi.json; there is no /docs page (FastAPI's loads Swagger UI from a CDN: offline it breaks, online it
tells the CDN who reads the docs).

Routes (all JSON; errors are `{"error": {"status": N, "message": "..."}}`):
    GET  /healthz                         alive (answers while a batch runs)
    GET  /readyz                          503 until every model is loaded and warmed
    GET  /metrics                         Prometheus text
    GET  /v1/models                       the models served, by name
    GET  /v1/models/{name}                its card: classes, input size, normalization, layers, params, MACs
    POST /v1/models/{name}/predict        images (multipart `file` parts, or JSON base64) -> top-k classes;
                                          a segmentation model's mask (PNG, base64) and areas per image; a
                                          detection model's boxes (class, score, box in the image's pixels)
    POST /v1/models/{name}/explain        one image + method, target, layer -> maps and a PNG overlay
    GET  /                                the browser explorer (`cnnkit explore`); its API is under
         /v1/models/{name}/explore/...    graph, gallery, images (POST one), images/{id}[/nodes/{node}
                                          [/channels/{c}]], images/{id}/why (see cnnkit.serve.routes.explore)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from cnnkit.serve.guard import Guard
from cnnkit.serve.models import ServedModel
from cnnkit.serve.options import ServeOptions
from cnnkit.serve.problems import add_error_handlers
from cnnkit.serve.routes import catalog, explore, health, inference
from cnnkit.serve.service import Service

ROUTERS = (health.router, catalog.router, inference.router, explore.router)


def create_app(models: dict[str, ServedModel], options: ServeOptions | None = None) -> FastAPI:
    """The service for already loaded models (see `cnnkit.serve.serve` to load artifacts and run it)."""
    options = options or ServeOptions()
    service = Service(models, options)
    # no /docs nor /redoc: FastAPI's pages load their scripts from a CDN (see the module's docstring)
    app = FastAPI(title="cnnkit", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions and explanations of cnnkit models, batched.")
    app.state.service = service
    app.add_middleware(Guard, options=options, metrics=service.metrics, service=service)
    add_error_handlers(app)
    for router in ROUTERS:
        # the router's routes joined to the app's own list: FastAPI's include_router (0.165) puts a layer in
        # front of an included router that matches each request twice, which cost 15-50 µs of CPU per request
        # on this machine (/healthz; /predict answering 404), about a third of what those answers cost
        app.router.routes.extend(router.routes)
    return app


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """A thread per model for its batches; the models warmed in the background (/readyz says when); at
    shutdown the batchers stopped and the threads joined."""
    service: Service = app.state.service
    models = service.models
    for m in models.values():
        m.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"cnnkit-{m.name}")

    async def warm() -> None:
        loop = asyncio.get_running_loop()
        for m in models.values():
            await loop.run_in_executor(m.executor, m.warm, service.options.max_batch)
        service.ready = True

    warming = asyncio.get_running_loop().create_task(warm())
    yield
    warming.cancel()
    for b in list(service.batchers.values()):
        await b.stop()
    for m in models.values():
        m.executor.shutdown(wait=True)
