"""`vbatch drain`: job discovery, claiming and moving files (pure logic, no engine), then the real
CLI on the tiny model: several files on one model load, a concurrent drain, a SIGKILL and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support.cli import vbatch
from support.jsonl import chat_line, read_jsonl, write_batch

from vbatch.config.labels import parse_labels
from vbatch.config.profiles import load_profile
from vbatch.errors import InputError, UsageError
from vbatch.services.drain import (
    DrainSpec,
    InboxLayout,
    JobRecord,
    SharedEngine,
    _ensure_input,
    _run_job,
    claim,
    finish,
    free_dir,
    interrupted_jobs,
    job_name,
    move,
    waiting_files,
)
from vbatch.services.reporting import Reporter
from vbatch.storage.journal import OutputLock


def touch(path: Path, mtime: int, text: str = "{}\n") -> Path:
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


# --- Pure logic ------------------------------------------------------------------------------


def test_waiting_files_are_batch_files_oldest_first_then_by_name(tmp_path: Path):
    touch(tmp_path / "b.jsonl", 200)
    touch(tmp_path / "a.jsonl", 200)
    touch(tmp_path / "c.parquet", 100)
    touch(tmp_path / "d.jsonl.gz", 300)
    for ignored in (".hidden.jsonl", "e.jsonl.part", "f.jsonl.tmp", "notes.txt", "g.json", ".jsonl"):
        touch(tmp_path / ignored, 50)
    (tmp_path / "done.jsonl").mkdir()
    assert [p.name for p in waiting_files(tmp_path)] == ["c.parquet", "a.jsonl", "b.jsonl", "d.jsonl.gz"]


def test_job_names_drop_only_the_batch_suffix():
    assert job_name("a.jsonl") == "a"
    assert job_name("a.jsonl.gz") == "a"
    assert job_name("v1.2.parquet") == "v1.2"
    assert job_name("x.results.jsonl") == "x.results"


def test_free_dir_skips_used_names_and_reuses_an_empty_one(tmp_path: Path):
    assert free_dir(tmp_path, "a") == tmp_path / "a"
    (tmp_path / "a").mkdir()
    assert free_dir(tmp_path, "a") == tmp_path / "a"  # empty: a claim killed before writing its meta
    (tmp_path / "a" / "a.meta.json").write_text("{}")
    (tmp_path / "a-2").mkdir()
    (tmp_path / "a-2" / "x").write_text("")
    assert free_dir(tmp_path, "a") == tmp_path / "a-3"


def test_claim_moves_the_input_into_its_job_directory_and_a_same_name_file_gets_its_own(tmp_path: Path):
    layout = InboxLayout.of(tmp_path / "inbox")
    layout.inbox.mkdir()
    profile = load_profile("cpu")
    first = claim(touch(layout.inbox / "a.jsonl", 100, "first\n"), layout, profile, {"team": "nlp"})
    second = claim(touch(layout.inbox / "a.jsonl", 200, "second\n"), layout, profile, {})
    assert list(layout.inbox.iterdir()) == [layout.outbox]
    assert (first.dir, second.dir) == (layout.outbox / "a", layout.outbox / "a-2")
    assert (first.dir / "a.jsonl").read_text() == "first\n" and (second.dir / "a.jsonl").read_text() == "second\n"
    record = JobRecord.read(second.dir / "a-2.meta.json")
    assert record is not None and record.status == "running" and record.input == "a.jsonl" and record.job == "a-2"
    assert JobRecord.read(first.dir / "a.meta.json").labels == {"team": "nlp"}
    assert second.run_spec(profile).output == layout.outbox / "a-2" / "a-2.results.jsonl"


def test_interrupted_jobs_are_this_inboxs_running_ones_in_start_order(tmp_path: Path):
    layout = InboxLayout.of(tmp_path / "inbox")
    other = InboxLayout.of(tmp_path / "other", outbox=layout.outbox)  # two inboxes, one outbox
    for inbox in (layout.inbox, other.inbox):
        inbox.mkdir()
    profile = load_profile("cpu")
    claim(touch(layout.inbox / "late.jsonl", 1), layout, profile, {})
    done = claim(touch(layout.inbox / "done.jsonl", 1), layout, profile, {})
    finish(done, "done", layout)
    claim(touch(other.inbox / "theirs.jsonl", 1), other, profile, {})
    early = claim(touch(layout.inbox / "early.jsonl", 1), layout, profile, {})
    early.record.started = "2000-01-01T00:00:00.000+00:00"
    early.save()
    assert [job.dir.name for job in interrupted_jobs(layout)] == ["early", "late"]


def test_a_kill_between_claim_and_move_leaves_the_input_for_the_resumed_job(tmp_path: Path):
    layout = InboxLayout.of(tmp_path / "inbox")
    layout.inbox.mkdir()
    source = touch(layout.inbox / "a.jsonl", 1, "data\n")
    job = claim(source, layout, load_profile("cpu"), {})
    move(job.input_path, source)  # as if the kill came right after the meta was written
    [resumed] = interrupted_jobs(layout)
    _ensure_input(resumed)
    assert resumed.input_path.read_text() == "data\n" and not source.exists()
    resumed.input_path.unlink()
    with pytest.raises(InputError, match="is gone"):
        _ensure_input(resumed)


def test_a_failed_job_moves_to_the_failed_directory_under_a_free_name(tmp_path: Path):
    layout = InboxLayout.of(tmp_path / "inbox")
    layout.inbox.mkdir()
    (layout.failed / "a").mkdir(parents=True)
    (layout.failed / "a" / "earlier").write_text("")
    job = claim(touch(layout.inbox / "a.jsonl", 1), layout, load_profile("cpu"), {})
    finish(job, "failed", layout, InputError("not a batch file", hint="fix it"))
    assert job.dir == layout.failed / "a-2" and not (layout.outbox / "a").exists()
    record = JobRecord.read(job.dir / "a.meta.json")
    assert record.status == "failed" and record.error == {"message": "not a batch file", "hint": "fix it"}
    assert (job.dir / "a.jsonl").exists()


def test_move_across_file_systems_leaves_no_partial_target(tmp_path: Path):
    if not os.access("/dev/shm", os.W_OK) or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test directory")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other_fs:
        source = touch(tmp_path / "a.jsonl", 1, "x\n")
        move(source, Path(other_fs) / "a.jsonl")
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        (job_dir / "r.jsonl").write_text("r\n")
        move(job_dir, Path(other_fs) / "job")
        assert sorted(os.listdir(other_fs)) == ["a.jsonl", "job"]
        assert (Path(other_fs) / "job" / "r.jsonl").read_text() == "r\n"
        assert not source.exists() and not job_dir.exists()


class _CountingEngine:
    """Just enough of an Engine to count loads and closes (pure logic of the lending)."""

    task, model_name, max_model_len, load_seconds = "generate", "m", 512, 2.5

    def __init__(self):
        self.closed = 0
        self.counter = 0.0

    def metrics(self):
        self.counter += 10
        return {"generation_tokens": self.counter}

    def close(self):
        self.closed += 1


def test_shared_engine_loads_once_and_only_the_drain_closes_it():
    engines = []
    shared = SharedEngine(lambda profile: engines.append(_CountingEngine()) or engines[-1])
    first, second = shared.lend(None), shared.lend(None)
    first.close()
    second.close()
    assert len(engines) == 1 and engines[0].closed == 0 and shared.loads == 1
    assert (first.load_seconds, second.load_seconds, shared.load_seconds) == (2.5, 0.0, 2.5)
    assert second.metrics() == {"generation_tokens": 10.0}  # counted from when the job borrowed it
    shared.close()
    shared.close()
    assert engines[0].closed == 1


def test_parse_meta():
    assert parse_labels(["team=nlp", " ticket = 42 ", "note=a=b", "team=ml", "empty="]) == {
        "team": "ml",
        "ticket": "42",
        "note": "a=b",
        "empty": "",
    }
    for bad in ("novalue", "=x"):
        with pytest.raises(UsageError, match="expected key=value"):
            parse_labels([bad])


@pytest.mark.parametrize(
    "option, message",
    [
        (["--meta", "team"], "bad --meta 'team': expected key=value"),
        (["--engine", "gpu-box"], "unknown engine 'gpu-box'"),
    ],
)
def test_bad_option_is_a_usage_error_before_anything_is_touched(tmp_path: Path, option: list[str], message: str):
    touch(tmp_path / "a.jsonl", 1)
    proc = vbatch("drain", str(tmp_path), "--profile", "cpu", *option)
    assert proc.returncode == 2
    assert message in proc.stderr and "hint:" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl"]


def test_run_refuses_a_bad_meta_before_writing_anything(tmp_path: Path):
    source = touch(tmp_path / "a.jsonl", 1)
    proc = vbatch("run", str(source), "--profile", "cpu", "--meta", "ticket")
    assert proc.returncode == 2 and "bad --meta 'ticket'" in proc.stderr
    assert os.listdir(tmp_path) == ["a.jsonl"]


def test_empty_inbox_says_so_and_loads_no_model(tmp_path: Path):
    proc = vbatch("drain", str(tmp_path), "--profile", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stderr
    report = json.loads(proc.stdout)
    assert report["jobs"] == [] and report["model_loads"] == 0
    assert "vllm" not in proc.stderr.lower()


def test_missing_inbox_is_a_usage_error(tmp_path: Path):
    proc = vbatch("drain", str(tmp_path / "nope"), "--profile", "cpu")
    assert proc.returncode == 2 and "is not a directory" in proc.stderr and "mkdir -p" in proc.stderr


def test_a_drain_finding_the_inbox_locked_leaves_everything_as_it_is(tmp_path: Path):
    touch(tmp_path / "a.jsonl", 1)
    with OutputLock(str(tmp_path), str(tmp_path / ".vbatch-drain.lock")):
        proc = vbatch("drain", str(tmp_path), "--profile", "cpu")
        assert sorted(os.listdir(tmp_path)) == [".vbatch-drain.lock", "a.jsonl"]
    assert proc.returncode == 0, proc.stderr
    assert f"another drain (pid {os.getpid()}) is running; nothing to do" in proc.stderr


# --- The real CLI on the tiny model ----------------------------------------------------------


@pytest.mark.engine
def test_drain_runs_every_file_on_one_model_load(tmp_path: Path, tiny_model_dir: Path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    write_batch(inbox / "a-good.jsonl", [chat_line(i) for i in range(3)], 100)
    write_batch(inbox / "b-mixed.jsonl", [chat_line(i) for i in range(3)] + ["{not json", "[1, 2]"], 200)
    write_batch(inbox / "c-allbad.jsonl", ["{not json", json.dumps({"custom_id": "x", "url": "/v1/nope"})], 300)
    touch(inbox / "d-broken.parquet", 400, "this is not parquet")

    proc = vbatch(
        "drain",
        str(inbox),
        "--profile",
        "cpu",
        "--model",
        str(tiny_model_dir),
        "-E",
        "max_model_len=512",
        "--engine",
        "local",
        "--meta",
        "team=nlp",
        "--json",
    )
    assert proc.returncode == 1, proc.stderr  # some requests failed, one job could not run
    report = json.loads(proc.stdout)
    assert report["model_loads"] == 1 and report["load_seconds"] > 0
    assert [(j["job"], j["status"]) for j in report["jobs"]] == [
        ("a-good", "done"),
        ("b-mixed", "done"),
        ("c-allbad", "done"),
        ("d-broken", "failed"),
    ]
    assert [j["requests"] and (j["requests"]["ok"], j["requests"]["failed"]) for j in report["jobs"]] == [
        (3, 0),
        (3, 2),
        (0, 2),
        None,
    ]
    assert "not a readable Parquet file" in report["jobs"][3]["error"]["message"]
    assert sorted(os.listdir(inbox)) == ["done", "failed"]  # inputs claimed, lock released

    done = inbox / "done"
    assert sorted(os.listdir(done)) == ["a-good", "b-mixed", "c-allbad"]
    assert sorted(os.listdir(done / "b-mixed")) == [
        "b-mixed.errors.jsonl",
        "b-mixed.jsonl",
        "b-mixed.meta.json",
        "b-mixed.results.jsonl",
        "b-mixed.run.json",
        "b-mixed.summary.json",
    ]
    load_seconds = []
    for name, ok in (("a-good", 3), ("b-mixed", 3), ("c-allbad", 0)):
        summary = json.loads((done / name / f"{name}.summary.json").read_text())
        meta = json.loads((done / name / f"{name}.meta.json").read_text())
        assert len(read_jsonl(done / name / f"{name}.results.jsonl")) == ok == summary["requests"]["ok"]
        assert summary["meta"] == meta["meta"] == {"team": "nlp"}
        assert meta["status"] == "done" and meta["finished"] and meta["model"] == str(tiny_model_dir)
        load_seconds.append(summary["load_seconds"])
    assert load_seconds[0] > 0 and load_seconds[1:] == [0, 0]  # later jobs found the model loaded
    assert sorted(os.listdir(inbox / "failed" / "d-broken")) == ["d-broken.meta.json", "d-broken.parquet"]

    status = vbatch("status", str(inbox), "--json")
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    assert state["counts"] == {"running": 0, "interrupted": 0, "waiting": 0, "done": 3, "failed": 1}
    assert state["requests"] == {"ok": 6, "failed": 4} and state["drain"] is None
    rows = {row["job"]: row for row in state["jobs"]}
    assert rows["b-mixed"]["ok"] == 3 and rows["b-mixed"]["output_tokens_per_s"] > 0
    assert rows["d-broken"]["state"] == "failed" and "Parquet" in rows["d-broken"]["error"]
    plain = vbatch("status", str(inbox))
    assert "3 done" in plain.stdout and "team=nlp" in plain.stdout


@pytest.mark.engine
def test_killed_drain_resumes_its_job_then_runs_the_rest(tmp_path: Path, tiny_profile: Path):
    """A second drain leaves while the first runs; SIGKILL the first (its whole process group,
    as an OOM kill would); the next drain finishes the killed job without loss or duplicates."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    n = 600
    write_batch(inbox / "big.jsonl", [chat_line(i, max_tokens=24) for i in range(n)], 100)
    write_batch(inbox / "small.jsonl", [chat_line(i) for i in range(3)], 200)
    args = ["drain", str(inbox), "--profile", str(tiny_profile), "--engine", "local"]
    results = inbox / "done" / "big" / "big.results.jsonl"

    first = subprocess.Popen(
        [sys.executable, "-m", "vbatch", *args, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if results.exists() and len(results.read_bytes().splitlines()) >= 40:
            break
        time.sleep(0.05)
    assert first.poll() is None, "the drain ended before it could be killed; make the input bigger"

    second = vbatch(*args)
    assert second.returncode == 0, second.stderr
    assert f"another drain (pid {first.pid}) is running; nothing to do" in second.stderr
    running = json.loads(vbatch("status", str(inbox), "--json").stdout)
    assert running["drain"]["pid"] == first.pid
    assert [(r["job"], r["state"]) for r in running["jobs"]] == [("big", "running"), ("small", "waiting")]

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert 0 < len(results.read_bytes().splitlines()) < n
    killed = json.loads(vbatch("status", str(inbox), "--json").stdout)
    assert [(r["job"], r["state"]) for r in killed["jobs"]] == [("big", "interrupted"), ("small", "waiting")]

    rerun = vbatch(*args, "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert report["model_loads"] == 1
    big, small = report["jobs"]
    assert (big["job"], big["resumed"], big["requests"]["ok"]) == ("big", True, n)
    assert big["requests"]["resumed"] > 0
    assert (small["job"], small["resumed"], small["requests"]["ok"]) == ("small", False, 3)
    ids = [record["custom_id"] for record in read_jsonl(results)]
    assert len(ids) == n and set(ids) == {f"c{i}" for i in range(n)}
    assert sorted(os.listdir(inbox)) == ["done"]
    assert json.loads(vbatch("status", str(inbox), "--json").stdout)["counts"]["done"] == 2


def test_a_job_that_cannot_read_its_input_names_it_in_the_failed_directory(tmp_path: Path):
    """The error names the input where it ended up (failed/), not where it was read (done/)."""
    layout = InboxLayout.of(tmp_path / "inbox")
    layout.inbox.mkdir()
    profile = load_profile("cpu")
    job = claim(touch(layout.inbox / "a.parquet", 1, "this is not parquet"), layout, profile, {})

    def no_model(profile):
        raise AssertionError("a job that cannot read its input loads no model")

    outcome = _run_job(job, DrainSpec(layout, profile), SharedEngine(no_model), Reporter(), resumed=False)
    moved = layout.failed / "a" / "a.parquet"
    assert outcome.status == "failed" and outcome.dir == str(layout.failed / "a") and moved.exists()
    assert str(moved) in outcome.error["message"] and "/done/" not in outcome.error["message"]
    assert JobRecord.read(layout.failed / "a" / "a.meta.json").error == outcome.error
