"""Where a profile's server answers and which key it requires: one policy for `vbatch serve`, the
systemd unit it installs, and the clients that reach it (--engine auto/server).

Stdlib only at import time: vLLM's server process loads vbatch.services.server_auth, which reads
the key variable's name from here.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING

from vbatch.errors import UsageError

if TYPE_CHECKING:
    from vbatch.config.profiles import ServeSettings

#: The variable vLLM's server reads its API key from (vllm/envs.py), and vbatch's middleware too.
VLLM_API_KEY_ENV = "VLLM_API_KEY"


def api_key_for(
    serve: ServeSettings, api_key_file: Path | None, environ: dict[str, str]
) -> tuple[str | None, str | None]:
    """The key clients must send, and where it came from.

    Precedence: --api-key-file, then the profile's variable ($VBATCH_API_KEY by default), then
    the profile's api_key_file, then vLLM's own $VLLM_API_KEY (the server would enforce it anyway).
    """
    if api_key_file is not None:
        return read_key_file(api_key_file, "--api-key-file"), str(api_key_file)
    if environ.get(serve.api_key_env, "").strip():
        return environ[serve.api_key_env].strip(), serve.api_key_env
    if serve.api_key_file:
        path = Path(serve.api_key_file).expanduser()
        return read_key_file(path, "the profile's [serve].api_key_file"), str(path)
    if environ.get(VLLM_API_KEY_ENV, "").strip():
        return environ[VLLM_API_KEY_ENV].strip(), VLLM_API_KEY_ENV
    return None, None


def read_key_file(path: Path, what: str) -> str:
    try:
        lines = path.expanduser().read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UsageError(
            f"cannot read the API key file {path} ({what}): {err.strerror or err}",
            hint="create it with the key on its first line, readable only by you (chmod 600)",
        ) from err
    key = lines[0].strip() if lines else ""
    if not key:
        raise UsageError(
            f"the API key file {path} ({what}) is empty",
            hint="put the key on its first line, e.g. `openssl rand -hex 32 > FILE`",
        )
    return key


def needs_key(host: str, has_key: bool, insecure: bool) -> bool:
    """Beyond loopback a server must require a key, unless the user says the network is trusted."""
    return not (has_key or is_loopback(host) or insecure)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to a public address


def connect_host(host: str) -> str:
    """The address this machine reaches a server bound to `host` at (a wildcard via loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def local_url(host: str, port: int) -> str:
    """Where this machine reaches a server bound to host:port."""
    return f"http://{url_host(connect_host(host))}:{port}"
