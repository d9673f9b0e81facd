"""Serves the batch server's web page (`ui/`: /ui, and / redirecting there) and
/v1/vbatch/server, the facts about the server the page shows beside the batches.

The page's files are read once at start and only the names in `ui.ASSETS` are served, so no
request path ever reaches the file system. They come with a strict Content-Security-Policy: the
page runs its own script file only, never inline code, so markup smuggled into metadata or an
error message cannot run. /v1/vbatch/server stays behind the API key like the rest of /v1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import vbatch
from vbatch.config.profiles import Profile, installed_vllm_version
from vbatch.services.batch_server.ui import ASSETS, PUBLIC_PATHS, UI_ROOT
from vbatch.services.server_auth import Scope, Send

SERVER_FACTS_PATH = "/v1/vbatch/server"

#: Scripts and styles from this origin only (no inline code, so injected markup cannot run),
#: requests to this origin only, and the page never framed.
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: bytes
    etag: bytes


def _load_assets() -> dict[str, _Asset]:
    folder = Path(__file__).with_name("ui")
    assets = {}
    for name, content_type in ASSETS.items():
        body = (folder / name).read_bytes()
        assets[UI_ROOT + name] = _Asset(body, content_type, b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode())
    assets[UI_ROOT] = assets[UI_ROOT + "index.html"]
    return assets


class WebPage:
    """Answers the page's paths and /v1/vbatch/server; every other path is left to the next app."""

    def __init__(self, profile: Profile):
        self.profile = profile
        self._assets = _load_assets()
        #: The endpoints batches may name, known once the batch API has started (empty until then).
        self.endpoints: frozenset[str] = frozenset()

    async def handle(self, scope: Scope, send: Send) -> bool:
        """Answer the request if its path is the page's (True); False: the next app answers it."""
        root = scope.get("root_path", "")
        path = scope["path"].removeprefix(root)
        if path not in PUBLIC_PATHS and path != SERVER_FACTS_PATH:
            return False
        if scope["method"] not in ("GET", "HEAD"):
            await _reply(send, scope, 405, [(b"allow", b"GET, HEAD")])
        elif path == SERVER_FACTS_PATH:
            body = orjson.dumps(self.facts())
            await _reply(
                send, scope, 200, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body
            )
        elif path in ("/", "/ui"):
            await _reply(send, scope, 302, [(b"location", (root + UI_ROOT).encode())])
        else:
            await self._send_asset(scope, send, self._assets[path])
        return True

    async def _send_asset(self, scope: Scope, send: Send, asset: _Asset) -> None:
        # no-cache: the browser asks again each time (an upgraded vbatch shows its new page at
        # once) and the ETag makes that answer a bodiless 304 when nothing changed.
        headers = [(b"cache-control", b"no-cache"), (b"etag", asset.etag), *_SECURITY_HEADERS]
        if dict(scope.get("headers") or []).get(b"if-none-match") == asset.etag:
            await _reply(send, scope, 304, headers)
        else:
            await _reply(send, scope, 200, [(b"content-type", asset.content_type), *headers], asset.body)

    def facts(self) -> dict[str, Any]:
        """The server panel's data: what runs here, which versions, and the batch settings."""
        profile = self.profile
        return {
            "object": "vbatch.server",
            "profile": profile.name,
            "profile_description": profile.description,
            "models": profile.served_names or [profile.served_name],
            "vbatch_version": vbatch.__version__,
            "vllm_version": installed_vllm_version(),
            "batches": {
                "endpoints": sorted(self.endpoints),
                "max_upload_bytes": profile.serve.max_upload_bytes,
                "keep_outputs_hours": profile.serve.keep_outputs_hours,
                "interactive_reserve": profile.serve.interactive_reserve,
                "kv_budget": profile.batch.kv_budget,
                "max_in_flight": profile.batch.max_in_flight,
            },
        }


async def _reply(send: Send, scope: Scope, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
    """One whole response; a HEAD gets the headers with the body's length and no body, a 304 no length."""
    if status != 304:
        headers = [*headers, (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
