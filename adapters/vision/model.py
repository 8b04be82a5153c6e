"""LLaVA-1.5 soft tokens (docs/methods.md, LLaVA-1.5): image -> frozen tower -> projector.

    pixels [B, 3, S, S] -> tower(output_hidden_states=True).hidden_states[feature_layer]
    (several layers: concatenated on the feature axis) -> drop CLS ("default" strategy, when the
    tower has one) -> linear_1 -> GELU -> linear_2 -> [B, (S/p)^2, d_llm]: one soft token per patch

`embed_messages` is what the LLMServer replica runs for a request (image parts -> `prompt_embeds`
parts); `reference_inputs_embeds` / `reference_generate` build, with plain transformers, the
embedding sequence vLLM sees for the same messages and decode it greedily, for tests that
compare served tokens with a reference. `write` makes a seeded tiny adapter offline.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from floe.adapters.vision import KIND, PROJECTOR, TOWER, VisionConfig, VisionKind
from floe.adapters.vision.chat import EMBED_PARTS, PLACEHOLDER, expand, placeholder_tokenizer, render_ids
from floe.adapters.vision.images import IMAGE_PARTS, Preprocessor, decode_image, image_url
from floe.server.config import MediaConfig
from floe.server.errors import InvalidRequest
from floe.server.kinds import MANIFEST, InvalidAdapter


class Projector(torch.nn.Module):
    """LLaVA's `multi_modal_projector`: linear_1 -> act -> linear_2."""

    def __init__(self, d_in: int, d_llm: int, act: str = "gelu", bias: bool = True) -> None:
        from transformers.activations import ACT2FN

        super().__init__()
        self.linear_1 = torch.nn.Linear(d_in, d_llm, bias=bias)
        self.act = ACT2FN[act]
        self.linear_2 = torch.nn.Linear(d_llm, d_llm, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class VisionAdapter(torch.nn.Module):
    """Tower + projector; float32, eval mode, frozen unless a trainer unfreezes parts."""

    def __init__(self, tower: Any, projector: Projector, cfg: VisionConfig, preprocess: Preprocessor) -> None:
        super().__init__()
        self.tower, self.projector, self.cfg, self.preprocess = tower, projector, cfg, preprocess
        vision_cfg = getattr(tower.config, "vision_config", None) or tower.config
        self.patch_size = int(vision_cfg.patch_size)
        self.image_size = preprocess.size
        self.patches = (self.image_size // self.patch_size) ** 2
        with torch.no_grad():  # how many tokens the tower gives: patches, or patches + CLS
            probe = torch.zeros(1, 3, self.image_size, self.image_size)
            self.tower_tokens = int(self.tower(pixel_values=probe, output_hidden_states=True).hidden_states[0].shape[1])
        self.has_cls = self.tower_tokens == self.patches + 1
        self.drop_first = cfg.select_strategy == "drop_first" or (self.has_cls and cfg.select_strategy == "default")
        self.num_tokens = self.tower_tokens - int(self.drop_first)
        self.dim = projector.linear_2.out_features
        # set by load_for_backbone in an LLMServer replica
        self.media, self.served_name = MediaConfig(), ""
        self.eval().requires_grad_(False)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        states = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states
        picked = [states[layer] for layer in self.cfg.layers]
        if self.drop_first:
            picked = [h[:, 1:] for h in picked]
        return torch.cat(picked, dim=-1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(pixels)).float()

    @torch.no_grad()
    def soft_tokens(self, images: list) -> list[torch.Tensor]:
        """[num_tokens, d_llm] float32 per Pillow image (one tower forward for all of them)."""
        if not images:
            return []
        pixels = torch.from_numpy(self.preprocess(images))
        return list(self(pixels).contiguous())


# -- request path (LLMServer replica) -------------------------------------------------------------
def tensor_b64(tensor: torch.Tensor) -> str:
    buf = io.BytesIO()
    torch.save(tensor.detach().to(torch.float32).contiguous().clone(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def b64_tensor(data: str) -> torch.Tensor:
    return torch.load(io.BytesIO(base64.b64decode(data)), weights_only=True, map_location="cpu")


def embed_messages(adapter: VisionAdapter, messages: list[Any]) -> list[Any]:
    """A copy of `messages` with every image_url part replaced by a `prompt_embeds` part (400 on
    a bad image, too many images, or request text that holds the checkpoint's image token)."""
    media = adapter.media
    found: list[tuple[int, int, str]] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            param = f"messages[{i}].content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                found.append((i, j, image_url(part, param)))
            elif adapter.cfg.image_token and kind == "text" and adapter.cfg.image_token in str(part.get("text")):
                raise InvalidRequest(f"{param}: text may not contain the image token {adapter.cfg.image_token!r}; "
                                     "send images as image_url parts", param=param, code="invalid_prompt")
    if not found:
        return messages
    if len(found) > media.max_parts:
        raise InvalidRequest(f"{len(found)} images in one request; at most {media.max_parts} (media.max_parts)",
                             param="messages", code="too_many_media_parts")
    from floe.server.media import media_bytes

    images = []
    for i, j, url in found:
        param = f"messages[{i}].content[{j}]"
        images.append(decode_image(media_bytes(url, param, media).data, param, media.max_pixels))
    tokens = adapter.soft_tokens(images)
    out = list(messages)
    for i in {i for i, _, _ in found}:
        out[i] = {**messages[i], "content": list(messages[i]["content"])}
    for (i, j, _), rows in zip(found, tokens):
        out[i]["content"][j] = {"type": "prompt_embeds", "data": tensor_b64(rows)}
    return out


# -- files -----------------------------------------------------------------------------------------
def _tower_class(model_type: str | None):
    from transformers import AutoModel, CLIPVisionModel, SiglipVisionModel

    return {"clip": CLIPVisionModel, "siglip": SiglipVisionModel}.get(model_type or "", AutoModel)


def load_tower(tower_dir: Path) -> Any:
    model_type = json.loads((tower_dir / "config.json").read_text()).get("model_type")
    kwargs = {"add_pooling_layer": False} if model_type == "vit" else {}
    tower, info = _tower_class(model_type).from_pretrained(tower_dir, dtype=torch.float32,
                                                           output_loading_info=True, **kwargs)
    if info.get("missing_keys"):
        raise InvalidAdapter(f"{TOWER}: weights missing for {sorted(info['missing_keys'])[:4]}", param="source")
    return tower.eval()


def load(directory: Path, llm_hidden: int | None = None) -> VisionAdapter:
    """The adapter's tower + projector; `llm_hidden` (the serving base's width) is checked when given."""
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = VisionKind.read_manifest(directory)
    try:
        cfg = VisionConfig.from_dict(manifest.get("config") or {})
        tower = load_tower(directory / TOWER)
        state = load_file(str(directory / PROJECTOR))
        d_mid, d_in = state["linear_1.weight"].shape
        d_llm = state["linear_2.weight"].shape[0]
        projector = Projector(d_in, d_llm, cfg.projector_act, bias="linear_1.bias" in state)
        projector.load_state_dict(state)
        vision_cfg = getattr(tower.config, "vision_config", None) or tower.config
        adapter = VisionAdapter(tower, projector, cfg, Preprocessor(directory / TOWER, cfg, vision_cfg.image_size))
    except InvalidAdapter:
        raise
    except (OSError, KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise InvalidAdapter(f"{directory.name}: not a loadable vision adapter: {exc}", param="source") from exc
    if d_in != vision_cfg.hidden_size * len(cfg.layers):
        raise InvalidAdapter(f"projector takes width {d_in}; the tower gives {vision_cfg.hidden_size} x "
                             f"{len(cfg.layers)} layer(s)", param="source")
    if llm_hidden is not None and d_llm != llm_hidden:
        raise InvalidAdapter(f"projector maps to width {d_llm}; this base model's width is {llm_hidden}",
                             param="source")
    return adapter


def llm_width(model_dir: Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int((config.get("text_config") or config)["hidden_size"])


def served_name(backbone: Any) -> str:
    """The name vLLM serves the base under (what a vision adapter's requests are sent as)."""
    return str(backbone.served_name)


def load_for_backbone(directory: Path, backbone: Any) -> VisionAdapter:
    from floe.server.runtime.model import base_fingerprint

    VisionKind.check_base(VisionKind.read_manifest(directory), base_fingerprint(backbone.model_dir))
    adapter = load(directory, llm_width(backbone.model_dir))
    adapter.media, adapter.served_name = backbone.config.media, served_name(backbone)
    return adapter


def save(directory: Path, adapter: VisionAdapter, base_fingerprint: str, *, version: str = "1",
         extra: dict[str, Any] | None = None) -> Path:
    """Write an adapter directory (tower, projector, manifest) that `POST /v1/adapters` accepts."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    adapter.tower.save_pretrained(directory / TOWER, safe_serialization=True)
    if adapter.preprocess.processor is not None:
        adapter.preprocess.processor.save_pretrained(directory / TOWER)
    save_file({k: v.detach().contiguous() for k, v in adapter.projector.state_dict().items()},
              str(directory / PROJECTOR))
    (directory / MANIFEST).write_text(json.dumps(
        {"kind": KIND, "base_model": base_fingerprint, "version": version, "config": adapter.cfg.public(),
         **(extra or {})}, indent=1))
    return directory


def make_tower(tower: str, *, image_size: int, patch_size: int, hidden_size: int, num_layers: int,
               heads: int = 2) -> Any:
    from transformers import (
        CLIPVisionConfig,
        CLIPVisionModel,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTConfig,
        ViTModel,
    )

    common = dict(image_size=image_size, patch_size=patch_size, hidden_size=hidden_size, num_channels=3,
                  num_hidden_layers=num_layers, num_attention_heads=heads, intermediate_size=2 * hidden_size)
    if tower == "clip":
        return CLIPVisionModel(CLIPVisionConfig(**common))
    if tower == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(**common))
    if tower == "vit":
        return ViTModel(ViTConfig(**common), add_pooling_layer=False)
    raise ValueError(f"unknown tower {tower!r} (clip, siglip, vit)")


def write(directory: Path, llm_hidden: int, base_fingerprint: str, *, seed: int = 0, tower: str = "clip",
          image_size: int = 32, patch_size: int = 8, hidden_size: int = 64, num_layers: int = 2,
          cfg: VisionConfig | None = None, version: str = "1") -> Path:
    """A seeded, randomly initialised (untrained) tiny vision adapter, made offline."""
    from safetensors.torch import save_file

    directory = Path(directory)
    cfg = cfg or VisionConfig(image_size=image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = make_tower(tower, image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                         num_layers=num_layers)
        projector = Projector(hidden_size * len(cfg.layers), llm_hidden, cfg.projector_act)
    net.save_pretrained(directory / TOWER, safe_serialization=True)
    save_file({k: v.contiguous() for k, v in projector.state_dict().items()}, str(directory / PROJECTOR))
    (directory / MANIFEST).write_text(json.dumps(
        {"kind": KIND, "base_model": base_fingerprint, "version": version, "config": cfg.public()}, indent=1))
    return directory


# -- the reference: what vLLM sees, with plain transformers -----------------------------------------
@dataclass(frozen=True)
class Reference:
    input_ids: list[int]  # the rendered prompt, each placeholder expanded to its span
    inputs_embeds: torch.Tensor  # [1, T, d_llm] float32
    spans: list[tuple[int, int]]  # (start, length) of each image's soft tokens


def reference_inputs_embeds(model_dir: Path, adapter: VisionAdapter | Path, messages: list[dict[str, Any]],
                            *, add_generation_prompt: bool = True, embeddings: torch.Tensor | None = None
                            ) -> Reference:
    """The embedding sequence vLLM builds for `messages` sent to this adapter (data-URL images)."""
    if not isinstance(adapter, VisionAdapter):
        adapter = load(Path(adapter), llm_width(model_dir))
    embedded = embed_messages(adapter, messages)
    tensors = [b64_tensor(part["data"]) for m in embedded if isinstance(m.get("content"), list)
               for part in m["content"] if isinstance(part, dict) and part.get("type") == "prompt_embeds"]
    tokenizer, placeholder = placeholder_tokenizer(model_dir)
    ids = render_ids(tokenizer, embedded, add_generation_prompt=add_generation_prompt)
    ids, spans = expand(ids, placeholder, [t.shape[0] for t in tensors])
    if embeddings is None:
        from safetensors import safe_open

        embeddings = _embedding_matrix(Path(model_dir), safe_open)
    safe = torch.tensor([0 if t == placeholder else t for t in ids])
    out = embeddings[safe].to(torch.float32).clone()
    for (start, length), rows in zip(spans, tensors):
        out[start:start + length] = rows
    return Reference(ids, out.unsqueeze(0), spans)


def _embedding_matrix(model_dir: Path, safe_open) -> torch.Tensor:
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                if key.endswith("embed_tokens.weight"):
                    return fh.get_tensor(key)
    raise FileNotFoundError(f"{model_dir}: no embed_tokens.weight in its safetensors")


def reference_generate(model_dir: Path, adapter: VisionAdapter | Path, messages: list[dict[str, Any]],
                       max_tokens: int = 16, lm: Any = None) -> tuple[list[int], str]:
    """Greedy (token ids, text) of `AutoModelForCausalLM.generate(inputs_embeds=...)`, fp32: what
    the served model answers for `messages` with `temperature=0`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = lm or AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ref = reference_inputs_embeds(model_dir, adapter, messages, embeddings=lm.get_input_embeddings().weight)
    with torch.no_grad():
        out = lm.generate(inputs_embeds=ref.inputs_embeds, attention_mask=torch.ones(ref.inputs_embeds.shape[:2],
                          dtype=torch.long), max_new_tokens=max_tokens, do_sample=False)
    ids = out[0].tolist()
    eos = lm.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    text_ids = [t for t in ids if t not in eos]
    return ids, AutoTokenizer.from_pretrained(model_dir).decode(text_ids, skip_special_tokens=True)


__all__ = ["EMBED_PARTS", "PLACEHOLDER", "Projector", "Reference", "VisionAdapter", "embed_messages", "load",
           "reference_generate", "reference_inputs_embeds", "save", "write"]
