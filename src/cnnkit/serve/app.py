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
    POST /v1/models/{name}/predict        images (multipart `file` parts, or JSON base64) -> top-k classes
    POST /v1/models/{name}/explain        one image + method, target, layer -> maps and a PNG overlay
    GET  /                                the browser explorer (`cnnkit explore`); its API is under
         /v1/models/{name}/explore/...    graph, gallery, images (POST one), images/{id}[/nodes/{node}
                                          [/channels/{c}]], images/{id}/why (see add_explore_routes)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import hmac
import io
import json
import math
import os
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from cnnkit.errors import CnnkitError, DataError, ExplainError, close_matches, error_line
from cnnkit.serve.batcher import Batcher, QueueFull
from cnnkit.serve.models import ServedModel, overlay_png


@dataclass
class ServeOptions:
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256  # images waiting per model; more -> 503 with Retry-After
    timeout_s: float = 30.0  # per request, queueing included -> 504
    max_body_mb: float = 16.0  # -> 413
    max_pixels: int = 40_000_000  # per image, checked from the header before decoding -> 413
    max_images: int = 64  # per request -> 413
    token: str | None = None  # bearer token for /v1 and /metrics -> 401
    # without a token: origins (scheme://host:port) whose pages may call the API, and whose host may be in the
    # Host header, besides the server's own address and localhost's -> 403
    allow_origins: tuple[str, ...] = ()
    max_connections: int | None = None  # open at once (None: connections.connection_limit's default)


class Problem(Exception):
    """An HTTP error answer: status and one-line message (and extra headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# an absolute path of two or more parts (POSIX or Windows), not inside a URL or a media type: its folders
_FOLDERS = re.compile(r"(?<![\w.:/\\])(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\:;,()]+[/\\])+(?=[^\s'\"/\\:;,()])")


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its file name: answers never show this machine's folders."""
    return _FOLDERS.sub("", message)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": without_paths(message)}}, status, headers=headers)


