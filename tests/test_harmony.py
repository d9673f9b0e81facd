"""gpt-oss answers (harmony): reasoning and final text apart in chat results, reasoning_effort
given to the template. Token sequences are built with openai_harmony, the format's own library."""

from __future__ import annotations

import base64
import copy
import hashlib
import http.server
import json
import os
import random
import sys
import threading
import types

import pytest
from support.cli import vbatch

from vbatch.core.engine_io import Choice, EngineResult
from vbatch.core.harmony import _encoding, require_harmony_encoding, split_harmony
from vbatch.core.records import result_record
from vbatch.core.render import ChatTemplate, Renderer, RenderSettings
from vbatch.core.requests import parse_request
from vbatch.errors import EngineError

harmony = pytest.importorskip("openai_harmony")


def chat_line(custom_id: str, **body) -> dict:
    body = {"messages": [{"role": "user", "content": "hi"}], **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


@pytest.fixture(scope="module")
def encoding():
    return harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)


def generated(encoding, text: str) -> list[int]:
    """The tokens a gpt-oss model generates after the prompt's `<|start|>assistant`."""
    return encoding.encode(text, allowed_special="all")


def rendered(encoding, *messages) -> list[int]:
    """Assistant messages rendered by openai_harmony, as generated: the first one's
    `<|start|>assistant` belongs to the prompt; the answer ends with `<|return|>`."""
    tokens = [token for message in messages for token in encoding.render(message)][2:]
    return tokens[:-1] + generated(encoding, "<|return|>")


def assistant(channel: str, text: str):
    return harmony.Message.from_role_and_content(harmony.Role.ASSISTANT, text).with_channel(channel)


def test_reasoning_and_answer_come_apart(encoding):
    tokens = rendered(encoding, assistant("analysis", "The user wants 2+2. That is 4."), assistant("final", "4"))
    split = split_harmony(tokens)
    assert split.content == "4"
    assert split.reasoning == "The user wants 2+2. That is 4."
    reasoning_text = len(encoding.encode("The user wants 2+2. That is 4."))
    # The analysis channel's text, plus its <|message|> marker: the tokens spent reasoning.
    assert split.reasoning_tokens == reasoning_text + 1


def test_an_answer_cut_by_max_tokens_keeps_what_it_had(encoding):
    in_reasoning = split_harmony(generated(encoding, "<|channel|>analysis<|message|>Let me think about th"))
    assert in_reasoning.content is None
    assert in_reasoning.reasoning == "Let me think about th"
    in_answer = split_harmony(
        generated(
            encoding, "<|channel|>analysis<|message|>Short.<|end|><|start|>assistant<|channel|>final<|message|>Par"
        )
    )
    assert (in_answer.reasoning, in_answer.content) == ("Short.", "Par")


def test_an_answer_without_reasoning_has_none(encoding):
    split = split_harmony(rendered(encoding, assistant("final", "Paris.")))
    assert (split.content, split.reasoning, split.reasoning_tokens) == ("Paris.", None, 0)


def test_tool_commentary_stays_out_of_both(encoding):
    tokens = rendered(encoding, assistant("commentary", "Checking the weather."), assistant("final", "Sunny."))
    split = split_harmony(tokens)
    assert (split.content, split.reasoning) == ("Sunny.", None)


def test_tokens_that_are_not_harmony_leave_the_text_alone(encoding):
    assert split_harmony(generated(encoding, "Plain text, no channel headers.")) is None
    noise = random.Random(0)
    assert split_harmony([noise.randrange(0, 199_998) for _ in range(64)]) is None


def chat_record(split):
    request = parse_request(1, chat_line("q"))
    choice = Choice(index=0, text="analysisThe user wants 4.assistantfinal4", token_ids=[1] * 9, finish_reason="stop")
    choice.harmony = split
    result = EngineResult("k", prompt_tokens=20, choices=[choice])
    return result_record("run", request, [result], "gpt-oss-20b")["response"]["body"]


