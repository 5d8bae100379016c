"""Importing main.py and describing its public functions as FunctionSpecs."""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import pytest
from pydantic import BaseModel

from cortex.discovery import (
    FunctionKind,
    Parameter,
    Registry,
    build_spec,
    describe_type,
    discover,
    discover_functions,
    function_kind,
    import_main,
)
from cortex.errors import AppImportError, DiscoveryError

EMPTY = inspect.Parameter.empty


def write(directory: Path, source: str, name: str = "main.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source).lstrip())
    return path


def load(directory: Path, source: str) -> Registry:
    write(directory, source)
    return discover(directory)


def import_failure(directory: Path, source: str) -> str:
    write(directory, source)
    with pytest.raises(AppImportError) as caught:
        import_main(directory)
    return caught.value.message


# Which functions are served


def test_every_kind_of_public_function_is_found(app_dir: Path) -> None:
    registry = load(
        app_dir,
        """
        def plain(): return 1
        async def coroutine(): return 2
        def words():
            yield "a"
        async def async_words():
            yield "b"
        """,
    )
    kinds = {name: spec.kind for name, spec in registry.functions.items()}
    assert kinds == {
        "plain": FunctionKind.SYNC,
        "coroutine": FunctionKind.ASYNC,
        "words": FunctionKind.GENERATOR,
        "async_words": FunctionKind.ASYNC_GENERATOR,
    }
    assert [spec.kind.is_streaming for spec in registry.functions.values()] == [False, False, True, True]


def test_kind_values_read_as_words() -> None:
    assert [kind.value for kind in FunctionKind] == ["sync", "async", "generator", "async generator"]


def test_function_kind_of_plain_callables() -> None:
    async def coroutine() -> None: ...

    assert function_kind(len) is FunctionKind.SYNC
    assert function_kind(coroutine) is FunctionKind.ASYNC


def test_private_and_imported_names_are_not_served(app_dir: Path) -> None:
    write(app_dir, "def shared(): return 'helper'\n", name="helpers.py")
    registry = load(
        app_dir,
        """
        import json
        from os.path import join
        from pathlib import Path
        from helpers import shared

        LIMIT = 3

        class Model:
            def method(self): ...

        def _private(): ...
        def __dunder(): ...
        def predict(): return shared()
        """,
    )
    assert list(registry.functions) == ["predict"]
    assert registry.functions["predict"].func() == "helper"  # the app dir is importable


def test_functions_are_listed_in_definition_order(app_dir: Path) -> None:
    registry = load(app_dir, "def b(): ...\ndef a(): ...\ndef c(): ...\n")
    assert list(registry.functions) == ["b", "a", "c"]


def test_module_without_public_functions_gives_an_empty_registry(app_dir: Path) -> None:
    registry = load(app_dir, "VALUE = 1\ndef _hidden(): ...\n")
    assert registry.functions == {}
    assert registry.module.VALUE == 1


def test_discover_reports_how_long_the_import_took(app_dir: Path) -> None:
    registry = load(app_dir, "import time\ntime.sleep(0.05)\ndef f(): ...\n")
    assert 0.05 <= registry.import_seconds < 5


def test_discover_functions_works_on_an_imported_module(app_dir: Path) -> None:
    write(app_dir, "def f(x: int) -> int: return x\n")
    module = import_main(app_dir)
    specs = discover_functions(module)
    assert list(specs) == ["f"]
    assert specs["f"].func is module.f


# Importing main.py


def test_main_is_registered_so_app_modules_can_import_it(app_dir: Path) -> None:
    write(app_dir, "def name():\n    import main\n    return main.NAME\n", name="helpers.py")
    registry = load(app_dir, "import helpers\nNAME = 'from main'\ndef f(): return helpers.name()\n")
    assert registry.functions["f"].func() == "from main"
    assert sys.modules["main"] is registry.module
    assert sys.path[0] == str(app_dir.resolve())


def test_missing_main_py_is_reported_with_the_directory(app_dir: Path) -> None:
    with pytest.raises(AppImportError) as caught:
        discover(app_dir)
    assert caught.value.message == (
        f"No main.py in {app_dir}. Cortex serves the public functions of main.py."
    )


def test_missing_package_says_where_to_declare_it(app_dir: Path) -> None:
    message = import_failure(app_dir, "import cortex_missing_package_xyz\n")
    assert message == (
        "main.py failed to import: No module named 'cortex_missing_package_xyz'. "
        "Add cortex_missing_package_xyz under [cerebrium.dependencies.pip] in cerebrium.toml "
        "and install it."
    )


def test_missing_subpackage_names_the_top_level_package(app_dir: Path) -> None:
    message = import_failure(app_dir, "import cortex_missing_package_xyz.models.llama\n")
    assert message == (
        "main.py failed to import: No module named 'cortex_missing_package_xyz'. "
        "Add cortex_missing_package_xyz under [cerebrium.dependencies.pip] in cerebrium.toml "
        "and install it."
    )


def test_syntax_error_names_main_py_and_the_line(app_dir: Path) -> None:
    message = import_failure(app_dir, "x = 1\ny = = 2\n")
    assert message.startswith("main.py failed to import: SyntaxError: ")
    assert message.endswith("(main.py, line 2)")


def test_syntax_error_names_its_location_once(app_dir: Path) -> None:
    source = "x = 1\ny = = 2\n"
    with pytest.raises(SyntaxError) as expected:
        compile(source, "main.py", "exec")
    message = import_failure(app_dir, source)
    assert message == f"main.py failed to import: SyntaxError: {expected.value.msg} (main.py, line 2)"


def test_exception_at_import_names_the_type_message_and_line(app_dir: Path) -> None:
    message = import_failure(app_dir, "import os\n\nraise ValueError('boom')\n")
    assert message == "main.py failed to import: ValueError: boom (main.py, line 3)"


def test_exception_at_import_points_at_the_deepest_line_in_main_py(app_dir: Path) -> None:
    source = """
        def load_weights():
            return {}["weights"]

        WEIGHTS = load_weights()
        """
    message = import_failure(app_dir, source)
    assert message == "main.py failed to import: KeyError: 'weights' (main.py, line 2)"


def test_exception_in_a_helper_module_points_at_the_import_in_main_py(app_dir: Path) -> None:
    write(app_dir, "raise RuntimeError('no GPU')\n", name="gpu_helpers.py")
    message = import_failure(app_dir, "import os\nimport gpu_helpers\n")
    assert message == "main.py failed to import: RuntimeError: no GPU (main.py, line 2)"


def test_failed_import_leaves_no_half_imported_main_module(app_dir: Path) -> None:
    import_failure(app_dir, "raise ValueError('boom')\n")
    assert "main" not in sys.modules


def test_system_exit_at_import_is_reported_not_raised(app_dir: Path) -> None:
    message = import_failure(app_dir, "import sys\nsys.exit(3)\n")
    assert message == "main.py failed to import: SystemExit: 3 (main.py, line 2)"


# Parameters


def spec_of(app_dir: Path, source: str, name: str = "f") -> Any:
    return load(app_dir, source).functions[name]


def test_parameters_record_defaults_and_which_are_required(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(prompt: str, n: int = 3, *, temperature=0.7): ...\n")
    assert spec.parameters == (
        Parameter("prompt", str, True, EMPTY),
        Parameter("n", int, False, 3),
        Parameter("temperature", Any, False, 0.7),
    )
    assert spec.parameter_names == ["prompt", "n", "temperature"]


@pytest.mark.parametrize(
    "signature",
    [
        "run_id, prompt: str, n: int = 1",
        "prompt: str, run_id: str, n: int = 1",
        "prompt: str, n: int = 1, run_id=''",
    ],
)
def test_run_id_is_detected_anywhere_and_not_a_parameter(app_dir: Path, signature: str) -> None:
    spec = spec_of(app_dir, f"def f({signature}): ...\n")
    assert spec.takes_run_id
    assert spec.parameter_names == ["prompt", "n"]


def test_function_without_run_id_does_not_take_one(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(prompt: str): ...\n")
    assert not spec.takes_run_id


def test_var_keyword_parameter_accepts_extra_arguments(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(prompt: str, **options): ...\n")
    assert spec.takes_extra_kwargs
    assert spec.parameter_names == ["prompt"]


def test_var_positional_parameter_is_ignored(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(prompt: str, *rest): ...\n")
    assert spec.parameter_names == ["prompt"]
    assert not spec.takes_extra_kwargs


def test_positional_only_parameters_are_parameters_passed_in_order(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(text: str, sep: str = ' ', /, upper: bool = False): ...\n")
    assert spec.parameter_names == ["text", "sep", "upper"]
    assert spec.positional_only == (("text", inspect.Parameter.empty), ("sep", " "))


def test_run_id_cannot_be_positional_only(app_dir: Path) -> None:
    write(app_dir, "def f(run_id, /, text=''): ...\n")
    with pytest.raises(DiscoveryError) as caught:
        discover(app_dir)
    assert caught.value.message == "f(): run_id cannot be positional-only; Cortex passes it by keyword."


def test_positional_only_parameters_may_sit_beside_run_id(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(text, /, run_id): ...\n")
    assert spec.takes_run_id
    assert spec.positional_only == (("text", inspect.Parameter.empty),)


def test_docstring_and_return_annotation_are_kept(app_dir: Path) -> None:
    spec = spec_of(app_dir, 'def f(x: int) -> list[int]:\n    """Repeat x.\n\n    Twice."""\n')
    assert spec.doc == "Repeat x.\n\nTwice."
    assert spec.return_annotation == list[int]


def test_unannotated_function_has_any_types_and_empty_doc(app_dir: Path) -> None:
    spec = spec_of(app_dir, "def f(x): ...\n")
    assert spec.parameters == (Parameter("x", Any, True, EMPTY),)
    assert spec.return_annotation is Any
    assert spec.doc == ""


def test_string_annotations_are_resolved_with_future_import(app_dir: Path) -> None:
    spec = spec_of(
        app_dir,
        """
        from __future__ import annotations
        from typing import Optional
        from pydantic import BaseModel

        class Options(BaseModel):
            temperature: float = 0.7

        def f(prompt: str, tags: list[str], opts: Options, limit: Optional[int] = None) -> dict[str, int]:
            ...
        """,
    )
    options = spec.func.__globals__["Options"]
    assert [p.annotation for p in spec.parameters] == [str, list[str], options, int | None]
    assert spec.return_annotation == dict[str, int]
    assert [p.type_name for p in spec.parameters] == ["str", "list[str]", "Options", "int | None"]


def test_pydantic_model_parameter_validates_into_the_model(app_dir: Path) -> None:
    spec = spec_of(
        app_dir,
        """
        from pydantic import BaseModel

        class Item(BaseModel):
            name: str
            count: int = 1

        def f(item: Item): ...
        """,
    )
    arguments = spec.arguments.validate_python({"item": {"name": "pen"}})
    assert type(arguments["item"]).__name__ == "Item"
    assert arguments["item"].model_dump() == {"name": "pen", "count": 1}


def test_unresolvable_forward_reference_leaves_that_parameter_unchecked(app_dir: Path) -> None:
    spec = spec_of(
        app_dir,
        """
        from __future__ import annotations
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import numpy

        def f(array: numpy.ndarray): ...
        """,
    )
    assert spec.parameters == (Parameter("array", Any, True, EMPTY),)
    assert spec.arguments.validate_python({"array": [1, 2]}) == {"array": [1, 2]}


# describe_type


class Options(BaseModel):
    temperature: float


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (str, "str"),
        (int, "int"),
        (bytes, "bytes"),
        (list, "list"),
        (Options, "Options"),
        (list[int], "list[int]"),
        (dict[str, list[int]], "dict[str, list[int]]"),
        (tuple[int, ...], "tuple[int, ...]"),
        (int | None, "int | None"),
        (str | int, "str | int"),
        (Optional[int], "int | None"),  # noqa: UP045 - users still write it; it reads as the modern form
        (Union[int, str], "int | str"),  # noqa: UP007 - likewise
        (Literal["a", "b"], "Literal['a', 'b']"),
        (Any, "any"),
        (EMPTY, "any"),
    ],
)
def test_describe_type_reads_like_the_hint(annotation: Any, expected: str) -> None:
    assert describe_type(annotation) == expected


def test_describe_type_of_annotated_keeps_the_metadata() -> None:
    assert describe_type(Annotated[int, "a note"]) == "int"  # constraints belong in the detail


def test_parameter_type_name_uses_describe_type() -> None:
    assert Parameter("tags", list[str], True, EMPTY).type_name == "list[str]"


def test_build_spec_works_on_any_function() -> None:
    def local(a: int, b: str = "x", **kw: Any) -> None: ...

    spec = build_spec("renamed", local)
    assert (spec.name, spec.func, spec.kind) == ("renamed", local, FunctionKind.SYNC)
    assert spec.parameter_names == ["a", "b"]
    assert spec.takes_extra_kwargs


def test_spec_is_frozen() -> None:
    spec = build_spec("f", lambda: None)
    with pytest.raises(AttributeError):
        spec.name = "g"
