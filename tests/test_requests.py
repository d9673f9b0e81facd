"""Request parsing: every accepted shape, and one clear error for every bad one."""

import pytest

from vbatch.requests import ChatBody, CompletionBody, EmbeddingBody, Request, RequestError, parse_request


def batch_line(url="/v1/chat/completions", body=None, **extra):
    line = {"custom_id": "a", "method": "POST", "url": url,
            "body": body if body is not None else {"messages": [{"role": "user", "content": "hi"}]}}
    line.update(extra)
    return line


def test_batch_chat_line():
    parsed = parse_request(3, batch_line(body={
        "model": "m", "messages": [{"role": "system", "content": "s"},
                                   {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_tokens": 5, "temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
        "ignore_eos": True, "logprobs": True, "top_logprobs": 2}))
    assert isinstance(parsed, Request)
    assert parsed.endpoint == "chat" and parsed.line == 3 and parsed.custom_id == "a"
    assert isinstance(parsed.body, ChatBody)
    assert parsed.body.messages[1].text() == "ab"
    assert parsed.body.response_format.json_schema.schema_ == {"type": "object"}


def test_batch_completion_and_embedding_lines():
    comp = parse_request(1, batch_line("/v1/completions", {"prompt": "x", "max_tokens": 3, "logprobs": 2}))
    assert isinstance(comp.body, CompletionBody) and comp.endpoint == "completions"
    emb = parse_request(2, batch_line("/v1/embeddings", {"input": ["a", "b"], "encoding_format": "base64"}))
    assert isinstance(emb.body, EmbeddingBody) and emb.body.input == ["a", "b"]


@pytest.mark.parametrize("data,endpoint", [
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, "chat"),
    ({"prompt": "hello"}, "completions"),
    ({"input": "hello"}, "embeddings"),
])
def test_shorthand_lines_get_line_custom_ids(data, endpoint):
    parsed = parse_request(7, data)
    assert isinstance(parsed, Request)
    assert parsed.endpoint == endpoint and parsed.custom_id == "line-7"
    assert parse_request(7, {**data, "custom_id": "x"}).custom_id == "x"


@pytest.mark.parametrize("data,code,words", [
    ({"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}, "missing_custom_id", "custom_id"),
    (batch_line(url="/v1/responses"), "invalid_url", "/v1/responses"),
    (batch_line(method="GET"), "invalid_method", "POST"),
    (batch_line(body=[1]), "invalid_body", "JSON object"),
    (batch_line(body={"messages": [{"role": "user", "content": "x"}], "tools": []}), "invalid_body", "body.tools: unknown field"),
    (batch_line(body={"messages": [{"role": "robot", "content": "x"}]}), "invalid_body", "body.messages.0.role"),
    (batch_line(body={"messages": []}), "invalid_body", "body.messages"),
    (batch_line(body={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}), "invalid_body", "body.max_tokens"),
    (batch_line(body={"messages": [{"role": "user", "content": "x"}], "stream": True}), "invalid_body", "body.stream"),
    (batch_line(extra_field=1), "invalid_request", "extra_field"),
    ({"custom_id": 5, "prompt": "x"}, "invalid_custom_id", "string"),
    ({"custom_id": "", "prompt": "x"}, "invalid_custom_id", "empty"),
    ({"text": "x"}, "invalid_request", '"messages"'),
])
def test_bad_lines_become_one_error_naming_the_problem(data, code, words):
    parsed = parse_request(9, data)
    assert isinstance(parsed, RequestError)
    assert parsed.code == code and parsed.line == 9
    assert words in parsed.message
