"""`cortex init`: a new app folder from one of the templates shipped with cortex."""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from cortex.config import DeploymentConfig
from cortex.errors import ScaffoldError

# A symlink to the top-level templates/ in a checkout; real files in an installed wheel.
TEMPLATES_DIR = Path(__file__).parent / "templates"
DEFAULT_TEMPLATE = "basic"
NAME_PLACEHOLDER = "{name}"
FILLED_IN = ("cerebrium.toml", "README.md")  # main.py is copied as is: its braces are Python


@dataclass(frozen=True)
class Template:
    name: str
    path: Path
    description: str  # the first line of main.py's docstring


def list_templates(root: Path = TEMPLATES_DIR) -> list[Template]:
    if not root.is_dir():
        raise ScaffoldError(f"No templates at {root}: this cortex install is incomplete; reinstall it.")
    return [
        Template(path.name, path, _describe(path / "main.py"))
        for path in sorted(root.iterdir())
        if (path / "main.py").is_file()
    ]


def _describe(main: Path) -> str:
    docstring = ast.get_docstring(ast.parse(main.read_text(encoding="utf-8"))) or ""
    return docstring.splitlines()[0] if docstring else ""


def check_app_name(name: str) -> None:
    """The same rule as [cerebrium.deployment] name: it becomes part of every URL."""
    try:
        DeploymentConfig(name=name)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
        raise ScaffoldError(f"'{name}' cannot be an app name: it {reason}. Try e.g. my-app.") from None


def scaffold(name: str, template: str, parent: Path, root: Path = TEMPLATES_DIR) -> Path:
    """Copy the template to parent/name and fill in the app name; the new folder is returned."""
    check_app_name(name)
    chosen = _find_template(template, root)
    target = parent / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(
            f"{target} already exists and is not empty. Choose another name, or remove it first."
        )
    shutil.copytree(chosen.path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    for filename in FILLED_IN:
        path = target / filename
        if path.is_file():
            path.write_text(
                path.read_text(encoding="utf-8").replace(NAME_PLACEHOLDER, name), encoding="utf-8"
            )
    return target


def _find_template(template: str, root: Path) -> Template:
    templates = {t.name: t for t in list_templates(root)}
    if template not in templates:
        raise ScaffoldError(
            f"No template '{template}'. Templates: {', '.join(templates)} "
            "(cortex init --list describes them)."
        )
    return templates[template]


def describe_templates(templates: list[Template]) -> str:
    width = max(len(t.name) for t in templates)
    return "\n".join(f"{t.name.ljust(width)}  {t.description}" for t in templates)


def next_steps(target: Path) -> str:
    files = ", ".join(sorted(p.name for p in target.iterdir()))
    return (
        f"Created {target.name}/ ({files}).\n"
        f"Serve it:  cortex serve {target.name}\n"
        f"{target.name}/README.md has a curl and a Python call to paste once it is serving."
    )
