"""Reading a finished batch's records back: each custom_id with its output line (or its error
line), base64 embeddings decoded to vectors so a caller never handles the wire encoding."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson


def records(*paths: str | Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(custom_id, record) for every line of these JSONL files, in file order; None is skipped."""
    for path in paths:
        if path is None:
            continue
        with open(path, "rb") as lines:
            for line in lines:
                if line.strip():
                    record = orjson.loads(line)
                    yield record.get("custom_id"), decode_embeddings(record)


def decode_embeddings(record: dict[str, Any]) -> dict[str, Any]:
    """The record with each base64 embedding of its body (encoding_format "base64") as a vector."""
    body = (record.get("response") or {}).get("body") or {}
    for item in body.get("data") or ():
        if isinstance(item, dict) and isinstance(item.get("embedding"), str):
            item["embedding"] = decode_vector(item["embedding"])
    return record


def decode_vector(text: str) -> Any:
    """A base64 embedding (little-endian float32, as OpenAI sends it): a numpy float32 array when
    numpy is installed, else a list of floats."""
    raw = base64.b64decode(text)
    try:
        import numpy
    except ImportError:
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    return numpy.frombuffer(raw, dtype="<f4").astype(numpy.float32)
