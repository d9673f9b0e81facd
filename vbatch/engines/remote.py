"""The server engine: a batch through a running vLLM OpenAI server instead of a second engine.

Why: a 16 GB card holds one model. When `vbatch serve` (or any `vllm serve`) already holds
it, loading a second engine fails (vLLM issue 20305); sending the batch to that server's HTTP
API shares the card. The pipeline has already applied the chat template and tokenized, so the
server receives token ids, through /v1/completions (chat included) and /v1/embeddings: it runs
exactly the prompts the local engine would, and at temperature 0 the records are the same.

What a server accepts is read from its OpenAPI schema (/openapi.json), never from its version:
  - `return_token_ids` (vLLM 0.26 and 0.32 have it): each choice's generated token ids. Without
    it they come from logprobs in token-id form (`return_tokens_as_token_ids`).
  - `structured_outputs` (vLLM 0.26 and 0.32) or the older `guided_json`; else
    `response_format`, the OpenAI field.
A server without the schema (--disable-fastapi-docs) is taken for a current vLLM.

Concurrency: an asyncio loop in a background thread keeps up to max_in_flight requests open
(httpx); the caller's thread pulls the input lazily, only as results come back, and gets the
results in completion order. A server that stops answering raises EngineError (no hang):
connection failures are retried a few times, and while requests are open /health is polled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from vbatch.config.checkpoint import model_type
from vbatch.config.profiles import Profile, resolve_model, result_model_name
from vbatch.config.server import api_key_for, is_loopback
from vbatch.core.engine_io import (
    Choice,
    EngineRequest,
    EngineResult,
    Sampling,
    StructuredOutput,
    Task,
    TokenLogprob,
)
from vbatch.core.harmony import HARMONY_MODEL_TYPES, require_harmony_encoding, split_harmony
from vbatch.core.tokens import PromptTokenizer, TokenText
from vbatch.engines.vllm.engine import ENGINE_METRICS
from vbatch.errors import EngineError

#: Waits before each new attempt when the server cannot be reached (refused, reset, 503).
RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)
#: With requests open and no result for this many seconds, vbatch asks the server's /health ...
HEALTH_INTERVAL = 15.0
#: ... and gives up after this many failed checks in a row (a stopped or unreachable server).
HEALTH_FAILURES = 3
#: Seconds for the set-up calls (/v1/models, /openapi.json, /tokenize) and health checks.
SETUP_TIMEOUT = 10.0
#: Text tokenized here and by the server: different ids mean a different tokenizer.
TOKENIZER_PROBE = "vbatch tokenizer check: Grüße, 12 345 - 世界!\n\tdone."
#: HTTP statuses that mean "not now" rather than "not this request".
_RETRY_STATUSES = frozenset({429, 502, 503, 504})
_TOKEN_ID_PREFIX = "token_id:"


class ServerGone(Exception):
    """The server did not answer after every retry; carries the last failure."""


def profile_api_key(profile: Profile) -> str | None:
    """The key to send: the one `vbatch serve` would require for this profile (its variable,
    default $VBATCH_API_KEY, then its api_key_file, then $VLLM_API_KEY), or None."""
    return api_key_for(profile.serve, None, dict(os.environ))[0]


def http_client(
    url: str, api_key: str | None, *, timeout: float | httpx.Timeout, asynchronous: bool = False, **options: Any
):
    """An httpx client for the server. A loopback server is reached directly, never through an
    http_proxy set in the environment."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    loopback = is_loopback(urlsplit(url).hostname or "")
    cls = httpx.AsyncClient if asynchronous else httpx.Client
    return cls(base_url=url, headers=headers, timeout=timeout, trust_env=not loopback, **options)


# ------------------------------------------------------------------------------ what the server takes


