import os
import signal
import socket
import subprocess
import sys
import textwrap

import orjson
import pytest

from vbatch.errors import StateError, UsageError
from vbatch.storage.journal import (
    DoneSet,
    InputFingerprint,
    OutputLock,
    RunRecord,
    read_run_record,
    repair_tail,
    run_record_differences,
    scan_done,
    write_run_record,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from vbatch.storage.journal import OutputLock
    lock = OutputLock(sys.argv[1])
    lock.acquire()
    print("locked", flush=True)
    time.sleep(60)
    """
)


def start_holder(results: str) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, results], stdout=subprocess.PIPE, cwd=REPO)
    assert holder.stdout.readline() == b"locked\n"
    return holder


def test_lock_held_by_another_process_names_its_pid(tmp_path):
    results = str(tmp_path / "results.jsonl")
    holder = start_holder(results)
    try:
        with pytest.raises(StateError) as raised:
            with OutputLock(results):
                pass
        message = raised.value.message
        assert message.startswith(f"{results} is being written by another vbatch run")
        assert f"pid {holder.pid} on host {socket.gethostname()}, started " in message
        assert raised.value.hint == "wait for it to finish, or write to another -o"
    finally:
        holder.terminate()
        holder.wait()


def test_lock_left_by_killed_process_does_not_block(tmp_path):
    results = str(tmp_path / "results.jsonl")
    holder = start_holder(results)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert os.path.exists(f"{results}.lock")  # the kill left the file behind
    with OutputLock(results) as lock:
        info = orjson.loads(open(lock.lock_path, "rb").read())
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["started"] and "command" in info


def test_lock_is_exclusive_and_released(tmp_path):
    results = str(tmp_path / "results.jsonl")
    with OutputLock(results):
        with pytest.raises(StateError):
            OutputLock(results).acquire()
    assert not os.path.exists(f"{results}.lock")
    with OutputLock(results):  # free again after release
        pass


def test_lock_in_missing_directory_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="cannot create the lock file"):
        OutputLock(str(tmp_path / "missing" / "results.jsonl")).acquire()


def test_repair_tail_cuts_torn_line(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": 2}\n{"a": ')
    assert repair_tail(str(path)) == len(b'{"a": ')
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    assert repair_tail(str(path)) == 0
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'


def test_repair_tail_long_torn_line_and_no_newline_at_all(tmp_path, monkeypatch):
    monkeypatch.setattr("vbatch.storage.journal._TAIL_CHUNK", 4)
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"a": 1}\n' + b"x" * 50)
    assert repair_tail(str(path)) == 50
    assert path.read_bytes() == b'{"a": 1}\n'
    path.write_bytes(b"y" * 10)
    assert repair_tail(str(path)) == 10
    assert path.read_bytes() == b""


def test_repair_tail_missing_and_empty_file(tmp_path):
    assert repair_tail(str(tmp_path / "missing.jsonl")) == 0
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert repair_tail(str(empty)) == 0


def test_scan_done_reads_ids_and_error_lines(tmp_path):
    results = tmp_path / "results.jsonl"
    errors = tmp_path / "errors.jsonl"
    results.write_bytes(b'{"id": "1", "custom_id": "a"}\n{"id": "2", "custom_id": "b"}\n{"id": "3", "cus')
    errors.write_bytes(b'{"custom_id": "c", "line": 7, "error": {}}\n{"custom_id": null, "line": 9, "error": {}}\n')
    done = scan_done(str(results), str(errors))
    assert done == DoneSet(result_ids={"a", "b"}, error_lines={7, 9}, ok=2, failed=2)
    assert results.read_bytes().endswith(b'"b"}\n')  # torn line repaired


def test_scan_done_with_no_files_yet(tmp_path):
    assert scan_done(str(tmp_path / "r.jsonl"), str(tmp_path / "e.jsonl")) == DoneSet()


def test_scan_done_rejects_garbage_line(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_bytes(b'{"custom_id": "a"}\nnot json\n')
    with pytest.raises(StateError, match="line 2 is not valid JSON"):
        scan_done(str(results), str(tmp_path / "e.jsonl"))


def make_run_record(**changes) -> RunRecord:
    fields = dict(
        input=InputFingerprint(path="in.jsonl", size=10240, digest="aa", count=100),
        settings={"model": "a", "engine": {"max_model_len": 4096, "dtype": "auto"}, "sampling": {"temperature": 0.0}},
        outputs={"results": "out/results.jsonl", "errors": "out/errors.jsonl"},
    )
    fields.update(changes)
    return RunRecord(**fields)


def test_run_record_round_trip(tmp_path):
    path = str(tmp_path / "manifest.json")
    run_record = make_run_record(status="complete")
    write_run_record(path, run_record)
    assert read_run_record(path) == run_record
    assert not os.path.exists(f"{path}.tmp")
    assert orjson.loads(open(path, "rb").read())["version"] == run_record.version


def test_write_run_record_replaces_and_stamps_updated(tmp_path):
    path = str(tmp_path / "manifest.json")
    run_record = make_run_record(updated="2000-01-01T00:00:00+00:00")
    write_run_record(path, run_record)
    assert read_run_record(path).updated != "2000-01-01T00:00:00+00:00"
    run_record.status = "complete"
    write_run_record(path, run_record)
    assert read_run_record(path).status == "complete"


def test_read_run_record_missing_and_corrupt(tmp_path):
    assert read_run_record(str(tmp_path / "none.json")) is None
    corrupt = tmp_path / "manifest.json"
    corrupt.write_bytes(b'{"input": ')
    with pytest.raises(StateError, match="unreadable") as raised:
        read_run_record(str(corrupt))
    assert "--restart" in raised.value.hint


def test_read_run_record_ignores_unknown_keys(tmp_path):
    path = str(tmp_path / "manifest.json")
    write_run_record(path, make_run_record())
    raw = orjson.loads(open(path, "rb").read())
    raw["added_by_a_newer_version"] = 1
    open(path, "wb").write(orjson.dumps(raw))
    assert read_run_record(path).settings["model"] == "a"


def test_run_record_differences_same_run():
    assert run_record_differences(make_run_record(), make_run_record(status="complete")) == []


def test_run_record_differences_names_changes():
    old = make_run_record()
    new = make_run_record(
        input=InputFingerprint(path="in.jsonl", size=11000, digest="bb", count=110),
        settings={"model": "b", "engine": {"max_model_len": 2048}, "sampling": {"temperature": 0.0, "seed": 1}},
    )
    assert run_record_differences(old, new) == [
        "input file changed: 10240 → 11000 bytes, content digest differs",
        "settings.model: a → b",
        "settings.engine.max_model_len: 4096 → 2048",
        "settings.engine.dtype: auto → (unset)",
        "settings.sampling.seed: (unset) → 1",
    ]


def test_run_record_differences_same_size_and_moved_input():
    old = make_run_record()
    same_content_elsewhere = make_run_record(input=InputFingerprint(path="moved.jsonl", size=10240, digest="aa"))
    assert run_record_differences(old, same_content_elsewhere) == []
    edited = make_run_record(input=InputFingerprint(path="in.jsonl", size=10240, digest="cc"))
    assert run_record_differences(old, edited) == [
        "input file changed: same size (10240 bytes), content digest differs"
    ]


def test_run_record_differences_stdin_input():
    old = make_run_record(input=InputFingerprint(path="-"))
    assert run_record_differences(old, make_run_record(input=InputFingerprint(path="-"))) == []
    assert run_record_differences(old, make_run_record()) == ["input changed: - → in.jsonl, content cannot be compared"]


def test_run_record_differences_value_shapes():
    old = make_run_record(settings={"stop": ["a"], "engine": {"x": 1}})
    new = make_run_record(settings={"stop": ["a", "b"], "engine": 5})
    assert run_record_differences(old, new) == ['settings.stop: ["a"] → ["a","b"]', 'settings.engine: {"x":1} → 5']