def test_a_chat_record_carries_content_reasoning_and_reasoning_tokens(encoding):
    split = split_harmony(rendered(encoding, assistant("analysis", "The user wants 4."), assistant("final", "4")))
    body = chat_record(split)
    message = body["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "4", "reasoning_content": "The user wants 4."}
    assert body["usage"]["completion_tokens"] == 9
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": split.reasoning_tokens}


def test_other_models_records_are_unchanged():
    body = chat_record(None)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "analysisThe user wants 4.assistantfinal4"}
    assert "completion_tokens_details" not in body["usage"]


def test_the_vllm_codec_splits_gpt_oss_outputs_only(encoding):
    pytest.importorskip("vllm")
    from vbatch.engines.vllm.codec import VllmCodec

    tokens = rendered(encoding, assistant("analysis", "Think."), assistant("final", "Done."))
    output = types.SimpleNamespace(
        num_cached_tokens=0,
        error=None,
        metrics=None,
        outputs=[
            types.SimpleNamespace(
                index=0,
                text="analysisThink.assistantfinalDone.",
                token_ids=tokens,
                finish_reason="stop",
                stop_reason=None,
                logprobs=None,
            )
        ],
    )

    def codec(model_type):
        config = types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type=model_type))
        return VllmCodec(config, "generate", 1024, lambda: None)

    choice = codec("gpt_oss").result(output, "k", 12, None).choices[0]
    assert (choice.harmony.content, choice.harmony.reasoning) == ("Done.", "Think.")
    assert choice.text == "analysisThink.assistantfinalDone."  # completions keep the raw text
    assert codec("mistral").result(output, "k", 12, None).choices[0].harmony is None


EFFORT_TEMPLATE = (
    "Reasoning: {{ reasoning_effort | default('medium') }}\n"
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
)


@pytest.fixture(scope="module")
def effort_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = copy.deepcopy(AutoTokenizer.from_pretrained(str(tiny_model_dir)))
    tokenizer.chat_template = EFFORT_TEMPLATE
    return tokenizer


def test_reasoning_effort_reaches_the_chat_template(effort_tokenizer):
    template = ChatTemplate(effort_tokenizer)
    messages = [{"role": "user", "content": "hi"}]
    assert template.render(messages).startswith("Reasoning: medium\n")
    assert template.render(messages, reasoning_effort="high").startswith("Reasoning: high\n")
    assert template._fast is not None  # the fast path renders it as apply_chat_template does


def test_reasoning_effort_in_a_body_is_honoured_and_checked(effort_tokenizer):
    renderer = Renderer(effort_tokenizer, RenderSettings(256, frozenset({"m"}), "generate"))
    lines = [chat_line(effort, reasoning_effort=effort) for effort in ("low", "high")]
    low, high = renderer.render_batch([parse_request(i, line) for i, line in enumerate(lines)])
    assert effort_tokenizer.decode(low.prompts[0].token_ids).startswith("Reasoning: low")
    assert effort_tokenizer.decode(high.prompts[0].token_ids).startswith("Reasoning: high")
    refused = parse_request(3, chat_line("x", reasoning_effort="extreme"))
    assert refused.code == "invalid_body"
    assert "reasoning_effort" in refused.message


def test_the_remote_engine_splits_when_the_model_is_gpt_oss(encoding, tmp_path):
    """`vbatch run --engine server=URL`: the server returns token ids; the model's own config.json,
    read here, says whether they are harmony."""
    from vbatch.config.checkpoint import model_type
    from vbatch.engines.remote import completion_result

    (tmp_path / "config.json").write_text('{"model_type": "gpt_oss"}')
    assert model_type(str(tmp_path)) == "gpt_oss"
    assert model_type(str(tmp_path / "missing")) is None
    tokens = rendered(encoding, assistant("analysis", "Hm."), assistant("final", "Yes."))
    response = {"choices": [{"index": 0, "text": "analysisHm.assistantfinalYes.", "token_ids": tokens}]}
    split = completion_result("k", 3, response, None, None, harmony=True).choices[0].harmony
    assert (split.content, split.reasoning) == ("Yes.", "Hm.")
    assert completion_result("k", 3, response, None, None).choices[0].harmony is None


