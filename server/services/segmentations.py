"""Segmentations: lease the grounding adapter; in `prompt` mode have its vision adapter answer
first (LLMServer); then the grounding pass (FrozenRuntime), which grounds the given phrases or
the noun phrases of the answer."""

from __future__ import annotations

import uuid
from typing import Any

from floe.server.config import MediaConfig
from floe.server.engine.messages import OpenAICall, ResponseHead
from floe.server.errors import InvalidRequest, call, from_status, unwrap
from floe.server.names import split_model
from floe.server.runtime.messages import RuntimeCall
from floe.server.schemas.segmentations import (
    GroundCall,
    GroundResult,
    Segment,
    SegmentationRequest,
    SegmentationResponse,
)
from floe.server.services.leases import leased

FAMILY = "segmentations"


class SegmentationService:
    def __init__(self, base_name: str, runtime: Any, registry: Any, engine: Any, media: MediaConfig) -> None:
        self._base_name, self._runtime, self._registry, self._engine = base_name, runtime, registry, engine
        self._media = media

    async def segment(self, req: SegmentationRequest) -> SegmentationResponse:
        adapter = split_model(req.model, self._base_name)
        if adapter is None:
            raise InvalidRequest("segmentations need a grounding adapter in `model`, not the base model",
                                 param="model")
        async with leased(self._registry, adapter, FAMILY) as ref:
            # `prompt` mode: the kind picks the answer's phrases (its chunker) in the runtime
            answer = await self._answer(ref, req) if req.prompt is not None else None
            handle = self._runtime.options(multiplexed_model_id=ref.model_id)
            result: GroundResult = await call(handle.run.remote(RuntimeCall(kind=ref.kind, ref=ref, request=GroundCall(
                image=req.image, phrases=list(req.phrases or []), media=self._media, prompt=req.prompt, answer=answer,
                refine=req.refine, mask_format=req.mask_format))))
        return SegmentationResponse(model=req.model, answer=answer, width=result.width, height=result.height,
                                    segments=[Segment(**s) for s in result.segments])

    async def _answer(self, ref: Any, req: SegmentationRequest) -> str:
        """The vision adapter's greedy answer to the prompt about the picture (the chat route)."""
        vision = ref.details.get("vision") or {}
        if self._engine is None:
            raise InvalidRequest("`prompt` needs the LLM engine, which this server does not run; send `phrases`",
                                 param="prompt")
        async with leased(self._registry, str(vision.get("name")), "chat") as vref:
            if vref.version != vision.get("version"):
                raise InvalidRequest(
                    f"`{ref.name}` grounds vision adapter {vision.get('name')!r} version "
                    f"{str(vision.get('version'))[:12]}; the server's is {vref.version[:12]}: register the "
                    "version it was trained on, or send `phrases`", param="model", code="vision_adapter_mismatch")
            body = {"model": vref.model_id, "max_tokens": req.max_tokens, "temperature": 0,
                    "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": req.image}},
                                                              {"type": "text", "text": req.prompt}]}]}
            handle = self._engine.options(stream=True, multiplexed_model_id=vref.model_id)
            frames = handle.openai.remote(OpenAICall(route="chat", body=body, adapter_id=vref.model_id,
                                                     request_id=uuid.uuid4().hex))
            try:
                head: ResponseHead = await frames.__anext__()
            except Exception as exc:
                err = unwrap(exc)
                if err is None or err is exc:
                    raise
                raise err from exc
        if head.status != 200:
            error = (head.body or {}).get("error", {})
            raise from_status(head.status, error.get("message", "engine error"), param=error.get("param"))
        return str(((head.body or {}).get("choices") or [{}])[0].get("message", {}).get("content") or "")
