"""The Files and Batches calls every client path makes (upload and create, retrieve, list,
cancel, download), through one `openai.OpenAI` client, its failures turned into vbatch errors
whose hints say what to do."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vbatch.client.connection import BASE_URL_ENV, OPENAI_KEY_ENV, Server, openai_module
from vbatch.errors import InputError, ServerError, UsageError

#: How long OpenAI gives a batch; the only window it accepts, and vbatch's default.
COMPLETION_WINDOW = "24h"
#: A batch in one of these states changes no more.
FINISHED_STATES = ("failed", "completed", "expired", "cancelled")

_START_HINT = (
    "start one on this machine with `vbatch serve --profile NAME`, or name yours with --server URL "
    f"or ${BASE_URL_ENV} (base_url= in Python), e.g. http://gpu-box:8000/v1"
)
_KEY_HINT = (
    "set the key the server expects in $VBATCH_API_KEY (api_key= in Python); for OpenAI, "
    f"${OPENAI_KEY_ENV} with $VBATCH_API_KEY unset"
)


class BatchApi:
    """One batch API (a vbatch server, OpenAI, any OpenAI-compatible one) through its client."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.base_url = str(client.base_url).rstrip("/")

    @classmethod
    def of(cls, server: Server) -> BatchApi:
        return cls(server.client())

    def create(self, source: Path | bytes, endpoint: str, metadata: dict[str, str] | None = None) -> Any:
        """Upload the batch file (a path, streamed; or its bytes) and create its batch."""
        with self.errors():
            if isinstance(source, bytes):
                uploaded = self.client.files.create(file=("batch.jsonl", source), purpose="batch")
            else:
                with source.open("rb") as data:
                    uploaded = self.client.files.create(file=data, purpose="batch")
            return self.client.batches.create(
                input_file_id=uploaded.id, endpoint=endpoint, completion_window=COMPLETION_WINDOW, metadata=metadata
            )

    def retrieve(self, batch_id: str, **request_options: Any) -> Any:
        with self.errors():
            return self.client.batches.retrieve(batch_id, **request_options)

    def newest(self, limit: int) -> list[Any]:
        """The newest `limit` batches, newest first."""
        with self.errors():
            return list(self.client.batches.list(limit=limit).data)

    def cancel(self, batch_id: str) -> Any:
        with self.errors():
            return self.client.batches.cancel(batch_id)

    def download(
        self, batch: Any, output: str | Path, errors: str | Path
    ) -> tuple[str | Path | None, str | Path | None]:
        """Write the batch's output and error files to these paths; a file the batch has not (no
        result, no error) is not written and comes back as None."""
        return self._fetch(batch.output_file_id, output), self._fetch(batch.error_file_id, errors)

    def _fetch(self, file_id: str | None, target: str | Path) -> str | Path | None:
        """Stream a file to `target`, whole or not at all (a .part file renamed when complete)."""
        if file_id is None:
            return None
        path = Path(target)
        partial = path.with_name(path.name + ".part")
        path.parent.mkdir(parents=True, exist_ok=True)
        with self.errors(), self.client.files.with_streaming_response.content(file_id) as response:
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
        os.replace(partial, path)
        return target

    @contextmanager
    def errors(self) -> Iterator[None]:
        """The openai client's exceptions as vbatch errors that say what to do."""
        openai = openai_module()
        try:
            yield
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ServerError(f"no batch API answers at {self.base_url} ({cause})", _START_HINT) from exc
        except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
            raise ServerError(
                f"the batch API at {self.base_url} refused the API key (HTTP {exc.status_code})", _KEY_HINT
            ) from exc
        except openai.NotFoundError as exc:
            raise UsageError(
                f"{self.base_url}: {_message(exc)} (HTTP 404)",
                hint="check the id (`vbatch batches list` shows them); a server without the Batches API "
                "(plain vLLM, or a profile with [serve].batches = false) answers 404 too",
            ) from exc
        except openai.APIStatusError as exc:
            message = f"the batch API at {self.base_url} refused the request: {_message(exc)} (HTTP {exc.status_code})"
            if exc.status_code == 413:
                raise InputError(
                    message, hint="split the file, or raise the server's [serve].max_upload_bytes"
                ) from exc
            if exc.status_code < 500:
                raise UsageError(message) from exc
            raise ServerError(message, hint="the server's log says more; try again once it is healthy") from exc


def _message(exc: Any) -> str:
    """What the server said (OpenAI's error body), without the client's "Error code: N - " prefix."""
    body = exc.body
    return body["message"] if isinstance(body, dict) and isinstance(body.get("message"), str) else exc.message
