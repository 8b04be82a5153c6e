"""Wire types of POST /v1/segmentations, and the family's contract with the kinds that serve it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from floe.server.config import MediaConfig

MAX_PHRASES = 64  # the wire cap; an adapter's own `max_phrases` may be lower


class SegmentationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="A grounding adapter: name[@version].")
    image: str = Field(..., min_length=1, description="The picture: a data URL (or an allowlisted http(s) URL).")
    prompt: str | None = Field(None, min_length=1, description="A question: the vision model answers it "
                               "and the noun phrases of the answer are grounded.")
    phrases: list[str] | None = Field(None, max_length=MAX_PHRASES,
                                      description="Phrases to ground (no answer is generated).")
    refine: bool = Field(False, description="Refine each mask with the adapter's SAM refiner.")
    mask_format: Literal["rle", "png"] = Field("rle", description="COCO compressed RLE, or a PNG (base64).")
    max_tokens: int = Field(32, ge=1, le=512, description="Longest answer in `prompt` mode.")

    @field_validator("phrases")
    @classmethod
    def _phrases(cls, phrases: list[str] | None) -> list[str] | None:
        if phrases is not None:
            if not phrases:
                raise ValueError("`phrases` must hold at least one phrase")
            if any(not p.strip() for p in phrases):
                raise ValueError("every phrase must be a non-empty string")
        return phrases

    @model_validator(mode="after")
    def _one_mode(self) -> SegmentationRequest:
        if (self.prompt is None) == (self.phrases is None):
            raise ValueError("give exactly one of `prompt` (answer, then ground its noun phrases) or `phrases`")
        return self


class Segment(BaseModel):
    phrase: str
    score: float
    box: list[float]  # [x0, y0, x1, y1] in image pixels, x1 / y1 exclusive
    mask: dict[str, Any]  # {"size": [h, w], "counts": COCO compressed RLE} or {"size", "png": base64}


class SegmentationResponse(BaseModel):
    object: Literal["segmentation"] = "segmentation"
    model: str
    answer: str | None = None
    width: int
    height: int
    segments: list[Segment]


# -- the family's contract with the kinds that serve it (crosses to the FrozenRuntime) ----------
@dataclass(frozen=True)
class GroundCall:
    """Ground `phrases` in the picture, each its own teacher-forced answer; or, with `answer` (the
    vision model's, `prompt` mode), the noun phrases the kind finds in it, in one sequence."""

    image: str  # a media URL (data URL or allowlisted http(s))
    phrases: list[str]
    media: MediaConfig = field(default_factory=MediaConfig)
    prompt: str | None = None  # the question; None = the adapter's default
    answer: str | None = None  # `prompt` mode: the vision model's answer
    refine: bool = False
    mask_format: str = "rle"


@dataclass(frozen=True)
class GroundResult:
    width: int
    height: int
    segments: list[dict[str, Any]]  # Segment-shaped dicts
