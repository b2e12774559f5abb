"""The encoder's error type and input check, shared by every encoder module."""

from __future__ import annotations

from collections.abc import Sequence


class EncoderError(ValueError):
    """Bad encoder configuration or input (unknown model, backend, text view, texts)."""


def text_list(texts: Sequence[str], one_string_message: str) -> list[str]:
    """``texts`` as a list, raising EncoderError for a bare string or a non-string item."""
    if isinstance(texts, str):
        raise EncoderError(one_string_message)
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise EncoderError(f"text {i} is {type(t).__name__}, not a string")
    return texts
