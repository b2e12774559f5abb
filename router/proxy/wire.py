"""The gateway's wire helpers: fast JSON, the SSE usage meter and token estimates.

``jdumps`` / ``jloads`` use ``orjson`` when installed (the stdlib otherwise);
:class:`SSEMeter` reads a stream's usage (or counts its content) as the chunks pass
unchanged; the estimates size a prompt before the call (spend holds) and a completion
whose provider reported no usage.
"""

from __future__ import annotations

import json
from typing import Any

try:  # optional speed-up; the stdlib is the fallback
    import orjson

    def jdumps(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)

    jloads = orjson.loads
except ImportError:  # pragma: no cover

    def jdumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    jloads = json.loads


class SSEMeter:
    """Reads the usage (or counts the content) of SSE chunks as they pass, unchanged."""

    def __init__(self, prompt_tokens_estimate: int) -> None:
        self._buf = b""
        self.prompt_estimate = prompt_tokens_estimate
        self.reported: tuple[int, int] | None = None
        self.content_chars = 0
        self.estimated = True

    def feed(self, data: bytes) -> None:
        self._buf += data
        while b"\n\n" in self._buf:
            event, self._buf = self._buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if not payload or payload == b"[DONE]":
                    continue
                try:
                    obj = jloads(payload)
                except ValueError:
                    continue
                self._read(obj)

    def _read(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.reported = (int(usage.get("prompt_tokens") or 0),
                             int(usage.get("completion_tokens") or 0))
        for choice in obj.get("choices") or ():
            delta = (choice.get("delta") or {}) if isinstance(choice, dict) else {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str):
                self.content_chars += len(content)

    def usage(self) -> tuple[int, int]:
        if self.reported is not None:
            self.estimated = False
            return self.reported
        return self.prompt_estimate, estimate_tokens_chars(self.content_chars)


def estimate_tokens_chars(n_chars: int) -> int:
    """Rough token count of ``n_chars`` characters of English text (about 4 per token)."""
    return (n_chars + 3) // 4


def estimate_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Conservative prompt size: characters / 3 plus a few tokens per message."""
    n = 0
    for m in messages:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            n += len(c)
        elif c is not None:
            n += len(json.dumps(c))
    return n // 3 + 4 * len(messages) + 3
