"""OpenAI wire-format request/response models and the OpenAI-style error body.

Requests keep unknown fields (``extra="allow"``) so that OpenAI parameters this module does
not name (tools, response_format, seed, ...) reach the backend unchanged; the named ones are
range-checked so a bad value is a 400 here rather than an upstream failure.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions`` body.

    ``model`` is ``router-auto``, ``router-<policy>[-<lam>]`` or a backend's own name.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: str | list[str] | None = None
    user: str | None = None
    seed: int | None = None
    #: passed to the backend unchanged (typed here so clients and fuzzers see them)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def routing_text(self) -> str:
        """The text the router embeds: the last user message (all text if there is none)."""
        return routing_text([{"role": m.role, "content": m.content} for m in self.messages])


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return ""


def routing_text(messages: list[dict[str, Any]]) -> str:
    """The last user message's text of raw OpenAI messages (all text if there is none)."""
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return content_text(msg.get("content"))
    return "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, dict))


class RouterCandidate(BaseModel):
    model: str
    score: float | None = None
    quality: float | None = None
    cost: float | None = None


class RouterInfo(BaseModel):
    """The ``router`` field added to every non-streaming completion."""

    model: str
    request_id: str
    cost: float
    policy: str | None = None
    lam: float | None = None
    budget: float | None = None
    candidates: list[RouterCandidate] = Field(default_factory=list)
    attempts: list[dict[str, Any]] = Field(default_factory=list)
    replay: dict[str, Any] | None = None


class Usage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionResponse(BaseModel):
    """A chat completion (the backend's body) plus ``router``; documents the response."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage | None = None
    router: RouterInfo


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=128)
    reward: float = Field(ge=0, le=1, allow_inf_nan=False)


class FeedbackResponse(BaseModel):
    request_id: str
    reward: float
    model: str | None
    #: True when an online policy learned from it
    updated: bool
    #: True (answered 202) when the request is not known here yet (during or just after a
    #: Redis outage another replica may still hold it): kept and applied once it is found
    queued: bool = False


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "costroute"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- errors -------------------------------------------------------------------------

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "api_error",
}


class APIError(Exception):
    """An error answered with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or ERROR_TYPES.get(status, "api_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}
        }


def validation_error_to_api(exc: ValidationError, what: str = "request body") -> APIError:
    """The first pydantic error as a 400 naming the parameter."""
    errors = exc.errors()
    err = errors[0]
    if err["type"] == "json_invalid":
        return APIError(400, f"{what} is not valid JSON: {err['msg']}", code="invalid_json")
    loc = [p for p in err["loc"] if not str(p).startswith("function-")]
    # union members add their type name to the location; keep the field path only
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif str(p) in ("str", "list[dict[str,any]]", "list[str]", "none") or "[" in str(p):
            continue
        else:
            parts.append(("." if parts else "") + str(p))
    param = "".join(parts) or None
    msg = err["msg"]
    if err["type"] == "missing":
        msg = "is required"
    elif err["type"] == "extra_forbidden":
        msg = "is not a recognised parameter"
    text = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(400, f"Invalid {what}: {text}", code="invalid_parameter", param=param)
