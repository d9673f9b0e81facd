"""`vbatch status` on job directories laid out as `vbatch drain` leaves them (no engine needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from vbatch.config.profiles import load_profile
from vbatch.errors import InputError
from vbatch.services.drain import InboxLayout, Job, claim, finish
from vbatch.services.status import inbox_status
from vbatch.storage.journal import OutputLock


def _claim(layout: InboxLayout, name: str, started: str) -> Job:
    (layout.inbox / name).write_text("{}\n")
    job = claim(layout.inbox / name, layout, load_profile("cpu"), {"team": "nlp"})
    job.record.started = started
    job.save()
    return job


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_states_counts_and_throughput(tmp_path: Path):
    layout = InboxLayout.of(tmp_path)
    done = _claim(layout, "a.jsonl", "2026-01-01T00:00:01.000+00:00")
    done.file(".summary.json").write_text(
        json.dumps(
            {
                "requests": {"ok": 7, "failed": 2, "total": 9, "resumed": 0},
                "output_tokens_per_s": 123.4,
                "wall_seconds": 5.5,
            }
        )
    )
    finish(done, "done", layout)
    failed = _claim(layout, "b.parquet", "2026-01-01T00:00:02.000+00:00")
    finish(failed, "failed", layout, InputError("b.parquet is not a readable Parquet file"))
    killed = _claim(layout, "c.jsonl", "2026-01-01T00:00:03.000+00:00")
    killed.file(".lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    running = _claim(layout, "d.jsonl", "2026-01-01T00:00:04.000+00:00")
    (layout.inbox / "e.jsonl").write_text("{}\n")

    with (
        OutputLock(str(running.file(".results.jsonl")), str(running.file(".lock"))),
        OutputLock(str(layout.inbox), str(layout.lock)),
    ):
        status = inbox_status(layout)
    assert [(row.job, row.state) for row in status.jobs] == [
        ("a", "done"),
        ("b", "failed"),
        ("c", "interrupted"),
        ("d", "running"),
        ("e", "waiting"),
    ]
    assert status.counts == {"running": 1, "interrupted": 1, "waiting": 1, "done": 1, "failed": 1}
    assert status.requests == {"ok": 7, "failed": 2}
    assert status.drain is not None and status.drain["pid"] == os.getpid()
    a, b = status.jobs[:2]
    assert (a.ok, a.failed, a.output_tokens_per_s, a.wall_seconds, a.meta) == (7, 2, 123.4, 5.5, {"team": "nlp"})
    assert b.dir == str(layout.failed / "b") and "not a readable Parquet" in b.error
    assert inbox_status(layout).drain is None  # lock released


def test_cli_plain_and_json_without_a_terminal(tmp_path: Path):
    layout = InboxLayout.of(tmp_path)
    (tmp_path / "w.jsonl").write_text("{}\n")
    finish(_claim(layout, "x.jsonl", "2026-01-01T00:00:01.000+00:00"), "failed", layout, InputError("broken"))
    plain = subprocess.run([sys.executable, "-m", "vbatch", "status"], cwd=tmp_path, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0] == f"inbox {tmp_path.resolve()}: 0 running, 0 interrupted, 1 waiting, 0 done, 1 failed"
    assert lines[1].split() == [
        "job",
        "state",
        "ok",
        "failed",
        "out",
        "tok/s",
        "wall",
        "s",
        "finished/started",
        "meta",
        "/",
        "error",
    ]
    assert lines[2].split()[:2] == ["x", "failed"] and lines[2].endswith("broken")
    assert lines[3].split()[:2] == ["w", "waiting"]
    env_inbox = subprocess.run(
        [sys.executable, "-m", "vbatch", "status", "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "VBATCH_INBOX": str(tmp_path)},
    )
    assert json.loads(env_inbox.stdout)["counts"]["failed"] == 1
    missing = subprocess.run(
        [sys.executable, "-m", "vbatch", "status", str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "is not a directory" in missing.stderr