@dataclass(frozen=True)
class ServerFeatures:
    """What the server accepts, read from its OpenAPI schema; None where it has no schema."""

    completion_fields: frozenset[str] | None = None
    routes: frozenset[str] | None = None

    @classmethod
    def from_openapi(cls, schema: dict[str, Any] | None) -> ServerFeatures:
        if not schema:
            return cls()
        paths = schema.get("paths") or {}
        body = ((paths.get("/v1/completions") or {}).get("post") or {}).get("requestBody") or {}
        ref = (((body.get("content") or {}).get("application/json") or {}).get("schema") or {}).get("$ref", "")
        definition = (schema.get("components") or {}).get("schemas", {}).get(ref.rsplit("/", 1)[-1], {})
        fields = frozenset(definition.get("properties") or ()) or None
        return cls(completion_fields=fields, routes=frozenset(paths))

    def accepts(self, name: str) -> bool:
        return self.completion_fields is None or name in self.completion_fields

    @property
    def task(self) -> Task | None:
        if self.routes is None:
            return None
        if "/v1/completions" in self.routes:
            return "generate"
        if "/v1/embeddings" in self.routes:
            return "embed"
        return None


def completion_body(model_id: str, request: EngineRequest, features: ServerFeatures) -> dict[str, Any]:
    """The /v1/completions body for one rendered request, in the fields this server accepts."""
    sampling = request.sampling or Sampling()
    options = sampling.options()
    unknown = sorted(k for k in options if not features.accepts(k))
    if unknown:
        raise ValueError(f"the server does not accept the sampling parameter(s) {', '.join(unknown)}")
    body: dict[str, Any] = {"model": model_id, "prompt": request.prompt_token_ids, **options}
    if sampling.structured is not None:
        body.update(_structured_fields(sampling.structured, features))
    if features.accepts("return_token_ids"):
        body["return_token_ids"] = True
    else:  # the token ids come from logprobs, in token-id form
        body.setdefault("logprobs", 0)
        body["return_tokens_as_token_ids"] = True
    return body


def _structured_fields(structured: StructuredOutput, features: ServerFeatures) -> dict[str, Any]:
    """The JSON constraint in the field this server understands."""
    if features.accepts("structured_outputs"):
        return {"structured_outputs": structured.params()}
    if structured.schema is None:
        return {"response_format": {"type": "json_object"}}
    if features.completion_fields and "guided_json" in features.completion_fields:
        return {"guided_json": structured.schema}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": structured.schema}}}


def embedding_body(model_id: str, request: EngineRequest) -> dict[str, Any]:
    return {
        "model": model_id,
        "input": request.prompt_token_ids,
        "encoding_format": "float",
    }


def served_entry(models: dict[str, Any], profile: Profile) -> dict[str, Any] | None:
    """The /v1/models entry that serves the profile's model, if any.

    An entry matches by its served name (the profile's served_model_name, model or resolved
    path) or by `root`, the model vLLM loaded.
    """
    resolved = resolve_model(profile.model)
    names = {*profile.served_names, profile.model, resolved}
    for entry in models.get("data") or []:
        if entry.get("id") in names or entry.get("root") in (profile.model, resolved):
            return entry
    return None


def served_names(models: dict[str, Any]) -> list[str]:
    return [str(entry.get("root") or entry.get("id")) for entry in models.get("data") or []]


def error_message(data: Any, status: int | None = None) -> str:
    """One line from an error response's body (bytes, text or parsed JSON): OpenAI's and vLLM's
    {"error": {"type", "message"}}, Ollama's {"error": "..."}, {"message"}, FastAPI's {"detail"}.
    Any other body: its first 300 characters, after "HTTP <status>: " when the status is given.
    `vbatch bench`'s HTTP targets read errors with it too."""
    if isinstance(data, bytes | str):
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            data = (data.decode(errors="replace") if isinstance(data, bytes) else data).strip() or "(empty body)"
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            kind = error.get("type")
            return f"{kind}: {error['message']}" if kind else str(error["message"])
        if isinstance(error, str):
            return error
        if data.get("message"):
            return str(data["message"])
        if data.get("detail"):
            return f"invalid request: {data['detail']}"
    text = str(data)[:300]
    return f"HTTP {status}: {text}" if status is not None else text


# ------------------------------------------------------------------------------ reading responses


