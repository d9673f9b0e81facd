"""Request models: one input line becomes a validated Request or a RequestError.

Two line shapes are accepted:
- OpenAI Batch API lines: {"custom_id", "method": "POST", "url", "body"} with url
  /v1/chat/completions, /v1/completions or /v1/embeddings;
- shorthand lines: {"messages": [...]}, {"prompt": "..."} or {"input": ...}, with optional
  custom_id (else "line-N") and body fields beside them.

Bodies are pydantic models with extra="forbid": a field vbatch would silently ignore is an
error record naming the field, never a surprise in the results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
EMBEDDINGS_URL = "/v1/embeddings"
SUPPORTED_URLS = (CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL)

Endpoint = Literal["chat", "completions", "embeddings"]
ENDPOINT_OF_URL: dict[str, Endpoint] = {
    CHAT_URL: "chat",
    COMPLETIONS_URL: "completions",
    EMBEDDINGS_URL: "embeddings",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class JsonSchemaFormat(_Strict):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingFields(_Strict):
    """Fields shared by chat and completions bodies, passed on to vLLM's SamplingParams."""

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    # vLLM extras the OpenAI server also accepts.
    ignore_eos: bool | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    # Accepted and without effect on a batch: they change nothing in the result.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    stream: Literal[False] | None = None


class ChatBody(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None


class CompletionBody(_SamplingFields):
    prompt: str | Annotated[list[int], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None


class EmbeddingBody(_Strict):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


Body = Union[ChatBody, CompletionBody, EmbeddingBody]
BODY_MODEL: dict[Endpoint, type[BaseModel]] = {
    "chat": ChatBody,
    "completions": CompletionBody,
    "embeddings": EmbeddingBody,
}


@dataclass(slots=True)
class Request:
    line: int
    custom_id: str
    endpoint: Endpoint
    body: Body


@dataclass(slots=True)
class RequestError:
    """A line that cannot run. `code` is machine-readable, `message` says what to fix."""

    line: int
    custom_id: str | None
    code: str
    message: str


def parse_request(line: int, data: dict[str, Any]) -> Request | RequestError:
    """Validate one decoded input object (batch line or shorthand)."""
    custom_id = data.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        return RequestError(line, None, "invalid_custom_id", "custom_id must be a string")
    if custom_id == "":
        return RequestError(line, None, "invalid_custom_id", "custom_id must not be empty")

    if "body" in data or "url" in data or "method" in data:
        return _parse_batch_line(line, custom_id, data)
    return _parse_shorthand(line, custom_id, data)


def _parse_batch_line(line: int, custom_id: str | None, data: dict[str, Any]) -> Request | RequestError:
    if custom_id is None:
        return RequestError(
            line, None, "missing_custom_id",
            'batch lines need a "custom_id" (a unique string per line)',
        )
    unknown = set(data) - {"custom_id", "method", "url", "body"}
    if unknown:
        return RequestError(
            line, custom_id, "invalid_request",
            f"unknown top-level field(s) {sorted(unknown)}; a batch line has custom_id, method, url, body",
        )
    method = data.get("method", "POST")
    if method != "POST":
        return RequestError(line, custom_id, "invalid_method", f'method must be "POST", not {method!r}')
    url = data.get("url")
    endpoint = ENDPOINT_OF_URL.get(url) if isinstance(url, str) else None
    if endpoint is None:
        return RequestError(
            line, custom_id, "invalid_url",
            f"url {url!r} is not supported; use one of {', '.join(SUPPORTED_URLS)}",
        )
    body = data.get("body")
    if not isinstance(body, dict):
        return RequestError(line, custom_id, "invalid_body", '"body" must be a JSON object')
    return _validated(line, custom_id, endpoint, body)


def _parse_shorthand(line: int, custom_id: str | None, data: dict[str, Any]) -> Request | RequestError:
    if "messages" in data:
        endpoint: Endpoint = "chat"
    elif "prompt" in data:
        endpoint = "completions"
    elif "input" in data:
        endpoint = "embeddings"
    else:
        return RequestError(
            line, custom_id, "invalid_request",
            'a line needs "messages" (chat), "prompt" (completion), "input" (embedding), '
            'or the batch form {"custom_id", "method", "url", "body"}',
        )
    body = {key: value for key, value in data.items() if key != "custom_id"}
    return _validated(line, custom_id or f"line-{line}", endpoint, body)


def _validated(line: int, custom_id: str, endpoint: Endpoint, body: dict[str, Any]) -> Request | RequestError:
    try:
        parsed = BODY_MODEL[endpoint].model_validate(body)
    except ValidationError as exc:
        return RequestError(line, custom_id, "invalid_body", describe_validation_error(exc))
    return Request(line, custom_id, endpoint, parsed)  # type: ignore[arg-type]


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's errors as one line per problem: `body.messages.0.role: Input should be ...`."""
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(loc) for loc in err["loc"] if not _is_union_tag(loc))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (not supported by vbatch; remove it)"
        parts.append(f"body.{where}: {message}" if where else message)
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def _is_union_tag(loc: Any) -> bool:
    """pydantic names union branches in error locations (`str`, `list[TextPart]`); hide them."""
    return isinstance(loc, str) and ("[" in loc or loc in {"str", "int", "float", "bool"})
