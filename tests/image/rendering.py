"""Render a golden case's cerebrium.toml the way `cortex build --k8s` would, in process."""

from __future__ import annotations

from pathlib import Path

from cortex.build import image_tag, render_recipe
from cortex.config import load_config
from cortex.k8s import render_manifests

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(path.name for path in GOLDEN.iterdir() if (path / "cerebrium.toml").is_file())
# Expected files per case; None: the case must not produce it.
OUTPUTS = ("Dockerfile", ".dockerignore", "k8s.yaml")


def render_case(case: str) -> dict[str, str | None]:
    app_dir = GOLDEN / case
    config = load_config(app_dir).config
    custom = config.runtime.custom
    own = (app_dir / custom.dockerfile_path).read_text() if custom and custom.dockerfile_path else None
    recipe = render_recipe(config, own)
    return {
        "Dockerfile": recipe.dockerfile,
        ".dockerignore": recipe.dockerignore,
        "k8s.yaml": render_manifests(config, image_tag(config.deployment.name), recipe.port),
    }
