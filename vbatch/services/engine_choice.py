"""Which engine a run uses: the model loaded in this process, or a server that already has it.

One GPU, two users: while `vbatch serve` holds the model, a second engine does not fit on a
16 GB card (vLLM issue 20305), so `--engine auto` (the default) sends the batch through the
server when one answers at the profile's [serve] address with this profile's model, and loads
the model here otherwise. `local` and `server[=URL]` force the choice.

Pure except for `probe_server`, the one HTTP look (at most ~1 s per call when nothing answers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from vbatch.config.profiles import Profile
from vbatch.config.server import local_url
from vbatch.engines.base import Engine
from vbatch.engines.remote import (
    connect,
    http_client,
    profile_api_key,
    served_entry,
    served_names,
)
from vbatch.engines.vllm.engine import load_profile_engine
from vbatch.errors import UsageError

Mode = Literal["auto", "local", "server"]
#: Seconds the auto probe waits for /health and /v1/models.
PROBE_TIMEOUT = 1.0
ENGINE_CHOICES = "auto, local, server or server=URL"


@dataclass(frozen=True)
class EngineChoice:
    """The decision and the sentence that explains it to the user."""

    url: str | None  # None: load the model in this process
    reason: str


@dataclass(frozen=True)
class ServerProbe:
    """What a quick look at a server address found."""

    up: bool
    #: The served model names when it is up and does not serve the profile's model.
    other_models: tuple[str, ...] = ()

    @property
    def serves_profile(self) -> bool:
        return self.up and not self.other_models


def parse_engine_choice(text: str) -> tuple[Mode, str | None]:
    """ "auto" | "local" | "server" | "server=URL" -> (mode, URL or None)."""
    mode, sep, url = text.strip().partition("=")
    mode = mode.strip().lower()
    url = url.strip()
    if mode in ("auto", "local") and not sep:
        return mode, None  # type: ignore[return-value]
    if mode == "server" and (not sep or url):
        if url and not url.startswith(("http://", "https://")):
            url = "http://" + url
        return "server", url or None
    raise UsageError(
        f"unknown engine {text!r}: expected {ENGINE_CHOICES}",
        hint="e.g. --engine server=http://127.0.0.1:8000 to use a running `vbatch serve`, "
        "--engine local to load the model in this process",
    )


def choose_engine(
    mode: Mode, url: str | None, profile: Profile, probe: Callable[[str, Profile], ServerProbe]
) -> EngineChoice:
    """Decide where the batch runs; `probe` is consulted only in auto mode."""
    if mode == "local":
        return EngineChoice(None, "loading the model in this process (--engine local)")
    address = url or profile_server_url(profile)
    if mode == "server":
        return EngineChoice(address, f"using the server at {address} (--engine server)")
    found = probe(address, profile)
    if found.serves_profile:
        return EngineChoice(address, f"using the server at {address} (a server with this model is up)")
    if found.up:
        return EngineChoice(
            None,
            f"the server at {address} serves {', '.join(found.other_models)}, not this profile's model: "
            "loading the model in this process (if that server holds the GPU, stop it first)",
        )
    return EngineChoice(None, f"no server at {address}: loading the model in this process")


def profile_server_url(profile: Profile) -> str:
    """Where the profile's `vbatch serve` answers on this machine (a wildcard bind via loopback)."""
    return local_url(profile.serve.host, profile.serve.port)


def probe_server(url: str, profile: Profile, timeout: float = PROBE_TIMEOUT) -> ServerProbe:
    """Is a server up at `url` (/health), and does it serve the profile's model (/v1/models)?"""
    import httpx

    try:
        with http_client(url, profile_api_key(profile), timeout=timeout) as client:
            if client.get("/health").status_code != 200:
                return ServerProbe(up=False)
            response = client.get("/v1/models")
            if response.status_code in (401, 403):
                return ServerProbe(up=True)  # needs a key: connecting says so, with the fix
            models = response.json() if response.status_code == 200 else {}
    except (httpx.HTTPError, ValueError):
        return ServerProbe(up=False)
    if served_entry(models, profile) is not None:
        return ServerProbe(up=True)
    return ServerProbe(up=True, other_models=tuple(served_names(models)) or ("an unknown model",))


def engine_loader(
    choice: str = "auto",
    announce: Callable[[str], None] | None = None,
    probe: Callable[[str, Profile], ServerProbe] = probe_server,
) -> Callable[[Profile], Engine]:
    """The loader `run_batch` calls: decides (see choose_engine), says why through `announce`
    (the progress display), then connects to the server or loads the model here.

    A malformed `choice` raises UsageError now, before any work starts."""
    mode, url = parse_engine_choice(choice)

    def load(profile: Profile) -> Engine:
        decision = choose_engine(mode, url, profile, probe)
        if announce is not None:
            announce(decision.reason)
        if decision.url is None:
            return load_profile_engine(profile)
        return connect(decision.url, profile)

    return load
