"""The opaque cursor of a runs listing, the same for every store: (created_at, position) (pure)."""

from __future__ import annotations

import base64

from cortex.errors import BadRequestError


def encode_cursor(created_at: float, position: int) -> str:
    """The cursor of the page after the run created at `created_at` with submission `position`."""
    raw = f"{created_at!r}:{position}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """(created_at, position) of a cursor; BadRequestError for one a store did not hand out."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, position = raw.split(":")
        return float(created_at), int(position)
    except ValueError as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors too
        raise BadRequestError(
            f"Invalid cursor {cursor!r}: pass the next_cursor of a previous page, or omit it."
        ) from exc
