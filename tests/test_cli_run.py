"""`vbatch run` through the real entry point and the real vLLM engine on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.cli import kill_midway, vbatch
from support.jsonl import chat_line, read_jsonl

pytestmark = pytest.mark.engine


def test_mixed_file_gives_one_record_per_non_blank_line(tmp_path: Path, tiny_profile: Path):
    good = [
        chat_line(1),
        chat_line(2, n=2, temperature=1.0, seed=7, logprobs=True, top_logprobs=2),
        {
            "custom_id": "p1",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"prompt": "Once upon a time", "max_tokens": 5, "logprobs": 1},
        },
        {"messages": [{"role": "user", "content": "shorthand"}], "max_tokens": 4},
        {"custom_id": "s1", "prompt": "shorthand completion", "max_tokens": 3},
        chat_line(3, model="tiny", response_format={"type": "json_object"}, max_tokens=24),
    ]
    bad = [
        b"{not json",
        b"[1, 2]",
        json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}).encode(),
        json.dumps(chat_line(1)).encode(),  # duplicate custom_id
        json.dumps({**chat_line(9), "url": "/v1/responses"}).encode(),
        json.dumps(chat_line(10, max_tokens=-1)).encode(),
        b'{"custom_id": "u", "prompt": "caf\xe9"}',  # latin-1, not UTF-8
        json.dumps(chat_line(11, model="other-model")).encode(),
        json.dumps({"custom_id": "long", "prompt": "word " * 2000, "max_tokens": 4}).encode(),
        json.dumps({"custom_id": "emb", "input": "embeddings need an embedding model"}).encode(),
    ]
    lines = [json.dumps(g).encode() for g in good] + bad
    body = b"\xef\xbb\xbf" + b"\r\n".join(lines[:3]) + b"\r\n\r\n   \n" + b"\n".join(lines[3:]) + b"\n\n"
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(body)

    proc = vbatch("run", str(src), "--profile", str(tiny_profile), "--json")
    assert proc.returncode == 1, proc.stderr  # finished, some requests failed
    summary = json.loads(proc.stdout)
    results = read_jsonl(tmp_path / "mixed.results.jsonl")
    errors = read_jsonl(tmp_path / "mixed.errors.jsonl")
    assert len(results) + len(errors) == len(good) + len(bad)
    assert summary["requests"] == {"total": 16, "ok": 6, "failed": 10, "resumed": 0, "deduplicated": 0}
    assert {r["custom_id"] for r in results} == {"c1", "c2", "p1", "line-6", "s1", "c3"}  # 2 blank lines before it
    assert all(e["response"] is None and e["error"]["message"].startswith(f"line {e['line']}:") for e in errors)
    codes = sorted(e["error"]["code"] for e in errors)
    assert codes == sorted(
        [
            "invalid_line",
            "invalid_line",
            "missing_custom_id",
            "duplicate_custom_id",
            "invalid_url",
            "invalid_body",
            "invalid_line",
            "model_mismatch",
            "context_length_exceeded",
            "unsupported_endpoint",
        ]
    )

    by_id = {r["custom_id"]: r["response"]["body"] for r in results}
    assert by_id["c1"]["object"] == "chat.completion"
    assert (
        by_id["c1"]["usage"]["completion_tokens"] == len(by_id["c1"]["choices"]) * 8
        or by_id["c1"]["choices"][0]["finish_reason"] == "stop"
    )
    assert "cached_tokens" in by_id["c1"]["usage"]["prompt_tokens_details"]
    assert len(by_id["c2"]["choices"]) == 2
    assert len(by_id["c2"]["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    assert by_id["p1"]["object"] == "text_completion" and by_id["p1"]["choices"][0]["logprobs"]["tokens"]
    assert by_id["c3"]["model"] == "tiny"
    assert (tmp_path / "mixed.summary.json").exists()


def test_kill_minus_nine_then_rerun_completes_without_loss_or_duplicates(tmp_path: Path, tiny_profile: Path):
    """SIGKILL a real run mid-way (its whole process group, as an OOM kill or power loss
    would), rerun the same command, and compare with an uninterrupted run at temperature 0."""
    n = 600
    src = tmp_path / "big.jsonl"
    with src.open("w") as f:
        for i in range(n):
            f.write(json.dumps(chat_line(i, max_tokens=24)) + "\n")
    args = ["run", str(src), "--profile", str(tiny_profile), "-q"]

    reference = vbatch(*args, "-o", str(tmp_path / "ref.jsonl"))
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "crash.jsonl"
    kill_midway([*args, "-o", str(out)], out)
    partial = out.read_bytes().splitlines()
    assert 0 < len(partial) < n

    rerun = vbatch(*args, "-o", str(out), "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["requests"]["ok"] == n and summary["requests"]["resumed"] > 0

    def comparable(record: dict) -> tuple:
        body = record["response"]["body"]
        return (
            record["id"],
            record["custom_id"],
            json.dumps(body["choices"], sort_keys=True),
            body["usage"]["prompt_tokens"],
            body["usage"]["completion_tokens"],
        )

    resumed = read_jsonl(out)
    assert len(resumed) == n
    assert len({r["custom_id"] for r in resumed}) == n
    assert sorted(map(comparable, resumed)) == sorted(map(comparable, read_jsonl(tmp_path / "ref.jsonl")))

    again = vbatch(*args, "-o", str(out), "--json")
    assert again.returncode == 0 and json.loads(again.stdout).get("already_complete") is True


def test_changed_input_is_refused_and_restart_starts_over(tmp_path: Path, tiny_profile: Path):
    src = tmp_path / "a.jsonl"
    src.write_text(json.dumps(chat_line(1)) + "\n")
    assert vbatch("run", str(src), "--profile", str(tiny_profile), "-q").returncode == 0
    src.write_text(json.dumps(chat_line(1)) + "\n" + json.dumps(chat_line(2)) + "\n")
    refused = vbatch("run", str(src), "--profile", str(tiny_profile), "-q")
    assert refused.returncode == 6
    assert "input file changed" in refused.stderr and "--restart" in refused.stderr
    restarted = vbatch("run", str(src), "--profile", str(tiny_profile), "-q", "--restart", "--ordered")
    assert restarted.returncode == 0, restarted.stderr
    assert [r["custom_id"] for r in read_jsonl(tmp_path / "a.results.jsonl")] == ["c1", "c2"]


def test_parquet_in_and_out(tmp_path: Path, tiny_profile: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "custom_id": ["a", "b"],
            "messages": [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "bye"}]],
            "max_tokens": [3, 4],
        }
    )
    src = tmp_path / "in.parquet"
    pq.write_table(table, src)
    out = tmp_path / "out.parquet"
    proc = vbatch("run", str(src), "-o", str(out), "--profile", str(tiny_profile), "-q")
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["custom_id"] for r in rows) == ["a", "b"]
    assert all(json.loads(r["body"])["object"] == "chat.completion" for r in rows)
    assert not list(tmp_path.glob("*.partial.jsonl"))


def test_fail_fast_stops_at_first_bad_line(tmp_path: Path, tiny_profile: Path):
    src = tmp_path / "ff.jsonl"
    src.write_text(json.dumps(chat_line(1)) + "\n{broken\n" + json.dumps(chat_line(2)) + "\n")
    proc = vbatch("run", str(src), "--profile", str(tiny_profile), "-q", "--fail-fast")
    assert proc.returncode == 4
    assert "line 2" in proc.stderr


def test_second_run_on_same_output_is_refused_while_first_holds_the_lock(tmp_path: Path):
    from vbatch.storage.journal import OutputLock

    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps(chat_line(1)) + "\n")
    with OutputLock(str(tmp_path / "x.results.jsonl"), str(tmp_path / "x.lock")):
        proc = vbatch("run", str(src), "--profile", "cpu", "-q")
    assert proc.returncode == 6
    assert f"pid {os.getpid()}" in proc.stderr


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 KiB tmpfs: a real file system that fills up (needs root, as CI has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_stops_with_its_own_code_leaves_whole_lines_and_resumes(
    tmp_path: Path, tiny_profile: Path, small_disk: Path
):
    n = 200
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(chat_line(i)) + "\n" for i in range(n)))
    out = small_disk / "out.jsonl"
    args = ["run", str(src), "--profile", str(tiny_profile), "-q", "-o", str(out)]

    full = vbatch(*args)
    assert full.returncode == 7, full.stderr
    assert "no space left" in full.stderr and str(out) in full.stderr and "MB free" in full.stderr
    assert "Traceback" not in full.stderr
    written = out.read_bytes()
    assert written.endswith(b"\n")  # no torn last line
    assert 0 < len(read_jsonl(out)) < n

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    resumed = vbatch(*args, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["requests"]["resumed"] > 0
    assert sorted(r["custom_id"] for r in read_jsonl(out)) == sorted(f"c{i}" for i in range(n))


def test_stdin_resume_with_other_content_is_refused_like_a_changed_file(tmp_path: Path, tiny_profile: Path):
    out = tmp_path / "piped.jsonl"
    args = ["run", "-", "-o", str(out), "--profile", str(tiny_profile), "-q"]
    original = "".join(json.dumps(chat_line(i)) + "\n" for i in range(3))
    assert vbatch(*args, input=original).returncode == 0
    # A completed run fed the same stdin again is complete; fed other lines, it is refused.
    again = vbatch(*args, "--json", input=original)
    assert again.returncode == 0 and json.loads(again.stdout).get("already_complete") is True
    other = vbatch(*args, input=original.replace("question", "other question"))
    assert other.returncode == 6 and "input file changed" in other.stderr and "--restart" in other.stderr


def test_blank_input_exits_at_once_without_loading_the_model(tmp_path: Path):
    src = tmp_path / "blank.jsonl"
    src.write_text("\n   \n")
    proc = vbatch("run", str(src), "--profile", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"]["total"] == 0 and "not loaded" in summary["engine"]
    assert summary["load_seconds"] == 0
    assert (tmp_path / "blank.results.jsonl").read_bytes() == b""
