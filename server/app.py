"""`build_app`: the Ray Serve application. Also the import path KubeRay's RayService uses:

    applications:
      - name: floe
        import_path: floe.server.app:build_app
        args: {model: {path: /models/llama}, engine: {max_model_len: 4096}}
"""

from __future__ import annotations

from typing import Any

from ray import serve
from ray.serve import Application

from floe.server.config import FloeConfig
from floe.server.engine.llm_server import llm_server_class
from floe.server.gateway.deployment import Gateway
from floe.server.models import checkpoint_adapter, resolve_base_model
from floe.server.registry.deployment import RegistryServer


def build_app(args: dict[str, Any] | FloeConfig | None = None) -> Application:
    config = args if isinstance(args, FloeConfig) else FloeConfig(**(args or {}))
    base_dir, base_name = resolve_base_model(config)
    preload = checkpoint_adapter(config)  # e.g. a LLaVA checkpoint's vision adapter, under its name
    if config.model.path is None and config.adapters.demos:
        from floe.server.models.demos import prepare_demos

        preload.update(prepare_demos(base_dir, config.resolved_cache_dir()))
    if preload:
        config = config.model_copy(update={"adapters": config.adapters.model_copy(
            update={"preload": {**preload, **config.adapters.preload}})})
    data = config.dump_for_deploy()
    dep = config.deployment
    grace = dep.graceful_shutdown_s  # every deployment: a replica Serve stops finishes its requests first

    registry = serve.deployment(
        RegistryServer, name="AdapterRegistry", num_replicas=1,
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=4096, graceful_shutdown_timeout_s=grace,
    ).bind(data, base_name)

    engine_options: dict[str, Any] = {
        "name": "LLMServer",
        "ray_actor_options": {"num_cpus": dep.engine_num_cpus, "num_gpus": dep.engine_num_gpus},
        "max_ongoing_requests": dep.max_ongoing_requests,
        "max_queued_requests": dep.max_queued_requests,
        "health_check_period_s": 10, "graceful_shutdown_timeout_s": grace,
    }
    if dep.autoscaling:
        engine_options["autoscaling_config"] = dep.autoscaling
    else:
        engine_options["num_replicas"] = dep.engine_replicas
    engine_cls = llm_server_class(config.adapters.max_loaded_per_replica)
    engine = serve.deployment(engine_cls, **engine_options).bind(data, registry)

    runtime, store = _bind_runtime(config, data, registry) if config.runtime.enabled else (None, None)
    sessions = _bind_sessions(config, data, registry) if config.runtime.enabled and config.realtime.enabled else None

    return serve.deployment(
        Gateway, name="Gateway", num_replicas=dep.gateway_replicas,
        ray_actor_options={"num_cpus": dep.gateway_num_cpus},
        max_ongoing_requests=max(config.http.max_in_flight * 2, 100), graceful_shutdown_timeout_s=grace,
    ).bind(data, base_name, {"engine": engine, "registry": registry, "runtime": runtime, "store": store,
                               "sessions": sessions})


def _bind_runtime(config: FloeConfig, data: dict[str, Any], registry: Any) -> tuple[Any, Any]:
    """The FrozenRuntime (transformers over the same base) and the vector store deployments."""
    from floe.server.retrieval.deployment import VectorStoreServer
    from floe.server.runtime.deployment import frozen_runtime_class

    rt = config.runtime
    runtime = serve.deployment(
        frozen_runtime_class(rt.max_loaded_adapters), name="FrozenRuntime", num_replicas=rt.replicas,
        ray_actor_options={"num_cpus": rt.num_cpus, "num_gpus": rt.num_gpus},
        max_ongoing_requests=config.deployment.max_ongoing_requests,
        max_queued_requests=config.deployment.max_queued_requests,
        graceful_shutdown_timeout_s=config.deployment.graceful_shutdown_s,
    ).bind(data, registry)
    # NOTE: the embedded Qdrant store has exactly one owner process: one replica.
    store = serve.deployment(
        VectorStoreServer, name="VectorStore", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1024, graceful_shutdown_timeout_s=config.deployment.graceful_shutdown_s,
    ).bind(data)
    return runtime, store


def _bind_sessions(config: FloeConfig, data: dict[str, Any], registry: Any) -> Any:
    """The SessionRuntime: replicas that hold realtime speech sessions (server/sessions/)."""
    from floe.server.sessions.deployment import session_runtime_class

    rt = config.realtime
    return serve.deployment(
        session_runtime_class(rt.max_sessions), name="SessionRuntime", num_replicas=rt.replicas,
        ray_actor_options={"num_cpus": rt.num_cpus, "num_gpus": rt.num_gpus},
        max_ongoing_requests=max(8 * rt.max_sessions, 256),
        graceful_shutdown_timeout_s=config.deployment.graceful_shutdown_s,
    ).bind(data, registry)
