"""The models served, and each one's card (classes, input size, normalization, layers, parameters, MACs)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cnnkit.serve.service import service_of

router = APIRouter()


@router.get("/v1/models", response_model=None)
async def list_models(request: Request) -> dict[str, Any]:
    return {"models": [{"name": m.name, "architecture": m.card["architecture"], "kind": m.card["kind"],
                        "classes": len(m.classes), "input": m.card["input"], "explainable": m.explainable}
                       for m in service_of(request).models.values()]}


@router.get("/v1/models/{name}", response_model=None)
async def model_card(name: str, request: Request) -> dict[str, Any]:
    return service_of(request).model(name).card
