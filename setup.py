"""Maps the top-level folders into the ``floe`` namespace (docs/design.md: no floe/__init__.py).

pyproject.toml holds the metadata; this file only computes ``packages`` / ``package_dir`` so
that subpackages added later are picked up without editing a list.
"""

from setuptools import find_packages, setup

NAMESPACE_ROOTS = {"floe.server": "server", "floe.adapters": "adapters", "floe.quant": "quant"}

packages: list[str] = []
for namespace, folder in NAMESPACE_ROOTS.items():
    packages.append(namespace)
    packages += [f"{namespace}.{sub}" for sub in find_packages(folder)]

# templates, configs, and the playground's static page (server/gateway/playground/)
PACKAGE_DATA = ["*.jinja", "*.json", "*.html", "*.js", "*.css"]

setup(packages=packages, package_dir=dict(NAMESPACE_ROOTS), package_data={"": PACKAGE_DATA})
