"""cerebrium.toml -> frozen pydantic models, and Settings: the only reader of CORTEX_* variables."""

from __future__ import annotations

import difflib
import os
import re
import shlex
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from cortex.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_FILE = "cerebrium.toml"
# App names and project ids are path segments of /v4/{project_id}/{app_name}/{function}.
_URL_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION_OPERATORS = ("=", "<", ">", "!", "~")
_TOML_POSITION = re.compile(
    r"(?P<reason>.*) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)"
)
_MOVE_LEGACY_KEYS = "Move the keys you still need under [cerebrium.deployment]."
# Cerebrium platform features that have no local equivalent (found in the Cerebrium CLI's schema).
_UNSUPPORTED = {
    ("cerebrium", "experimental"),
    ("cerebrium", "runtime", "container_runtime"),
    ("cerebrium", "runtime", "deepgram"),
    ("cerebrium", "runtime", "rime"),
}

ScalingMetric = Literal[
    "concurrency_utilization", "requests_per_second", "cpu_utilization", "memory_utilization"
]


def _is_accelerator(compute: object) -> bool:
    """True unless `compute` is CPU; a malformed value counts as CPU (its error is reported)."""
    names = (compute,) if isinstance(compute, str) else compute
    return isinstance(names, list | tuple) and any(str(n).upper() != "CPU" for n in names)


class _Section(BaseModel):
    # Unknown keys are stripped (with a warning) before validation: "forbid" only guards our code.
    model_config = ConfigDict(frozen=True, extra="forbid")


class DeploymentConfig(_Section):
    """[cerebrium.deployment]"""

    name: str
    python_version: str = "3.12"
    disable_auth: bool = True
    include: tuple[str, ...] = ("./*",)
    exclude: tuple[str, ...] = (".*",)
    shell_commands: tuple[str, ...] = ()
    pre_build_commands: tuple[str, ...] = ()
    docker_base_image_url: str = "debian:bookworm-slim"
    use_uv: bool = False
    deployment_initialization_timeout: int = Field(default=600, ge=1)

    @field_validator("name")
    @classmethod
    def _url_safe(cls, name: str) -> str:
        if not _URL_SAFE.fullmatch(name):
            raise ValueError(
                "must start with a letter or digit and contain only letters, digits, '-', '_' "
                "and '.', because it is part of the app's URL"
            )
        return name


class HardwareConfig(_Section):
    """[cerebrium.hardware]; gpu_count defaults to 1 when compute is a GPU, else 0."""

    cpu: float = Field(default=2.0, gt=0)
    memory: float = Field(default=4.0, gt=0)
    compute: str | tuple[str, ...] = "CPU"
    gpu_count: int = Field(default=0, ge=0)
    provider: str = "aws"
    region: str = "us-east-1"

    @model_validator(mode="before")
    @classmethod
    def _derive_gpu_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and "gpu_count" not in data:
            return {**data, "gpu_count": int(_is_accelerator(data.get("compute", "CPU")))}
        return data

    @field_validator("compute", mode="before")
    @classmethod
    def _one_or_more_types(cls, value: Any) -> Any:
        # Checked here so a bad value gets one message instead of one per union member.
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list | tuple) and value and all(isinstance(v, str) for v in value):
            return value
        raise ValueError('expected a compute type such as "AMPERE_A10" or a non-empty list of them')

    @property
    def compute_types(self) -> tuple[str, ...]:
        """The compute types in order of preference (one when compute is a string)."""
        return (self.compute,) if isinstance(self.compute, str) else self.compute

    @property
    def is_gpu(self) -> bool:
        """compute names an accelerator (a GPU, or Trainium/Inferentia), not CPU."""
        return _is_accelerator(self.compute)


class ScalingConfig(_Section):
    """[cerebrium.scaling]; replica_concurrency defaults to 100 on CPU, 1 on a GPU."""

    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    replica_concurrency: int = Field(default=100, ge=1)
    response_grace_period: int = Field(default=900, ge=1)
    cooldown: int = Field(default=10, ge=0)
    scaling_metric: ScalingMetric = "concurrency_utilization"
    scaling_target: int = Field(default=100, ge=1)
    scaling_buffer: int | None = Field(default=None, ge=0)
    evaluation_interval_seconds: int = Field(default=30, ge=1)
    load_balancing_algorithm: str = "round-robin"
    compute_tier: str = "interruptible"
    roll_out_duration_seconds: int = Field(default=0, ge=0)

    @field_validator("max_replicas")
    @classmethod
    def _not_below_min(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_replicas")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be at least min_replicas ({minimum})")
        return value