def _token_id(placeholder: str) -> int:
    if not placeholder.startswith(_TOKEN_ID_PREFIX):
        raise ValueError(f"expected a token id ({_TOKEN_ID_PREFIX}N) in the logprobs, got {placeholder!r}")
    return int(placeholder[len(_TOKEN_ID_PREFIX) :])


def _logprobs(
    raw: dict[str, Any], token_ids: list[int], top: int, tokens: TokenText, as_ids: bool
) -> list[TokenLogprob]:
    """Completion-style logprobs -> TokenLogprob with the `top` most likely alternatives.

    Token strings are the server's own (what the local engine reports too); the chosen token's
    bytes come from its id. An alternative's bytes are its text's, as the completion format
    carries no ids for them (a partial character shows as ""). With `as_ids` (servers without
    return_token_ids) every token arrives as "token_id:N" and is decoded here.
    """

    def decoded(token: str) -> tuple[str, int | None]:
        if not as_ids:
            return token, None
        token_id = _token_id(token)
        return tokens.text(token_id), token_id

    out = []
    positions = zip(token_ids, raw["tokens"], raw["token_logprobs"], raw["top_logprobs"])
    for token_id, token, logprob, alternatives in positions:
        text = decoded(token)[0]
        token_bytes = tokens.raw(token_id, text)
        ranked = sorted((alternatives or {}).items(), key=lambda kv: -kv[1])[:top]
        top_entries = []
        for alternative, alt_logprob in ranked:
            alt_text, alt_id = decoded(alternative)
            if alt_id is not None:
                alt_bytes = tokens.raw(alt_id, alt_text)
            else:  # the chosen token is among them, usually first
                alt_bytes = token_bytes if alt_text == text else alt_text.encode("utf-8")
            top_entries.append((alt_text, float(alt_logprob), alt_bytes))
        out.append(
            TokenLogprob(
                token=text,
                logprob=float("nan") if logprob is None else float(logprob),
                token_bytes=token_bytes,
                top=top_entries,
            )
        )
    return out


def completion_result(
    key: Hashable,
    prompt_tokens: int,
    data: dict[str, Any],
    top_logprobs: int | None,
    tokens: TokenText,
    *,
    logprobs_as_ids: bool = False,
    harmony: bool = False,
) -> EngineResult:
    """A /v1/completions response -> EngineResult; `top_logprobs` None when none were asked;
    `harmony`: the model answers in harmony (gpt-oss), each choice is split as the codec splits it."""
    choices = []
    for raw in sorted(data["choices"], key=lambda c: c["index"]):
        lp = raw.get("logprobs")
        token_ids = raw.get("token_ids")
        if token_ids is None:
            if not (lp and logprobs_as_ids):
                raise ValueError("the server returned no token ids")
            token_ids = [_token_id(p) for p in lp["tokens"]]
        token_ids = list(token_ids)
        choices.append(
            Choice(
                index=raw["index"],
                text=raw["text"],
                token_ids=token_ids,
                finish_reason=raw.get("finish_reason"),
                stop_reason=raw.get("stop_reason"),
                logprobs=_logprobs(lp, token_ids, top_logprobs, tokens, logprobs_as_ids)
                if top_logprobs is not None and lp
                else None,
                harmony=split_harmony(token_ids) if harmony else None,
            )
        )
    return EngineResult(key, prompt_tokens=prompt_tokens, cached_tokens=_cached_tokens(data), choices=choices)


def embedding_result(key: Hashable, prompt_tokens: int, data: dict[str, Any]) -> EngineResult:
    vector = data["data"][0]["embedding"]
    if not isinstance(vector, list):
        raise ValueError("expected the embedding as a list of floats")
    return EngineResult(
        key, prompt_tokens=prompt_tokens, cached_tokens=_cached_tokens(data), embedding=[float(x) for x in vector]
    )


def _cached_tokens(data: dict[str, Any]) -> int:
    """vLLM reports them with --enable-prompt-tokens-details (vbatch serve turns it on)."""
    details = (data.get("usage") or {}).get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def prometheus_counters(text: str, model_id: str) -> dict[str, float]:
    """vbatch's engine counters from a Prometheus /metrics page, for one served model."""
    names = {f"{name}_total": key for name, key in ENGINE_METRICS.items()}
    totals = {key: 0.0 for key in ENGINE_METRICS.values()}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name not in names:
            continue
        labels, _, value = rest.rpartition("} ")
        if f'model_name="{model_id}"' not in labels:
            continue
        try:
            totals[names[name]] += float(value)
        except ValueError:
            continue
    return totals


