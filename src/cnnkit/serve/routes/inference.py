"""Predictions and explanations: the images of a request, batched with other requests' in the model's
batcher, answered as top-k classes, as masks (segmentation), as boxes (detection) or as maps with a PNG
overlay."""

from __future__ import annotations

import asyncio
import base64
import math
import time
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from cnnkit.errors import ExplainError, close_matches, error_line
from cnnkit.serve.bodies import decode_pool, int_field, read_images, str_field
from cnnkit.serve.models import ServedModel, overlay_png
from cnnkit.serve.problems import Problem
from cnnkit.serve.service import service_of

router = APIRouter()
_TASK_NAMES = {"segment": "segmentation", "detect": "detection", "restore": "restoration"}

BODY_DOC = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": {"type": "object", "properties": {
        "images": {"type": "array", "items": {"type": "string", "description": "base64"}}}}}}}}

# the hot route takes its name from the path itself: a parameter in the signature would have FastAPI
# validate it through its dependency machinery on every request, a tenth of the route's time for small images
PATH_DOC = {"parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
                           {"name": "topk", "in": "query", "required": False, "schema": {"type": "integer"}}]}


@router.post("/v1/models/{name}/predict", openapi_extra={**BODY_DOC, **PATH_DOC})
async def predict(request: Request) -> JSONResponse:
    """The task's answer for one or more images: a classifier's top-k classes (query or field `topk`, default 5);
    a segmentation model's mask (palette PNG, base64) at each image's size with every class's area; a detection
    model's detections over the service's score threshold, boxes in each image's pixels (`topk` does not cut
    them: the answer is `cnnkit predict --json`'s); a restoration model's restored image, as a PNG (one image
    per request)."""
    t = time.perf_counter()
    service = service_of(request)
    name = request.path_params["name"]
    m = service.model(name)
    service.refuse_if_full(m)
    if m.restores:
        return await _restore(request, service, m, t)
    x, names, fields, sizes = await read_images(request, m, service.options)
    k = int_field(fields, request, "topk", min(5, len(m.classes)), 1, len(m.classes))
    outputs = await service.submit(m, service.batcher(m, "predict"), x)
    if m.task.name == "detect":  # boxes scaled back to each image's pixels off the event loop (a row at a time)
        answers = await asyncio.get_running_loop().run_in_executor(decode_pool(), m.box_answers, outputs, sizes,
                                                                   names)
        return JSONResponse({"model": name, "predictions": answers, "seconds": time.perf_counter() - t})
    if m.task.name == "segment":  # masks resized back to each image's size and encoded off the event loop
        answers = await asyncio.get_running_loop().run_in_executor(decode_pool(), m.mask_answers, outputs, sizes,
                                                                   names, k)
        return JSONResponse({"model": name, "predictions": answers, "seconds": time.perf_counter() - t})
    # the task's answer as plain lists and floats, sent as a JSONResponse: FastAPI's encoder walks a returned
    # dict recursively, which cost about as much per request as parsing the multipart body
    return JSONResponse({"model": name, "predictions": [
        {"image": n, "top": top} for n, top in zip(names, m.task.answer(outputs, m.classes, k))],
        "seconds": time.perf_counter() - t})


SIZE_BATCHERS = 16  # a restoration model's batchers, one per image size; images of any other size run alone


async def _restore(request: Request, service: Any, m: ServedModel, started: float) -> Response:
    """A restoration model's answer: the one image of the request restored (in tiles, as `cnnkit predict`
    restores it), as a PNG; batched with other requests' images of the same size."""
    from cnnkit.evaluate.restore import png_bytes

    x, _, _, _ = await read_images(request, m, service.options, single=True)
    size = f"{x.shape[-2]}x{x.shape[-1]}x{x.shape[-3]}"  # height, width and channels: what batches together
    sizes = [k for k in service.batchers if k[0] == m.name and k[2].startswith("restore@")]
    if (m.name, "predict", f"restore@{size}") in service.batchers or len(sizes) < SIZE_BATCHERS:
        batcher = service.batcher(m, "predict", "restore", size)
    else:  # sizes past the first few share one batcher of one image at a time
        batcher = service.batcher(m, "predict", "restore", "other", max_batch=1)
    restored = await service.submit(m, batcher, x)
    png = await asyncio.get_running_loop().run_in_executor(decode_pool(), png_bytes, restored[0])
    return Response(png, media_type="image/png", headers={
        "X-Cnnkit-Model": m.name, "X-Cnnkit-Scale": str(m.card["restoration"]["scale"]),
        "X-Cnnkit-Seconds": f"{time.perf_counter() - started:.6f}"})


@router.post("/v1/models/{name}/explain", openapi_extra=BODY_DOC)
async def explain(name: str, request: Request) -> JSONResponse:
    """One image explained: `method` (default gradcam), `target` (class name or index; default the
    predicted class), `layer` (CAM methods; default the last convolutional stage)."""
    t = time.perf_counter()
    service = service_of(request)
    m = service.model(name)
    service.refuse_if_full(m)
    if m.task.name in _TASK_NAMES:
        raise Problem(422, f"model {name!r} is a {_TASK_NAMES[m.task.name]} model; the service explains "
                           f"classifiers (use `cnnkit explain` with its checkpoint)")
    x, names, fields, _ = await read_images(request, m, service.options, single=True)
    method, layer, target = _explain_options(m, fields, request)
    r = (await service.submit(m, service.batcher(m, "explain", method, layer), x,
                              {"method": method, "layer": layer, "target": target}))[0]
    return JSONResponse({"model": name, "image": names[0], "method": method, "layer": r["layer"],
                         **_explanation(m, x[0], r), "seconds": time.perf_counter() - t})


def _explain_options(m: ServedModel, fields: dict[str, Any], request: Request) -> tuple[str, str, int | None]:
    """The explanation's method, layer (`auto` for methods without one) and target class; 422 for unknown ones."""
    from cnnkit.explain.workflows import METHODS, target_index

    method = str_field(fields, request, "method", "gradcam")
    if method not in METHODS:
        raise Problem(422, f"unknown method {method!r}{close_matches(method, METHODS)}; choose from: "
                           f"{', '.join(METHODS)}")
    try:
        layer = m.check_layer(str_field(fields, request, "layer", "auto"))
        target = target_index(str_field(fields, request, "target", None), m.classes)
    except ExplainError as e:
        raise Problem(422, error_line(e)) from None
    from cnnkit.explain.cam import CAM_METHODS

    return method, layer if method in CAM_METHODS else "auto", target


def _explanation(m: ServedModel, image: torch.Tensor, r: dict[str, Any]) -> dict[str, Any]:
    """The answer's target and predicted classes, maps and overlay, from the batcher's result `r`."""
    probs = r["probabilities"]
    return {"target": {"class": m.classes[r["target"]], "index": r["target"],
                       "probability": float(probs[r["target"]])},
            "predicted": {"class": m.classes[r["predicted"]], "index": r["predicted"],
                          "probability": float(probs[r["predicted"]])},
            "zero_map": r["zero_map"],
            "map": _rounded(r["map"]), "layer_map": _rounded(r["layer_map"]),
            "overlay_png": base64.b64encode(overlay_png(image, r["map"])).decode()}


def _rounded(t: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 4) if math.isfinite(v) else 0.0 for v in row] for row in t.tolist()]
