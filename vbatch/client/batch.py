"""`from vbatch import Batch`: the API of parasail's `openai_batch.Batch`, so code written for it
runs on vbatch by changing its import.

A Batch gathers requests given as the arguments of `chat.completions.create`,
`completions.create` or `embeddings.create` into a batch file, submits it, follows it and
downloads its output and error files. It runs on a vbatch server (`vbatch serve`; the default),
OpenAI or any OpenAI-compatible batch API (`base_url=`, `api_key=`, or an `openai.OpenAI` client
as `provider=`), or in this process with no server (`provider="local"`, `profile=`).

Beyond parasail's API: a request may name its `custom_id`; `completions.create` requests;
`results()` reads the records back by custom_id with base64 embeddings decoded. Parasail's
other request types (score, rerank, image edits) are not vbatch endpoints, and
`submit_wait_download` does not print each status (`status_callback` sees them).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson

from vbatch.client.api import COMPLETION_WINDOW, FINISHED_STATES, BatchApi
from vbatch.client.connection import Server, openai_module
from vbatch.client.endpoints import endpoint_of_file, endpoint_of_request
from vbatch.client.local import LOCAL, local_profile, new_batch_id, run_local_batch
from vbatch.client.results import records
from vbatch.config.profiles import Profile

#: The id `submit(dry_run=True)` gives, as parasail's does.
DRY_RUN_ID = "batch-dry-run"

Submission = str | Path | bytes | IO[Any]
Paths = tuple[str | Path | None, str | Path | None]


class Batch:
    """One batch: build it with `add_to_batch`, then `submit` and `status`, `download`, or
    `submit_wait_download`; or attach to a submitted one with `Batch(batch_id=...)`.

    submission_input_file: where the batch file is written (a path, or an open file); a path or
        the bytes of a finished batch file to submit as it is. Default:
        batch_submission_<date>_<time>.jsonl in the current directory.
    output_file, error_file: where `download` writes. Default: <batch id>-output.jsonl and
        <batch id>-errors.jsonl in the current directory.
    custom_id_prefix: requests without a custom_id get <prefix>-1, <prefix>-2, ...
    provider: None (a vbatch server: `base_url` or $VBATCH_BASE_URL, else the default profile's
        `vbatch serve` on this machine; `api_key` or $VBATCH_API_KEY), "local" (run in this
        process with `profile`, the default profile unless given), an `openai.OpenAI` client, or
        an object with `get_client()` returning one (parasail's providers).
    """

    def __init__(
        self,
        submission_input_file: Submission | None = None,
        output_file: str | Path | None = None,
        error_file: str | Path | None = None,
        custom_id_prefix: str = "line",
        batch_id: str | None = None,
        provider: Any = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        profile: str | Path | Profile | None = None,
    ) -> None:
        if submission_input_file is not None and batch_id is not None:
            raise ValueError(
                "give submission_input_file (a new batch) or batch_id (a submitted one), not both: "
                "a submitted batch takes no more requests"
            )
        if provider is not None and (base_url or api_key):
            raise ValueError("give either provider or base_url/api_key, not both")
        if profile is not None and provider != LOCAL:
            raise ValueError('profile= is for batches run in this process: add provider="local"')
        if batch_id is not None and provider == LOCAL:
            raise ValueError(
                "a local batch runs inside submit() and lives only in its Batch; its results are in "
                "its output_file and error_file"
            )
        self.submission_input_file = submission_input_file
        self.output_file = output_file
        self.error_file = error_file
        self.custom_id_prefix = custom_id_prefix
        self.batch_id = batch_id
        self.provider = provider
        self.n_requests = 0
        self.n_bytes = 0
        #: The model and the endpoint URL of the requests added: one of each per batch.
        self.model: str | None = None
        self.endpoint: str | None = None
        self._base_url = base_url
        self._api_key = api_key
        self._profile = profile
        self._custom_ids: set[str] = set()
        self._writer: IO[Any] | None = None
        self._owns_writer = False
        self._api: BatchApi | None = None
        self._local_batch: Any = None
        self._downloaded: Paths | None = None

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._finish_writing()

    # --- building ------------------------------------------------------------------------------

    def add_to_batch(self, **kwargs: Any) -> None:
        """Add one request: the keyword arguments of `client.chat.completions.create`
        (`messages`), `completions.create` (`prompt`) or `embeddings.create` (`input`), with a
        `model`, and optionally a `custom_id`. A batch holds one endpoint and one model."""
        if self.batch_id is not None:
            raise ValueError(f"batch {self.batch_id} is submitted already: it takes no more requests")
        if "model" not in kwargs:
            raise ValueError("each request needs a model= (a batch runs one model)")
        endpoint = endpoint_of_request(kwargs)
        if self.endpoint is not None and endpoint != self.endpoint:
            raise ValueError(
                f"this batch holds {self.endpoint} requests and a batch has one endpoint: "
                f"put {endpoint} requests in another Batch"
            )
        if self.model is not None and kwargs["model"] != self.model:
            raise ValueError(f"this batch runs model {self.model!r}: put {kwargs['model']!r} requests in another Batch")
        custom_id = kwargs.pop("custom_id", None) or f"{self.custom_id_prefix}-{self.n_requests + 1}"
        if custom_id in self._custom_ids:
            raise ValueError(f"custom_id {custom_id!r} is in this batch already; each request needs its own")
        line = orjson.dumps({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": kwargs}) + b"\n"
        self._write(line)
        self._custom_ids.add(custom_id)
        self.endpoint, self.model = endpoint, kwargs["model"]
        self.n_requests += 1
        self.n_bytes += len(line)

    def _write(self, line: bytes) -> None:
        if self._writer is None:
            target = self.submission_input_file
            if isinstance(target, bytes):
                raise ValueError(
                    "submission_input_file holds a finished batch file (bytes): add_to_batch cannot add to it"
                )
            if target is None or isinstance(target, (str, Path)):
                path = Path(target or f"batch_submission_{datetime.now():%Y%m%d_%H%M%S}.jsonl")
                path.parent.mkdir(parents=True, exist_ok=True)
                self.submission_input_file = target or str(path)
                self._writer, self._owns_writer = path.open("wb"), True
            else:
                self._writer = target
        self._writer.write(line.decode() if isinstance(self._writer, io.TextIOBase) else line)

    def _finish_writing(self) -> None:
        if self._writer is None:
            return
        if self._owns_writer:
            self._writer.close()
        else:
            self._writer.flush()
        self._writer = None

    def _submission(self) -> Path | bytes:
        """The finished batch file: its path, or its bytes when it lives in memory."""
        self._finish_writing()
        source = self.submission_input_file
        if source is None:
            raise ValueError("the batch is empty: add requests with add_to_batch() first")
        if isinstance(source, (str, Path, bytes)):
            return source if isinstance(source, bytes) else Path(source)
        name = getattr(source, "name", None)
        if isinstance(name, str) and Path(name).is_file():
            return Path(name)
        data = source.getvalue() if hasattr(source, "getvalue") else source.read()
        return data.encode() if isinstance(data, str) else data

    # --- running -------------------------------------------------------------------------------

    def submit(self, metadata: dict[str, str] | None = None, dry_run: bool = False) -> str:
        """Submit the batch; returns its id. A local batch runs to the end here. `dry_run`
        finishes the batch file but sends nothing (the id is "batch-dry-run")."""
        source = self._submission()
        endpoint = self.endpoint = self.endpoint or endpoint_of_file(source)
        if dry_run:
            self.batch_id = DRY_RUN_ID
        elif self.provider == LOCAL:
            batch_id = new_batch_id()
            if isinstance(source, bytes):
                path = Path(f"{batch_id}-input.jsonl")
                path.write_bytes(source)
                source = path
            output, errors = self._targets(batch_id)
            self._local_batch = run_local_batch(
                batch_id, local_profile(self._profile), source, endpoint, Path(output), Path(errors), metadata
            )
            self.batch_id = batch_id
        else:
            self.batch_id = self._batch_api().create(source, endpoint, metadata).id
        return self.batch_id

    def status(
        self,
        extra_headers: dict[str, str] | None = None,
        extra_query: dict[str, object] | None = None,
        extra_body: object | None = None,
        timeout: float | None = None,
        dry_run: bool = False,
    ) -> Any:
        """The batch as an `openai.types.Batch` (status, request_counts, usage, file ids). The
        extra_* and timeout options go to the openai client's call as given."""
        batch_id = self._submitted_id()
        if dry_run:
            return openai_module().types.Batch(
                id=batch_id,
                object="batch",
                status="completed",
                endpoint=self.endpoint or "/v1/chat/completions",
                completion_window=COMPLETION_WINDOW,
                created_at=0,
                input_file_id="file-dry-run-input",
                output_file_id="file-dry-run-output",
                error_file_id="file-dry-run-error",
            )
        if self.provider == LOCAL:
            return self._local_batch
        options = {
            "extra_headers": extra_headers,
            "extra_query": extra_query,
            "extra_body": extra_body,
            "timeout": timeout,
        }
        return self._batch_api().retrieve(batch_id, **{k: v for k, v in options.items() if v is not None})

    def download(
        self,
        extra_headers: dict[str, str] | None = None,
        extra_query: dict[str, object] | None = None,
        extra_body: object | None = None,
        timeout: float | None = None,
        dry_run: bool = False,
    ) -> Paths:
        """Write the output and error files; returns their paths, None for a file the batch does
        not have (no result, or no error). `dry_run` writes empty output_file and error_file."""
        batch_id = self._submitted_id()
        if dry_run:
            for path in (self.output_file, self.error_file):
                if path is not None:
                    Path(path).write_text("")
            return self.output_file, self.error_file
        batch = self.status(extra_headers, extra_query, extra_body, timeout)
        output, errors = self._targets(batch_id)
        if self.provider == LOCAL:  # the run wrote them there
            self._downloaded = (output if batch.output_file_id else None, errors if batch.error_file_id else None)
        else:
            self._downloaded = self._batch_api().download(batch, output, errors)
        return self._downloaded

    def submit_wait_download(
        self,
        interval: float = 60,
        status_callback: Callable[[Any], Any] | None = None,
        extra_headers: dict[str, str] | None = None,
        extra_query: dict[str, object] | None = None,
        extra_body: object | None = None,
        timeout: float | None = None,
        metadata: dict[str, str] | None = None,
        dry_run: bool = False,
    ) -> tuple[Any, str | Path | None, str | Path | None]:
        """Submit, check the status every `interval` seconds (each one handed to
        `status_callback`) until the batch is completed, failed, expired or cancelled, then
        download; returns (batch, output path, error path)."""
        self.submit(metadata=metadata, dry_run=dry_run)
        while True:
            batch = self.status(extra_headers, extra_query, extra_body, timeout, dry_run=dry_run)
            if status_callback is not None:
                status_callback(batch)
            if batch.status in FINISHED_STATES:
                break
            time.sleep(interval)
        output, errors = self.download(extra_headers, extra_query, extra_body, timeout, dry_run=dry_run)
        return batch, output, errors

    def results(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(custom_id, record) for each request: its output line, or its error line (`"error"`
        set), base64 embeddings decoded (numpy arrays when numpy is installed, else lists of
        floats). Downloads the files first unless `download()` did."""
        return records(*(self._downloaded or self.download()))

    # --- where it runs -------------------------------------------------------------------------

    def _submitted_id(self) -> str:
        if self.batch_id is None:
            raise ValueError("the batch is not submitted yet: call submit() first")
        return self.batch_id

    def _targets(self, batch_id: str) -> tuple[str | Path, str | Path]:
        return self.output_file or f"{batch_id}-output.jsonl", self.error_file or f"{batch_id}-errors.jsonl"

    def _batch_api(self) -> BatchApi:
        if self._api is None:
            if self.provider is None:
                self._api = BatchApi.of(Server.resolve(self._base_url, self._api_key))
            elif hasattr(self.provider, "get_client"):
                self._api = BatchApi(self.provider.get_client())
            else:
                self._api = BatchApi(self.provider)
        return self._api
