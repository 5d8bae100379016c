"""cerebrium.toml parsing, its warnings and errors, and Settings from CORTEX_* variables."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from cortex.config import (
    CerebriumConfig,
    CustomRuntimeConfig,
    DependenciesConfig,
    DependencyPathsConfig,
    DeploymentConfig,
    HardwareConfig,
    RuntimeConfig,
    ScalingConfig,
    Settings,
    load_config,
    load_settings,
    parse_config,
    requirement_lines,
)
from cortex.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

EXAMPLE = Path(__file__).parents[2] / "cerebrium.toml.example"
MINIMAL = '[cerebrium.deployment]\nname = "my-app"\n'


def parse(body: str = "") -> CerebriumConfig:
    """Parse MINIMAL plus `body`, asserting that nothing was warned about."""
    config, warnings = parse_config(MINIMAL + body)
    assert warnings == ()
    return config


def problem(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.message


def uncommented(text: str) -> str:
    """The example with every commented-out key and table header switched on."""
    return re.sub(r"(?m)^# (\[[\w.]+\]|\w+ = .*)$", r"\1", text)


# Defaults


def test_deployment_defaults() -> None:
    assert parse().deployment == DeploymentConfig(
        name="my-app",
        python_version="3.12",
        disable_auth=True,
        include=("./*",),
        exclude=(".*",),
        shell_commands=(),
        pre_build_commands=(),
        docker_base_image_url="debian:bookworm-slim",
        use_uv=False,
        deployment_initialization_timeout=600,
    )


def test_hardware_defaults_to_cpu() -> None:
    hardware = parse().hardware
    assert hardware.model_dump() == {
        "cpu": 2.0,
        "memory": 4.0,
        "compute": "CPU",
        "gpu_count": 0,
        "provider": "aws",
        "region": "us-east-1",
    }
    assert not hardware.is_gpu
    assert not parse().is_gpu


def test_scaling_defaults() -> None:
    assert parse().scaling.model_dump() == {
        "min_replicas": 0,
        "max_replicas": 1,
        "replica_concurrency": 100,
        "response_grace_period": 900,
        "cooldown": 10,
        "scaling_metric": "concurrency_utilization",
        "scaling_target": 100,
        "scaling_buffer": None,
        "evaluation_interval_seconds": 30,
        "load_balancing_algorithm": "round-robin",
        "compute_tier": "interruptible",
        "roll_out_duration_seconds": 0,
    }


def test_dependencies_and_runtime_default_to_empty() -> None:
    config = parse()
    assert config.dependencies == DependenciesConfig(
        pip={}, apt={}, conda={}, paths=DependencyPathsConfig(pip=None, apt=None, conda=None)
    )
    assert config.runtime == RuntimeConfig(custom=None)


def test_models_are_frozen() -> None:
    config = parse()
    with pytest.raises(ValueError, match="frozen"):
        config.scaling.max_replicas = 5


# Hardware: compute, gpu_count and the derived replica_concurrency


def test_compute_as_a_string() -> None:
    config = parse('[cerebrium.hardware]\ncompute = "AMPERE_A10"\n')
    assert config.hardware.compute == "AMPERE_A10"
    assert config.hardware.compute_types == ("AMPERE_A10",)


def test_compute_as_a_list_of_preferences() -> None:
    config = parse('[cerebrium.hardware]\ncompute = ["HOPPER_H100", "AMPERE_A100_80GB"]\n')
    assert config.hardware.compute == ("HOPPER_H100", "AMPERE_A100_80GB")
    assert config.hardware.compute_types == ("HOPPER_H100", "AMPERE_A100_80GB")
    assert config.is_gpu


def test_gpu_compute_derives_one_gpu_and_concurrency_one() -> None:
    config = parse('[cerebrium.hardware]\ncompute = "AMPERE_A10"\n')
    assert config.is_gpu
    assert config.hardware.gpu_count == 1
    assert config.scaling.replica_concurrency == 1


def test_cpu_compute_derives_no_gpu_and_concurrency_hundred() -> None:
    config = parse('[cerebrium.hardware]\ncompute = "CPU"\ncpu = 4\n')
    assert config.hardware.gpu_count == 0
    assert config.scaling.replica_concurrency == 100


def test_explicit_gpu_count_and_concurrency_win() -> None:
    config = parse(
        '[cerebrium.hardware]\ncompute = "ADA_L4"\ngpu_count = 2\n'
        "[cerebrium.scaling]\nreplica_concurrency = 8\n"
    )
    assert config.hardware.gpu_count == 2
    assert config.scaling.replica_concurrency == 8


def test_models_built_in_python_derive_the_same_defaults() -> None:
    hardware = HardwareConfig(compute="TURING_T4")
    config = CerebriumConfig(deployment=DeploymentConfig(name="x"), hardware=hardware)
    assert hardware.gpu_count == 1
    assert config.scaling.replica_concurrency == 1
    assert ScalingConfig().replica_concurrency == 100


# Dependencies


def test_requirement_lines_from_specs() -> None:
    deps = {
        "torch": ">=2.0",
        "numpy": "latest",
        "x": "1.2",
        "pandas": "==2.2.0",
        "uvicorn[standard]": "~=0.30",
        "mylib": "git+https://example.com/mylib.git",
        "rich": "",
    }
    assert requirement_lines(deps) == [
        "torch>=2.0",
        "numpy",
        "x==1.2",
        "pandas==2.2.0",
        "uvicorn[standard]~=0.30",
        "mylib @ git+https://example.com/mylib.git",
        "rich",
    ]


def test_dependency_tables_and_paths() -> None:
    config = parse(
        '[cerebrium.dependencies.pip]\ntorch = ">=2.0"\nnumpy = "latest"\n'
        '[cerebrium.dependencies.apt]\nffmpeg = "latest"\n'
        '[cerebrium.dependencies.conda]\ncudatoolkit = "11.7"\n'
        '[cerebrium.dependencies.paths]\npip = "requirements.txt"\n'
    )
    assert config.dependencies.pip == {"torch": ">=2.0", "numpy": "latest"}
    assert config.dependencies.apt == {"ffmpeg": "latest"}
    assert config.dependencies.conda == {"cudatoolkit": "11.7"}
    assert config.dependencies.paths == DependencyPathsConfig(pip="requirements.txt")


def test_unquoted_version_names_the_package() -> None:
    assert problem(MINIMAL + "[cerebrium.dependencies.pip]\nnumpy = 1.26\n") == (
        "cerebrium.toml: [cerebrium.dependencies.pip] numpy: Input should be a valid string (got 1.26)"
    )


# Custom runtime


def test_entrypoint_string_is_split_like_a_shell() -> None:
    config = parse(
        "[cerebrium.runtime.custom]\n"
        "entrypoint = \"uvicorn main:app --host 0.0.0.0 --log-config 'my log.json'\"\n"
        "port = 8192\n"
    )
    assert config.runtime.custom == CustomRuntimeConfig(
        entrypoint=("uvicorn", "main:app", "--host", "0.0.0.0", "--log-config", "my log.json"),
        port=8192,
    )


def test_entrypoint_list_and_custom_runtime_defaults() -> None:
    config = parse('[cerebrium.runtime.custom]\nentrypoint = ["python", "server.py"]\n')
    assert config.runtime.custom is not None
    assert config.runtime.custom.model_dump() == {
        "entrypoint": ("python", "server.py"),
        "port": 8000,
        "healthcheck_endpoint": "",
        "readycheck_endpoint": "",
        "dockerfile_path": "",
    }


def test_dockerfile_path_alone_is_enough() -> None:
    config = parse('[cerebrium.runtime.custom]\ndockerfile_path = "./Dockerfile"\nport = 8080\n')
    assert config.runtime.custom is not None
    assert config.runtime.custom.entrypoint is None
    assert config.runtime.custom.dockerfile_path == "./Dockerfile"


def test_custom_runtime_needs_entrypoint_or_dockerfile() -> None:
    assert problem(MINIMAL + "[cerebrium.runtime.custom]\nport = 8000\n") == (
        "cerebrium.toml: [cerebrium.runtime.custom] entrypoint: required unless dockerfile_path "
        'is set, e.g. entrypoint = ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000"]'
    )


def test_custom_runtime_rejects_bad_port_and_unsplittable_entrypoint() -> None:
    text = MINIMAL + "[cerebrium.runtime.custom]\nentrypoint = 'python \"x'\nport = 70000\n"
    assert problem(text) == (
        "cerebrium.toml: 2 problems\n"
        "  [cerebrium.runtime.custom] port: Input should be less than or equal to 65535 "
        "(got 70000)\n"
        "  [cerebrium.runtime.custom] entrypoint: cannot split the command: No closing quotation "
        "(got 'python \"x')"
    )


# Warnings: unknown keys and sections, legacy layout


def test_unknown_key_warns_with_nearest_key_and_is_ignored() -> None:
    config, warnings = parse_config(MINIMAL + "[cerebrium.scaling]\nmax_replica = 2\n")
    assert warnings == (
        "cerebrium.toml: unknown key [cerebrium.scaling] max_replica (did you mean max_replicas?); ignored.",
    )
    assert config.scaling.max_replicas == 1


def test_unknown_section_warns_with_nearest_section() -> None:
    _, warnings = parse_config(MINIMAL + '[cerebrium.dependancies.pip]\ntorch = "latest"\n')
    assert warnings == (
        "cerebrium.toml: unknown section [cerebrium.dependancies] (did you mean dependencies?); ignored.",
    )


def test_unknown_names_at_every_level() -> None:
    text = (
        "title = 'x'\n"
        "[tool.poetry]\n"
        "[cerebrium.deploymnet]\n"
        '[cerebrium.deployment]\nname = "my-app"\ncolour = "blue"\n'
        "[cerebrium.dependencies.npm]\n"
    )
    _, warnings = parse_config(text)
    assert warnings == (
        "cerebrium.toml: unknown key title; ignored.",
        "cerebrium.toml: unknown section [tool]; ignored.",
        "cerebrium.toml: unknown section [cerebrium.deploymnet] (did you mean deployment?); ignored.",
        "cerebrium.toml: unknown key [cerebrium.deployment] colour; ignored.",
        "cerebrium.toml: unknown section [cerebrium.dependencies.npm]; ignored.",
    )


def test_legacy_build_section_warns_and_the_app_still_loads() -> None:
    config, warnings = parse_config('[cerebrium.build]\npredict_data = "{}"\nuse_uv = true\n' + MINIMAL)
    assert warnings == (
        "cerebrium.toml: [cerebrium.build] is the legacy v3 layout; ignored. "
        "Move the keys you still need under [cerebrium.deployment].",
    )
    assert config.deployment.use_uv is False


def test_platform_only_sections_warn_as_unsupported() -> None:
    text = (
        MINIMAL + "[cerebrium.experimental]\ncheckpointing = true\n"
        '[cerebrium.runtime]\ncontainer_runtime = "v2"\n'
        "[cerebrium.runtime.deepgram]\nport = 8080\n"
    )
    config, warnings = parse_config(text)
    assert warnings == (
        "cerebrium.toml: [cerebrium.experimental] is a Cerebrium platform feature cortex does "
        "not run; ignored.",
        "cerebrium.toml: [cerebrium.runtime] container_runtime is a Cerebrium platform feature "
        "cortex does not run; ignored.",
        "cerebrium.toml: [cerebrium.runtime.deepgram] is a Cerebrium platform feature cortex "
        "does not run; ignored.",
    )
    assert config.runtime.custom is None


# Errors


def test_invalid_toml_names_line_and_column() -> None:
    text = '[cerebrium.deployment]\nname = "my-app"\nport 8000\n'
    assert problem(text) == (
        "cerebrium.toml: invalid TOML at line 3, column 6: Expected '=' after a key in a key/value pair"
    )


def test_invalid_toml_at_end_of_file() -> None:
    assert problem('[cerebrium.deployment]\nname = "my-app') == (
        "cerebrium.toml: invalid TOML at end of file: Unterminated string"
    )


def test_wrong_type_names_section_key_and_value() -> None:
    assert problem(MINIMAL + '[cerebrium.hardware]\ngpu_count = "two"\n') == (
        "cerebrium.toml: [cerebrium.hardware] gpu_count: Input should be a valid integer, "
        "unable to parse string as an integer (got 'two')"
    )


def test_several_problems_are_listed_one_per_line() -> None:
    text = (
        MINIMAL + 'include = ["./*", 3]\n'
        "[cerebrium.hardware]\ncompute = 5\n"
        '[cerebrium.scaling]\nmin_replicas = 3\nmax_replicas = 2\nscaling_metric = "gpu"\n'
    )
    assert problem(text) == (
        "cerebrium.toml: 4 problems\n"
        "  [cerebrium.deployment] include[1]: Input should be a valid string (got 3)\n"
        '  [cerebrium.hardware] compute: expected a compute type such as "AMPERE_A10" or a '
        "non-empty list of them (got 5)\n"
        "  [cerebrium.scaling] max_replicas: must be at least min_replicas (3) (got 2)\n"
        "  [cerebrium.scaling] scaling_metric: Input should be 'concurrency_utilization', "
        "'requests_per_second', 'cpu_utilization' or 'memory_utilization' (got 'gpu')"
    )


def test_section_that_is_not_a_table() -> None:
    assert problem(MINIMAL + '[cerebrium]\nscaling = "fast"\n') == (
        "cerebrium.toml: [cerebrium] scaling: Input should be a valid dictionary (got 'fast')"
    )


def test_missing_name() -> None:
    assert problem('[cerebrium.deployment]\npython_version = "3.11"\n') == (
        'cerebrium.toml: [cerebrium.deployment] name: Field required (add name = "my-app")'
    )


def test_missing_deployment_table_reports_the_name() -> None:
    assert problem("[cerebrium.hardware]\ncpu = 2\n") == (
        'cerebrium.toml: [cerebrium.deployment] name: Field required (add name = "my-app")'
    )


@pytest.mark.parametrize("name", ["", "my app", "-app", "app/v2"])
def test_name_must_be_url_safe(name: str) -> None:
    assert problem(f'[cerebrium.deployment]\nname = "{name}"\n') == (
        "cerebrium.toml: [cerebrium.deployment] name: must start with a letter or digit and "
        "contain only letters, digits, '-', '_' and '.', because it is part of the app's URL "
        f"(got {name!r})"
    )


@pytest.mark.parametrize("name", ["my-app", "App_2", "llm.v3", "7b"])
def test_url_safe_names_are_accepted(name: str) -> None:
    config, _ = parse_config(f'[cerebrium.deployment]\nname = "{name}"\n')
    assert config.deployment.name == name


# load_config


def test_load_config_reads_the_app_directory(tmp_path: Path) -> None:
    path = tmp_path / "cerebrium.toml"
    path.write_text(MINIMAL + "[cerebrium.scaling]\nmax_replica = 2\n")
    loaded = load_config(tmp_path)
    assert loaded.path == path
    assert loaded.config.deployment.name == "my-app"
    assert loaded.warnings == (
        "cerebrium.toml: unknown key [cerebrium.scaling] max_replica (did you mean max_replicas?); ignored.",
    )


def test_load_config_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    (tmp_path / "cerebrium.toml").write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_config(tmp_path).config.deployment.name == "my-app"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.message == (
        f"cerebrium.toml not found in {tmp_path}. Create one containing "
        '[cerebrium.deployment] name = "my-app", or run cortex init.'
    )


def test_errors_name_the_file_read(tmp_path: Path) -> None:
    (tmp_path / "cerebrium.toml").write_text("[cerebrium.deployment]\n")
    with pytest.raises(ConfigError, match=r"^cerebrium\.toml: \[cerebrium\.deployment\] name"):
        load_config(tmp_path)


def test_realistic_gpu_app(tmp_path: Path) -> None:
    (tmp_path / "cerebrium.toml").write_text(
        """\
