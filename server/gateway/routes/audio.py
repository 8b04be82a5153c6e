"""POST /v1/audio/transcriptions and /v1/audio/speech (OpenAI's shapes) on a speech adapter.

`client.audio.transcriptions.create(model=<speech adapter>, file=...)`: multipart form, WAV or
MP3; the adapter's encoder and the frozen LLM give the text (`json` or `text`).
`client.audio.speech.create(model=<speech adapter>, input=..., response_format="wav" | "pcm")`:
the LLM reads the text, the speech decoder and the vocoder speak it (24 kHz, 16-bit mono).
Both run on the FrozenRuntime, batched with its other requests.
"""

from __future__ import annotations

import io
import wave
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from floe.server.config import FloeConfig
from floe.server.errors import InvalidRequest, PayloadTooLarge, call
from floe.server.gateway.body import json_body, read_json_object
from floe.server.gateway.families import runtime_family
from floe.server.gateway.state import service
from floe.server.names import split_model
from floe.server.runtime.messages import RuntimeCall
from floe.server.schemas.audio import SpeechCall, SpeechRequest, SpeechResult, TranscriptionCall, TranscriptionResult
from floe.server.schemas.common import parse
from floe.server.services.leases import leased

router = APIRouter()
FORMATS = {"wav": "wav", "wave": "wav", "mp3": "mp3", "mpeg": "mp3", "mpga": "mp3"}


class AudioService:
    def __init__(self, config: FloeConfig, base_name: str, runtime: Any, registry: Any) -> None:
        self._config, self._base_name, self._runtime, self._registry = config, base_name, runtime, registry

    async def run(self, model: str, family: str, request: Any) -> Any:
        adapter = split_model(model, self._base_name)
        if adapter is None:
            raise InvalidRequest(f"`{model}` is the base model; {family} need a speech adapter in `model`",
                                 param="model")
        async with leased(self._registry, adapter, family) as ref:
            handle = self._runtime.options(multiplexed_model_id=ref.model_id)
            return await call(handle.run.remote(RuntimeCall(kind=ref.kind, ref=ref, request=request)))


family = runtime_family("audio", router, lambda ctx, runtime: AudioService(
    ctx.config, ctx.base_name, runtime, ctx.handle("registry")))


@router.post("/v1/audio/transcriptions", openapi_extra={"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file", "model"], "properties": {
        "file": {"type": "string", "format": "binary"}, "model": {"type": "string"}, "prompt": {"type": "string"},
        "response_format": {"type": "string", "enum": ["json", "text"]}}}}}}})
async def create_transcription(request: Request, audio: AudioService = Depends(service("audio"))):
    config = audio._config
    declared = request.headers.get("content-length")
    limit = config.media.max_bytes + 64 * 1024
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the upload is {declared} bytes; at most {config.media.max_bytes} of audio "
                              "(media.max_bytes)")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("send the audio as multipart/form-data with `file` and `model`", param="file")
    form = await request.form(max_files=1, max_fields=16, max_part_size=limit)
    model, upload = form.get("model"), form.get("file")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required: a speech adapter", param="model")
    if upload is None or isinstance(upload, str):
        raise InvalidRequest("`file` is required: a WAV or MP3 upload", param="file")
    response_format = form.get("response_format") or "json"
    if response_format not in ("json", "text"):
        raise InvalidRequest(f"response_format {response_format!r} is not supported; use json or text",
                             param="response_format")
    name = (upload.filename or "").rsplit(".", 1)
    fmt = FORMATS.get(name[-1].lower()) if len(name) == 2 else None
    if fmt is None:
        raise InvalidRequest("`file` must be a .wav or .mp3 file", param="file", code="unsupported_audio_format")
    data = await upload.read()
    if len(data) > config.media.max_bytes:
        raise PayloadTooLarge(f"the audio is {len(data)} bytes; at most {config.media.max_bytes} (media.max_bytes)")
    prompt = form.get("prompt")
    result: TranscriptionResult = await audio.run(model, "transcriptions", TranscriptionCall(
        data=data, format=fmt, prompt=prompt if isinstance(prompt, str) else None,
        max_seconds=config.media.max_audio_s))
    if response_format == "text":
        return PlainTextResponse(result.text)
    return {"text": result.text, "usage": {"type": "tokens", "output_tokens": result.tokens}}


@router.post("/v1/audio/speech", openapi_extra=json_body(SpeechRequest))
async def create_speech(request: Request, audio: AudioService = Depends(service("audio"))):
    req = parse(SpeechRequest, await read_json_object(request))
    if req.speed != 1.0:
        raise InvalidRequest("a speech adapter speaks at speed 1.0 only", param="speed")
    result: SpeechResult = await audio.run(req.model, "speech", SpeechCall(input=req.input))
    if req.response_format == "pcm":
        return Response(result.pcm, media_type="audio/pcm")

    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(result.sample_rate)
        out.writeframes(result.pcm)
    return Response(buf.getvalue(), media_type="audio/wav")
