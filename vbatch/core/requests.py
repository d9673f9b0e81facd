"""Request models: one input line becomes a validated Request or a RequestError.

Two line shapes are accepted:
- OpenAI Batch API lines: {"custom_id", "method": "POST", "url", "body"} with url
  /v1/chat/completions, /v1/completions or /v1/embeddings;
- shorthand lines: {"messages": [...]}, {"prompt": "..."} or {"input": ...}, with optional
  custom_id (else "line-N") and body fields beside them.

Bodies are pydantic models with extra="forbid": a field vbatch would silently ignore is an
error record naming the field, never a surprise in the results. They are strict, and every
value is range-checked here (OpenAI's ranges where OpenAI has the field, vLLM's SamplingParams
checks for vLLM's extras): a request the engine would refuse is this line's `invalid_body`
record naming the field, never an engine error with a Python exception's text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

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


def _whole_number(value: Any) -> Any:
    """JSON has one number type, so 3.0 is the integer 3 (pandas writes a nullable integer
    column as float64); 3.5, "3" and true stay errors."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


#: An integer field: strict (no strings, no booleans), but a whole float such as 3.0 counts.
Int = Annotated[int, BeforeValidator(_whole_number)]

#: Token ids: what the renderer packs as int32 (the vocabulary bound is checked at render time,
#: where the tokenizer is known).
TokenId = Annotated[Int, Field(ge=0, le=2**31 - 1)]
TokenIds = Annotated[list[TokenId], Field(min_length=1)]
#: A stop sequence: the empty string would stop before the first token (vLLM refuses it).
StopString = Annotated[str, Field(min_length=1)]
#: vLLM only asks for a finite repetition_penalty > 0, but it divides or multiplies float32
#: logits by it: 1e308 is infinite there (and 0 * inf is NaN). Past ~100 a seen token is as good
#: as banned already, so larger values change nothing but the risk.
REPETITION_PENALTY_MAX = 100


class _Strict(BaseModel):
    """Unknown fields are errors; types are strict as in OpenAI's API ("1", true and 1.5 are not
    integers, true is not a number; an integer is still a number); floats must be finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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

    @field_validator("schema_")
    @classmethod
    def _valid_json_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """A broken schema is the request's fault, not the engine's. Checked with `jsonschema`
        where it is installed (vLLM's structured-output backends bring it); not a dependency."""
        try:
            from jsonschema.exceptions import SchemaError
            from jsonschema.validators import validator_for
        except ImportError:
            return schema
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as exc:
            where = "".join(f"[{part!r}]" for part in exc.path)
            raise PydanticCustomError(
                "json_schema",
                "not a valid JSON Schema: {problem}",
                {"problem": f"{exc.message} at schema{where}"},
            ) from None
        return schema


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _SamplingFields(_Strict):
    """Fields shared by chat and completions bodies, passed on to vLLM's SamplingParams."""

    model: str | None = None
    max_tokens: Annotated[Int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    n: Annotated[Int, Field(ge=1, le=128)] = 1
    stop: StopString | Annotated[list[StopString], Field(max_length=4)] | None = None
    seed: Annotated[Int, Field(ge=-(2**63), le=2**63 - 1)] | None = None
    # vLLM extras the OpenAI server also accepts, with SamplingParams' own bounds.
    top_k: Annotated[Int, Field(ge=-1, le=2**31 - 1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=REPETITION_PENALTY_MAX)] | None = None
    ignore_eos: bool | None = None
    min_tokens: Annotated[Int, Field(ge=0)] | None = None
    # Accepted and without effect on a batch: they change nothing in the result.
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    stream: Literal[False] | None = None

    @model_validator(mode="after")
    def _min_tokens_within_max_tokens(self) -> _SamplingFields:
        """vLLM refuses min_tokens above max_tokens; say so naming the field (a model validator's
        own errors have no place, hence the ValidationError with one)."""
        name = "max_completion_tokens" if getattr(self, "max_completion_tokens", None) else "max_tokens"
        limit = getattr(self, name)
        if self.min_tokens is not None and limit is not None and self.min_tokens > limit:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(
                        type=PydanticCustomError(
                            "min_tokens", "must be at most {name} ({limit})", {"name": name, "limit": limit}
                        ),
                        loc=("min_tokens",),
                        input=self.min_tokens,
                    )
                ],
            )
        return self


