"""Request parsing: every accepted shape, and one clear error for every bad one."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vbatch.core.requests import (
    ChatBody,
    CompletionBody,
    EmbeddingBody,
    Request,
    RequestError,
    parse_request,
)
from vbatch.storage.readers import open_input


def batch_line(url="/v1/chat/completions", body=None, **extra):
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": url,
        "body": body if body is not None else {"messages": [{"role": "user", "content": "hi"}]},
    }
    line.update(extra)
    return line


def test_batch_chat_line():
    parsed = parse_request(
        3,
        batch_line(
            body={
                "model": "m",
                "messages": [
                    {"role": "system", "content": "s"},
                    {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                ],
                "max_tokens": 5,
                "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
                "ignore_eos": True,
                "logprobs": True,
                "top_logprobs": 2,
            }
        ),
    )
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


@pytest.mark.parametrize(
    "data,endpoint",
    [
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, "chat"),
        ({"prompt": "hello"}, "completions"),
        ({"input": "hello"}, "embeddings"),
    ],
)
def test_shorthand_lines_get_line_custom_ids(data, endpoint):
    parsed = parse_request(7, data)
    assert isinstance(parsed, Request)
    assert parsed.endpoint == endpoint and parsed.custom_id == "line-7"
    assert parse_request(7, {**data, "custom_id": "x"}).custom_id == "x"


@pytest.mark.parametrize(
    "data,code,words",
    [
        ({"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}, "missing_custom_id", "custom_id"),
        (batch_line(url="/v1/responses"), "invalid_url", "/v1/responses"),
        (batch_line(method="GET"), "invalid_method", "POST"),
        (batch_line(body=[1]), "invalid_body", "JSON object"),
        (
            batch_line(body={"messages": [{"role": "user", "content": "x"}], "tools": []}),
            "invalid_body",
            "body.tools: unknown field",
        ),
        (batch_line(body={"messages": [{"role": "robot", "content": "x"}]}), "invalid_body", "body.messages.0.role"),
        (batch_line(body={"messages": []}), "invalid_body", "body.messages"),
        (
            batch_line(body={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            "invalid_body",
            "body.max_tokens",
        ),
        (
            batch_line(body={"messages": [{"role": "user", "content": "x"}], "stream": True}),
            "invalid_body",
            "body.stream",
        ),
        (batch_line(extra_field=1), "invalid_request", "extra_field"),
        ({"custom_id": 5, "prompt": "x"}, "invalid_custom_id", "string"),
        ({"custom_id": "", "prompt": "x"}, "invalid_custom_id", "empty"),
        ({"text": "x"}, "invalid_request", '"messages"'),
    ],
)
def test_bad_lines_become_one_error_naming_the_problem(data, code, words):
    parsed = parse_request(9, data)
    assert isinstance(parsed, RequestError)
    assert parsed.code == code and parsed.line == 9
    assert words in parsed.message


# Bad bodies the probe of issue 10 found reaching the engine (an `engine_error` with Python
# exception text) or crashing the run: each is the request's fault, so each must be exactly one
# `invalid_body` error naming the field, whatever the line shape.
BAD_BODIES = [
    # token ids: outside int32 (crashed the renderer), negative, booleans
    ({"prompt": [2147483648], "max_tokens": 4}, "body.prompt.0"),
    ({"prompt": [5, -1]}, "body.prompt.1"),
    ({"prompt": [True]}, "body.prompt.0"),
    ({"input": [2147483648]}, "body.input.0"),
    ({"input": [[1, 2], [-5]]}, "body.input.1.0"),
    ({"input": [[1, 2], [2**40]]}, "body.input.1.0"),
    # out-of-range sampling values (OpenAI's ranges; vLLM's for its extras)
    ({"prompt": "x", "temperature": 2.5}, "body.temperature"),
    ({"prompt": "x", "temperature": -0.1}, "body.temperature"),
    ({"prompt": "x", "top_p": 0}, "body.top_p"),
    ({"prompt": "x", "top_p": 1.01}, "body.top_p"),
    ({"prompt": "x", "presence_penalty": 2.5}, "body.presence_penalty"),
    ({"prompt": "x", "frequency_penalty": -2.01}, "body.frequency_penalty"),
    ({"prompt": "x", "stop": ""}, "body.stop"),
    ({"prompt": "x", "stop": ["a", ""]}, "body.stop.1"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "body.stop"),
    ({"prompt": "x", "max_tokens": 4, "min_tokens": 5}, "body.min_tokens: must be at most max_tokens (4)"),
    (
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 2, "min_tokens": 3},
        "body.min_tokens: must be at most max_completion_tokens (2)",
    ),
    ({"prompt": "x", "top_k": -2}, "body.top_k"),
    ({"prompt": "x", "top_k": 2**64}, "body.top_k"),
    ({"prompt": "x", "min_p": 1.5}, "body.min_p"),
    ({"prompt": "x", "repetition_penalty": 0}, "body.repetition_penalty"),
    ({"prompt": "x", "repetition_penalty": 1e308}, "body.repetition_penalty"),
    ({"prompt": "x", "seed": 2**63}, "body.seed"),
    ({"prompt": "x", "seed": -(2**63) - 1}, "body.seed"),
    ({"prompt": "x", "logprobs": 21}, "body.logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 21}, "body.top_logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "body.n"),
    ({"prompt": "x", "temperature": float("nan")}, "body.temperature: Input should be a finite number"),
    ({"prompt": "x", "top_p": float("inf")}, "body.top_p"),
    (
        {
            "prompt": "x",
            "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "nonsense"}}},
        },
        "body.response_format.json_schema.schema: not a valid JSON Schema",
    ),
    (
        {
            "prompt": "x",
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": {"type": "object", "properties": {"a": {"minimum": "0"}}}},
            },
        },
        "schema['properties']['a']['minimum']",
    ),
    (
        {"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": "{}"}}},
        "body.response_format.json_schema.schema",
    ),
    # types OpenAI rejects and pydantic's lax mode coerced
    ({"prompt": "x", "max_tokens": "1"}, "body.max_tokens: Input should be a valid integer"),
    ({"prompt": "x", "max_tokens": 1.5}, "body.max_tokens: Input should be a valid integer"),
    ({"prompt": "x", "max_tokens": True}, "body.max_tokens"),
    ({"prompt": "x", "temperature": True}, "body.temperature: Input should be a valid number"),
    ({"prompt": "x", "temperature": "0.5"}, "body.temperature"),
    ({"prompt": "x", "seed": "7"}, "body.seed"),
    ({"prompt": "x", "ignore_eos": 1}, "body.ignore_eos"),
    ({"prompt": 5}, "body.prompt: Input should be a valid string or a valid list"),
    ({"messages": [{"role": "user", "content": 5}]}, "body.messages.0.content"),
]


@pytest.mark.parametrize("body,words", BAD_BODIES, ids=[words for _, words in BAD_BODIES])
@pytest.mark.parametrize("shape", ["batch", "shorthand"])
def test_out_of_range_and_coerced_values_are_invalid_body_naming_the_field(body, words, shape):
    endpoint = "chat" if "messages" in body else "completions" if "prompt" in body else "embeddings"
    url = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}
    data = batch_line(url[endpoint], body) if shape == "batch" else {"custom_id": "a", **body}
    parsed = parse_request(4, data)
    assert isinstance(parsed, RequestError), parsed
    assert (parsed.code, parsed.line, parsed.custom_id) == ("invalid_body", 4, "a")
    assert words in parsed.message
    assert parsed.message.count("body.") == 1, parsed.message  # one problem, said once


@pytest.mark.parametrize(
    "body",
    [
        {
            "prompt": "x",
            "temperature": 2,
            "top_p": 1,
            "presence_penalty": -2,
            "frequency_penalty": 2,
            "stop": ["a", "b", "c", "d"],
            "seed": 2**63 - 1,
            "top_k": -1,
            "min_p": 1,
            "repetition_penalty": 1.2,
            "max_tokens": 4,
            "min_tokens": 4,
            "logprobs": 20,
            "n": 3,
        },
        {"prompt": [0, 2147483647], "seed": -(2**63), "top_k": 0, "temperature": 0.0},
        {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 8, "max_tokens": 2, "min_tokens": 5},
        {
            "prompt": "x",
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "s",
                    "schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}},
                },
            },
        },
        {"input": [[0, 1], [2]]},
        {"input": []},
    ],
)
def test_values_at_the_edges_of_their_ranges_are_accepted(body):
    parsed = parse_request(1, body)
    assert isinstance(parsed, Request), parsed.message


def test_an_int_is_a_valid_float_as_in_json():
    parsed = parse_request(1, {"prompt": "x", "temperature": 1, "top_p": 1})
    assert parsed.body.temperature == 1.0 and isinstance(parsed.body.temperature, float)


def test_a_whole_float_is_a_valid_integer_as_in_json():
    """pandas writes a nullable integer column as float64: max_tokens 3.0 is 3, 3.5 is not."""
    parsed = parse_request(1, {"prompt": [1.0, 2], "max_tokens": 3.0, "seed": -7.0})
    assert parsed.body.max_tokens == 3 and isinstance(parsed.body.max_tokens, int)
    assert parsed.body.prompt == [1, 2] and parsed.body.seed == -7


def test_bad_parquet_body_rows_are_error_records_beside_good_rows(tmp_path):
    """Parquet `body` rows go through the same validation: one invalid_body per bad row."""
    bodies = [
        ("good", "/v1/completions", {"prompt": "x", "max_tokens": 2}),
        ("big-id", "/v1/completions", {"prompt": [2147483648], "max_tokens": 4}),
        ("emb", "/v1/embeddings", {"input": [[1, 2], [-5]]}),
        ("hot", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": 9}),
        ("str-int", "/v1/completions", {"prompt": "x", "max_tokens": "1"}),
        ("good-emb", "/v1/embeddings", {"input": [1, 2]}),
    ]
    path = tmp_path / "in.parquet"
    pq.write_table(
        pa.table(
            {
                "custom_id": [b[0] for b in bodies],
                "url": [b[1] for b in bodies],
                "body": [json.dumps(b[2]) for b in bodies],
            }
        ),
        path,
    )
    parsed = [parse_request(r.line, r.data) for r in open_input(str(path)).records()]
    outcome = {p.custom_id: getattr(p, "code", "ok") for p in parsed}
    assert outcome == {
        "good": "ok",
        "big-id": "invalid_body",
        "emb": "invalid_body",
        "hot": "invalid_body",
        "str-int": "invalid_body",
        "good-emb": "ok",
    }
    messages = {p.custom_id: p.message for p in parsed if isinstance(p, RequestError)}
    assert messages["big-id"].startswith("body.prompt.0:") and messages["emb"].startswith("body.input.1.0:")
    assert messages["hot"].startswith("body.temperature:") and messages["str-int"].startswith("body.max_tokens:")
