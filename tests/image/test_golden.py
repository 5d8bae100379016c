"""Golden files: each case's cerebrium.toml renders exactly its expected Dockerfile, .dockerignore
and k8s.yaml. Regenerate them with `UPDATE_GOLDEN=1 pytest tests/image` and review the diff."""

from __future__ import annotations

import os

import pytest

from tests.image.rendering import CASES, GOLDEN, OUTPUTS, render_case

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def test_every_variant_has_a_golden_case() -> None:
    assert set(CASES) == {
        "minimal",
        "python312_full",
        "uv_conda",
        "gpu",
        "custom_runtime",
        "dockerfile_path",
        "dependency_paths",
    }


@pytest.mark.parametrize("case", CASES)
def test_build_output_matches_golden_files(case: str) -> None:
    rendered = render_case(case)
    for name in OUTPUTS:
        path = GOLDEN / case / name
        text = rendered[name]
        if UPDATE:
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
            continue
        if text is None:
            assert not path.exists(), f"{case} must not produce {name}"
            continue
        assert path.is_file(), f"missing golden file {path}; run UPDATE_GOLDEN=1 pytest tests/image"
        assert text == path.read_text(), f"{path} differs; run UPDATE_GOLDEN=1 pytest tests/image"
