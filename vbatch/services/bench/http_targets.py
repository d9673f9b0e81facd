"""HTTP targets: OpenAI-compatible servers (vLLM, llama.cpp, Ollama's /v1) and Ollama's native API.

Both stream, so time to first token and the gaps between tokens are measured here, from the
arrival of each chunk. A phase keeps `concurrency` requests in flight (asyncio + httpx), bounds
each request (--request-timeout) and the whole phase (--time-limit), and turns every failure
into an error sample: a dead or hung server gives error rows, never a hang.

The chunk readers (`openai_sample`, `ollama_sample`) are pure functions of (arrival time,
decoded chunk) events, so they are tested on hand-made timings and recorded response shapes.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from vbatch.core.requests import ChatBody, Request
from vbatch.engines.remote import error_message
from vbatch.services.bench.environment import model_dir_quantization
from vbatch.services.bench.metrics import RequestSample, failed, phase_wall
from vbatch.services.bench.report import TargetInfo
from vbatch.services.bench.targets import (
    OLLAMA_DEFAULT_URL,
    Limits,
    Phase,
    TargetSpec,
    TargetUnavailable,
)

#: Sent as a bearer token to OpenAI-compatible servers when set.
API_KEY_ENV = "OPENAI_API_KEY"

_END = object()
#: Fields of a streamed choice that carry generated output.
_OUTPUT_FIELDS = ("content", "reasoning_content", "reasoning")
#: Ollama's final-chunk durations (nanoseconds) -> seconds under these names.
_OLLAMA_DURATIONS = {
    "total_duration": "total_s",
    "load_duration": "load_s",
    "prompt_eval_duration": "prompt_eval_s",
    "eval_duration": "eval_s",
}
_OLLAMA_COUNTS = ("prompt_eval_count", "eval_count")
#: Request body field -> Ollama option of the same meaning.
_OLLAMA_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repeat_penalty",
}


class RequestFailed(Exception):
    """One request failed in a way the server explained (HTTP error status, error object)."""


# --------------------------------------------------------------------------------------------
# Pure: payloads and chunk readers
# --------------------------------------------------------------------------------------------


def openai_payload(request: Request, model: str) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, JSON body) of one streamed request."""
    body = request.body.model_dump(
        exclude_none=True, by_alias=True, exclude={"model", "user", "metadata", "store", "stream"}
    )
    body.update(model=model, stream=True, stream_options={"include_usage": True})
    return ("/chat/completions" if request.endpoint == "chat" else "/completions"), body


def ollama_payload(request: Request, model: str) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) for Ollama's /api/chat or /api/generate; max_tokens becomes num_predict."""
    body = request.body
    options: dict[str, Any] = {"num_predict": body.max_tokens}
    for field, option in _OLLAMA_OPTIONS.items():
        value = getattr(body, field)
        if value is not None:
            options[option] = value
    payload: dict[str, Any] = {"model": model, "stream": True, "options": options}
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        payload["format"] = fmt.json_schema.schema_ if fmt.json_schema else "json"
    if isinstance(body, ChatBody):
        payload["messages"] = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
        ]
        return "/api/chat", payload
    if not isinstance(body.prompt, str):
        raise RequestFailed("Ollama's API takes text prompts, not token ids")
    payload["prompt"] = body.prompt
    return "/api/generate", payload


