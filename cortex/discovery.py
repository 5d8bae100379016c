"""Import the app's main.py and describe each public function as a FunctionSpec."""

from __future__ import annotations

import enum
import importlib.util
import inspect
import sys
import time
import traceback
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ConfigDict, TypeAdapter
from typing_extensions import NotRequired, Required, TypedDict

from cortex.errors import AppImportError, DiscoveryError

_make_typed_dict: Any = TypedDict  # called with a runtime name, which type checkers cannot follow

MODULE_FILE = "main.py"
RUN_ID_PARAMETER = "run_id"  # injected by Cortex when a function declares it, as Cerebrium does


class FunctionKind(enum.Enum):
    SYNC = "sync"
    ASYNC = "async"
    GENERATOR = "generator"
    ASYNC_GENERATOR = "async generator"

    @property
    def is_streaming(self) -> bool:
        return self in (FunctionKind.GENERATOR, FunctionKind.ASYNC_GENERATOR)


@dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any  # the type hint, Any when there is none
    required: bool
    default: Any  # inspect.Parameter.empty when required

    @property
    def type_name(self) -> str:
        return describe_type(self.annotation)


@dataclass(frozen=True)
class FunctionSpec:
    """A public function of main.py, with the validator for its JSON arguments built once."""

    name: str
    func: Callable[..., Any]
    kind: FunctionKind
    parameters: tuple[Parameter, ...]  # what a caller may send (never run_id)
    takes_run_id: bool
    takes_extra_kwargs: bool  # declares **kwargs, so unknown keys are passed through
    positional_only: tuple[tuple[str, Any], ...]  # (name, default) passed positionally, in order
    arguments: TypeAdapter[dict[str, Any]]  # JSON object -> validated kwargs
    return_annotation: Any
    doc: str

    @property
    def parameter_names(self) -> list[str]:
        return [p.name for p in self.parameters]


@dataclass(frozen=True)
class Registry:
    """What discovery found: the module, its functions and how long the import took."""

    module: ModuleType
    functions: Mapping[str, FunctionSpec]
    import_seconds: float


def discover(app_dir: Path) -> Registry:
    started = time.perf_counter()
    module = import_main(app_dir)
    import_seconds = time.perf_counter() - started
    return Registry(module, discover_functions(module), import_seconds)


def import_main(app_dir: Path) -> ModuleType:
    """Import app_dir/main.py as module `main`, with app_dir first on sys.path (as Cerebrium)."""
    path = app_dir.resolve() / MODULE_FILE
    if not path.is_file():
        raise AppImportError(
            f"No {MODULE_FILE} in {app_dir}. Cortex serves the public functions of {MODULE_FILE}."
        )
    app_path = str(path.parent)
    if app_path not in sys.path:
        sys.path.insert(0, app_path)
    spec = importlib.util.spec_from_file_location("main", path)
    assert spec is not None and spec.loader is not None  # a .py file path always has a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["main"] = module  # so `from main import x` inside the app finds this module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop("main", None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise AppImportError(describe_import_failure(exc, path)) from exc
    return module


def describe_import_failure(exc: BaseException, path: Path) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        package = exc.name.split(".")[0]
        if importlib.util.find_spec(package) is None:  # not a missing submodule of a package we have
            return (
                f"{MODULE_FILE} failed to import: {exc}. "
                f"Add {package} under [cerebrium.dependencies.pip] in cerebrium.toml and install it."
            )
    text = exc.msg if isinstance(exc, SyntaxError) else str(exc)  # str() repeats the location
    return f"{MODULE_FILE} failed to import: {type(exc).__name__}: {text}{_user_frame(exc, path)}"


