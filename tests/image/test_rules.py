"""The recipe's rules: base image choice, serving port, memory quantities, HPA mapping, the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import cortex
from cortex.build import base_image, serve_port
from cortex.config import parse_config
from cortex.k8s import memory_quantity, render_manifests
from cortex.wheel import write_wheel


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("debian:bookworm-slim", ("python:3.11-slim-bookworm", False)),
        ("debian:bullseye", ("python:3.11-slim-bullseye", False)),
        ("docker.io/library/debian:trixie-slim", ("python:3.11-slim-trixie", False)),
        ("debian:latest", ("python:3.11-slim-bookworm", False)),
        ("python:3.10-slim", ("python:3.10-slim", False)),
        ("nvidia/cuda:12.1.1-runtime-ubuntu22.04", ("nvidia/cuda:12.1.1-runtime-ubuntu22.04", True)),
        ("ubuntu:22.04", ("ubuntu:22.04", True)),
    ],
)
def test_base_image_rule(base: str, expected: tuple[str, bool]) -> None:
    assert base_image(base, "3.11") == expected


def test_cortex_moves_to_8080_when_the_custom_server_takes_8000() -> None:
    toml = '[cerebrium.deployment]\nname = "a"\n[cerebrium.runtime.custom]\nentrypoint = "python app.py"\n'
    config, _ = parse_config(toml)
    assert serve_port(config) == 8080
    config, _ = parse_config(toml + "port = 8192\n")
    assert serve_port(config) == 8000


@pytest.mark.parametrize(("gib", "quantity"), [(4.0, "4Gi"), (0.5, "512Mi"), (1.5, "1536Mi"), (16, "16Gi")])
def test_memory_gib_become_kubernetes_quantities(gib: float, quantity: str) -> None:
    assert memory_quantity(gib) == quantity


def test_concurrency_scaling_maps_to_cpu_with_the_original_kept_as_annotations() -> None:
    config, _ = parse_config(
        '[cerebrium.deployment]\nname = "a"\n[cerebrium.scaling]\nreplica_concurrency = 7\n'
    )
    text = render_manifests(config, "a:latest", 8000)
    deployment, _, hpa = yaml.safe_load_all(text)
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert deployment["metadata"]["annotations"]["cortex.dev/replica-concurrency"] == "7"
    assert "concurrency_utilization cannot be measured by a plain HPA" in text
    assert "&id" not in text  # no YAML anchors


def test_wheel_installs_cortex_with_its_metadata(tmp_path: Path) -> None:
    wheel = write_wheel(tmp_path / "wheel")
    assert wheel.name == f"cortex-{cortex.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert {"cortex/__init__.py", "cortex/py.typed", "cortex/build.py"} <= names
        assert not any("__pycache__" in name for name in names)
        meta = archive.read(f"cortex-{cortex.__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: starlette" in meta
    target = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (target / "cortex" / "build.py").read_text() == Path(cortex.__file__).with_name(
        "build.py"
    ).read_text()
    assert (target / "bin" / "cortex").is_file()
    assert write_wheel(tmp_path / "again").read_bytes() == wheel.read_bytes()  # reproducible