def sse_event(line: str) -> Any:
    """One server-sent-events line -> decoded JSON, None (not data), or _END ([DONE])."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return _END
    return orjson.loads(data)


def ndjson_event(line: str) -> Any:
    return orjson.loads(line) if line.strip() else None


def _carries_output(choice: dict[str, Any]) -> bool:
    """Whether a streamed choice holds a generated token. A chunk that only announces the role
    holds none; one with a content/text field does, even "" (a token that ends mid-character)."""
    if isinstance(choice.get("text"), str):
        return True
    delta = choice.get("delta") or {}
    if delta.get("role") and not any(delta.get(field) for field in _OUTPUT_FIELDS):
        return False
    return any(isinstance(delta.get(field), str) for field in _OUTPUT_FIELDS)


def openai_sample(start: float, end: float, events: list[tuple[float, dict]], max_tokens: int | None) -> RequestSample:
    """A streamed /v1/chat/completions or /v1/completions answer -> one sample.

    Token count: the usage the server sends last (stream_options.include_usage), else one
    token per output-carrying chunk (flagged, so the report can say so)."""
    times: list[float] = []
    usage: dict[str, Any] | None = None
    for arrived, chunk in events:
        if chunk.get("error"):
            return failed(error_message(chunk), start, end, max_tokens)
        if any(_carries_output(choice) for choice in chunk.get("choices") or []):
            times.append(arrived)
        usage = chunk.get("usage") or usage
    from_chunks = usage is None or usage.get("completion_tokens") is None
    return RequestSample(
        ok=True,
        start=start,
        end=end,
        max_tokens=max_tokens,
        output_tokens=len(times) if from_chunks else int(usage["completion_tokens"]),  # type: ignore[index]
        prompt_tokens=usage.get("prompt_tokens") if usage else None,
        first_token=times[0] if times else None,
        last_token=times[-1] if times else None,
        token_times=times,
        tokens_from_chunks=from_chunks,
    )


def ollama_sample(start: float, end: float, events: list[tuple[float, dict]], max_tokens: int | None) -> RequestSample:
    """A streamed Ollama /api/chat or /api/generate answer -> one sample.

    Token counts and server timings come from the final chunk (done: true): eval_count,
    prompt_eval_count and the *_duration fields, in nanoseconds, kept here in seconds."""
    times: list[float] = []
    final: dict[str, Any] | None = None
    for arrived, chunk in events:
        if chunk.get("error"):
            return failed(error_message(chunk), start, end, max_tokens)
        if chunk.get("done"):
            final = chunk
            continue
        text = (chunk.get("message") or {}).get("content") if "message" in chunk else chunk.get("response")
        if text:
            times.append(arrived)
    if final is None:
        return failed("the stream ended before Ollama's final chunk (done: true)", start, end, max_tokens)
    server = {
        name: final[key] / 1e9 for key, name in _OLLAMA_DURATIONS.items() if isinstance(final.get(key), (int, float))
    }
    server.update({key: float(final[key]) for key in _OLLAMA_COUNTS if isinstance(final.get(key), (int, float))})
    eval_count = final.get("eval_count")
    return RequestSample(
        ok=True,
        start=start,
        end=end,
        max_tokens=max_tokens,
        output_tokens=int(eval_count) if eval_count is not None else len(times),
        prompt_tokens=final.get("prompt_eval_count"),
        first_token=times[0] if times else None,
        last_token=times[-1] if times else None,
        token_times=times,
        server=server,
        tokens_from_chunks=eval_count is None,
    )


# --------------------------------------------------------------------------------------------
# Driving a server
# --------------------------------------------------------------------------------------------


class _HttpTarget:
    """What both HTTP kinds share: set-up calls, the bounded phase loop, error samples."""

    url_hint = ""

    def __init__(self, spec: TargetSpec, label: str, limits: Limits):
        assert spec.url is not None and spec.model is not None
        self.spec = spec
        self.url: str = spec.url
        self.model: str = spec.model
        self.label = label
        self.limits = limits
        key = os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    # -- set-up calls (synchronous, short timeouts) ---------------------------------------------

    def _call_json(
        self, method: str, url: str, *, body: Any = None, timeout: float | None = None, not_found: str | None = None
    ) -> Any:
        """One set-up call; anything but a 200 with JSON raises TargetUnavailable (`not_found`: the
        message for a 404)."""
        try:
            response = httpx.request(
                method, url, json=body, headers=self.headers, timeout=timeout or self.limits.probe_timeout_s
            )
        except httpx.HTTPError as err:
            raise TargetUnavailable(
                f"nothing answers at {url}: {type(err).__name__}: {err or 'no response'}{self.url_hint}"
            ) from None
        if response.status_code == 404 and not_found:
            raise TargetUnavailable(not_found)
        if response.status_code != 200:
            raise TargetUnavailable(
                f"{method} {url} answered HTTP {response.status_code}: {error_message(response.content)}{self.url_hint}"
            )
        try:
            return response.json()
        except ValueError:
            raise TargetUnavailable(f"{method} {url} did not answer JSON{self.url_hint}") from None

    def _optional_json(self, url: str) -> dict[str, Any]:
        """A set-up call whose answer is a nicety: {} when it fails."""
        try:
            answer = self._call_json("GET", url)
        except TargetUnavailable:
            return {}
        return answer if isinstance(answer, dict) else {}

    # -- the timed phase ---------------------------------------------------------------------

    def run_phase(self, requests: list[Request], concurrency: int) -> Phase:
        return asyncio.run(self._phase(requests, concurrency))

    async def _phase(self, requests: list[Request], concurrency: int) -> Phase:
        samples: list[RequestSample | None] = [None] * len(requests)
        order = iter(range(len(requests)))  # shared by the workers: each takes the next request
        pool = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        timeout = httpx.Timeout(self.limits.request_timeout_s, connect=self.limits.probe_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, limits=pool, headers=self.headers) as client:

            async def worker() -> None:
                for index in order:
                    samples[index] = await self._bounded(client, requests[index])

            started = time.perf_counter()
            workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, len(requests)))]
            if workers:
                _, pending = await asyncio.wait(workers, timeout=self.limits.time_limit_s)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            ended = time.perf_counter()
        unfinished = f"not finished within the time limit ({self.limits.time_limit_s:g} s, --time-limit)"
        final = [s or failed(unfinished, max_tokens=r.body.max_tokens) for s, r in zip(samples, requests)]
        return Phase(final, phase_wall(final, started, ended))

    async def _bounded(self, client: httpx.AsyncClient, request: Request) -> RequestSample:
        max_tokens = request.body.max_tokens
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                return await self._send(client, request)
        except TimeoutError:
            error = f"no complete answer within {self.limits.request_timeout_s:g} s (--request-timeout)"
        except RequestFailed as err:
            error = str(err)
        except httpx.ConnectError as err:
            error = f"cannot connect to {self.url}: {err}"
        except Exception as err:  # noqa: BLE001 - any failure of one request is that request's error
            error = f"{type(err).__name__}: {str(err) or 'the connection broke off'}"
        return failed(error, start, time.perf_counter(), max_tokens)

    async def _stream(
        self, client: httpx.AsyncClient, url: str, payload: dict[str, Any], decode: Callable[[str], Any]
    ) -> tuple[float, float, list[tuple[float, dict]]]:
        """POST and collect (arrival time, decoded chunk) until the stream ends.

        A stream whose format has an end marker (SSE's [DONE]) and ends without it was broken
        off: an error. A connection that fails before any answer arrives is tried once more on
        a fresh one: a kept-alive connection the server closed meanwhile is the client's
        artefact, not the server's failure (the time of both attempts counts)."""
        events: list[tuple[float, dict]] = []
        start = time.perf_counter()
        marked_end = decode is not sse_event
        for attempt in (1, 2):
            answered = False
            try:
                async with client.stream("POST", url, json=payload) as response:
                    answered = True
                    if response.status_code != 200:
                        raise RequestFailed(f"HTTP {response.status_code}: {error_message(await response.aread())}")
                    async for line in response.aiter_lines():
                        event = decode(line)
                        if event is _END:
                            marked_end = True
                            break
                        if event is not None:
                            events.append((time.perf_counter(), event))
                break
            except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                if answered or attempt == 2:
                    raise
        if not marked_end:
            raise RequestFailed(
                "the stream ended before its end marker (data: [DONE]): the server broke off "
                "(see the server's log; a prompt longer than its context does this)"
            )
        return start, time.perf_counter(), events

    async def _send(self, client: httpx.AsyncClient, request: Request) -> RequestSample:
        raise NotImplementedError

    def close(self) -> None:
        pass


class OpenAITarget(_HttpTarget):
    url_hint = " (is the server running? OpenAI-compatible URLs usually end in /v1)"

    def open(self) -> TargetInfo:
        listing = self._call_json("GET", f"{self.url}/models")
        entries = [m for m in listing.get("data") or [] if isinstance(m, dict)] if isinstance(listing, dict) else []
        served = [str(m.get("id")) for m in entries]
        entry = next((m for m in entries if m.get("id") == self.model), None)
        if entry is None:
            raise TargetUnavailable(
                f"{self.url} does not serve a model named {self.model!r}; it serves: {', '.join(served) or 'none'}"
                f" (use --target openai:{self.url}:<one of these>)"
            )
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.url))
        owner = entry.get("owned_by")
        settings: dict[str, Any] = {"owned_by": owner}
        if entry.get("max_model_len"):
            settings["max_model_len"] = entry["max_model_len"]
        server = f"OpenAI-compatible server (models owned_by {owner!r})"
        if owner == "vllm":
            version = self._optional_json(f"{origin}/version")
            server = f"vLLM {version.get('version', '(version not reported)')}"
            settings.update(self._vllm_cache_settings(origin))
        root = entry.get("root")
        notes = [
            "ignore_eos=true and max_tokens are sent with every request (vLLM honours ignore_eos; "
            "other servers may ignore it: see the off-length outputs note)",
            "ITL is the gap between streamed chunks; a chunk may carry more than one token "
            "(vLLM holds back a token that ends mid-character)",
        ]
        return TargetInfo(
            label=self.label,
            kind="openai",
            spec=self.spec.text,
            url=self.url,
            model=self.model,
            server=server,
            quantization=model_dir_quantization(root) if isinstance(root, str) else None,
            settings=settings,
            notes=notes,
        )

    def _vllm_cache_settings(self, origin: str) -> dict[str, Any]:
        """A few KV-cache settings from the labels of vLLM's vllm:cache_config_info metric."""
        try:
            text = httpx.get(f"{origin}/metrics", headers=self.headers, timeout=self.limits.probe_timeout_s).text
        except httpx.HTTPError:
            return {}
        line = next((ln for ln in text.splitlines() if ln.startswith("vllm:cache_config_info{")), "")
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        wanted = ("enable_prefix_caching", "cache_dtype", "gpu_memory_utilization", "num_gpu_blocks", "block_size")
        return {key: labels[key] for key in wanted if key in labels}

    async def _send(self, client: httpx.AsyncClient, request: Request) -> RequestSample:
        path, payload = openai_payload(request, self.model)
        start, end, events = await self._stream(client, self.url + path, payload, sse_event)
        return openai_sample(start, end, events, request.body.max_tokens)