[cerebrium.deployment]
name = "llama-3-8b-instruct"
python_version = "3.11"
docker_base_image_url = "nvidia/cuda:12.1.1-runtime-ubuntu22.04"
disable_auth = false
include = ["./*", "main.py", "cerebrium.toml"]
exclude = [".*", "weights/*"]
shell_commands = ["pip install flash-attn --no-build-isolation"]

[cerebrium.hardware]
cpu = 4
memory = 32.0
compute = "AMPERE_A10"
region = "us-east-1"

[cerebrium.scaling]
min_replicas = 0
max_replicas = 5
cooldown = 60
response_grace_period = 1200

[cerebrium.dependencies.pip]
torch = ">=2.0"
transformers = "4.44.2"
vllm = "latest"
huggingface-hub = "latest"

[cerebrium.dependencies.apt]
ffmpeg = "latest"
"""
    )
    loaded = load_config(tmp_path)
    config = loaded.config
    assert loaded.warnings == ()
    assert config.deployment.name == "llama-3-8b-instruct"
    assert config.deployment.disable_auth is False
    assert config.deployment.include == ("./*", "main.py", "cerebrium.toml")
    assert (config.hardware.cpu, config.hardware.memory) == (4.0, 32.0)
    assert config.is_gpu
    assert config.hardware.gpu_count == 1
    assert config.scaling.replica_concurrency == 1
    assert (config.scaling.max_replicas, config.scaling.cooldown) == (5, 60)
    assert config.scaling.response_grace_period == 1200
    assert requirement_lines(config.dependencies.pip) == [
        "torch>=2.0",
        "transformers==4.44.2",
        "vllm",
        "huggingface-hub",
    ]
    assert config.runtime.custom is None


# cerebrium.toml.example


def test_example_parses_to_the_defaults_without_warnings() -> None:
    config, warnings = parse_config(EXAMPLE.read_text())
    assert warnings == ()
    assert config == CerebriumConfig(deployment=DeploymentConfig(name="my-app"))
    assert tomllib.loads(EXAMPLE.read_text()) == {  # name is the only key switched on
        "cerebrium": {
            "deployment": {"name": "my-app"},
            "hardware": {},
            "scaling": {},
            "dependencies": {"pip": {}, "apt": {}, "conda": {}, "paths": {}},
        }
    }


def test_example_documents_every_field_of_every_section() -> None:
    table = tomllib.loads(uncommented(EXAMPLE.read_text()))["cerebrium"]
    sections: dict[tuple[str, ...], type[BaseModel]] = {
        (): CerebriumConfig,
        ("deployment",): DeploymentConfig,
        ("hardware",): HardwareConfig,
        ("scaling",): ScalingConfig,
        ("dependencies",): DependenciesConfig,
        ("dependencies", "paths"): DependencyPathsConfig,
        ("runtime",): RuntimeConfig,
        ("runtime", "custom"): CustomRuntimeConfig,
    }
    for path, model in sections.items():
        section = table
        for part in path:
            section = section[part]
        assert set(section) == set(model.model_fields), path


def test_example_comments_show_the_real_defaults() -> None:
    documented, warnings = parse_config(uncommented(EXAMPLE.read_text()))
    assert warnings == ()
    assert documented.runtime.custom is not None
    actual = parse()
    pairs: list[tuple[BaseModel, BaseModel]] = [
        (documented.deployment, actual.deployment),
        (documented.hardware, actual.hardware),
        (documented.scaling, actual.scaling),
        (documented.runtime.custom, CustomRuntimeConfig(entrypoint=("x",))),
    ]
    for shown, default in pairs:
        for name, field in type(default).model_fields.items():
            if field.default is not None:  # None means "unset": the example shows a sample value
                assert getattr(shown, name) == getattr(default, name), name


# Settings


def test_settings_defaults_with_an_empty_environment() -> None:
    assert load_settings({}) == Settings(
        project_id="p-local", max_queue=1000, max_body_bytes=64 * 1024 * 1024, debug=False
    )


def test_settings_from_environment() -> None:
    environ = {
        "CORTEX_PROJECT_ID": "p-1234abcd",
        "CORTEX_MAX_QUEUE": "0",
        "CORTEX_MAX_BODY_BYTES": " 1048576 ",
        "CORTEX_DEBUG": "true",
        "UNRELATED": "x",
    }
    assert load_settings(environ) == Settings(
        project_id="p-1234abcd", max_queue=0, max_body_bytes=1048576, debug=True
    )


def test_empty_variables_count_as_unset() -> None:
    assert load_settings({"CORTEX_MAX_QUEUE": "", "CORTEX_DEBUG": ""}) == Settings()


def test_overrides_win_and_none_is_ignored() -> None:
    environ = {"CORTEX_PROJECT_ID": "p-env", "CORTEX_DEBUG": "1"}
    settings = load_settings(environ, project_id="p-flag", debug=None, max_queue=5)
    assert settings == Settings(project_id="p-flag", max_queue=5, debug=True)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CORTEX_MAX_QUEUE", "abc", "CORTEX_MAX_QUEUE: expected a non-negative integer, got 'abc'"),
        ("CORTEX_MAX_QUEUE", "-1", "CORTEX_MAX_QUEUE: expected a non-negative integer, got '-1'"),
        (
            "CORTEX_MAX_BODY_BYTES",
            "0",
            "CORTEX_MAX_BODY_BYTES: expected a positive integer, got '0'",
        ),
        ("CORTEX_DEBUG", "maybe", "CORTEX_DEBUG: expected 1, true, 0 or false, got 'maybe'"),
        (
            "CORTEX_PROJECT_ID",
            "p/1",
            "CORTEX_PROJECT_ID: expected letters, digits, '-', '_' or '.', got 'p/1'",
        ),
    ],
)
def test_bad_environment_values(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert caught.value.message == message


def test_bad_override_names_the_setting() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, max_queue=-3)
    assert caught.value.message == "max_queue: expected a non-negative integer, got -3"


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="unknown setting 'max_que'"):
        load_settings({}, max_que=3)


def test_settings_read_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORTEX_MAX_QUEUE", "7")
    assert load_settings().max_queue == 7
