"""Batch files and results as the tests write and read them."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def chat_line(i: int, **body) -> dict:
    return {
        "custom_id": f"c{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": f"question {i}"}],
            "max_tokens": 8,
            "temperature": 0,
            **body,
        },
    }


def write_lines(path: Path, lines: list) -> Path:
    """One JSON object per line (a str is written as it is: a bad line on purpose)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_batch(path: Path, lines: list, mtime: int) -> Path:
    """A batch file dropped into an inbox at `mtime` (drain takes the oldest first)."""
    write_lines(path, lines)
    os.utime(path, (mtime, mtime))
    return path