def _user_frame(exc: BaseException, path: Path) -> str:
    """' (main.py, line 3)' for the deepest frame in the user's file, if any."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f" ({Path(exc.filename or path).name}, line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return f" ({MODULE_FILE}, line {frames[-1].lineno})" if frames else ""


def discover_functions(module: ModuleType) -> dict[str, FunctionSpec]:
    """Functions defined in the module itself whose names do not start with `_`."""
    specs = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj):
            continue
        if obj.__module__ != module.__name__:
            continue  # imported, not defined here
        specs[name] = build_spec(name, obj)
    return specs


def function_kind(func: Callable[..., Any]) -> FunctionKind:
    if inspect.isasyncgenfunction(func):
        return FunctionKind.ASYNC_GENERATOR
    if inspect.isgeneratorfunction(func):
        return FunctionKind.GENERATOR
    if inspect.iscoroutinefunction(func):
        return FunctionKind.ASYNC
    return FunctionKind.SYNC


def build_spec(name: str, func: Callable[..., Any]) -> FunctionSpec:
    signature = inspect.signature(func)
    hints = _type_hints(func)
    parameters: list[Parameter] = []
    positional_only: list[tuple[str, Any]] = []
    takes_run_id = takes_extra = False
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            takes_extra = True
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            continue  # JSON objects carry no positional arguments
        elif param.name == RUN_ID_PARAMETER:
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                raise DiscoveryError(
                    f"{name}(): run_id cannot be positional-only; Cortex passes it by keyword."
                )
            takes_run_id = True
        else:
            required = param.default is inspect.Parameter.empty
            parameters.append(Parameter(param.name, hints.get(param.name, Any), required, param.default))
            if param.kind is inspect.Parameter.POSITIONAL_ONLY:
                positional_only.append((param.name, param.default))
    return FunctionSpec(
        name=name,
        func=func,
        kind=function_kind(func),
        parameters=tuple(parameters),
        takes_run_id=takes_run_id,
        takes_extra_kwargs=takes_extra,
        positional_only=tuple(positional_only),
        arguments=_arguments_adapter(name, parameters, takes_extra),
        return_annotation=hints.get("return", Any),
        doc=inspect.getdoc(func) or "",
    )


def _type_hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Resolved hints; one that cannot be resolved (say, under TYPE_CHECKING) becomes Any alone."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except Exception:
        pass
    hints = {}
    for key, annotation in getattr(func, "__annotations__", {}).items():
        holder = _annotated_holder(key, annotation, func)
        try:
            hints[key] = typing.get_type_hints(holder, globalns=func.__globals__, include_extras=True)[key]
        except Exception:
            hints[key] = Any
    return hints


def _annotated_holder(key: str, annotation: Any, func: Callable[..., Any]) -> Any:
    def holder() -> None: ...

    holder.__annotations__ = {key: annotation}
    holder.__module__ = func.__module__
    return holder


def _arguments_adapter(
    name: str, parameters: list[Parameter], takes_extra: bool
) -> TypeAdapter[dict[str, Any]]:
    # A TypedDict rather than a model: validation yields a plain dict holding only what the
    # caller sent, so the function's own defaults apply, and any parameter name is allowed.
    fields = {
        p.name: (Required[p.annotation] if p.required else NotRequired[p.annotation]) for p in parameters
    }
    typed_dict = _make_typed_dict(f"{name}_arguments", fields)
    typed_dict.__pydantic_config__ = ConfigDict(
        extra="allow" if takes_extra else "forbid", arbitrary_types_allowed=True
    )
    try:
        adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(typed_dict)
        return adapter
    except Exception as exc:
        raise DiscoveryError(
            f"{name}(): its type hints cannot be validated from JSON: {exc}. "
            "Use JSON-friendly types (str, int, float, bool, list, dict, pydantic models)."
        ) from exc


def describe_type(annotation: Any) -> str:
    """'str', 'list[int]', 'Item', 'int | None' — how a parameter's type reads in a message."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any"
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Ellipsis:
        return "..."
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe_type(args[0])  # constraints show up in the detail, not the type
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(describe_type(arg) for arg in args)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(arg) for arg in args)}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(describe_type(arg) for arg in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")