# ------------------------------------------------------------------------------ the vocabulary, offline


@pytest.fixture
def fresh_encoding():
    """The encoding is loaded once per process and cached: each test here loads it anew, and
    leaves none behind loaded from its own directory."""
    _encoding.cache_clear()
    yield
    _encoding.cache_clear()


@pytest.fixture(scope="module")
def vocab_dir(encoding, tmp_path_factory):
    """A TIKTOKEN_ENCODINGS_BASE holding o200k_base.tiktoken, written from the loaded encoding:
    byte for byte the file openai_harmony downloads."""
    inner = encoding._inner
    data = b"".join(base64.b64encode(bytes(inner.decode_bytes([i]))) + b" %d\n" % i for i in range(199_998))
    assert hashlib.sha256(data).hexdigest() == "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
    folder = tmp_path_factory.mktemp("tiktoken")
    (folder / "o200k_base.tiktoken").write_bytes(data)
    return folder


def test_a_missing_vocabulary_is_one_engine_error_that_says_where_to_put_it(tmp_path, monkeypatch, fresh_encoding):
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))
    with pytest.raises(EngineError, match="cannot load gpt-oss's harmony encoding \\(HarmonyError: ") as caught:
        require_harmony_encoding()
    assert f"o200k_base.tiktoken from the directory in TIKTOKEN_ENCODINGS_BASE ({tmp_path})" in caught.value.message
    hint = caught.value.hint
    assert hint.startswith("on an offline machine, download https://openaipublic.blob.core.windows.net/encodings/")
    assert "set TIKTOKEN_ENCODINGS_BASE to that directory" in hint


def test_without_openai_harmony_the_error_says_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai_harmony", None)  # what an install without it imports
    with pytest.raises(EngineError, match="openai_harmony, which is not installed") as caught:
        require_harmony_encoding()
    assert caught.value.hint == "pip install openai-harmony (vLLM installs it)"


def test_a_vocabulary_in_tiktoken_encodings_base_loads(vocab_dir, encoding, monkeypatch, fresh_encoding):
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(vocab_dir))
    require_harmony_encoding()
    split = split_harmony(rendered(encoding, assistant("analysis", "Hm."), assistant("final", "Yes.")))
    assert (split.content, split.reasoning) == ("Yes.", "Hm.")


def test_the_vllm_codec_checks_the_vocabulary_for_gpt_oss_only(tmp_path, monkeypatch, fresh_encoding):
    pytest.importorskip("vllm")
    from vbatch.engines.vllm.codec import VllmCodec

    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))

    def codec(model_type):
        config = types.SimpleNamespace(hf_config=types.SimpleNamespace(model_type=model_type))
        return VllmCodec(config, "generate", 1024, lambda: None)

    assert not codec("mistral").harmony
    with pytest.raises(EngineError, match="o200k_base.tiktoken"):
        codec("gpt_oss")


