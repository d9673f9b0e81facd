"""The server engine and `--engine`: a batch through a real vLLM OpenAI server on the tiny model.

One chat server for the module (~30 s on CPU), one MiniLM server for the embeddings test.
Both run with the engine settings of the local runs they are compared with (float32, context
512), so at temperature 0 the records must be identical apart from `created`.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from support.cli import kill_midway, vbatch
from support.jsonl import chat_line, read_jsonl, write_lines
from support.net import free_port

from vbatch.config.profiles import apply_overrides, load_profile
from vbatch.core.engine_io import EngineRequest, Sampling, StructuredOutput
from vbatch.core.tokens import TokenText
from vbatch.engines import remote as server_module
from vbatch.engines.remote import (
    ServerEngine,
    ServerFeatures,
    _Connection,
    completion_body,
    completion_result,
    connect,
    prometheus_counters,
)
from vbatch.errors import EngineError, UsageError
from vbatch.services.engine_choice import (
    ServerProbe,
    choose_engine,
    parse_engine_choice,
    probe_server,
    profile_server_url,
)

#: The `cpu` profile's dtype: the server must compute like the local engine it is compared with.
SERVER_FLAGS = ["--enforce-eager", "--dtype", "float32", "--enable-prompt-tokens-details"]


def vllm_server(model: Path, name: str, tmp: Path, max_model_len: int):
    """A vLLM OpenAI server on a free port; `with` starts it and stops it."""
    from vbatch.services.launch import ManagedServer

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        str(max_model_len),
        *SERVER_FLAGS,
    ]
    return ManagedServer(
        argv,
        base_url=f"http://127.0.0.1:{port}",
        env={"VLLM_CPU_KVCACHE_SPACE": "1"},
        log_path=tmp / f"{name}.log",
        ready_timeout=300,
    )


@pytest.fixture(scope="module")
def chat_server(tiny_model_dir: Path, tmp_path_factory):
    pytest.importorskip("vllm")
    with vllm_server(tiny_model_dir, "tiny", tmp_path_factory.mktemp("chat-server"), 512) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_cpu_profile(tiny_model_dir: Path):
    """What `--profile cpu --model <tiny dir> -E max_model_len=512` gives the CLI."""
    return apply_overrides(load_profile("cpu"), model=str(tiny_model_dir), engine_overrides={"max_model_len": 512})


def cli_args(tiny_model_dir: Path) -> list[str]:
    return ["--profile", "cpu", "--model", str(tiny_model_dir), "-E", "max_model_len=512"]


# ------------------------------------------------------------------------------ a tiny fake server


class FakeServer:
    """An HTTP server answering fixed JSON per GET path, for the probe and key tests; it keeps
    the Authorization header of every request."""

    def __init__(self, routes: dict[str, tuple[int, Any]]):
        routes_ = routes
        self.authorizations: list[str | None] = []
        authorizations = self.authorizations

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                authorizations.append(self.headers.get("Authorization"))
                status, body = routes_.get(self.path, (404, {"detail": "Not Found"}))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def models(*entries: tuple[str, str]) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": i, "root": r, "max_model_len": 512} for i, r in entries]}


# ------------------------------------------------------------------------------ choosing the engine


def test_engine_choice_parsing():
    assert parse_engine_choice("auto") == ("auto", None)
    assert parse_engine_choice(" Local ") == ("local", None)
    assert parse_engine_choice("server") == ("server", None)
    assert parse_engine_choice("server=http://gpu-box:8000") == ("server", "http://gpu-box:8000")
    assert parse_engine_choice("server=127.0.0.1:8000") == ("server", "http://127.0.0.1:8000")
    for bad in ("remote", "server=", "local=http://x", ""):
        with pytest.raises(UsageError, match="expected auto, local, server or server=URL"):
            parse_engine_choice(bad)


def test_profile_server_url_reaches_a_wildcard_bind_on_loopback():
    profile = load_profile("cpu")
    assert profile_server_url(profile) == "http://127.0.0.1:8000"
    wildcard = profile.model_copy(update={"serve": profile.serve.model_copy(update={"host": "::", "port": 9000})})
    assert profile_server_url(wildcard) == "http://[::1]:9000"


def test_auto_uses_a_server_that_serves_the_profile_model(tiny_cpu_profile, tiny_model_dir):
    routes = {"/health": (200, {}), "/v1/models": (200, models(("tiny", str(tiny_model_dir))))}
    with FakeServer(routes) as fake:
        choice = choose_engine("auto", fake.url, tiny_cpu_profile, probe_server)
    assert choice.url == fake.url
    assert choice.reason == f"using the server at {fake.url} (a server with this model is up)"


def test_auto_loads_locally_when_the_server_serves_another_model(tiny_cpu_profile):
    routes = {"/health": (200, {}), "/v1/models": (200, models(("gemma", "google/gemma-3-12b-it")))}
    with FakeServer(routes) as fake:
        choice = choose_engine("auto", fake.url, tiny_cpu_profile, probe_server)
    assert choice.url is None
    assert "serves google/gemma-3-12b-it, not this profile's model" in choice.reason
    assert "stop it first" in choice.reason


def test_auto_loads_locally_when_nothing_answers(tiny_cpu_profile):
    url = f"http://127.0.0.1:{free_port()}"
    assert probe_server(url, tiny_cpu_profile) == ServerProbe(up=False)
    choice = choose_engine("auto", url, tiny_cpu_profile, probe_server)
    assert choice.url is None and choice.reason == f"no server at {url}: loading the model in this process"


def test_forced_choices_do_not_probe(tiny_cpu_profile):
    def probe(url, profile):
        raise AssertionError("local and server must not probe")

    assert choose_engine("local", None, tiny_cpu_profile, probe).url is None
    assert choose_engine("server", None, tiny_cpu_profile, probe).url == "http://127.0.0.1:8000"
    assert choose_engine("server", "http://h:1", tiny_cpu_profile, probe).url == "http://h:1"


def test_a_server_that_wants_a_key_is_chosen_and_connecting_names_the_key(tiny_cpu_profile, monkeypatch):
    """Auto must not load a second model next to a server it merely cannot list; connecting
    then says which key to set."""
    monkeypatch.delenv("VBATCH_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    routes = {"/health": (200, {}), "/v1/models": (401, {"error": "Unauthorized"})}
    with FakeServer(routes) as fake:
        assert probe_server(fake.url, tiny_cpu_profile).serves_profile
        with pytest.raises(EngineError, match="refused vbatch's API key") as err:
            connect(fake.url, tiny_cpu_profile)
    assert "VBATCH_API_KEY" in err.value.hint


def test_the_api_key_is_sent_as_a_bearer_token(tiny_cpu_profile, tmp_path, monkeypatch):
    routes = {"/health": (200, {}), "/v1/models": (200, models())}
    with FakeServer(routes) as fake:
        monkeypatch.setenv("VBATCH_API_KEY", "sekrit")
        probe_server(fake.url, tiny_cpu_profile)
        monkeypatch.delenv("VBATCH_API_KEY")
        monkeypatch.delenv("VLLM_API_KEY", raising=False)
        key_file = tmp_path / "key"
        key_file.write_text("from-file\n")
        serve = tiny_cpu_profile.serve.model_copy(update={"api_key_file": str(key_file)})
        probe_server(fake.url, tiny_cpu_profile.model_copy(update={"serve": serve}))
    assert fake.authorizations == ["Bearer sekrit"] * 2 + ["Bearer from-file"] * 2  # /health, /v1/models


def test_bad_engine_option_is_a_usage_error(tmp_path):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps(chat_line(1)) + "\n")
    proc = vbatch("run", str(src), "--engine", "cloud", "-q")
    assert proc.returncode == 2
    assert "unknown engine 'cloud'" in proc.stderr


# ------------------------------------------------------------------------------ request bodies


def test_completion_body_follows_what_the_server_accepts():
    structured = {"json": {"type": "string", "enum": ["yes", "no"]}}
    request = EngineRequest(
        "1",
        "generate",
        [1, 2, 3],
        Sampling(max_tokens=5, temperature=0.0, seed=None, structured=StructuredOutput(structured["json"])),
    )
    current = ServerFeatures(
        completion_fields=frozenset(
            {"model", "prompt", "max_tokens", "temperature", "structured_outputs", "return_token_ids"}
        )
    )
    assert completion_body("tiny", request, current) == {
        "model": "tiny",
        "prompt": [1, 2, 3],
        "max_tokens": 5,
        "temperature": 0.0,
        "structured_outputs": structured,
        "return_token_ids": True,
    }
    older = ServerFeatures(
        completion_fields=frozenset(
            {"model", "prompt", "max_tokens", "temperature", "guided_json", "logprobs", "return_tokens_as_token_ids"}
        )
    )
    assert completion_body("tiny", request, older) == {
        "model": "tiny",
        "prompt": [1, 2, 3],
        "max_tokens": 5,
        "temperature": 0.0,
        "guided_json": structured["json"],
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    openai_only = ServerFeatures(
        completion_fields=frozenset(
            {"model", "prompt", "max_tokens", "temperature", "response_format", "return_token_ids"}
        )
    )
    assert completion_body("tiny", request, openai_only)["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": structured["json"]},
    }
    json_object = EngineRequest("2", "generate", [1], Sampling(max_tokens=5, structured=StructuredOutput()))
    assert completion_body("tiny", json_object, openai_only)["response_format"] == {"type": "json_object"}
    with pytest.raises(ValueError, match="does not accept the sampling parameter.*min_tokens"):
        completion_body("tiny", EngineRequest("3", "generate", [1], Sampling(min_tokens=2)), current)
    # Without a schema (--disable-fastapi-docs) the server is taken for a current vLLM.
    assert completion_body("tiny", request, ServerFeatures())["structured_outputs"] == structured


def test_token_ids_from_logprobs_for_servers_without_return_token_ids(tiny_model_dir):
    """The fallback response shape: every token as "token_id:N" (return_tokens_as_token_ids)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer.encode("hello world", add_special_tokens=False)
    response = {
        "choices": [
            {
                "index": 0,
                "text": "hello world",
                "finish_reason": "length",
                "stop_reason": None,
                "logprobs": {
                    "tokens": [f"token_id:{i}" for i in ids],
                    "token_logprobs": [-0.5] * len(ids),
                    "top_logprobs": [{f"token_id:{i}": -0.5, "token_id:7": -1.5} for i in ids],
                    "text_offset": [0] * len(ids),
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(ids), "prompt_tokens_details": {"cached_tokens": 2}},
    }
    tokens = TokenText(tokenizer)
    without = completion_result("k", 3, response, None, tokens, logprobs_as_ids=True)
    assert without.choices[0].token_ids == ids and without.choices[0].logprobs is None
    assert without.cached_tokens == 2
    asked = completion_result("k", 3, response, 1, tokens, logprobs_as_ids=True).choices[0].logprobs
    assert "".join(t.token for t in asked) == "hello world"
    assert [t.top[0][0] for t in asked] == [tokenizer.decode([i]) for i in ids]


def test_prometheus_counters_take_only_this_model():
    text = (
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 12.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="other"} 99.0\n'
        'vllm:prefix_cache_hits_created{engine="0",model_name="tiny"} 1.7e+09\n'
        'vllm:generation_tokens_total{engine="0",model_name="tiny"} 40.0\n'
    )
    counters = prometheus_counters(text, "tiny")
    assert counters["prefix_cache_hits"] == 12.0 and counters["generation_tokens"] == 40.0
    assert counters["prefix_cache_queries"] == 0.0


# ------------------------------------------------------------------------------ a server that goes away


def engine_at(url: str, tokenizer: Any, **kwargs: Any) -> ServerEngine:
    connection = _Connection(url, None, "tiny", "generate", 512, ServerFeatures())
    return ServerEngine(connection, tokenizer=tokenizer, model_name="tiny", max_in_flight=4, **kwargs)


def test_a_server_that_is_gone_raises_engine_error_after_retries(tiny_model_dir, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setattr(server_module, "RETRY_DELAYS", (0.01, 0.01))
    engine = engine_at(f"http://127.0.0.1:{free_port()}", AutoTokenizer.from_pretrained(tiny_model_dir))
    requests = (EngineRequest(str(i), "generate", [1, 2], Sampling(max_tokens=2)) for i in range(10))
    try:
        with pytest.raises(EngineError, match="lost the server at .*ConnectError") as err:
            list(engine.run(requests))
    finally:
        engine.close()
    assert "run the same command to resume" in err.value.hint


def test_a_server_that_stops_answering_does_not_hang_the_run(tiny_model_dir, monkeypatch):
    """A socket that is listened on but never served: requests and health checks hang, so only
    the health monitor can end the run."""
    from transformers import AutoTokenizer

    monkeypatch.setattr(server_module, "SETUP_TIMEOUT", 0.2)
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen(64)
        url = f"http://127.0.0.1:{frozen.getsockname()[1]}"
        engine = engine_at(url, AutoTokenizer.from_pretrained(tiny_model_dir), health_interval=0.05)
        try:
            with pytest.raises(EngineError, match="stopped answering /health"):
                list(engine.run(EngineRequest(str(i), "generate", [1], Sampling(max_tokens=1)) for i in range(3)))
        finally:
            engine.close()


# ------------------------------------------------------------------------------ a real vLLM server


@pytest.mark.engine
def test_features_are_read_from_the_real_server(chat_server, tiny_cpu_profile):
    import httpx

    features = ServerFeatures.from_openapi(httpx.get(chat_server.base_url + "/openapi.json").json())
    assert features.task == "generate"
    assert features.accepts("return_token_ids") and features.accepts("structured_outputs")
    assert not features.accepts("no_such_field")
    with connect(chat_server.base_url, tiny_cpu_profile) as engine:
        assert (engine.task, engine.max_model_len) == ("generate", 512)
        assert engine.model_name == str(Path(tiny_cpu_profile.model).resolve())  # as the local engine


@pytest.mark.engine
def test_connecting_with_another_model_is_refused(chat_server, minilm_dir):
    profile = load_profile("cpu")  # MiniLM, while the server has the tiny chat model
    with pytest.raises(EngineError, match=f"serves .*tiny.*, not {profile.model}") as err:
        connect(chat_server.base_url, profile)
    assert "--engine local" in err.value.hint


@pytest.mark.engine
def test_the_engine_pulls_lazily_and_keeps_at_most_max_in_flight_open(chat_server, tiny_cpu_profile):
    limited = tiny_cpu_profile.model_copy(
        update={"batch": tiny_cpu_profile.batch.model_copy(update={"max_in_flight": 3})}
    )
    pulled = 0

    def requests():
        nonlocal pulled
        for i in range(12):
            pulled += 1
            yield EngineRequest(str(i), "generate", [1, 5, 100 + i], Sampling(max_tokens=4, temperature=0.0))

    pulled_at_result = []
    with connect(chat_server.base_url, limited) as engine:
        results = []
        for result in engine.run(requests()):
            pulled_at_result.append(pulled)
            results.append(result)
        metrics = engine.metrics()
    assert sorted(int(r.key) for r in results) == list(range(12))
    assert all(r.error is None and len(r.choices[0].token_ids) == 4 for r in results)
    # The k-th result arrives with at most k + 3 requests taken from the input.
    assert all(n <= k + 3 for k, n in enumerate(pulled_at_result)), pulled_at_result
    assert metrics["generation_tokens"] >= 48


def mixed_lines() -> list[Any]:
    schema = {"type": "string", "enum": ["yes", "no"]}
    return [
        chat_line(1),
        chat_line(2, logprobs=True, top_logprobs=2),
        chat_line(3, n=2, temperature=0.8, seed=7),
        chat_line(4, n=2),  # greedy with n=2: refused by vLLM, locally and by the server
        chat_line(
            5, response_format={"type": "json_schema", "json_schema": {"name": "yn", "schema": schema}}, max_tokens=12
        ),
        {
            "custom_id": "p1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "Once upon a time", "max_tokens": 6, "logprobs": 2, "temperature": 0},
        },
        {"custom_id": "s1", "prompt": "shorthand completion", "max_tokens": 3, "temperature": 0},
        {"custom_id": "stop", "prompt": "a b c d", "max_tokens": 12, "temperature": 0, "stop": [" o"]},
        "{not json",
        {"custom_id": "emb", "input": "embeddings need an embedding model"},
    ]


def comparable(record: dict) -> dict:
    """A record without what legitimately differs: `created`, and the prefix-cache hits, which
    depend on what the server (used by other tests) still has cached."""
    body = dict(record["response"]["body"])
    body.pop("created")
    body["usage"] = {k: v for k, v in body["usage"].items() if k != "prompt_tokens_details"}
    return {**record, "response": {**record["response"], "body": body}}


@pytest.mark.engine
def test_a_run_through_the_server_writes_the_records_of_the_local_engine(chat_server, tiny_model_dir, tmp_path):
    src = write_lines(tmp_path / "mixed.jsonl", mixed_lines())
    served = vbatch(
        "run",
        str(src),
        "-o",
        str(tmp_path / "srv.jsonl"),
        *cli_args(tiny_model_dir),
        "--engine",
        f"server={chat_server.base_url}",
        "--json",
    )
    assert served.returncode == 1, served.stderr  # bad lines
    assert f"using the server at {chat_server.base_url} (--engine server)" in served.stderr
    local = vbatch(
        "run", str(src), "-o", str(tmp_path / "loc.jsonl"), *cli_args(tiny_model_dir), "--engine", "local", "--json"
    )
    assert local.returncode == 1, local.stderr

    through_server = sorted(map(comparable, read_jsonl(tmp_path / "srv.jsonl")), key=lambda r: r["custom_id"])
    in_process = sorted(map(comparable, read_jsonl(tmp_path / "loc.jsonl")), key=lambda r: r["custom_id"])
    assert [r["custom_id"] for r in through_server] == ["c1", "c2", "c3", "c5", "p1", "s1", "stop"]
    # The one known difference: the completions API names top alternatives by their text only,
    # so the bytes of an alternative that is part of a character ("") are unknown to the server
    # engine (the chosen token's are exact: it comes with its id).
    for record in through_server + in_process:
        for choice in record["response"]["body"]["choices"]:
            for token in (choice["logprobs"] or {}).get("content", []):
                for alternative in token["top_logprobs"]:
                    if alternative["token"] == "":
                        alternative["bytes"] = None
    assert through_server == in_process
    errors = {e["custom_id"]: e["error"]["code"] for e in read_jsonl(tmp_path / "srv.errors.jsonl")}
    assert errors == {e["custom_id"]: e["error"]["code"] for e in read_jsonl(tmp_path / "loc.errors.jsonl")}
    assert errors == {"c4": "engine_error", None: "invalid_line", "emb": "unsupported_endpoint"}

    by_id = {r["custom_id"]: r["response"]["body"] for r in through_server}
    assert json.loads(by_id["c5"]["choices"][0]["message"]["content"]) in ("yes", "no")
    assert len(by_id["c2"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    assert len(by_id["c3"]["choices"]) == 2
    assert by_id["c1"]["usage"]["completion_tokens"] == 8 or by_id["c1"]["choices"][0]["finish_reason"] == "stop"
    summary = json.loads(served.stdout)
    assert summary["tokens"]["completion"] == sum(b["usage"]["completion_tokens"] for b in by_id.values())
    assert summary["tokens"]["completion"] == json.loads(local.stdout)["tokens"]["completion"]


@pytest.mark.engine
def test_kill_and_resume_through_the_server(chat_server, tiny_model_dir, tmp_path):
    n = 400
    src = write_lines(tmp_path / "big.jsonl", [chat_line(i, max_tokens=16) for i in range(n)])
    args = ["run", str(src), *cli_args(tiny_model_dir), "--engine", f"server={chat_server.base_url}", "-q"]
    reference = vbatch(*args, "-o", str(tmp_path / "ref.jsonl"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "crash.jsonl"
    kill_midway([*args, "-o", str(out)], out)
    assert 0 < len(out.read_bytes().splitlines()) < n

    rerun = vbatch(*args, "-o", str(out), "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["requests"]["ok"] == n and summary["requests"]["resumed"] > 0
    resumed = read_jsonl(out)
    assert len({r["custom_id"] for r in resumed}) == len(resumed) == n
    assert sorted(map(json.dumps, map(comparable, resumed))) == sorted(
        map(json.dumps, map(comparable, read_jsonl(tmp_path / "ref.jsonl")))
    )


@pytest.mark.engine
def test_auto_uses_the_server_at_the_profile_address(chat_server, tiny_model_dir, tmp_path):
    port = chat_server.base_url.rsplit(":", 1)[1]
    profile = tmp_path / "tiny-served.toml"
    profile.write_text(
        f'model = "{tiny_model_dir}"\n[engine]\nmax_model_len = 512\n[serve]\nhost = "0.0.0.0"\nport = {port}\n'
    )
    src = write_lines(tmp_path / "a.jsonl", [chat_line(1), chat_line(2)])
    proc = vbatch("run", str(src), "--profile", str(profile), env={**os.environ, "VBATCH_ENGINE": "auto"})
    assert proc.returncode == 0, proc.stderr
    assert f"using the server at http://127.0.0.1:{port} (a server with this model is up)" in proc.stderr
    assert len(read_jsonl(tmp_path / "a.results.jsonl")) == 2


@pytest.mark.engine
def test_embeddings_through_a_server_match_the_local_engine(minilm_dir, tmp_path):
    pytest.importorskip("vllm")
    profile = load_profile("cpu")
    lines = [{"custom_id": f"e{i}", "input": f"sentence number {i} about cats"} for i in range(6)]
    lines += [
        {"custom_id": "several", "input": ["first", "second one"]},
        {"custom_id": "b64", "input": "packed", "encoding_format": "base64"},
    ]
    src = write_lines(tmp_path / "emb.jsonl", lines)
    local = vbatch("run", str(src), "-o", str(tmp_path / "loc.jsonl"), "--profile", "cpu", "--engine", "local", "-q")
    assert local.returncode == 0, local.stderr
    with vllm_server(minilm_dir, profile.served_model_name, tmp_path, 256) as server:
        served = vbatch(
            "run",
            str(src),
            "-o",
            str(tmp_path / "srv.jsonl"),
            "--profile",
            "cpu",
            "--engine",
            f"server={server.base_url}",
            "-q",
        )
    assert served.returncode == 0, served.stderr

    by_id = {r["custom_id"]: r["response"]["body"] for r in read_jsonl(tmp_path / "loc.jsonl")}
    for record in read_jsonl(tmp_path / "srv.jsonl"):
        body, expected = record["response"]["body"], by_id[record["custom_id"]]
        assert (body["model"], body["usage"], len(body["data"])) == (
            expected["model"],
            expected["usage"],
            len(expected["data"]),
        )
        for got, want in zip(body["data"], expected["data"]):
            if record["custom_id"] == "b64":
                assert got["embedding"] == want["embedding"]
                continue
            assert len(got["embedding"]) == 384
            # The server prints float32 values in JSON with fewer digits.
            assert max(abs(a - b) for a, b in zip(got["embedding"], want["embedding"])) < 1e-6
            assert math.isclose(sum(a * a for a in got["embedding"]), 1.0, rel_tol=1e-4)
