"""The browser explorer's page and API (`cnnkit explore`): every answer computed in the model's own thread
(never on the event loop, never at the same time as a batch of that model)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse

from cnnkit.errors import CnnkitError, ExplainError, close_matches, error_line
from cnnkit.serve.bodies import int_field, read_images, str_field
from cnnkit.serve.explore import (DEFAULT_TOPK, EXPLORE_SIDE, ORDERS, PAGE_DIR, WHY_METHODS, Explorer, NotFound,
                                  methods_of, page_html)
from cnnkit.serve.models import ServedModel
from cnnkit.serve.problems import Problem
from cnnkit.serve.service import service_of

router = APIRouter()


async def _run(m: ServedModel, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in the model's thread; 404 for what the explorer does not know, 422 for what it refuses."""
    try:
        return await asyncio.get_running_loop().run_in_executor(m.executor, fn, *args)
    except NotFound as e:
        raise Problem(404, error_line(e)) from None
    except CnnkitError as e:
        raise Problem(422, error_line(e)) from None


async def _explorer(request: Request, name: str) -> Explorer:
    """The explorer of the model served as `name`, made once; 422 for an exported artifact."""
    service = service_of(request)
    m = service.model(name)
    if name not in service.explorers:
        if not m.explainable:
            raise Problem(422, f"model {name!r} is an exported artifact ({m.card['kind']}); the explorer needs "
                               f"its training checkpoint: serve the run directory or .safetensors file")
        service.explorers[name] = await _run(m, Explorer, m)
    return service.explorers[name]


def shrunk(x: torch.Tensor) -> torch.Tensor:
    """A restoration model's input (uint8 C×H×W, at the image's own size) at most `EXPLORE_SIDE` pixels on its
    longer side: the explorer holds every layer's activations for it."""
    h, w = x.shape[-2:]
    if max(h, w) <= EXPLORE_SIDE:
        return x
    from torchvision.transforms.v2.functional import resize

    f = EXPLORE_SIDE / max(h, w)
    return resize(x, [max(1, round(h * f)), max(1, round(w * f))], antialias=True)


def _topk(request: Request) -> int:
    return int_field({}, request, "topk", DEFAULT_TOPK, 1, 256)


def _order(request: Request) -> str:
    """How each layer's channels are listed: `activity` (most active first, the default) or `index` (channel 0
    first in every layer, so that a row is one channel across the columns)."""
    order = request.query_params.get("order", "activity")
    if order not in ORDERS:
        raise Problem(422, f"order must be one of {', '.join(ORDERS)}, got {order[:40]!r}")
    return order


@router.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(page_html())


@router.get("/explorer/{file}", include_in_schema=False)
async def asset(file: str) -> FileResponse:
    if file not in ("explorer.js", "explorer.css"):
        raise Problem(404, f"no file {file!r}")
    return FileResponse(PAGE_DIR / file, media_type="text/javascript" if file.endswith(".js") else "text/css")


@router.get("/v1/models/{name}/explore/graph")
async def graph(name: str, request: Request) -> JSONResponse:
    """The network as the explorer draws it: layers from torch.fx, joins, output shapes, stages."""
    ex = await _explorer(request, name)
    return JSONResponse(ex.graph())


@router.get("/v1/models/{name}/explore/gallery")
async def gallery(name: str, request: Request) -> JSONResponse:
    """Test images of the run's dataset (misclassified ones marked), each with an id to explore."""
    ex = await _explorer(request, name)
    return JSONResponse(await _run(ex.m, ex.gallery))


@router.post("/v1/models/{name}/explore/images", openapi_extra=None)
async def upload(name: str, request: Request) -> JSONResponse:
    """One image (multipart, base64 JSON or raw body) -> its id and its overview."""
    ex = await _explorer(request, name)
    x, _, _, _ = await read_images(request, ex.m, service_of(request).options, single=True)
    key = ex.add_image(shrunk(x[0]) if ex.task == "restore" else x[0])
    return JSONResponse(await _run(ex.m, ex.overview, key, _topk(request), _order(request)))


@router.get("/v1/models/{name}/explore/images/{key}")
async def overview(name: str, key: str, request: Request) -> JSONResponse:
    """Every layer's top-k channels (uint8 maps, each with its min and max), class scores, the input."""
    ex = await _explorer(request, name)
    return JSONResponse(await _run(ex.m, ex.overview, key, _topk(request), _order(request)))


@router.get("/v1/models/{name}/explore/images/{key}/nodes/{node}")
async def node_page(name: str, key: str, node: str, request: Request) -> JSONResponse:
    """Another page of a layer's channels, most active first (or in channel order: `order=index`)."""
    ex = await _explorer(request, name)
    p = int_field({}, request, "page", 0, 0, 1 << 20)
    return JSONResponse(await _run(ex.m, ex.node_page, key, node, p, _topk(request), _order(request)))


@router.get("/v1/models/{name}/explore/images/{key}/nodes/{node}/channels/{channel}")
async def detail(name: str, key: str, node: str, channel: int, request: Request) -> JSONResponse:
    """The layer's numbers at one channel (float32, base64): inputs, weights, bias, outputs."""
    ex = await _explorer(request, name)
    return JSONResponse(await _run(ex.m, ex.detail, key, node, channel))


@router.get("/v1/models/{name}/explore/images/{key}/why")
async def why(name: str, key: str, request: Request) -> JSONResponse:
    """One explanation map of a class (`target`, default the predicted one) by `method`, with its
    deletion and insertion scores for this image."""
    from cnnkit.explain.workflows import target_index

    ex = await _explorer(request, name)
    method = str_field({}, request, "method", methods_of(ex.task)[0])
    known = WHY_METHODS + tuple(m for m in methods_of(ex.task) if m not in WHY_METHODS)
    if method not in known:
        raise Problem(422, f"unknown method {method!r}{close_matches(method, known)}; choose from: "
                           f"{', '.join(known)}")
    try:
        target = target_index(str_field({}, request, "target", None), ex.m.classes)
    except ExplainError as e:
        raise Problem(422, error_line(e)) from None
    region = str_field({}, request, "region", None)  # a restoration model: the box of its output explained
    detection = int_field({}, request, "detection", 0, 0, 1 << 16) if ex.task == "detect" else None  # best first
    return JSONResponse(await _run(ex.m, ex.why, key, target, method, region, detection))
