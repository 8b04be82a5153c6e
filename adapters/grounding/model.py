"""The grounding pass (docs/methods.md, F-LMM) on the FrozenRuntime's frozen base.

    picture -> the vision adapter's soft tokens [n = h*w, d_llm]
    sequence = the rendered chat (user: picture + question, assistant header), expanded at the
               picture's placeholder to its n soft tokens, then the answer's tokens; embedded
               as vLLM embeds it (token rows, the soft tokens at the picture)
    one eager forward over every sequence of the batch (left-padded, any adapters: the base is
    shared) -> attention probabilities [B, layers, heads, T, T]
    per phrase: rows of its answer tokens, columns of the image tokens, mean over the tokens
               -> [layers*heads, h, w] -> the adapter's mask head -> logits [h*u, w*u]
               -> bilinear to the picture's size -> sigmoid -> mask (> threshold), score, box

In `phrases` mode each phrase is its own teacher-forced answer (as in training, on referring
expressions); in `prompt` mode the answer is the vision model's, and each phrase is a span of it.
`attention_maps` is the part a fidelity test compares with a plain transformers forward.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from floe.adapters.grounding import HEAD, KIND, MANIFEST, VISION, GroundingConfig
from floe.adapters.grounding.head import MaskHead
from floe.adapters.vision.chat import expand, placeholder_tokenizer, render_ids
from floe.server.errors import InvalidRequest
from floe.server.kinds import InvalidAdapter, get_kind


@dataclass(eq=False)
class GroundingAdapter:
    """A vision adapter + a mask head, float32, eval mode."""

    vision: Any  # floe.adapters.vision.model.VisionAdapter
    head: MaskHead
    cfg: GroundingConfig
    manifest: dict[str, Any]
    tokenizer: Any  # the base tokenizer with vLLM's `<prompt_embeds>` placeholder
    placeholder: int
    _prompts: dict[str, list[int]] = field(default_factory=dict)
    # NOTE: prepare runs in threads; a fast tokenizer must not be entered by two at once.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def prompt_ids(self, prompt: str) -> tuple[list[int], int]:
        """Token ids of the chat up to the answer, the picture expanded; and where it starts."""
        if prompt not in self._prompts:
            parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": ""}}]
            if prompt:
                parts.append({"type": "text", "text": prompt})
            ids = render_ids(self.tokenizer, [{"role": "user", "content": parts}], add_generation_prompt=True)
            self._prompts[prompt] = expand(ids, self.placeholder, [self.vision.num_tokens])[0]
        ids = self._prompts[prompt]
        return ids, ids.index(self.placeholder)


@dataclass(frozen=True)
class Sequence:
    """One teacher-forced sequence: ids (the picture's span holds the placeholder id), where the
    picture's soft tokens go, and per phrase its token positions."""

    ids: list[int]
    image_start: int
    phrases: list[list[int]]


@dataclass(eq=False)
class GroundItem:
    """One validated request."""

    pixels: np.ndarray  # [3, S, S] float32: what the tower sees
    width: int
    height: int
    phrases: list[str]
    sequences: list[Sequence]
    mask_format: str = "rle"


def sequence(adapter: GroundingAdapter, prompt: str, answer: str, spans: list[tuple[int, int]]) -> Sequence:
    """The teacher-forced sequence of `answer` after `prompt`, with each span's token positions."""
    with adapter.lock:
        ids, image_start = adapter.prompt_ids(prompt)
        enc = adapter.tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    offsets, start = enc["offset_mapping"], len(ids)
    phrases = []
    for a, b in spans:
        positions = [start + k for k, (lo, hi) in enumerate(offsets) if lo < b and hi > a]
        if not positions:
            raise InvalidRequest(f"the phrase {answer[a:b]!r} has no tokens", param="phrases")
        phrases.append(positions)
    return Sequence(list(ids) + list(enc["input_ids"]), image_start, phrases)


def prepare(adapter: GroundingAdapter, call: Any) -> GroundItem:
    """All validation of a GroundCall (400s): the picture, the phrases against the adapter's limits."""
    from floe.adapters.vision.images import decode_image
    from floe.server.media import media_bytes

    cfg = adapter.cfg
    phrases = list(call.phrases)
    if len(phrases) > cfg.max_phrases:
        raise InvalidRequest(f"{len(phrases)} phrases; this adapter grounds at most {cfg.max_phrases} per request",
                             param="phrases", code="too_many_phrases")
    for i, phrase in enumerate(phrases):
        if not isinstance(phrase, str) or not phrase.strip():
            raise InvalidRequest(f"phrases[{i}] is empty", param=f"phrases[{i}]")
        if len(phrase) > cfg.max_phrase_chars:
            raise InvalidRequest(f"phrases[{i}] is longer than {cfg.max_phrase_chars} characters",
                                 param=f"phrases[{i}]")
    if call.refine:
        raise InvalidRequest("this grounding adapter has no SAM refiner; send `refine: false`", param="refine",
                             code="no_refiner")
    image = decode_image(media_bytes(call.image, "image", call.media).data, "image", call.media.max_pixels)
    prompt = cfg.prompt if call.prompt is None else call.prompt
    if call.answer is None:
        sequences = [sequence(adapter, prompt, p, [(0, len(p))]) for p in phrases]
    else:  # `prompt` mode: the answer's noun phrases, grounded in one sequence
        from floe.adapters.grounding.phrases import noun_phrases

        spans = noun_phrases(call.answer)[:cfg.max_phrases]
        phrases = [call.answer[a:b] for a, b in spans]
        sequences = [sequence(adapter, prompt, call.answer, spans)] if spans else []
    pixels = adapter.vision.preprocess([image])[0]
    return GroundItem(pixels, image.width, image.height, phrases, sequences, call.mask_format)


# -- the batched pass -------------------------------------------------------------------------------
def embed(llm: Any, seq: Sequence, soft: torch.Tensor, placeholder: int) -> torch.Tensor:
    """[T, d] embeddings of one sequence: token rows, the picture's soft tokens in its span."""
    ids = torch.tensor([0 if t == placeholder else t for t in seq.ids])
    rows = llm.embed(ids).to(torch.float32).clone()
    rows[seq.image_start:seq.image_start + soft.shape[0]] = soft
    return rows


def attention_maps(llm: Any, sequences: list[Sequence], embeds: list[torch.Tensor], n_image: list[int],
                   grids: list[tuple[int, int]]) -> list[list[torch.Tensor]]:
    """Per sequence, per phrase: [layers*heads, h, w], the mean over the phrase's tokens of the
    attention probabilities to the image tokens (one left-padded eager forward for all)."""
    batch = llm.pad_embeds(embeds)
    width = batch.attention_mask.shape[1]
    layers = tuple(range(1, llm.num_layers + 1))
    attn = llm.attentions(batch, layers, list(range(width)), (0, width))  # [B, L, H, T, T]
    out = []
    for row, (seq, n, (h, w)) in enumerate(zip(sequences, n_image, grids)):
        pad = width - len(seq.ids)
        keys = slice(pad + seq.image_start, pad + seq.image_start + n)
        maps = []
        for positions in seq.phrases:
            rows = attn[row, :, :, [pad + p for p in positions], keys]  # [L, H, tokens, n]
            maps.append(rows.mean(dim=2).reshape(-1, h, w))
        out.append(maps)
    return out


@dataclass(frozen=True)
class Grounded:
    """One request's phrases at the picture's size: probabilities above threshold -> masks."""

    width: int
    height: int
    phrases: list[str]
    masks: list[np.ndarray]  # uint8 [height, width]
    scores: list[float]
    mask_format: str


def phrase_maps(llm: Any, batch: list[tuple[GroundingAdapter, GroundItem]]) -> list[list[torch.Tensor]]:
    """Per item, per phrase: the attention maps its adapter's head sees ([layers*heads, h, w]);
    one tower call per adapter, one forward for every sequence of every item."""
    from floe.server.kinds import group_by_adapter

    soft: list[Any] = [None] * len(batch)
    for indices in group_by_adapter(batch):
        adapter = batch[indices[0]][0]
        tokens = adapter.vision(torch.from_numpy(np.stack([batch[i][1].pixels for i in indices])))
        for i, t in zip(indices, tokens):
            soft[i] = t
    owners, sequences, embeds = [], [], []
    for i, (adapter, item) in enumerate(batch):
        for seq in item.sequences:
            owners.append(i)
            sequences.append(seq)
            embeds.append(embed(llm, seq, soft[i], adapter.placeholder))
    maps_of: list[list[torch.Tensor]] = [[] for _ in batch]
    if sequences:
        per_seq = attention_maps(llm, sequences, embeds, [batch[i][0].vision.num_tokens for i in owners],
                                 [batch[i][0].cfg.grid for i in owners])
        for i, maps in zip(owners, per_seq):
            maps_of[i].extend(maps)
    return maps_of


def run(llm: Any, batch: list[tuple[GroundingAdapter, GroundItem]], *, uniform: bool = False) -> list[Grounded]:
    """The batch's masks: `phrase_maps`, then each adapter's head on all of its phrases at once.
    `uniform` feeds the head uniform attention instead (the bench's baseline)."""
    from floe.server.kinds import group_by_adapter

    results: list[Any] = [None] * len(batch)
    with torch.no_grad():
        maps_of = phrase_maps(llm, batch)
        for indices in group_by_adapter(batch):
            adapter = batch[indices[0]][0]
            logits = head_logits(adapter, [m for i in indices for m in maps_of[i]], uniform=uniform)
            offset = 0
            for i in indices:
                n = len(maps_of[i])
                results[i] = to_picture(logits[offset:offset + n], batch[i][1], adapter.cfg.threshold)
                offset += n
    return results


def head_logits(adapter: GroundingAdapter, maps: list[torch.Tensor], *, uniform: bool = False) -> torch.Tensor:
    """[P, h*u, w*u] logits of the head for P phrases' maps."""
    if not maps:
        return torch.zeros(0, 1, 1)
    x = torch.stack(maps).to(torch.float32)
    if uniform:
        x = torch.full_like(x, 1.0 / (x.shape[-1] * x.shape[-2]))
    return adapter.head(x)


def to_picture(logits: torch.Tensor, item: GroundItem, threshold: float) -> Grounded:
    masks, scores = [], []
    for phrase_logits in logits:
        probs = torch.sigmoid(F.interpolate(phrase_logits[None, None], size=(item.height, item.width),
                                            mode="bilinear", align_corners=False)[0, 0])
        mask = probs > threshold
        scores.append(round(float(probs[mask].mean()) if bool(mask.any()) else 0.0, 6))
        masks.append(mask.numpy().astype(np.uint8))
    return Grounded(item.width, item.height, list(item.phrases), masks, scores, item.mask_format)


# -- files ------------------------------------------------------------------------------------------
def load(directory: Path, model_dir: Path) -> GroundingAdapter:
    """The adapter's vision adapter and head, for the base checkpoint `model_dir`."""
    from safetensors.torch import load_file

    from floe.adapters.vision.model import llm_width
    from floe.adapters.vision.model import load as load_vision

    directory = Path(directory)
    kind = get_kind(KIND)
    manifest = kind.read_manifest(directory)
    cfg = kind.parse_config(manifest)
    vision = load_vision(directory / VISION, llm_width(model_dir))
    head = MaskHead(cfg.attention_channels, cfg.grid, cfg.upsample, cfg.channels)
    try:
        head.load_state_dict(load_file(str(directory / HEAD)))
    except (OSError, RuntimeError, KeyError) as exc:
        raise InvalidAdapter(f"{HEAD}: not this config's mask head: {exc}", param="source") from exc
    head.eval().requires_grad_(False)
    if vision.num_tokens != cfg.grid[0] * cfg.grid[1]:
        raise InvalidAdapter(f"the vision adapter gives {vision.num_tokens} image tokens, the grid is "
                             f"{list(cfg.grid)}", param="source")
    tokenizer, placeholder = placeholder_tokenizer(model_dir)  # one per adapter: see GroundingAdapter.lock
    return GroundingAdapter(vision, head, cfg, manifest, tokenizer, placeholder)


def load_for_backbone(directory: Path, llm: Any) -> GroundingAdapter:
    """`load` onto a FrozenModel: same base checkpoint, the head's input = its layers x heads."""
    from floe.adapters.grounding import GroundingKind

    GroundingKind.check_base(GroundingKind.read_manifest(directory), llm.fingerprint)
    adapter = load(directory, llm.model_dir)
    channels = llm.num_layers * llm.config.num_attention_heads
    if adapter.cfg.attention_channels != channels:
        raise InvalidAdapter(f"the head takes {adapter.cfg.attention_channels} attention maps; this base has "
                             f"{llm.num_layers} layers x {llm.config.num_attention_heads} heads", param="source")
    return adapter


def save(directory: Path, vision_dir: Path, vision_name: str, head: MaskHead, cfg: GroundingConfig,
         base_fingerprint: str, *, version: str = "1", projector: Any = None,
         extra: dict[str, Any] | None = None) -> Path:
    """Write a grounding adapter directory: a copy of the vision adapter (its projector replaced
    by `projector` when the trainer tuned it), the head, the manifest. `vision` names the served
    vision adapter that answers `prompt` requests (the original, by its content hash)."""
    import shutil

    from safetensors.torch import save_file

    from floe.server.registry.snapshots import content_hash

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / VISION).exists():
        shutil.rmtree(directory / VISION)
    shutil.copytree(vision_dir, directory / VISION)
    if projector is not None:
        from floe.adapters.vision import PROJECTOR

        save_file({k: v.detach().contiguous() for k, v in projector.state_dict().items()},
                  str(directory / VISION / PROJECTOR))
    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(directory / HEAD))
    (directory / MANIFEST).write_text(json.dumps(
        {"kind": KIND, "base_model": base_fingerprint, "version": version,
         "vision": {"name": vision_name, "version": content_hash(Path(vision_dir))},
         "config": cfg.public(), **(extra or {})}, indent=1))
    return directory


def write(directory: Path, model_dir: Path, vision_dir: Path, vision_name: str, *, seed: int = 0,
          cfg: dict[str, Any] | None = None) -> Path:
    """A seeded, untrained grounding adapter on `vision_dir` for the base `model_dir` (tests)."""
    from floe.adapters.vision.model import llm_width
    from floe.adapters.vision.model import load as load_vision
    from floe.server.runtime.model import base_fingerprint

    config = json.loads((Path(model_dir) / "config.json").read_text())
    config = config.get("text_config") or config
    vision = load_vision(Path(vision_dir), llm_width(model_dir))
    side = int(round(vision.num_tokens ** 0.5))
    gcfg = GroundingConfig(attention_channels=config["num_hidden_layers"] * config["num_attention_heads"],
                           grid=(side, side), **(cfg or {}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = MaskHead(gcfg.attention_channels, gcfg.grid, gcfg.upsample, gcfg.channels)
    return save(directory, Path(vision_dir), vision_name, head, gcfg, base_fingerprint(model_dir))