# ------------------------------------------------------------------------------ the engine


@dataclass
class _Connection:
    """What connect() found out about the server."""

    url: str
    api_key: str | None
    model_id: str
    task: Task
    max_model_len: int
    features: ServerFeatures = field(default_factory=ServerFeatures)
    #: The model answers in harmony (gpt-oss: its config.json, read here, says so).
    harmony: bool = False


class ServerEngine:
    """The Engine protocol (vbatch.engines.base) over a running vLLM OpenAI-compatible server."""

    def __init__(
        self,
        connection: _Connection,
        *,
        tokenizer: Any,
        model_name: str,
        max_in_flight: int,
        load_seconds: float = 0.0,
        health_interval: float = HEALTH_INTERVAL,
    ):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.url = self.location = connection.url
        self.task: Task = connection.task
        self.model_name = model_name
        self.max_model_len = connection.max_model_len
        self.max_in_flight = max_in_flight
        self.load_seconds = load_seconds
        self.health_interval = health_interval
        self._connection = connection
        self._tokenizer = tokenizer
        self._tokens = TokenText(tokenizer)
        self._client = http_client(self.url, connection.api_key, timeout=SETUP_TIMEOUT)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vbatch-http", daemon=True)
        self._thread.start()
        self._async_client = asyncio.run_coroutine_threadsafe(self._open_async_client(), self._loop).result()
        self._running = False
        self._metrics_base = self._read_metrics()

    async def _open_async_client(self) -> httpx.AsyncClient:
        # No read timeout: a long generation behind a full queue is normal; a server that stops
        # answering is caught by the /health checks in run().
        timeout = httpx.Timeout(SETUP_TIMEOUT, read=None, pool=None)
        limits = httpx.Limits(max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight)
        return http_client(self.url, self._connection.api_key, timeout=timeout, asynchronous=True, limits=limits)

    # ------------------------------------------------------------------ Engine protocol

    def tokenizer(self) -> Any:
        return self._tokenizer

    def run(self, requests: Iterable[EngineRequest]) -> Iterator[EngineResult]:
        """Keep up to max_in_flight requests open; yield each result as it comes back."""
        if self._running:
            raise EngineError("ServerEngine.run() is already in progress; consume one run at a time")
        self._running = True
        source = iter(requests)
        finished: queue.Queue[concurrent.futures.Future] = queue.Queue()
        open_requests: set[concurrent.futures.Future] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(open_requests) < self.max_in_flight:
                    try:
                        request = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    future = asyncio.run_coroutine_threadsafe(self._send(request), self._loop)
                    open_requests.add(future)
                    future.add_done_callback(finished.put)
                if not open_requests:
                    return
                future = self._next_finished(finished)
                open_requests.discard(future)
                yield self._outcome(future)
        finally:
            self._running = False
            for future in open_requests:  # the consumer stopped early: the server aborts them
                future.cancel()

    def metrics(self) -> dict[str, float]:
        """The server's counters for this model since connect (other clients' requests included)."""
        now = self._read_metrics()
        return {key: value - self._metrics_base.get(key, 0.0) for key, value in now.items()}

    def close(self) -> None:
        if not self._loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._async_client.aclose(), self._loop).result(timeout=SETUP_TIMEOUT)
        except Exception:  # noqa: BLE001 - closing idle connections; nothing left to save
            pass
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._client.close()

    def __enter__(self) -> ServerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    async def _send(self, request: EngineRequest) -> EngineResult:
        prompt_tokens = len(request.prompt_token_ids)
        if request.task != self.task:
            return EngineResult(
                request.key,
                prompt_tokens=prompt_tokens,
                error=f"the server's model serves {self.task!r} requests, not {request.task!r}",
            )
        model_id = self._connection.model_id
        try:
            if request.task == "embed":
                path, body = "/v1/embeddings", embedding_body(model_id, request)
            else:
                path, body = "/v1/completions", completion_body(model_id, request, self._connection.features)
        except ValueError as exc:
            return EngineResult(request.key, prompt_tokens=prompt_tokens, error=str(exc))
        response = await self._post(path, body)
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            data = response.text
        if response.status_code in (401, 403):
            raise ServerGone(
                f"the server refused the request (HTTP {response.status_code}): "
                f"{error_message(data, response.status_code)}"
            )
        if response.status_code != 200:
            return EngineResult(
                request.key, prompt_tokens=prompt_tokens, error=error_message(data, response.status_code)
            )
        try:
            if request.task == "embed":
                return embedding_result(request.key, prompt_tokens, data)
            return completion_result(
                request.key,
                prompt_tokens,
                data,
                request.top_logprobs,
                self._tokens,
                logprobs_as_ids="return_tokens_as_token_ids" in body,
                harmony=self._connection.harmony,
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            return EngineResult(
                request.key,
                prompt_tokens=prompt_tokens,
                error=f"cannot read the server's response: {type(exc).__name__}: {exc}",
            )

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST, retrying while the server is unreachable or says 'not now'; ServerGone after."""
        content = orjson.dumps(body)
        headers = {"Content-Type": "application/json"}
        failure = ""
        for delay in (*RETRY_DELAYS, None):
            try:
                response = await self._async_client.post(path, content=content, headers=headers)
            except httpx.TransportError as exc:
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code not in _RETRY_STATUSES:
                    return response
                failure = f"HTTP {response.status_code}"
            if delay is None:
                raise ServerGone(failure)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _next_finished(self, finished: queue.Queue) -> concurrent.futures.Future:
        """The next finished request; while waiting, check that the server is still alive."""
        failures = 0
        while True:
            try:
                return finished.get(timeout=self.health_interval)
            except queue.Empty:
                pass
            failure = self._health_failure()
            if failure is None:
                failures = 0
                continue
            failures += 1
            if failures >= HEALTH_FAILURES:
                raise self._gone(f"it stopped answering /health ({failure})")

    def _health_failure(self) -> str | None:
        try:
            response = self._client.get("/health")
        except httpx.TransportError as exc:
            return type(exc).__name__
        return None if response.status_code == 200 else f"HTTP {response.status_code}"

    def _outcome(self, future: concurrent.futures.Future) -> EngineResult:
        try:
            return future.result()
        except ServerGone as exc:
            raise self._gone(str(exc)) from exc

    def _gone(self, what: str) -> EngineError:
        return EngineError(
            f"lost the server at {self.url}: {what}",
            hint="finished results are kept: start the server again (vbatch serve) and run the same "
            "command to resume, or resume with --engine local once the GPU is free",
        )

    def _read_metrics(self) -> dict[str, float]:
        try:
            response = self._client.get("/metrics")
        except httpx.TransportError:
            return {}
        if response.status_code != 200:
            return {}
        return prometheus_counters(response.text, self._connection.model_id)


# ------------------------------------------------------------------------------ connecting


def connect(url: str, profile: Profile, *, health_interval: float = HEALTH_INTERVAL) -> ServerEngine:
    """Check that the server at `url` serves the profile's model with the same tokenizer, and
    wrap it as an Engine. Raises EngineError with a hint when it does not."""
    started = time.perf_counter()
    url = url.rstrip("/")
    key = profile_api_key(profile)
    with http_client(url, key, timeout=SETUP_TIMEOUT) as client:
        models = _get_json(client, "/v1/models", required=True)
        entry = served_entry(models, profile)
        if entry is None:
            raise EngineError(
                f"the server at {url} serves {', '.join(served_names(models)) or 'no model'}, not {profile.model}",
                hint="run with the --profile/--model of the served model, or --engine local to load "
                "this one here (stop the server first if it holds the GPU)",
            )
        model_id = str(entry["id"])
        features = ServerFeatures.from_openapi(_get_json(client, "/openapi.json"))
        task = features.task or _probe_task(client, model_id)
        tokenizer = load_tokenizer(profile)
        server_len = _check_tokenizer(client, model_id, tokenizer, url)
        max_model_len = entry.get("max_model_len") or server_len or profile.engine.get("max_model_len")
        if not max_model_len:
            raise EngineError(
                f"the server at {url} does not say its context length (max_model_len)",
                hint="set max_model_len in the profile's [engine] table",
            )
    harmony = model_type(resolve_model(profile.model), profile.engine.get("revision")) in HARMONY_MODEL_TYPES
    if harmony:
        require_harmony_encoding()
    connection = _Connection(url, key, model_id, task, int(max_model_len), features, harmony)
    return ServerEngine(
        connection,
        tokenizer=tokenizer,
        # The same name the local engine reports, so a run resumed on the other engine agrees.
        model_name=result_model_name(profile),
        max_in_flight=profile.batch.max_in_flight,
        load_seconds=time.perf_counter() - started,
        health_interval=health_interval,
    )


def _get_json(client: httpx.Client, path: str, *, required: bool = False) -> Any:
    try:
        response = client.get(path)
    except httpx.TransportError as exc:
        raise EngineError(
            f"no server answers at {client.base_url} ({type(exc).__name__})",
            hint="start it (vbatch serve --profile NAME), check the URL and port, or run with --engine local",
        ) from exc
    if response.status_code in (401, 403):
        raise EngineError(
            f"the server at {client.base_url} refused vbatch's API key (HTTP {response.status_code})",
            hint="set the key the server expects in VBATCH_API_KEY (or the variable / file the "
            "profile's [serve] table names)",
        )
    if response.status_code != 200:
        if not required:
            return None
        raise EngineError(
            f"{client.base_url}{path} answered HTTP {response.status_code}",
            hint="is this a vLLM OpenAI-compatible server? check the URL",
        )
    try:
        return response.json()
    except ValueError:
        if required:
            raise EngineError(
                f"{client.base_url}{path} did not answer JSON",
                hint="is this a vLLM OpenAI-compatible server? check the URL",
            ) from None
        return None


def _probe_task(client: httpx.Client, model_id: str) -> Task:
    """Without a schema: a route the server lacks answers 404, one it has rejects the empty body."""
    response = client.post("/v1/embeddings", json={"model": model_id})
    return "generate" if response.status_code == 404 else "embed"


def load_tokenizer(profile: Profile) -> Any:
    """The Hugging Face tokenizer of the profile's model, loaded here: prompts are rendered and
    tokenized locally, the server only sees token ids."""
    source = resolve_model(profile.tokenizer or profile.model)
    options = {"trust_remote_code": bool(profile.engine.get("trust_remote_code", False))}
    revision = profile.engine.get("tokenizer_revision") or profile.engine.get("revision")
    if revision:
        options["revision"] = revision
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(source, **options)
    except Exception as exc:  # noqa: BLE001 - any failure here has the same remedy
        raise EngineError(
            f"cannot load the tokenizer of {source}: {type(exc).__name__}: {exc}",
            hint="vbatch tokenizes on this machine even with a server: the model's tokenizer files "
            "must be here (a local folder or the Hugging Face cache)",
        ) from exc


def _check_tokenizer(client: httpx.Client, model_id: str, tokenizer: Any, url: str) -> int | None:
    """Compare token ids for a probe text with the server's /tokenize; returns the max_model_len
    it reports. A server without /tokenize is trusted."""
    from array import array

    try:
        response = client.post(
            "/tokenize", json={"model": model_id, "prompt": TOKENIZER_PROBE, "add_special_tokens": True}
        )
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    data = response.json()
    local = array("i")  # what the renderer would send for this text
    local.frombytes(PromptTokenizer(tokenizer).encode([TOKENIZER_PROBE], add_special_tokens=True)[0])
    if data.get("tokens") is not None and list(data["tokens"]) != local.tolist():
        raise EngineError(
            f"the server at {url} tokenizes differently from the profile's tokenizer",
            hint="it serves another model or tokenizer revision: run with the --profile/--model of "
            "the served model, or --engine local",
        )
    return data.get("max_model_len")
