"""The batch server's way into vLLM's server: an ASGI middleware `vbatch serve` loads with
--middleware (before the API-key middleware, which must wrap it).

It answers /v1/files and /v1/batches itself (`api.BatchApi`), the web page at /ui and its
/v1/vbatch/server (`page.WebPage`), and hands every other request to vLLM untouched. When the
server has started (the lifespan's startup is complete, so the engine client is on the app), it
starts the executor, which first resumes what an earlier server left unfinished. Its settings
come from the environment `vbatch serve` gives the server (`BatchServerSettings.to_env`), never
from the command line.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from vbatch.engines.vllm.served import server_engine_access
from vbatch.services.batch_server.api import ApiSettings, BatchApi
from vbatch.services.batch_server.executor import BatchExecutor
from vbatch.services.batch_server.metrics import register_batch_metrics
from vbatch.services.batch_server.page import WebPage
from vbatch.services.batch_server.settings import BatchServerSettings
from vbatch.storage.catalog import Catalog
from vbatch.storage.filestore import FileStore

log = logging.getLogger("vbatch.batch_server")


def _log_to_the_server_log() -> None:
    """vbatch's lines beside vLLM's in the server's output (vLLM configures only its own loggers)."""
    logger = logging.getLogger("vbatch")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("(vbatch) %(levelname)s %(asctime)s %(message)s", "%m-%d %H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BatchServerMiddleware:
    """OpenAI's Files and Batches API in front of vLLM's routes, on vLLM's own engine."""

    def __init__(self, app: ASGIApp):
        # Runs while vLLM builds its app, before the engine client exists: only read settings
        # here (a missing one stops the server before it serves), open the catalog at startup.
        self.app = app
        self.settings = BatchServerSettings.from_env(os.environ)
        self._page = WebPage(self.settings.profile)
        self._api: Any = None
        self._executor: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._watch_lifespan(scope, send))
            return
        if scope["type"] == "http" and (
            await self._page.handle(scope, send)
            or (self._api is not None and await self._api.handle(scope, receive, send))
        ):
            return
        await self.app(scope, receive, send)

    def _watch_lifespan(self, scope: Scope, send: Send) -> Send:
        async def watched(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self._start(scope["app"].state)
            elif message["type"] == "lifespan.shutdown.complete" and self._executor is not None:
                self._executor.close()
            await send(message)

        return watched

    async def _start(self, app_state: Any) -> None:
        """Open the catalog, start the executor. A failure is logged, never raised: raising in the
        lifespan would make uvicorn carry on without vLLM's own lifespan work."""
        _log_to_the_server_log()
        try:
            settings = self.settings
            profile = settings.profile
            settings.directory.mkdir(parents=True, exist_ok=True)
            catalog = Catalog(settings.directory / "catalog.sqlite3")
            store = FileStore(settings.directory / "files")
            engine = await server_engine_access(
                app_state,
                profile.batch.kv_budget,
                profile.batch.max_in_flight,
                profile.serve.interactive_reserve,
                one_stream=profile.serve.one_stream,
            )
            executor = BatchExecutor(
                catalog,
                store,
                settings.directory / "work",
                profile,
                engine,
                keep_outputs_s=profile.serve.keep_outputs_hours * 3600,
            )
            register_batch_metrics(catalog)
            api_settings = ApiSettings(max_upload_bytes=profile.serve.max_upload_bytes)
            self._api = BatchApi(catalog, store, executor, api_settings)
            self._executor = executor
            self._page.endpoints = executor.endpoints
            await asyncio.to_thread(executor.start)
            log.info("vbatch batch server: /v1/files and /v1/batches on %s (%s)", engine.model_name, settings.directory)
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("vbatch batch server could not start; /v1/files and /v1/batches are off")
