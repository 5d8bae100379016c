"""`cortex build` as a subprocess: files written, and (no Docker engine here) the command printed."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.conftest import APPS, run_cortex


def test_build_writes_files_and_prints_the_docker_command(tmp_path: Path) -> None:
    output = tmp_path / "out"
    # PATH without docker: the no-engine path, even on a machine that has one.
    args = ("build", str(APPS / "echo"), "--output", str(output), "--k8s", "--tag", "echo:test")
    result = run_cortex(*args, env={"PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    for name in ("Dockerfile", "Dockerfile.dockerignore", "k8s.yaml"):
        assert (output / name).is_file()
        assert f"Wrote {output / name}" in result.stdout
    assert len(list((output / "wheel").glob("cortex-*.whl"))) == 1
    command = (
        f"docker build -t echo:test -f {output / 'Dockerfile'} "
        f"--build-context cortex-wheel={output / 'wheel'} {APPS / 'echo'}"
    )
    assert "Docker is not available here. Build the image with:\n  " + command in result.stdout
    deployment = next(yaml.safe_load_all((output / "k8s.yaml").read_text()))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "echo:test"


def test_build_names_a_missing_dependency_file(tmp_path: Path) -> None:
    (tmp_path / "cerebrium.toml").write_text(
        '[cerebrium.deployment]\nname = "a"\n[cerebrium.dependencies.paths]\npip = "requirements.txt"\n'
    )
    result = run_cortex("build", str(tmp_path), "--output", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"Error: cerebrium.toml: [cerebrium.dependencies.paths] pip: {tmp_path / 'requirements.txt'} "
        "does not exist. Create it or remove the key."
    )
