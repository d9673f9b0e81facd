"""Target specs: `vbatch:PROFILE`, `ollama[:URL]:MODEL`, `openai:URL:MODEL`.

URLs hold colons (http://host:8000/v1) and so do Ollama model names (llama3.2:1b), so a spec
is not split on colons blindly: after the kind, a URL is recognised by its scheme and read up
to the end of its host, port and path; everything after the next colon is the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from vbatch.core.requests import Request
from vbatch.errors import UsageError
from vbatch.services.bench.metrics import RequestSample
from vbatch.services.bench.report import TargetInfo

KINDS = ("vbatch", "openai", "ollama")
OLLAMA_DEFAULT_URL = "http://localhost:11434"
TARGET_EXAMPLES = (
    "--target vbatch:cpu-chat, --target openai:http://127.0.0.1:8000/v1:MODEL, "
    "--target ollama:llama3.2:1b or --target ollama:http://host:11434:llama3.2:1b"
)

# scheme://host[:port][/path] -- a port is digits only, a path holds no colon.
_URL = re.compile(r"(?P<url>https?://(?:\[[^\]]*\]|[^/:\[\]]+)(?::\d+)?(?:/[^:]*)?)(?::(?P<model>.*))?\Z")


@dataclass(frozen=True)
class TargetSpec:
    kind: str
    #: The model name the server knows (openai, ollama) or the profile reference (vbatch; None =
    #: the default profile).
    model: str | None
    #: Base URL: .../v1 for openai, the server root for ollama; None for vbatch.
    url: str | None
    #: The spec as the user wrote it.
    text: str

    @property
    def label(self) -> str:
        """Short name for tables and plots: kind:model (a profile path shows as its file stem)."""
        name = self.model or "default"
        if self.kind == "vbatch" and name.endswith(".toml"):
            name = Path(name).stem
        return f"{self.kind}:{name}"

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc if self.url else "local"


def parse_target(text: str) -> TargetSpec:
    """Parse one --target value; a UsageError says what a valid spec looks like."""
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        hint = f"write one of {', '.join(k + ':...' for k in KINDS)}, e.g. {TARGET_EXAMPLES}"
        if kind in ("vllm", "llama.cpp", "llamacpp", "llama-cpp", "http", "https"):
            hint = "vLLM's and llama.cpp's servers speak the OpenAI API: --target openai:http://HOST:PORT/v1:MODEL"
        raise UsageError(f"unknown target kind {kind!r} in {text!r}", hint=hint)
    if kind == "vbatch":
        if sep and not rest:
            raise UsageError(
                f"no profile after 'vbatch:' in {text!r}",
                hint="write vbatch:PROFILE (a name from `vbatch profiles list` or a .toml path), or just vbatch",
            )
        return TargetSpec("vbatch", rest or None, None, text)
    if rest.startswith(("http://", "https://")):
        match = _URL.match(rest)
        if match is None:
            raise UsageError(
                f"cannot read the URL in {text!r}",
                hint=f"write {kind}:http://HOST:PORT/PATH:MODEL, e.g. {TARGET_EXAMPLES}",
            )
        url, model = match.group("url").rstrip("/"), match.group("model")
        if not model:
            raise UsageError(
                f"no model after the URL in {text!r}",
                hint=f"add ':MODEL' after the URL, e.g. {kind}:{url}:MODEL (the name the server serves)",
            )
        return TargetSpec(kind, model, url, text)
    if kind == "openai":
        if "://" in rest or re.match(r"[^:/]+:\d+", rest):
            hint = "start the URL with http:// or https://, e.g. openai:http://127.0.0.1:8000/v1:MODEL"
        else:
            hint = "write openai:URL:MODEL, e.g. openai:http://127.0.0.1:8000/v1:MODEL"
        raise UsageError(f"openai targets need a URL: {text!r}", hint=hint)
    if not rest:
        raise UsageError(
            f"no model in {text!r}",
            hint=f"write ollama:MODEL (server at {OLLAMA_DEFAULT_URL}) or ollama:URL:MODEL, e.g. ollama:llama3.2:1b",
        )
    if "://" in rest:
        raise UsageError(f"cannot read the URL in {text!r}", hint="Ollama URLs start with http:// or https://")
    return TargetSpec("ollama", rest, OLLAMA_DEFAULT_URL, text)


def parse_concurrency(text: str) -> list[int]:
    """ "1,4,16,64" -> [1, 4, 16, 64] (order kept, repeats dropped)."""
    levels: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise UsageError(
                f"bad concurrency {text!r}: {part!r} is not a whole number of at least 1",
                hint="give comma-separated levels, e.g. --concurrency 1,4,16,64",
            )
        if int(part) not in levels:
            levels.append(int(part))
    return levels


def unique_labels(specs: list[TargetSpec]) -> list[str]:
    """Labels for a table: kind:model, with @host added where two targets would share one."""
    plain = [spec.label for spec in specs]
    labels = [f"{label}@{spec.host}" if plain.count(label) > 1 else label for label, spec in zip(plain, specs)]
    return [f"{label}#{i + 1}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


# --------------------------------------------------------------------------------------------
# What the runner drives: one interface over the in-process engine and the HTTP servers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Bounds on every loop, so a slow or dead target ends as error rows, never a hang."""

    #: Seconds for one target at one concurrency level (warm-up included as its own phase).
    time_limit_s: float = 600.0
    #: Seconds for one request, from sending it to its last token.
    request_timeout_s: float = 120.0
    #: Seconds to connect and for the small set-up calls (model list, version).
    probe_timeout_s: float = 5.0


@dataclass
class Phase:
    samples: list[RequestSample]
    wall_seconds: float


class TargetUnavailable(Exception):
    """The target cannot be benchmarked (nothing listening, unknown model, load failed)."""


class BenchTarget(Protocol):
    def open(self) -> TargetInfo:
        """Connect or load; describe what answers. Raises TargetUnavailable."""

    def run_phase(self, requests: list[Request], concurrency: int) -> Phase:
        """Send every request with at most `concurrency` in flight, within the time limit."""

    def close(self) -> None: ...
