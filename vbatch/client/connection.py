"""Which batch API a client talks to, with which key, and what its failures mean to a user.

One policy for `Batch()` and `vbatch submit` / `vbatch batches`: the base URL given, else
$VBATCH_BASE_URL, else where the default profile's `vbatch serve` answers on this machine; the key
given, else the server's key policy (config/server.py: $VBATCH_API_KEY, the profile's key file,
$VLLM_API_KEY), else $OPENAI_API_KEY.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from vbatch.config.profiles import default_profile_name, load_profile
from vbatch.config.server import api_key_for, local_url
from vbatch.errors import UsageError

BASE_URL_ENV = "VBATCH_BASE_URL"
#: The key variable of OpenAI's own client, the last one tried.
OPENAI_KEY_ENV = "OPENAI_API_KEY"
#: What the openai client sends when no key is known (it refuses to start without one); a server
#: without a key ignores it.
NO_KEY = "none"


def normalize_base_url(url: str) -> str:
    """http://host:8000 -> http://host:8000/v1: a server's address works as well as its API's URL."""
    url = url.strip().rstrip("/")
    if not urlsplit(url).scheme:
        raise UsageError(f"the batch API address {url!r} is not a URL", hint="write it like http://127.0.0.1:8000/v1")
    return url if urlsplit(url).path else url + "/v1"


@dataclass(frozen=True)
class Server:
    """A batch API: its OpenAI-style base URL (ending in /v1 for vbatch and OpenAI) and key."""

    base_url: str
    api_key: str | None

    @classmethod
    def resolve(
        cls, base_url: str | None = None, api_key: str | None = None, environ: Mapping[str, str] | None = None
    ) -> Server:
        """The server named, else $VBATCH_BASE_URL, else the default profile's `vbatch serve`."""
        env = dict(os.environ if environ is None else environ)
        url, key = base_url or env.get(BASE_URL_ENV), api_key
        if not url or not key:
            serve = load_profile(default_profile_name()).serve
            url = url or local_url(serve.host, serve.port)
            key = key or api_key_for(serve, None, env)[0]
        return cls(normalize_base_url(url), key or env.get(OPENAI_KEY_ENV))

    def client(self) -> Any:
        """An `openai.OpenAI` client for this server."""
        return openai_module().OpenAI(base_url=self.base_url, api_key=self.api_key or NO_KEY)


def openai_module() -> ModuleType:
    """The `openai` package, imported now (it takes a second), or an error saying how to get it."""
    try:
        import openai
    except ImportError as exc:
        raise UsageError(
            "the batch client needs the `openai` package, which is not installed", hint="pip install openai"
        ) from exc
    return openai
