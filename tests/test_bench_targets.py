"""--target and --concurrency parsing: URLs and Ollama model names both hold colons."""

from __future__ import annotations

import pytest

from vbatch.errors import UsageError
from vbatch.services.bench.targets import TargetSpec, parse_concurrency, parse_target, unique_labels


@pytest.mark.parametrize(
    ("text", "kind", "url", "model"),
    [
        ("openai:http://127.0.0.1:8000/v1:tiny", "openai", "http://127.0.0.1:8000/v1", "tiny"),
        ("openai:https://api.example.com/v1/:org/model:v2", "openai", "https://api.example.com/v1", "org/model:v2"),
        ("openai:http://[::1]:8000/v1:tiny", "openai", "http://[::1]:8000/v1", "tiny"),
        ("openai:http://gpu-box/v1:meta-llama/Llama-3.2-1B", "openai", "http://gpu-box/v1", "meta-llama/Llama-3.2-1B"),
        ("ollama:llama3.2", "ollama", "http://localhost:11434", "llama3.2"),
        ("ollama:llama3.2:1b", "ollama", "http://localhost:11434", "llama3.2:1b"),
        ("ollama:http://gpu:11434:qwen2.5:0.5b", "ollama", "http://gpu:11434", "qwen2.5:0.5b"),
        ("ollama:http://gpu:qwen2.5", "ollama", "http://gpu", "qwen2.5"),
        ("vbatch:cpu-chat", "vbatch", None, "cpu-chat"),
        ("vbatch:/tmp/my profiles/tiny.toml", "vbatch", None, "/tmp/my profiles/tiny.toml"),
        ("vbatch", "vbatch", None, None),
        ("OpenAI:http://h:1/v1:m", "openai", "http://h:1/v1", "m"),
    ],
)
def test_valid_specs(text, kind, url, model):
    spec = parse_target(text)
    assert (spec.kind, spec.url, spec.model, spec.text) == (kind, url, model, text)


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [
        ("vllm:http://h:8000/v1:m", "unknown target kind 'vllm'", "openai:http://HOST:PORT/v1:MODEL"),
        ("tgi:x", "unknown target kind 'tgi'", "vbatch:..."),
        ("openai:http://127.0.0.1:8000/v1", "no model after the URL", "openai:http://127.0.0.1:8000/v1:MODEL"),
        ("openai:http://127.0.0.1:8000", "no model after the URL", ":MODEL"),
        ("openai:tiny", "openai targets need a URL", "openai:URL:MODEL"),
        ("openai:localhost:8000/v1:tiny", "openai targets need a URL", "start the URL with http://"),
        ("openai:ftp://h/v1:m", "openai targets need a URL", "start the URL with http://"),
        ("ollama", "no model in 'ollama'", "ollama:MODEL"),
        ("ollama:", "no model in 'ollama:'", "ollama:URL:MODEL"),
        ("ollama:ftp://h:llama3", "cannot read the URL", "http://"),
        ("vbatch:", "no profile after 'vbatch:'", "vbatch profiles list"),
    ],
)
def test_invalid_specs_say_what_to_write(text, message, hint):
    with pytest.raises(UsageError) as caught:
        parse_target(text)
    assert message in caught.value.message
    assert hint in caught.value.hint


def test_concurrency_levels():
    assert parse_concurrency("1,4,16,64") == [1, 4, 16, 64]
    assert parse_concurrency(" 8, 2,8 ") == [8, 2]
    for bad in ("0", "1,,4", "four", "-1", "2.5"):
        with pytest.raises(UsageError) as caught:
            parse_concurrency(bad)
        assert "--concurrency 1,4,16,64" in caught.value.hint


def test_labels_are_short_and_unique():
    specs = [
        parse_target(t)
        for t in (
            "openai:http://a:8000/v1:tiny",
            "openai:http://b:8000/v1:tiny",
            "vbatch:/x/tiny.toml",
            "ollama:llama3.2:1b",
        )
    ]
    assert unique_labels(specs) == ["openai:tiny@a:8000", "openai:tiny@b:8000", "vbatch:tiny", "ollama:llama3.2:1b"]
    same = [TargetSpec("vbatch", "cpu-chat", None, "vbatch:cpu-chat")] * 2
    assert unique_labels(same) == ["vbatch:cpu-chat@local#1", "vbatch:cpu-chat@local#2"]
