"""Unit-test fixtures: a scratch app directory whose import of main.py does not leak."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory for main.py; sys.path and sys.modules are put back as they were afterwards.

    import_main registers the module as sys.modules["main"] and puts its directory on sys.path,
    so without this one test's main.py (or helpers.py) would be found by the next.
    """
    saved_path = list(sys.path)
    saved_modules = dict(sys.modules)
    yield tmp_path
    sys.path[:] = saved_path
    for name in set(sys.modules) - set(saved_modules):
        del sys.modules[name]
    sys.modules.update(saved_modules)
