"""The batch server as the tests drive it: `vbatch serve --profile cpu-chat` with a key, the
official `openai` client for it, batch files, and waiting for a batch to reach a status."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from support.cli import user_env
from vbatch.services.launch import ManagedServer

KEY = "batch-test-key"


def start_server(state: Path, port: int, log: Path) -> ManagedServer:
    """`vbatch serve --profile cpu-chat` with a key, its state (catalog, files) under `state`."""
    return ManagedServer(
        [sys.executable, "-m", "vbatch", "serve", "--profile", "cpu-chat", "--port", str(port)],
        base_url=f"http://127.0.0.1:{port}",
        env=user_env(VBATCH_API_KEY=KEY, XDG_STATE_HOME=str(state)),
        log_path=log,
        ready_timeout=600,
    )


def client_for(server: ManagedServer, key: str = KEY):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)


def batch_file(path: Path, count: int, *, max_tokens: int = 8, bad: int = 0, prefix: str = "q") -> Path:
    """`count` chat lines sharing a system prompt, then `bad` lines that cannot run."""
    lines = [
        {
            "custom_id": f"{prefix}{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "tiny",
                "messages": [
                    {"role": "system", "content": "You answer briefly. " * 8},
                    {"role": "user", "content": f"question {i}"},
                ],
                "max_tokens": max_tokens,
                "temperature": 0,
            },
        }
        for i in range(count)
    ]
    lines += [{"custom_id": f"bad{i}", "method": "POST", "url": "/v1/chat/completions", "body": {}} for i in range(bad)]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def wait_for(client, batch_id: str, statuses: tuple[str, ...], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status} after {timeout} s"
        time.sleep(0.3)


def records(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).read().splitlines() if line.strip()]
