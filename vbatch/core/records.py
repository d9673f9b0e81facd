"""OpenAI batch output records: the response bodies of the three endpoints, and error lines.

Ids are derived from the input's digest and line number, so a resumed run writes exactly
what an uninterrupted one would (only `created` differs).
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
from typing import Any

from vbatch.core.engine_io import Choice, EngineResult, TokenLogprob
from vbatch.core.requests import Request, RequestError


def stable_id(run_key: str, line: int, length: int = 24) -> str:
    return hashlib.blake2b(f"{run_key}:{line}".encode(), digest_size=16).hexdigest()[:length]


def result_record(run_key: str, request: Request, parts: list[EngineResult], model: str) -> dict[str, Any]:
    """`parts`: one engine result per prompt (several only for embeddings of a list input)."""
    request_id = stable_id(run_key, request.line)
    if request.endpoint == "embeddings":
        body = _embedding_body(request, parts, model)
    elif request.endpoint == "chat":
        body = _generation_body("chat.completion", "chatcmpl", request_id, parts[0], model, _chat_choice)
    else:
        body = _generation_body("text_completion", "cmpl", request_id, parts[0], model, _completion_choice)
    return {
        "id": f"batch_req_{request_id}",
        "custom_id": request.custom_id,
        "response": {"status_code": 200, "request_id": request_id, "body": body},
        "error": None,
    }


def error_record(run_key: str, error: RequestError) -> dict[str, Any]:
    return {
        "id": f"batch_req_{stable_id(run_key, error.line)}",
        "custom_id": error.custom_id,
        "response": None,
        "error": {"code": error.code, "message": f"line {error.line}: {error.message}"},
        "line": error.line,
    }


def batch_usage(input_tokens: int, cached_tokens: int, output_tokens: int, reasoning_tokens: int) -> dict[str, Any]:
    """The `usage` of an OpenAI Batch object: a whole batch's tokens (the server's and a local
    helper-library batch's alike)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _usage(result: EngineResult, completion_tokens: int | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": result.prompt_tokens}
    if completion_tokens is not None:
        usage["completion_tokens"] = completion_tokens
    usage["total_tokens"] = result.prompt_tokens + (completion_tokens or 0)
    usage["prompt_tokens_details"] = {"cached_tokens": result.cached_tokens}
    if result.choices and result.choices[0].harmony is not None:  # a harmony model: every choice is split
        reasoning = sum(choice.harmony.reasoning_tokens for choice in result.choices if choice.harmony is not None)
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return usage


def _completion_tokens(result: EngineResult) -> int:
    return sum(len(choice.token_ids) for choice in result.choices)


def _chat_choice(choice: Choice) -> dict[str, Any]:
    split = choice.harmony  # vLLM's names: a harmony answer in content, its reasoning beside it
    message = (
        {"role": "assistant", "content": choice.text}
        if split is None
        else {"role": "assistant", "content": split.content, "reasoning_content": split.reasoning}
    )
    return {
        "index": choice.index,
        "message": message,
        "logprobs": _chat_logprobs(choice) if choice.logprobs is not None else None,
        "finish_reason": choice.finish_reason,
    }


def _completion_choice(choice: Choice) -> dict[str, Any]:
    return {
        "index": choice.index,
        "text": choice.text,
        "logprobs": _completion_logprobs(choice) if choice.logprobs is not None else None,
        "finish_reason": choice.finish_reason,
    }


def _generation_body(
    object_name: str, id_prefix: str, request_id: str, result: EngineResult, model: str, render_choice
) -> dict[str, Any]:
    return {
        "id": f"{id_prefix}-{request_id}",
        "object": object_name,
        "created": int(time.time()),
        "model": model,
        "choices": [render_choice(choice) for choice in result.choices],
        "usage": _usage(result, _completion_tokens(result)),
    }


def _embedding_body(request: Request, parts: list[EngineResult], model: str) -> dict[str, Any]:
    as_base64 = request.body.encoding_format == "base64"  # type: ignore[union-attr]
    data = [
        {"object": "embedding", "index": i, "embedding": _encode_vector(part.embedding or [], as_base64)}
        for i, part in enumerate(parts)
    ]
    prompt_tokens = sum(part.prompt_tokens for part in parts)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def _encode_vector(vector: list[float], as_base64: bool) -> list[float] | str:
    """base64 is little-endian float32, what the OpenAI client decodes."""
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def _chat_logprobs(choice: Choice) -> dict[str, Any]:
    def entry(token: str, logprob: float, raw: bytes) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(raw)}

    content = []
    for tok in choice.logprobs or []:
        item = entry(tok.token, tok.logprob, tok.token_bytes)
        item["top_logprobs"] = [entry(t, lp, raw) for t, lp, raw in tok.top]
        content.append(item)
    return {"content": content}


def _completion_logprobs(choice: Choice) -> dict[str, Any]:
    tokens: list[TokenLogprob] = choice.logprobs or []
    offsets, offset = [], 0
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{token: lp for token, lp, _ in t.top} for t in tokens],
        "text_offset": offsets,
    }
