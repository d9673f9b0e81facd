"""API-key middleware that `vbatch serve` loads into vLLM's server (`--middleware`).

Why: vLLM's own key check covers /v1 only; /invocations, /tokenize, /pooling, /metrics, /docs and
the rest answer anyone. This wraps the whole ASGI app (mounted apps such as /metrics included), so
every HTTP request and websocket except /health (the liveness probe vbatch itself polls) must
carry the key as `Authorization: Bearer KEY`, or gets 401 with an OpenAI-style error body. The batch
server's web page (/ui) is open too: it holds no data, and every API call it makes carries the key.

The key comes from the server's environment (VLLM_API_KEY, set by `vbatch serve`), never from its
command line. Pure ASGI and stdlib only: it loads in the server process without importing vLLM,
passes streaming responses through untouched, and lets lifespan events through.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vbatch.config.server import VLLM_API_KEY_ENV
from vbatch.services.batch_server.ui import PUBLIC_PATHS as PAGE_PATHS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The variable the key is read from: the one `vbatch serve` sets (vLLM's own check reads it too).
KEY_ENV = VLLM_API_KEY_ENV
#: Answer without a key: /health (`vbatch serve` waits for it, the server engine and --engine auto
#: poll it) and the web page's files.
OPEN_PATHS = frozenset({"/health"}) | PAGE_PATHS
#: Websocket close code for a refused handshake (RFC 6455 "policy violation").
WS_POLICY_VIOLATION = 1008

_UNAUTHORIZED_BODY = json.dumps(
    {
        "error": {
            "message": "Missing or incorrect API key: send it as 'Authorization: Bearer KEY'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
).encode()


class ApiKeyMiddleware:
    """Requires the server's API key on every route but /health and the web page, for every method and websockets.

    A CORS preflight (OPTIONS with Origin and Access-Control-Request-Method) passes, as vLLM's
    own check lets it: browsers never send credentials on it, and vLLM's CORS middleware, which
    runs inside this one, answers it without reaching any endpoint.
    """

    def __init__(self, app: ASGIApp):
        key = os.environ.get(KEY_ENV, "").strip()
        if not key:
            # Loaded to protect the server: an empty key must stop it, not leave it open.
            raise RuntimeError(f"{__name__}.{type(self).__name__} needs the API key in ${KEY_ENV}")
        self.app = app
        self._expected = b"bearer " + key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION})
        else:
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(_UNAUTHORIZED_BODY)).encode()),
                        (b"www-authenticate", b"Bearer"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _UNAUTHORIZED_BODY})

    def _allowed(self, scope: Scope) -> bool:
        if scope["path"].removeprefix(scope.get("root_path", "")) in OPEN_PATHS:  # as vLLM's check
            return True
        headers = dict(scope.get("headers") or [])  # names arrive lower-cased (ASGI spec)
        if scope.get("method") == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers:
            return True
        return _same(headers.get(b"authorization", b""), self._expected)


def _same(sent: bytes, expected: bytes) -> bool:
    """Constant-time comparison; the scheme ("Bearer") is case-insensitive (RFC 9110)."""
    scheme, _, token = sent.strip().partition(b" ")
    return hmac.compare_digest(scheme.lower() + b" " + token.strip(), expected)
