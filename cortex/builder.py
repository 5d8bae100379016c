"""`cortex build`: write the recipe from build.py (and k8s.py) to disk, then build it if Docker answers."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cortex.build import Recipe, docker_build_command, image_tag, render_recipe
from cortex.config import CerebriumConfig, load_config
from cortex.errors import BuildError
from cortex.k8s import render_manifests
from cortex.wheel import write_wheel

DEFAULT_OUTPUT = Path(".cortex") / "build"  # inside APP_DIR; .cortex is never copied into images
DOCKERFILE = "Dockerfile"
# BuildKit reads <Dockerfile>.dockerignore next to the Dockerfile in preference to the context's
# own .dockerignore, so the app directory is left untouched.
DOCKERIGNORE = "Dockerfile.dockerignore"
MANIFESTS = "k8s.yaml"
WHEEL_DIR = "wheel"


@dataclass(frozen=True)
class BuildOptions:
    app_dir: Path
    output: Path | None = None  # None: APP_DIR/.cortex/build
    tag: str | None = None  # None: <app name>:latest
    k8s: bool = False
    project_id: str = "p-local"


def build(options: BuildOptions, echo: Callable[[str], None] = print) -> int:
    """Write Dockerfile, ignore file, wheel (and k8s.yaml); run `docker build` when Docker answers."""
    loaded = load_config(options.app_dir)
    for warning in loaded.warnings:
        echo(f"Warning: {warning}")
    config = loaded.config
    output = options.output or options.app_dir / DEFAULT_OUTPUT
    tag = options.tag or image_tag(config.deployment.name)
    _check_dependency_files(options.app_dir, config)
    recipe = render_recipe(config, _own_dockerfile(options.app_dir, config))
    written = _write(recipe, output)
    wheel_dir = None
    if recipe.uses_wheel:
        wheel_dir = output / WHEEL_DIR
        shutil.rmtree(wheel_dir, ignore_errors=True)
        written.append(write_wheel(wheel_dir))
    if options.k8s:
        manifests = output / MANIFESTS
        manifests.write_text(render_manifests(config, tag, recipe.port, options.project_id))
        written.append(manifests)
    for path in written:
        echo(f"Wrote {path}")
    if recipe.dockerignore is None:
        echo(f"Using the app's own Dockerfile ({config.runtime.custom.dockerfile_path}), copied as is.")  # type: ignore[union-attr]  # render_recipe only skips the ignore file for dockerfile_path apps
    command = docker_build_command(
        tag, str(output / DOCKERFILE), str(options.app_dir), str(wheel_dir) if wheel_dir else None
    )
    if not has_docker():
        echo("Docker is not available here. Build the image with:")
        echo(f"  {shlex.join(command)}")
        return 0
    echo(f"Building {tag}: {shlex.join(command)}")
    code = subprocess.call(command)  # inherits stdout/stderr: docker streams its own progress
    if code != 0:
        raise BuildError(f"docker build failed (exit code {code}); its output above says why.")
    echo(f"Built {tag}. Run it with: docker run -p {recipe.port}:{recipe.port} {tag}")
    return 0


def has_docker() -> bool:
    """True when a Docker engine answers `docker info`."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _write(recipe: Recipe, output: Path) -> list[Path]:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BuildError(f"cannot create the output folder {output}: {exc}. Pass --output DIR.") from exc
    dockerfile = output / DOCKERFILE
    dockerfile.write_text(recipe.dockerfile)
    written = [dockerfile]
    ignore = output / DOCKERIGNORE
    if recipe.dockerignore is not None:
        ignore.write_text(recipe.dockerignore)
        written.append(ignore)
    else:
        ignore.unlink(missing_ok=True)  # a stale one would filter the app's own build
    return written


def _own_dockerfile(app_dir: Path, config: CerebriumConfig) -> str | None:
    custom = config.runtime.custom
    if custom is None or not custom.dockerfile_path:
        return None
    path = app_dir / custom.dockerfile_path
    if not path.is_file():
        raise BuildError(
            f"cerebrium.toml: [cerebrium.runtime.custom] dockerfile_path: {path} does not exist. "
            "Point it at the app's Dockerfile, relative to the app folder."
        )
    return path.read_text()


def _check_dependency_files(app_dir: Path, config: CerebriumConfig) -> None:
    paths = config.dependencies.paths
    for key, value in (("pip", paths.pip), ("apt", paths.apt), ("conda", paths.conda)):
        if value and not (app_dir / value).is_file():
            raise BuildError(
                f"cerebrium.toml: [cerebrium.dependencies.paths] {key}: {app_dir / value} does not "
                "exist. Create it or remove the key."
            )
