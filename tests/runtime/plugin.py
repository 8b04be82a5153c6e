"""A throwaway third-party package: an adapter kind and an endpoint family, found by entry point.

`install(target)` pip-installs it into `target` (put on PYTHONPATH of the server under test), so
floe meets it exactly as a user's plugin: through `floe.adapters` and `floe.families`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

KIND = "bag"

MODULE = textwrap.dedent('''
    """`bag` kind: the mean of the frozen base's input embeddings of a text's tokens, scaled."""
    from pathlib import Path

    from fastapi import APIRouter

    from floe.server.errors import InvalidRequest
    from floe.server.gateway.families import Family
    from floe.server.kinds import RuntimeKind, group_by_adapter, known_kinds, register_kind
    from floe.server.schemas.embeddings import EmbedResult


    @register_kind
    class BagKind(RuntimeKind):
        name = "bag"
        serves = ("embeddings",)
        needs_base = False

        def describe(self, directory, manifest, cfg, limits):
            return self.info(manifest, scale=float(manifest.get("scale", 1.0)))

        def load(self, directory, backbone, ref):
            return float(self.read_manifest(Path(directory)).get("scale", 1.0))

        def prepare(self, backbone, scale, request):
            if not all(isinstance(x, str) and x for x in request.inputs):
                raise InvalidRequest("a bag model embeds non-empty strings only", param="input")
            return [backbone.llm.tokenize(x) for x in request.inputs]

        def run(self, backbone, batch):
            import torch

            table = backbone.llm.word_embeddings
            results = [None] * len(batch)
            for indices in group_by_adapter(batch):
                for i in indices:
                    scale, token_lists = batch[i]
                    vectors = [(table[torch.tensor(ids)].float().mean(0) * scale).tolist() for ids in token_lists]
                    results[i] = EmbedResult(vectors, sum(map(len, token_lists)), normalized=False)
            return results


    router = APIRouter()


    @router.get("/v1/plugins/bag")
    async def about():
        return {"kinds": known_kinds()}


    family = Family("bag", router)
''')

PYPROJECT = textwrap.dedent('''
    [build-system]
    requires = ["setuptools>=68"]
    build-backend = "setuptools.build_meta"

    [project]
    name = "floe-bag-kind"
    version = "0.1.0"

    [project.entry-points."floe.adapters"]
    bag = "floe_bag_kind"

    [project.entry-points."floe.families"]
    bag = "floe_bag_kind"

    [tool.setuptools]
    py-modules = ["floe_bag_kind"]
''')


def install(workdir: Path) -> Path:
    """Build and install the package into `workdir / "site"`; returns that directory."""
    source, site = workdir / "src", workdir / "site"
    source.mkdir(parents=True, exist_ok=True)
    (source / "pyproject.toml").write_text(PYPROJECT)
    (source / "floe_bag_kind.py").write_text(MODULE)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True)
    return site


def write_adapter(directory: Path, scale: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "floe_adapter.json").write_text(f'{{"kind": "{KIND}", "scale": {scale}}}')
    return directory