class ChatBody(_SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[Int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    #: How long a reasoning model (gpt-oss) thinks; given to the chat template, as vLLM does.
    reasoning_effort: Literal["low", "medium", "high"] | None = None


class CompletionBody(_SamplingFields):
    prompt: str | TokenIds
    logprobs: Annotated[Int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None


class EmbeddingBody(_Strict):
    model: str | None = None
    input: str | list[str] | TokenIds | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


Body = ChatBody | CompletionBody | EmbeddingBody
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
    #: The endpoint and body, custom_id aside, hashed: equal for lines that ask the same thing
    #: (core.dedup); empty for requests not parsed from a line.
    digest: bytes = b""


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
            line,
            None,
            "missing_custom_id",
            'batch lines need a "custom_id" (a unique string per line)',
        )
    unknown = set(data) - {"custom_id", "method", "url", "body"}
    if unknown:
        return RequestError(
            line,
            custom_id,
            "invalid_request",
            f"unknown top-level field(s) {sorted(unknown)}; a batch line has custom_id, method, url, body",
        )
    method = data.get("method", "POST")
    if method != "POST":
        return RequestError(line, custom_id, "invalid_method", f'method must be "POST", not {method!r}')
    url = data.get("url")
    endpoint = ENDPOINT_OF_URL.get(url) if isinstance(url, str) else None
    if endpoint is None:
        return RequestError(
            line,
            custom_id,
            "invalid_url",
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
            line,
            custom_id,
            "invalid_request",
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
    return Request(line, custom_id, endpoint, parsed, _digest(endpoint, body))  # type: ignore[arg-type]


def _digest(endpoint: Endpoint, body: dict[str, Any]) -> bytes:
    try:
        canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits: such a line is simply never deduplicated
        return b""
    return hashlib.blake2b(endpoint.encode() + canonical, digest_size=16).digest()


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's errors as one line per place: `body.messages.0.role: Input should be ...`."""
    by_place: dict[str, list[str]] = {}
    for err in _furthest_branches(exc.errors(include_url=False)):
        where = ".".join(str(loc) for loc in err["loc"] if not _is_union_tag(loc))
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (not supported by vbatch; remove it)"
        by_place.setdefault(where, []).append(message)
    parts = [
        f"body.{where}: {_either(messages)}" if where else _either(messages) for where, messages in by_place.items()
    ]
    more = len(parts) - 5
    return "; ".join(parts[:5]) + (f"; and {more} more" if more > 0 else "")


def _furthest_branches(errors: list[ErrorDetails]) -> list[ErrorDetails]:
    """A value that fits no branch of a union gets errors from every branch. Keep those of the
    branches that got furthest (a wrong value beats a wrong type, then the deeper error wins),
    so `[1, -5]` as a prompt is "prompt.1: should be >= 0", not also "should be a string"."""
    branches: dict[tuple, dict[Any, list[ErrorDetails]]] = {}
    for err in errors:
        loc = err["loc"]
        tag = next((i for i, part in enumerate(loc) if _is_union_tag(part)), None)
        if tag is not None:
            branches.setdefault(loc[:tag], {}).setdefault(loc[tag], []).append(err)

    def progress(branch: list[ErrorDetails]) -> tuple[bool, int]:
        return any(not e["type"].endswith("_type") for e in branch), max(len(e["loc"]) for e in branch)

    dropped: set[int] = set()
    for union in branches.values():
        best = max(map(progress, union.values()))
        dropped.update(id(e) for branch in union.values() if progress(branch) < best for e in branch)
    return [err for err in errors if id(err) not in dropped]


def _either(messages: list[str]) -> str:
    """What one place should be, said once: "Input should be a valid string or a valid list"."""
    unique = list(dict.fromkeys(messages))
    lead = "Input should be "
    if len(unique) > 1 and all(m.startswith(lead) for m in unique):
        return lead + " or ".join(m.removeprefix(lead) for m in unique)
    return "; ".join(unique)


def _is_union_tag(loc: Any) -> bool:
    """pydantic names union branches in error locations (`str`, `list[TextPart]`,
    `constrained-int`); hide them."""
    return isinstance(loc, str) and (
        "[" in loc or loc.startswith("constrained-") or loc in {"str", "int", "float", "bool"}
    )
