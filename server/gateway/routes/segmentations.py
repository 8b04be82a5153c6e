"""POST /v1/segmentations: phrase-grounded masks from a grounding adapter (F-LMM) on the FrozenRuntime."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import runtime_family
from floe.server.gateway.state import service
from floe.server.schemas.common import parse
from floe.server.schemas.segmentations import SegmentationRequest
from floe.server.services.segmentations import SegmentationService

router = APIRouter()


family = runtime_family("segmentations", router, lambda ctx, runtime: SegmentationService(
    ctx.base_name, runtime, ctx.handle("registry"), ctx.handle("engine"), ctx.config.media))


@router.post("/v1/segmentations", openapi_extra=json_body(SegmentationRequest))
async def create_segmentation(request: Request, segmentations: SegmentationService = Depends(service("segmentations"))):
    req = parse(SegmentationRequest, await read_json_object(request))
    return (await segmentations.segment(req)).model_dump()
