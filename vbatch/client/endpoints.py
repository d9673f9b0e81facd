"""Which endpoint a batch is for: a Batches API batch names one URL, and every line must match it.
Told from a request's fields (`Batch.add_to_batch`), a file's first line (`vbatch submit`), or
a name given on the command line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from vbatch.core.requests import CHAT_URL, COMPLETIONS_URL, EMBEDDINGS_URL, ENDPOINT_OF_URL
from vbatch.errors import InputError

#: The field that tells each endpoint's request apart, as in vbatch's shorthand lines.
URL_OF_FIELD = {"messages": CHAT_URL, "prompt": COMPLETIONS_URL, "input": EMBEDDINGS_URL}
URL_OF_NAME = {name: url for url, name in ENDPOINT_OF_URL.items()}


def endpoint_of_request(fields: Mapping[str, Any]) -> str:
    """The URL of the `create` call these arguments are for; ValueError (as parasail's library
    raises) when they fit none or several."""
    found = [url for field, url in URL_OF_FIELD.items() if field in fields]
    if len(found) != 1:
        what = "several of" if found else "none of"
        raise ValueError(
            f"the request has {what} 'messages' (chat.completions.create), 'prompt' (completions.create) "
            "and 'input' (embeddings.create): give exactly one"
        )
    return found[0]


def endpoint_url(name: str) -> str:
    """`chat`, `completions`, `embeddings`, or a URL as it is (other batch APIs have more)."""
    if name in URL_OF_NAME:
        return URL_OF_NAME[name]
    if name.startswith("/"):
        return name
    raise InputError(
        f"unknown endpoint {name!r}",
        hint=f"use {', '.join(URL_OF_NAME)} or a URL such as {CHAT_URL}",
    )


def endpoint_of_file(source: Path | bytes) -> str:
    """The endpoint the first non-blank line of a file (or of its bytes) asks for: its "url", or
    the field of a shorthand line."""
    if isinstance(source, bytes):
        first = next((line for line in source.splitlines() if line.strip()), None)
    else:
        with source.open("rb") as fh:
            first = next((line for line in fh if line.strip()), None)
    where = "the batch file" if isinstance(source, bytes) else str(source)
    if first is None:
        raise InputError(f"{where} holds no request", hint="a batch file has one JSON request per line")
    try:
        data = orjson.loads(first)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"{where}: the first line is not JSON ({exc})", hint="each line is one JSON object") from exc
    if isinstance(data, dict):
        if isinstance(data.get("url"), str):
            return data["url"]
        try:
            return endpoint_of_request(data)
        except ValueError:
            pass
    raise InputError(
        f"{where}: cannot tell the endpoint from the first line",
        hint='give a "url" on each line, or name the endpoint (--endpoint chat, completions or embeddings)',
    )