class Metrics:
    """Prometheus metrics in a registry of this app's own (several apps in one process do not collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("cnnkit_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=self.registry)
        self.latency = Histogram("cnnkit_request_seconds", "Time to answer a request", ["route"],
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                                 registry=self.registry)
        self.batch = Histogram("cnnkit_batch_images", "Images per forward pass", ["model", "kind"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.batch_seconds = Histogram("cnnkit_batch_seconds", "Time of one forward pass", ["model", "kind"],
                                       registry=self.registry)
        self.queue = Gauge("cnnkit_queue_images", "Images waiting for a batch", ["model"], registry=self.registry)
        self.connections = Gauge("cnnkit_connections", "Open HTTP connections", registry=self.registry)
        self.closed_early = Counter("cnnkit_connections_closed_early", "Connections the server closed on its own: "
                                    "header_timeout (a request's headers late, 408), idle_timeout (no request "
                                    "begun), write_timeout (a client not reading its answer), evicted (the one "
                                    "waiting longest for headers, at the connection limit), refused (503 at the "
                                    "limit, every connection busy)", ["reason"], registry=self.registry)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Service:
    """The models, their batchers and the options: what the routes work on."""

    def __init__(self, models: dict[str, ServedModel], options: ServeOptions):
        self.models, self.options, self.metrics = models, options, Metrics()
        self.ready = False
        self.in_progress = 0  # HTTP requests between the Guard's entry and their answer (the batchers ask)
        self.batchers: dict[tuple[str, str, str], Batcher] = {}
        self.explorers: dict[str, Any] = {}

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise Problem(404, f"unknown model {name!r}{close_matches(name, self.models)}; served: "
                               f"{', '.join(self.models)}")
        return self.models[name]

    def batcher(self, m: ServedModel, kind: str, method: str = "", layer: str = "") -> Batcher:
        key = (m.name, kind, f"{method}@{layer}")
        if key not in self.batchers:
            o = self.options
            observe = (lambda n, s, name=m.name, kind=kind: (self.metrics.batch.labels(name, kind).observe(n),
                                                             self.metrics.batch_seconds.labels(name, kind).observe(s)))
            run = m.predict_batch if kind == "predict" else m.explain_batch
            # explanations take far longer per image than predictions: smaller batches keep latency bounded
            max_batch = o.max_batch if kind == "predict" else max(1, min(o.max_batch, 8))
            self.batchers[key] = Batcher(run, max_batch, o.max_delay_ms / 1e3, o.max_queue, observe, m.executor,
                                         others=lambda: self.in_progress - 1)
        return self.batchers[key]

    def queued(self, name: str) -> int:
        return sum(b.queued_images for k, b in self.batchers.items() if k[0] == name)

    def refuse_if_full(self, m: ServedModel, n: int = 1) -> None:
        """503 when `n` more images would overflow the model's queue: checked before the body is parsed and
        decoded too, so that refusing work under overload costs little."""
        if self.queued(m.name) + n > self.options.max_queue and self.queued(m.name) > 0:
            raise Problem(503, f"model {m.name!r} is overloaded ({self.queued(m.name)} images queued); retry "
                               f"shortly", {"Retry-After": "1"})

    async def submit(self, m: ServedModel, b: Batcher, x: torch.Tensor, args: Any = None) -> Any:
        self.refuse_if_full(m, len(x))
        self.metrics.queue.labels(m.name).set(self.queued(m.name) + len(x))
        try:
            return await b.submit(x, args, self.options.timeout_s)
        except QueueFull:
            raise Problem(503, f"model {m.name!r} is overloaded; retry shortly", {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            raise Problem(504, f"no answer within {self.options.timeout_s:g} s (the server is busy); retry "
                               f"later or raise --timeout") from None
        except CnnkitError as e:
            raise Problem(422, error_line(e)) from None
        finally:
            self.metrics.queue.labels(m.name).set(self.queued(m.name))


# ---------------------------------------------------------------------------------------------- request bodies

async def read_images(request: Request, m: ServedModel, options: ServeOptions,
                      single: bool = False) -> tuple[torch.Tensor, list[str], dict[str, Any]]:
    """The request's images as one uint8 N×C×H×W batch for `m`, their names, and the other fields given
    (JSON keys or multipart form fields). Multipart: one or more file parts (any field name). JSON:
    {"images": [base64, ...]} or {"image": base64}, optionally as data URLs. A body of type image/* (or
    application/octet-stream): that one image, its options as query parameters."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: dict[str, Any] = {}
    blobs: list[tuple[str, bytes]] = []
    if ctype == "multipart/form-data":
        fields, blobs = parse_multipart(await request.body(), request.headers.get("content-type", ""),
                                        options.max_images, max_fields=32)
    elif ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as e:  # RecursionError: arrays nested deeper than Python's stack
            raise Problem(400, f"the body is not valid JSON: {error_line(e)}") from None
        if not isinstance(body, dict):
            raise Problem(422, 'the JSON body must be an object, e.g. {"images": ["<base64>"]}')
        images = body.pop("images", None)
        if images is None and "image" in body:
            images = [body.pop("image")]
        if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
            raise Problem(422, 'give "images": a list of base64 strings (or "image": one)')
        for i, s in enumerate(images):
            blobs.append((f"image {i}", _b64(s, i)))
        fields = body
    elif ctype.startswith("image/") or ctype == "application/octet-stream":  # one image as the raw body
        blobs.append(("body", await request.body()))
    else:
        raise Problem(415, f"send the images as multipart/form-data, application/json (base64) or one image "
                           f"as the body (image/*), not {ctype or 'a body without Content-Type'}")
    if not blobs:
        raise Problem(422, "no image in the request")
    if single and len(blobs) > 1:
        raise Problem(422, f"explain takes one image per request, got {len(blobs)}")
    if len(blobs) > options.max_images:
        raise Problem(413, f"{len(blobs)} images in one request; at most {options.max_images}")
    # a large image (up to --max-pixels) takes tens to hundreds of milliseconds to decode, and health checks and
    # every other request would wait for it on the event loop: it is decoded in a pool thread (PIL releases the
    # GIL while it decodes). Small ones are decoded here: a 28×28 PNG decodes in less time than the hand-over
    # to a thread and back takes under load
    opened = _open_if_small(blobs)
    if opened is not None:
        x = decode_images(blobs, m, options.max_pixels, opened)
    else:
        x = await asyncio.get_running_loop().run_in_executor(_decode_pool(), decode_images, blobs, m,
                                                             options.max_pixels)
    return x, [n for n, _ in blobs], fields


INLINE_DECODE_PIXELS = 64 * 64  # all images of a request together, as their headers declare them


def _open_if_small(blobs: list[tuple[str, bytes]]) -> list[Any] | None:
    """The images opened by PIL (headers read, nothing decoded) when together they declare at most
    INLINE_DECODE_PIXELS pixels; None otherwise, or when a header cannot be read (the pool's decode then says
    what is wrong)."""
    import warnings

    from PIL import Image

    opened, total = [], 0
    for _, data in blobs:
        try:
            with warnings.catch_warnings():  # a huge claim: decode_images refuses it with its own message
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
        except Exception:  # any header PIL cannot read
            im = None
        if im is not None:
            opened.append(im)
            total += im.width * im.height
        if im is None or total > INLINE_DECODE_PIXELS:
            for o in opened:
                o.close()
            return None
    return opened


def parse_multipart(body: bytes, content_type: str, max_files: int,
                    max_fields: int) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """The form fields and the file parts (file name or field name, bytes) of a multipart/form-data body that
    is already in memory (the Guard middleware buffered it, bounded). python-multipart's parser, driven
    directly: Starlette's `request.form()` around it spools every part through an UploadFile and cost four
    times as much per small request; a part is a file when its Content-Disposition has a filename, as there."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    boundary = parse_options_header(content_type)[1].get(b"boundary")
    if not boundary:
        raise Problem(400, "cannot read the multipart body: its Content-Type has no boundary")
    parts: list[tuple[dict[bytes, bytes], bytes]] = []
    headers: dict[bytes, bytes] = {}
    field, value, data = bytearray(), bytearray(), bytearray()

    def header_end() -> None:
        headers[bytes(field).lower()] = bytes(value)
        field.clear(), value.clear()

    def part_end() -> None:
        parts.append((dict(headers), bytes(data)))
        headers.clear(), data.clear()
        if len(parts) > max_files + max_fields:
            raise Problem(413, f"more than {max_files} images in one request")

    parser = MultipartParser(boundary, {
        "on_header_field": lambda d, a, b: field.extend(d[a:b]),
        "on_header_value": lambda d, a, b: value.extend(d[a:b]),
        "on_header_end": header_end, "on_part_data": lambda d, a, b: data.extend(d[a:b]), "on_part_end": part_end})
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise Problem(400, f"cannot read the multipart body: {error_line(e)}") from None
    fields: dict[str, str] = {}
    blobs: list[tuple[str, bytes]] = []
    for part_headers, content in parts:
        params = parse_options_header(part_headers.get(b"content-disposition", b""))[1]
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in params:
            blobs.append((params[b"filename"].decode("utf-8", "replace") or name, content))
        else:
            fields[name] = content.decode("utf-8", "replace")
    if len(blobs) > max_files:
        raise Problem(413, f"more than {max_files} images in one request")
    if len(fields) > max_fields:
        raise Problem(413, f"more than {max_fields} form fields in one request")
    return fields, blobs


_DECODE_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _decode_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _DECODE_POOL
    if _DECODE_POOL is None:
        _DECODE_POOL = concurrent.futures.ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)),
                                                             thread_name_prefix="cnnkit-decode")
    return _DECODE_POOL


def _b64(s: str, i: int) -> bytes:
    if s.startswith("data:"):
        s = s.partition(",")[2]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(422, f"image {i} is not valid base64") from None


def decode_images(blobs: list[tuple[str, bytes]], m: ServedModel, max_pixels: int,
                  opened: list[Any] | None = None) -> torch.Tensor:
    """The images as one uint8 batch for `m`; `opened`: the same images already opened by PIL."""
    from cnnkit.data.images import ImageTooLarge, load_image_file, to_model_input

    out = []
    for i, (name, data) in enumerate(blobs):
        if not data:
            raise Problem(422, f"{name} is empty (0 bytes)")
        try:
            image = load_image_file(opened[i] if opened else io.BytesIO(data), max_pixels=max_pixels, name=name)
            out.append(to_model_input(image, m.input_shape[0], m.input_shape[1:]))
        except ImageTooLarge as e:
            raise Problem(413, _too_many_pixels(name, e, max_pixels) if e.limit else str(e)) from None
        except DataError as e:
            msg = str(e)
            raise Problem(415 if "not an image format" in msg else 422, msg) from None
        except MemoryError:
            raise Problem(413, f"{name} is too large to convert for the model; send a smaller image") from None
        except (ValueError, OSError, TypeError, RuntimeError) as e:  # a mode the conversion does not know (LAB)
            raise Problem(422, f"cannot convert image {name} for the model: {error_line(e)}") from None
    return out[0].unsqueeze(0) if len(out) == 1 else torch.stack(out)


def _too_many_pixels(name: str, e: Any, max_pixels: int) -> str:
    """The 413 for an image past the pixel limit (an ImageTooLarge), naming the service's --max-pixels."""
    from PIL import Image

    if e.size:
        return (f"{name} has {e.size[0]}×{e.size[1]} pixels, more than --max-pixels {max_pixels} allows; send a "
                f"smaller image")
    refused = 2 * (Image.MAX_IMAGE_PIXELS or 0)  # PIL refuses from the header past twice its warning limit
    if refused and max_pixels > refused:
        return f"{name} has more than {refused} pixels, more than the image decoder takes; send a smaller image"
    return f"{name} has more pixels than --max-pixels {max_pixels} allows; send a smaller image"


def _int_field(fields: dict[str, Any], request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = fields.get(key, request.query_params.get(key, default))
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Problem(422, f"{key} must be an integer, got {str(raw)[:40]!r}") from None
    if not low <= value <= high:
        raise Problem(422, f"{key} must be between {low} and {high}, got {value}")
    return value


def _str_field(fields: dict[str, Any], request: Request, key: str, default: str | None) -> str | None:
    value = fields.get(key, request.query_params.get(key, default))
    if value is not None and not isinstance(value, (str, int)):
        raise Problem(422, f"{key} must be a string")
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------------------------ the app

def create_app(models: dict[str, ServedModel], options: ServeOptions | None = None) -> FastAPI:
    """The service for already loaded models (see `cnnkit.serve.serve` to load artifacts and run it)."""
    options = options or ServeOptions()
    service = Service(models, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in models.values():
            m.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"cnnkit-{m.name}")

        async def warm():
            loop = asyncio.get_running_loop()
            for m in models.values():
                await loop.run_in_executor(m.executor, m.warm)
            service.ready = True

        warming = asyncio.get_running_loop().create_task(warm())
        yield
        warming.cancel()
        for b in list(service.batchers.values()):
            await b.stop()
        for m in models.values():
            m.executor.shutdown(wait=True)

    # no /docs nor /redoc: FastAPI's pages load their scripts from a CDN (see the module's docstring)
    app = FastAPI(title="cnnkit", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Predictions and explanations of cnnkit models, batched.")
    app.state.service = service
    metrics = service.metrics

    app.add_middleware(Guard, options=options, metrics=metrics, service=service)

    @app.exception_handler(Problem)
    async def on_problem(_request: Request, p: Problem):
        return _error(p.status, p.message, p.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, e: StarletteHTTPException):
        message = {404: "no such route; see /openapi.json", 405: "method not allowed on this route"}.get(
            e.status_code, str(e.detail))
        return _error(e.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def on_validation(_request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def on_unexpected(_request: Request, e: Exception):  # a bug of ours: say so, keep serving
        return _error(500, f"internal error ({type(e).__name__}: {error_line(e)})")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        if not service.ready:
            return _error(503, "warming up the models", {"Retry-After": "1"})
        return {"status": "ready", "models": list(models)}

    @app.get("/metrics")
    async def metrics_route():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models():
        return {"models": [{"name": m.name, "architecture": m.card["architecture"], "kind": m.card["kind"],
                            "classes": len(m.classes), "input": m.card["input"], "explainable": m.explainable}
                           for m in models.values()]}

    @app.get("/v1/models/{name}")
    async def model_card(name: str):
        return service.model(name).card

    body_doc = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "description": "base64"}}}}}}}}

    # the hot route takes its name from the path itself: a parameter in the signature would have FastAPI
    # validate it through its dependency machinery on every request, a tenth of the route's time for small images
    path_doc = {"parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                               {"name": "topk", "in": "query", "required": False, "schema": {"type": "integer"}}]}

    @app.post("/v1/models/{name}/predict", openapi_extra={**body_doc, **path_doc})
    async def predict(request: Request):
        """Top-k classes of one or more images (query or field `topk`, default 5)."""
        t = time.perf_counter()
        name = request.path_params["name"]
        m = service.model(name)
        service.refuse_if_full(m)
        x, names, fields = await read_images(request, m, options)
        k = _int_field(fields, request, "topk", min(5, len(m.classes)), 1, len(m.classes))
        probs = await service.submit(m, service.batcher(m, "predict"), x)
        values, indices = probs.topk(k, dim=1)
        # a JSONResponse of plain lists and floats: FastAPI's encoder walks a returned dict recursively, which
        # cost about as much per request as parsing the multipart body
        return JSONResponse({"model": name, "predictions": [
            {"image": n, "top": [{"class": m.classes[i], "index": i, "probability": v}
                                 for v, i in zip(vs, ix)]}
            for n, vs, ix in zip(names, values.tolist(), indices.tolist())], "seconds": time.perf_counter() - t})

    @app.post("/v1/models/{name}/explain", openapi_extra=body_doc)
    async def explain(name: str, request: Request):
        """One image explained: `method` (default gradcam), `target` (class name or index; default the
        predicted class), `layer` (CAM methods; default the last convolutional stage)."""
        from cnnkit.explain.run import METHODS, target_index

        t = time.perf_counter()
        m = service.model(name)
        service.refuse_if_full(m)
        x, names, fields = await read_images(request, m, options, single=True)
        method = _str_field(fields, request, "method", "gradcam")
        if method not in METHODS:
            raise Problem(422, f"unknown method {method!r}{close_matches(method, METHODS)}; choose from: "
                               f"{', '.join(METHODS)}")
        try:
            layer = m.check_layer(_str_field(fields, request, "layer", "auto"))
            target = target_index(_str_field(fields, request, "target", None), m.classes)
        except ExplainError as e:
            raise Problem(422, error_line(e)) from None
        from cnnkit.explain.cam import CAM_METHODS

        layer = layer if method in CAM_METHODS else "auto"
        r = (await service.submit(m, service.batcher(m, "explain", method, layer), x,
                                  {"method": method, "layer": layer, "target": target}))[0]
        probs = r["probabilities"]
        return JSONResponse({"model": name, "image": names[0], "method": method, "layer": r["layer"],
                "target": {"class": m.classes[r["target"]], "index": r["target"],
                           "probability": float(probs[r["target"]])},
                "predicted": {"class": m.classes[r["predicted"]], "index": r["predicted"],
                              "probability": float(probs[r["predicted"]])},
                "zero_map": r["zero_map"],
                "map": _rounded(r["map"]), "layer_map": _rounded(r["layer_map"]),
                "overlay_png": base64.b64encode(overlay_png(x[0], r["map"])).decode(),
                "seconds": time.perf_counter() - t})

    add_explore_routes(app, service)
    return app


def add_explore_routes(app: FastAPI, service: Service) -> None:
    """The explorer's page and API: every answer computed in the model's own thread (never on the event loop,
    never at the same time as a batch of that model)."""
    from fastapi.responses import FileResponse, HTMLResponse

    from cnnkit.serve.explore import DEFAULT_TOPK, PAGE_DIR, WHY_METHODS, Explorer, NotFound, page_html

    async def run(m: ServedModel, fn, *args):
        try:
            return await asyncio.get_running_loop().run_in_executor(m.executor, fn, *args)
        except NotFound as e:
            raise Problem(404, error_line(e)) from None
        except CnnkitError as e:
            raise Problem(422, error_line(e)) from None

    async def explorer(name: str) -> Explorer:
        m = service.model(name)
        if name not in service.explorers:
            if not m.explainable:
                raise Problem(422, f"model {name!r} is an exported artifact ({m.card['kind']}); the explorer needs "
                                   f"its training checkpoint: serve the run directory or .safetensors file")
            service.explorers[name] = await run(m, Explorer, m)
        return service.explorers[name]

    def topk_of(request: Request) -> int:
        return _int_field({}, request, "topk", DEFAULT_TOPK, 1, 256)

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse(page_html())

    @app.get("/explorer/{file}", include_in_schema=False)
    async def asset(file: str):
        if file not in ("explorer.js", "explorer.css"):
            raise Problem(404, f"no file {file!r}")
        return FileResponse(PAGE_DIR / file, media_type="text/javascript" if file.endswith(".js") else "text/css")

    @app.get("/v1/models/{name}/explore/graph")
    async def graph(name: str):
        """The network as the explorer draws it: layers from torch.fx, joins, output shapes, stages."""
        ex = await explorer(name)
        return JSONResponse(ex.graph())

    @app.get("/v1/models/{name}/explore/gallery")
    async def gallery(name: str):
        """Test images of the run's dataset (misclassified ones marked), each with an id to explore."""
        ex = await explorer(name)
        return JSONResponse(await run(ex.m, ex.gallery))

    @app.post("/v1/models/{name}/explore/images", openapi_extra=None)
    async def upload(name: str, request: Request):
        """One image (multipart, base64 JSON or raw body) -> its id and its overview."""
        ex = await explorer(name)
        x, _, _ = await read_images(request, ex.m, service.options, single=True)
        key = ex.add_image(x[0])
        return JSONResponse(await run(ex.m, ex.overview, key, topk_of(request)))

    @app.get("/v1/models/{name}/explore/images/{key}")
    async def overview(name: str, key: str, request: Request):
        """Every layer's top-k channels (uint8 maps, each with its min and max), class scores, the input."""
        ex = await explorer(name)
        return JSONResponse(await run(ex.m, ex.overview, key, topk_of(request)))

    @app.get("/v1/models/{name}/explore/images/{key}/nodes/{node}")
    async def node_page(name: str, key: str, node: str, request: Request):
        """Another page of a layer's channels, most active first."""
        ex = await explorer(name)
        p = _int_field({}, request, "page", 0, 0, 1 << 20)
        return JSONResponse(await run(ex.m, ex.node_page, key, node, p, topk_of(request)))

    @app.get("/v1/models/{name}/explore/images/{key}/nodes/{node}/channels/{channel}")
    async def detail(name: str, key: str, node: str, channel: int):
        """The layer's numbers at one channel (float32, base64): inputs, weights, bias, outputs."""
        ex = await explorer(name)
        return JSONResponse(await run(ex.m, ex.detail, key, node, channel))

    @app.get("/v1/models/{name}/explore/images/{key}/why")
    async def why(name: str, key: str, request: Request):
        """One explanation map of a class (`target`, default the predicted one) by `method`, with its
        deletion and insertion scores for this image."""
        from cnnkit.explain.run import target_index

        ex = await explorer(name)
        method = _str_field({}, request, "method", "gradcam")
        if method not in WHY_METHODS:
            raise Problem(422, f"unknown method {method!r}{close_matches(method, WHY_METHODS)}; choose from: "
                               f"{', '.join(WHY_METHODS)}")
        try:
            target = target_index(_str_field({}, request, "target", None), ex.m.classes)
        except ExplainError as e:
            raise Problem(422, error_line(e)) from None
        return JSONResponse(await run(ex.m, ex.why, key, target, method))


def _rounded(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 4) if math.isfinite(v) else 0.0 for v in row] for row in t.tolist()]


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
                await _error(problem.status, problem.message, problem.headers)(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs once a shutdown has waited --timeout for it, then logs each with a
            # traceback and answers 500: this is the request's own task, so it answers 503 and ends normally
            if not status[1]:
                await _error(503, "the server is shutting down; retry shortly", {"Connection": "close"})(
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
