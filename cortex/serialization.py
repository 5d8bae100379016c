"""JSON out: one encoder for responses, stream events and stored results."""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json


def encode_json(value: Any) -> bytes:
    """Compact JSON of JSON types, pydantic models and dataclasses.

    NaN and infinities become null, since JSON has no spelling for them. Anything else raises
    pydantic_core.PydanticSerializationError naming the type.
    """
    return to_json(value, inf_nan_mode="null")
