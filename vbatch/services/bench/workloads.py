"""Workloads: the exact requests every target receives.

Built-in workloads are generated from a seed, so two runs (and every target of one run) send
the same prompts. Each concurrency level gets its own draw from the same generator (`round`),
so a server's prefix cache never serves a level from the previous level's identical prompts.
A FILE workload is any OpenAI batch file (read with vbatch's own readers and request models);
it sends the same requests at every level, which the report notes.

Output lengths are fixed for every target: max_tokens is set on every request and ignore_eos
asks the server to generate exactly that many tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from vbatch.core.requests import Request, RequestError, parse_request
from vbatch.errors import InputError
from vbatch.storage.readers import open_input

DEFAULT_MAX_TOKENS = 64
DEFAULT_REQUESTS = 64
#: Prompt size of each built-in workload, in words (--prompt-words changes it):
#: shared-prefix: the shared system prompt; unique: each prompt; chat-short: the average message.
BUILTIN_PROMPT_WORDS = {"shared-prefix": 128, "unique": 96, "chat-short": 16}
BUILTIN_WORKLOADS = tuple(BUILTIN_PROMPT_WORDS)
#: Words of the question after the shared-prefix system prompt.
_QUESTION_WORDS = 12

_WORDS = """
the of and to in is for on that with as by at from this be are was it an or have not which
you all can more one will their has but about time there when up out so what them into some
other than then now only its over also new work first after use two how our way even because
any these give day most us system data model answer question result value table number text
batch server token memory cache request reply short long fast slow clear simple small large
river mountain garden window market letter engine planet summer winter morning evening music
""".split()


@dataclass(frozen=True)
class WorkloadSpec:
    #: A built-in workload name or the path of a batch file.
    name: str
    #: Requests per concurrency level (None: DEFAULT_REQUESTS, or the whole file).
    requests: int | None = None
    #: Output tokens per request (None: DEFAULT_MAX_TOKENS, or each line's own max_tokens).
    max_tokens: int | None = None
    prompt_words: int | None = None
    seed: int = 0

    @property
    def is_file(self) -> bool:
        return self.name not in BUILTIN_WORKLOADS

    @property
    def fixed_max_tokens(self) -> int | None:
        """The output length every request asks for; None: a FILE's lines keep their own."""
        return self.max_tokens or (None if self.is_file else DEFAULT_MAX_TOKENS)

    @property
    def words(self) -> int | None:
        """The built-in workload's prompt size in words; None for a FILE."""
        return None if self.is_file else self.prompt_words or BUILTIN_PROMPT_WORDS[self.name]

    def check(self) -> None:
        """Refuse an unknown workload before anything starts."""
        if self.is_file and not Path(self.name).is_file():
            raise InputError(
                f"workload {self.name!r} is neither a built-in workload nor a file",
                hint=f"use one of {', '.join(BUILTIN_WORKLOADS)}, or the path of an OpenAI batch .jsonl file",
            )


def workload_requests(spec: WorkloadSpec, round_name: str, count: int | None = None) -> list[Request]:
    """The requests of one round ("warmup", "level-0", ...), fixed-length and ready to send."""
    if spec.is_file:
        requests = _file_requests(spec.name, count or spec.requests)
    else:
        requests = _builtin_requests(spec, round_name, count or spec.requests or DEFAULT_REQUESTS)
    return [_fixed_length(request, spec.max_tokens) for request in requests]


def _builtin_requests(spec: WorkloadSpec, round_name: str, count: int) -> list[Request]:
    rng = random.Random(f"{spec.seed}:{spec.name}:{round_name}")  # str seeds are stable across runs
    words = spec.words
    assert words is not None  # a built-in workload always has a size

    def text(n: int) -> str:
        return " ".join(rng.choice(_WORDS) for _ in range(max(1, n))).capitalize() + "."

    shared = text(words) if spec.name == "shared-prefix" else ""
    lines = []
    for i in range(count):
        if spec.name == "shared-prefix":
            messages = [{"role": "system", "content": shared}, {"role": "user", "content": text(_QUESTION_WORDS)}]
        elif spec.name == "unique":
            messages = [{"role": "user", "content": text(words)}]
        else:
            messages = [{"role": "user", "content": text(rng.randint(max(1, words // 2), words * 3 // 2))}]
        lines.append({"custom_id": f"{round_name}-{i}", "messages": messages, "temperature": 0.0})
    return [_parsed(i + 1, line) for i, line in enumerate(lines)]


def _file_requests(path: str, limit: int | None) -> list[Request]:
    requests: list[Request] = []
    for record in open_input(path).records():
        if limit is not None and len(requests) >= limit:
            break
        if record.error is not None:
            raise InputError(
                f"{path} line {record.line}: {record.error}", hint="fix the line; a benchmark sends every request"
            )
        requests.append(_parsed(record.line, record.data, path))
    if not requests:
        raise InputError(f"{path} holds no requests", hint="give a batch file with chat or completion lines")
    return requests


def _parsed(line: int, data: dict, path: str = "built-in workload") -> Request:
    parsed = parse_request(line, data)
    if isinstance(parsed, RequestError):
        raise InputError(f"{path} line {line}: {parsed.message}", hint="fix the line; a benchmark sends every request")
    if parsed.endpoint == "embeddings":
        raise InputError(
            f"{path} line {line} is an embeddings request",
            hint="vbatch bench measures generation: use chat or completion lines",
        )
    if parsed.body.n != 1:
        raise InputError(
            f"{path} line {line} asks for n={parsed.body.n} choices",
            hint="vbatch bench sends one completion per request: remove n",
        )
    return parsed


def _fixed_length(request: Request, max_tokens: int | None) -> Request:
    body = request.body
    tokens = max_tokens or getattr(body, "max_completion_tokens", None) or body.max_tokens or DEFAULT_MAX_TOKENS
    update = {"max_tokens": tokens, "ignore_eos": True, "stream": None}
    if hasattr(body, "max_completion_tokens"):
        update["max_completion_tokens"] = None
    return Request(request.line, request.custom_id, request.endpoint, body.model_copy(update=update))
