"""Liveness, readiness and Prometheus metrics: open to health checkers (see the Guard)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from cnnkit.serve.problems import error_response
from cnnkit.serve.service import service_of

router = APIRouter()


@router.get("/healthz", response_model=None)
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    service = service_of(request)
    if not service.ready:
        return error_response(503, "warming up the models", {"Retry-After": "1"})
    return {"status": "ready", "models": list(service.models)}


@router.get("/metrics")
async def metrics_route(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(service_of(request).metrics.text(), media_type=CONTENT_TYPE_LATEST)
