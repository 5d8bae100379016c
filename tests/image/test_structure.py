"""The generated Dockerfiles and manifests are well formed, whatever the golden files say."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.image.rendering import CASES, render_case

INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
GENERATED = [case for case in CASES if case != "dockerfile_path"]
# Cerebrium's build order: each marker must come after the previous one present.
ORDER = ("pre_build_commands", "dependencies.apt", "dependencies.conda", "dependencies.pip",
         "cortex itself", "COPY . /cortex", "shell_commands")  # fmt: skip


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    lines = [line for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1]) for line in lines]


@pytest.mark.parametrize("case", CASES)
def test_dockerfile_uses_valid_instructions_and_starts_with_from(case: str) -> None:
    steps = instructions(render_case(case)["Dockerfile"] or "")
    assert {name for name, _ in steps} <= INSTRUCTIONS
    assert steps[0][0] == "FROM"


@pytest.mark.parametrize("case", GENERATED)
def test_dockerfile_serves_with_cortex_on_the_exposed_port(case: str) -> None:
    steps = instructions(render_case(case)["Dockerfile"] or "")
    name, args = steps[-1]
    assert name == "CMD"
    command = json.loads(args)  # exec form
    port = command[command.index("--port") + 1]
    assert command[:3] == ["cortex", "serve", "/cortex"]
    assert ("EXPOSE", port) in steps
    health = [args for name, args in steps if name == "HEALTHCHECK"]
    assert len(health) == 1
    assert f"http://127.0.0.1:{port}/health" in health[0]


@pytest.mark.parametrize("case", GENERATED)
def test_dockerfile_steps_follow_cerebriums_build_order(case: str) -> None:
    dockerfile = render_case(case)["Dockerfile"] or ""
    positions = [dockerfile.find(marker) for marker in ORDER if marker in dockerfile]
    assert positions == sorted(positions)
    assert "cortex itself" in dockerfile


@pytest.mark.parametrize("case", CASES)
def test_manifests_are_a_deployment_service_and_hpa_that_agree(case: str) -> None:
    from cortex.config import load_config
    from tests.image.rendering import GOLDEN

    config = load_config(GOLDEN / case).config
    deployment, service, hpa = yaml.safe_load_all(render_case(case)["k8s.yaml"] or "")
    assert [(d["apiVersion"], d["kind"]) for d in (deployment, service, hpa)] == [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    assert service["spec"]["selector"] == labels
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert pod["spec"]["terminationGracePeriodSeconds"] == config.scaling.response_grace_period
    assert hpa["spec"]["minReplicas"] == max(1, config.scaling.min_replicas)
    assert hpa["spec"]["maxReplicas"] == config.scaling.max_replicas
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["APP_NAME"] == config.deployment.name
    assert "PROJECT_ID" in env
    assert container["resources"]["requests"] == container["resources"]["limits"]
    if config.hardware.is_gpu:
        assert container["resources"]["limits"]["nvidia.com/gpu"] == config.hardware.gpu_count
    else:
        assert "nvidia.com/gpu" not in container["resources"]["limits"]


@pytest.mark.parametrize("case", [c for c in GENERATED])
def test_cortex_pods_probe_ready_and_health_on_port_8000(case: str) -> None:
    deployment = next(yaml.safe_load_all(render_case(case)["k8s.yaml"] or ""))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"


def test_gpu_case_requests_memory_cpu_gpus_and_startup_time() -> None:
    deployment = next(yaml.safe_load_all(render_case("gpu")["k8s.yaml"] or ""))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": 2}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 305
    assert deployment["metadata"]["annotations"]["cortex.dev/compute"] == "AMPERE_A10"


def test_dockerfile_path_app_keeps_its_own_port_and_probes() -> None:
    deployment = next(yaml.safe_load_all(render_case("dockerfile_path")["k8s.yaml"] or ""))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"] == {
        "tcpSocket": {"port": "http"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