class OllamaTarget(_HttpTarget):
    url_hint = f" (is Ollama running? its default address is {OLLAMA_DEFAULT_URL})"

    def open(self) -> TargetInfo:
        version = self._call_json("GET", f"{self.url}/api/version").get("version", "?")
        show = self._call_json(
            "POST",
            f"{self.url}/api/show",
            body={"model": self.model},
            not_found=f"Ollama at {self.url} has no model {self.model!r} (ollama pull {self.model})",
        )
        details = show.get("details") or {}
        settings: dict[str, Any] = {
            key: details[key] for key in ("family", "parameter_size", "format") if details.get(key)
        }
        model_context = next(
            (v for k, v in (show.get("model_info") or {}).items() if k.endswith(".context_length")), None
        )
        if model_context:
            settings["model_context_length"] = model_context
        num_ctx = re.search(r"^num_ctx\s+(\d+)", show.get("parameters") or "", re.MULTILINE)
        if num_ctx:
            settings["num_ctx"] = int(num_ctx.group(1))
        # Load the model now (an empty chat loads it), so /api/ps shows its running settings.
        self._call_json(
            "POST",
            f"{self.url}/api/chat",
            body={"model": self.model, "messages": [], "stream": False},
            timeout=self.limits.request_timeout_s,
        )
        running = self._optional_json(f"{self.url}/api/ps")
        entry = next((m for m in running.get("models") or [] if self.model in (m.get("name"), m.get("model"))), {})
        if entry.get("context_length"):
            settings["context_length"] = entry["context_length"]
        notes = [
            "Ollama has no ignore_eos: num_predict caps each output and the model may stop earlier "
            "(see the off-length outputs note); tok/s counts the tokens Ollama reports (eval_count)"
        ]
        parallel = os.environ.get("OLLAMA_NUM_PARALLEL")
        settings["OLLAMA_NUM_PARALLEL"] = parallel
        notes.append(
            "OLLAMA_NUM_PARALLEL is not reported by Ollama's API: "
            + (
                f"{parallel} is this shell's value, which the server was assumed to start with"
                if parallel
                else "unknown (set it in this shell to record the value the server was started with); "
                "requests beyond it wait in Ollama's queue"
            )
        )
        if "context_length" not in settings:
            notes.append("the context length Ollama runs with is not reported by this Ollama version")
        return TargetInfo(
            label=self.label,
            kind="ollama",
            spec=self.spec.text,
            url=self.url,
            model=self.model,
            server=f"Ollama {version}",
            quantization=details.get("quantization_level"),
            settings=settings,
            notes=notes,
        )

    async def _send(self, client: httpx.AsyncClient, request: Request) -> RequestSample:
        path, payload = ollama_payload(request, self.model)
        start, end, events = await self._stream(client, self.url + path, payload, ndjson_event)
        return ollama_sample(start, end, events, request.body.max_tokens)


def detect_local_ollama(url: str = OLLAMA_DEFAULT_URL, timeout: float = 1.0) -> TargetSpec | None:
    """An Ollama answering at `url` and the model to bench: a loaded one, else the first it has."""
    try:
        httpx.get(f"{url}/api/version", timeout=timeout).raise_for_status()
        for path in ("/api/ps", "/api/tags"):
            models = httpx.get(url + path, timeout=timeout).json().get("models") or []
            if models:
                name = models[0].get("name") or models[0].get("model")
                text = f"ollama:{name}" if url == OLLAMA_DEFAULT_URL else f"ollama:{url}:{name}"
                return TargetSpec("ollama", name, url, text)
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return None