class DependencyPathsConfig(_Section):
    """[cerebrium.dependencies.paths]: files listing packages, one per line."""

    pip: str | None = None
    apt: str | None = None
    conda: str | None = None


class DependenciesConfig(_Section):
    """[cerebrium.dependencies.*]: package name -> version spec ("latest" means unpinned)."""

    pip: dict[str, str] = Field(default_factory=dict)
    apt: dict[str, str] = Field(default_factory=dict)
    conda: dict[str, str] = Field(default_factory=dict)
    paths: DependencyPathsConfig = Field(default_factory=DependencyPathsConfig)


class CustomRuntimeConfig(_Section):
    """[cerebrium.runtime.custom]: the user's own web server instead of cortex's routes."""

    port: int = Field(default=8000, ge=1, le=65535)
    healthcheck_endpoint: str = ""
    readycheck_endpoint: str = ""
    dockerfile_path: str = ""
    # Declared last so its check can see dockerfile_path; validated even when absent.
    entrypoint: tuple[str, ...] | None = Field(default=None, validate_default=True)

    @field_validator("entrypoint", mode="before")
    @classmethod
    def _split_command(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from exc

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_or_dockerfile(
        cls, value: tuple[str, ...] | None, info: ValidationInfo
    ) -> tuple[str, ...] | None:
        if not value and not info.data.get("dockerfile_path"):
            raise ValueError(
                "required unless dockerfile_path is set, e.g. "
                'entrypoint = ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000"]'
            )
        return value or None


class RuntimeConfig(_Section):
    """[cerebrium.runtime]; custom is None when the app uses cortex's own runtime."""

    custom: CustomRuntimeConfig | None = None


class CerebriumConfig(_Section):
    """The [cerebrium] table of cerebrium.toml."""

    deployment: DeploymentConfig
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    dependencies: DependenciesConfig = Field(default_factory=DependenciesConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="before")
    @classmethod
    def _derive_replica_concurrency(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        hardware, scaling = data.get("hardware", {}), data.get("scaling", {})
        if not isinstance(scaling, dict) or "replica_concurrency" in scaling:
            return data
        compute = hardware.compute if isinstance(hardware, HardwareConfig) else None
        if isinstance(hardware, dict):
            compute = hardware.get("compute", "CPU")
        concurrency = 1 if _is_accelerator(compute) else 100
        return {**data, "scaling": {**scaling, "replica_concurrency": concurrency}}

    @property
    def is_gpu(self) -> bool:
        return self.hardware.is_gpu


@dataclass(frozen=True)
class LoadedConfig:
    config: CerebriumConfig
    path: Path  # the cerebrium.toml read
    warnings: tuple[str, ...]


def load_config(app_dir: Path) -> LoadedConfig:
    """Read app_dir/cerebrium.toml; raise ConfigError if it is missing, unreadable or invalid."""
    path = app_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(
            f"{CONFIG_FILE} not found in {app_dir}. Create one containing "
            '[cerebrium.deployment] name = "my-app", or run cortex init.'
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: editors on Windows add a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: cannot be read: {exc}") from exc
    config, warnings = parse_config(text, source=path.name)
    return LoadedConfig(config=config, path=path, warnings=warnings)


def parse_config(text: str, source: str = CONFIG_FILE) -> tuple[CerebriumConfig, tuple[str, ...]]:
    """Parse and validate cerebrium.toml text; unknown keys become warnings, not errors."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_describe_toml_error(source, exc)) from exc
    warnings: list[str] = []
    known = _strip_unknown(document, {"cerebrium": CerebriumConfig}, (), warnings)
    table = known.get("cerebrium", {})
    if isinstance(table, dict):
        table.setdefault("deployment", {})  # a missing table then reports the missing name
    try:
        config = CerebriumConfig.model_validate(table)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc)) from exc
    return config, tuple(f"{source}: {warning}" for warning in warnings)


def requirement_lines(deps: Mapping[str, str]) -> list[str]:
    """pip requirements: "latest" unpinned, "1.2" -> "==1.2", ">=2" kept, a URL as "name @ url"."""
    return [_requirement(name, spec.strip()) for name, spec in deps.items()]


def _requirement(name: str, spec: str) -> str:
    if spec in ("", "*") or spec.lower() == "latest":
        return name
    if spec.startswith(_VERSION_OPERATORS):
        return f"{name}{spec}"
    if "://" in spec:
        return f"{name} @ {spec}"
    return f"{name}=={spec}"


def _known_tables(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Each field of `model`, mapped to the model of its table when it is one."""
    known: dict[str, type[BaseModel] | None] = {}
    for name, field in model.model_fields.items():
        types = (field.annotation, *get_args(field.annotation))
        known[name] = next((t for t in types if isinstance(t, type) and issubclass(t, BaseModel)), None)
    return known


def _strip_unknown(
    table: dict[str, Any],
    known: Mapping[str, type[BaseModel] | None],
    path: tuple[str, ...],
    warnings: list[str],
) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, value in table.items():
        where = (*path, key)
        if key not in known:
            warnings.append(_ignored(where, value, known))
            continue
        model = known[key]
        if model is not None and isinstance(value, dict):
            value = _strip_unknown(value, _known_tables(model), where, warnings)
        kept[key] = value
    return kept


def _ignored(where: tuple[str, ...], value: object, known: Mapping[str, object]) -> str:
    is_table = isinstance(value, dict)
    place = _place(where, is_table)
    if where == ("cerebrium", "build"):
        return f"{place} is the legacy v3 layout; ignored. {_MOVE_LEGACY_KEYS}"
    if where in _UNSUPPORTED:
        return f"{place} is a Cerebrium platform feature cortex does not run; ignored."
    close = difflib.get_close_matches(where[-1], list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown {'section' if is_table else 'key'} {place}{hint}; ignored."


def _place(where: tuple[str, ...], is_table: bool) -> str:
    """`[a.b.c]` for a table, `[a.b] c` for a key (just `c` at the top level)."""
    if is_table:
        return f"[{'.'.join(where)}]"
    table = ".".join(where[:-1])
    return f"[{table}] {where[-1]}" if table else where[-1]


def _describe_toml_error(source: str, exc: tomllib.TOMLDecodeError) -> str:
    match = _TOML_POSITION.fullmatch(str(exc))
    if match is None:
        return f"{source}: invalid TOML: {exc}"
    where = f"line {match['line']}, column {match['col']}" if match["line"] else "end of file"
    return f"{source}: invalid TOML at {where}: {match['reason']}"


def _describe(source: str, exc: ValidationError) -> str:
    problems = [_problem(error) for error in exc.errors()]
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return "\n  ".join([f"{source}: {len(problems)} problems", *problems])


def _problem(error: ErrorDetails) -> str:
    parts = ["cerebrium"]
    for part in error["loc"]:
        if isinstance(part, int):  # a list index reads as include[1], not as a key "1"
            parts[-1] += f"[{part}]"
        else:
            parts.append(part)
    where = tuple(parts)
    message = re.sub(r"^Value error, | or instance of \w+", "", error["msg"])
    if error["type"] == "missing":
        hint = ' (add name = "my-app")' if where == ("cerebrium", "deployment", "name") else ""
        return f"{_place(where, False)}: {message}{hint}"
    # None only comes from a default (TOML has no null), so there is nothing to show.
    got = "" if error["input"] is None else f" (got {error['input']!r})"
    return f"{_place(where, False)}: {message}{got}"


@dataclass(frozen=True)
class Settings:
    """Process settings; each field is read from CORTEX_<FIELD NAME> by load_settings."""

    project_id: str = "p-local"
    max_queue: int = 1000  # waiting requests allowed beyond replica_concurrency
    max_body_bytes: int = 64 * 1024 * 1024
    debug: bool = False
    store: str | None = None  # None: sqlite:///<APP_DIR>/.cortex/runs.db
    # A Redis store refuses to start on a server that could lose acknowledged runs (no AOF,
    # or a maxmemory-policy that evicts) instead of only warning.
    strict_durability: bool = False
    max_attempts: int = 3  # tries of an async run the server died during
    run_lease_seconds: int = 15  # a run whose worker stops heart-beating this long runs again
    webhook_secret: str | None = None  # whsec_...; None: generated once, kept in the state dir
    webhook_retry_schedule: str | None = None  # "1,5,30": seconds between delivery attempts
    webhook_allow_cidrs: str | None = None  # "127.0.0.0/8": networks webhooks may target anyway
    auth: bool | None = None  # None: on when cerebrium.toml says disable_auth = false
    jwt_secret: str | None = None  # HS256 key, at least 32 bytes
    jwt_public_key: str | None = None  # PEM text or a path to one: RS256 or ES256
    jwt_audience: str | None = None  # required `aud` when set
    jwt_issuer: str | None = None  # required `iss` when set
    public_metadata: bool = False  # with auth on, /metrics, /docs and /openapi.json stay open too
    request_read_timeout: float = 30.0  # seconds to receive a request's headers and body
    keep_alive_timeout: float = 5.0  # seconds an idle keep-alive connection is kept open
    log_format: str = "text"  # "text" (rich on a terminal) or "json" (one object per line)
    workers: int = 1  # `cortex serve` processes sharing the port and the run store
    # Cerebrium's own names, without CORTEX_ (see _VARIABLES); "true" turns the logs off.
    disable_request_logs: bool = False  # the DEBUG "call in" line and uvicorn's access log
    disable_response_logs: bool = False  # the INFO line at the end of each call


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from `environ` (default os.environ), then `overrides` (CLI flags; None = not given).

    An empty variable counts as unset, as `CORTEX_DEBUG= cortex serve` is how a shell clears one.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for field in fields(Settings):
        variable = _VARIABLES.get(field.name, f"CORTEX_{field.name.upper()}")
        if env.get(variable):
            values[field.name] = _SETTING_PARSERS[field.name](variable, env[variable])
    for name, value in overrides.items():
        if name not in _SETTING_PARSERS:
            raise TypeError(f"load_settings() got an unknown setting {name!r}")
        if value is not None:
            values[name] = _SETTING_PARSERS[name](name, value)
    return Settings(**values)


def _log_format(label: str, raw: object) -> str:
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text in ("text", "json"):
        return text
    raise ConfigError(f"{label}: expected text or json, got {raw!r}")


def _disabled(label: str, raw: object) -> bool:
    """Cerebrium's rule for DISABLE_*_LOGS: "true" disables; any other value keeps the logs."""
    return raw is True or (isinstance(raw, str) and raw.strip().lower() in ("true", "1"))


def _url_safe_text(label: str, raw: object) -> str:
    if isinstance(raw, str) and _URL_SAFE.fullmatch(raw):
        return raw
    raise ConfigError(f"{label}: expected letters, digits, '-', '_' or '.', got {raw!r}")


def _integer(label: str, raw: object, minimum: int, expected: str) -> int:
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, str) and re.fullmatch(r"\s*-?\d+\s*", raw):
        value = int(raw)
    if value is None or value < minimum:
        raise ConfigError(f"{label}: expected {expected}, got {raw!r}")
    return value


def _seconds(label: str, raw: object) -> float:
    is_number = isinstance(raw, (int, float)) and not isinstance(raw, bool)
    is_numeral = isinstance(raw, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", raw) is not None
    value = float(raw) if is_number or is_numeral else None  # type: ignore[arg-type]
    if value is None or value <= 0:
        raise ConfigError(f"{label}: expected a positive number of seconds, got {raw!r}")
    return value


def _text(label: str, raw: object, expected: str) -> str:
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    raise ConfigError(f"{label}: expected {expected}, got {raw!r}")


def _flag(label: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{label}: expected 1, true, 0 or false, got {raw!r}")


_SETTING_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "project_id": _url_safe_text,
    "max_queue": lambda label, raw: _integer(label, raw, 0, "a non-negative integer"),
    "max_body_bytes": lambda label, raw: _integer(label, raw, 1, "a positive integer"),
    "debug": _flag,
    "strict_durability": _flag,
    "store": lambda label, raw: _text(label, raw, "a store URL such as sqlite:///path/runs.db"),
    "max_attempts": lambda label, raw: _integer(label, raw, 1, "a positive integer"),
    "run_lease_seconds": lambda label, raw: _integer(label, raw, 1, "a positive integer"),
    "webhook_secret": lambda label, raw: _text(label, raw, "a secret such as whsec_<base64>"),
    "webhook_retry_schedule": lambda label, raw: _text(label, raw, "seconds such as 1,5,30"),
    "webhook_allow_cidrs": lambda label, raw: _text(label, raw, "networks such as 127.0.0.0/8"),
    "auth": _flag,
    "jwt_secret": lambda label, raw: _text(label, raw, "a secret of at least 32 bytes"),
    "jwt_public_key": lambda label, raw: _text(label, raw, "a PEM public key or the path to one"),
    "jwt_audience": lambda label, raw: _text(label, raw, "the audience tokens must carry"),
    "jwt_issuer": lambda label, raw: _text(label, raw, "the issuer tokens must carry"),
    "public_metadata": _flag,
    "request_read_timeout": lambda label, raw: _seconds(label, raw),
    "keep_alive_timeout": lambda label, raw: _seconds(label, raw),
    "log_format": _log_format,
    "workers": lambda label, raw: _integer(label, raw, 1, "a positive integer"),
    "disable_request_logs": _disabled,
    "disable_response_logs": _disabled,
}
# Settings read from a variable other than CORTEX_<NAME>: Cerebrium's own names.
_VARIABLES = {
    "disable_request_logs": "DISABLE_REQUEST_LOGS",
    "disable_response_logs": "DISABLE_RESPONSE_LOGS",
}