@pytest.fixture
def gpt_oss_server(tmp_path, tiny_model_dir):
    """A server that lists a gpt-oss model (and answers nothing else), and a profile for it: the
    model's config.json says gpt_oss, the tokenizer is the tiny model's."""
    model = tmp_path / "gpt-oss"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt_oss"}')
    listing = json.dumps({"object": "list", "data": [{"id": "gpt-oss", "max_model_len": 512}]}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Length", str(len(listing)))
            self.end_headers()
            self.wfile.write(listing)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    profile = tmp_path / "gpt-oss.toml"
    profile.write_text(f'model = "{model}"\ntokenizer = "{tiny_model_dir}"\nserved_model_name = "gpt-oss"\n')
    yield f"http://127.0.0.1:{httpd.server_address[1]}", profile
    httpd.shutdown()
    httpd.server_close()


def test_vbatch_run_without_the_vocabulary_stops_before_any_request(gpt_oss_server, tmp_path):
    """The run on the GPU box that made one error record per line: now one error, exit 5."""
    url, profile = gpt_oss_server
    empty = tmp_path / "no-vocab"
    empty.mkdir()
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(chat_line(f"q{i}")) + "\n" for i in range(3)))
    env = {**os.environ, "TIKTOKEN_ENCODINGS_BASE": str(empty)}
    proc = vbatch("run", str(src), "--profile", str(profile), "--engine", f"server={url}", env=env)
    assert proc.returncode == 5, proc.stderr
    assert "cannot load gpt-oss's harmony encoding" in proc.stderr
    assert "set TIKTOKEN_ENCODINGS_BASE to that directory" in proc.stderr
    # Nothing written: no results, no error records, no run record.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpt-oss", "gpt-oss.toml", "in.jsonl", "no-vocab"]


def test_the_local_engine_checks_the_vocabulary_before_loading_the_model(tmp_path, monkeypatch, fresh_encoding):
    """On a GPU the model takes minutes to load: the missing vocabulary stops it before vLLM starts."""
    pytest.importorskip("vllm")
    import vllm

    from vbatch.config.profiles import Profile
    from vbatch.engines.vllm.engine import load_profile_engine

    model = tmp_path / "gpt-oss"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "gpt_oss"}')
    monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", str(tmp_path))

    def no_load(*args, **kwargs):
        raise AssertionError("vLLM was asked to load the model")

    monkeypatch.setattr(vllm, "LLM", no_load)
    with pytest.raises(EngineError, match="cannot load gpt-oss's harmony encoding"):
        load_profile_engine(Profile(name="gpt-oss", model=str(model)))


def test_reasoning_tokens_add_up_in_the_run_summary_and_the_batch_object(tmp_path):
    """The per-answer counts reach what a whole run or batch reports: the summary's tokens, and
    usage.output_tokens_details of a Batch object (the server's, read back from its output lines)."""
    from vbatch.core.engine_io import Choice, EngineResult
    from vbatch.core.harmony import HarmonySplit
    from vbatch.core.records import batch_usage
    from vbatch.services.batch_server.executor import _Usage
    from vbatch.services.reporting import RunStats
    from vbatch.services.run import _count

    def answer(reasoning: int, total: int) -> Choice:
        return Choice(0, "ok", list(range(total)), "stop", harmony=HarmonySplit("ok", "hm", reasoning))

    stats = RunStats()
    _count(stats, [EngineResult("a", prompt_tokens=5, choices=[answer(3, 7)])])
    _count(stats, [EngineResult("b", prompt_tokens=5, choices=[answer(4, 6), answer(1, 2)])])
    _count(stats, [EngineResult("c", prompt_tokens=5, choices=[Choice(0, "plain", [1, 2], "stop")])])
    assert (stats.completion_tokens, stats.reasoning_tokens) == (17, 8)

    output = tmp_path / "output.jsonl"
    bodies = [
        {"usage": {"prompt_tokens": 5, "completion_tokens": 7, "completion_tokens_details": {"reasoning_tokens": 3}}}
    ]
    bodies.append({"usage": {"prompt_tokens": 5, "completion_tokens": 2}})  # a model that does not reason
    output.write_text("".join(json.dumps({"response": {"body": body}}) + "\n" for body in bodies))
    usage = _Usage()
    usage.read(output)
    assert (usage.output_tokens, usage.reasoning_tokens) == (9, 3)
    assert batch_usage(10, 0, 9, 3)["output_tokens_details"] == {"reasoning_tokens": 3}
