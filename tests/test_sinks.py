import errno
import os
import signal
import subprocess
import sys

import orjson
import pyarrow.parquet as pq
import pytest

from vbatch.errors import DiskFullError, ExitCode, StateError
from vbatch.storage.journal import repair_tail
from vbatch.storage.writers import JsonlAppender, jsonl_to_parquet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lines_on_disk(path) -> list[dict]:
    data = open(path, "rb").read()
    assert data == b"" or data.endswith(b"\n"), "a reader must see only whole lines"
    return [orjson.loads(line) for line in data.splitlines()]


def test_flushes_every_n_records(tmp_path):
    path = tmp_path / "results.jsonl"
    appender = JsonlAppender(str(path), flush_every=3, flush_seconds=3600)
    appender.append({"n": 1})
    appender.append({"n": 2})
    assert lines_on_disk(path) == []
    appender.append({"n": 3})
    assert lines_on_disk(path) == [{"n": 1}, {"n": 2}, {"n": 3}]
    appender.append({"n": 4})
    assert len(lines_on_disk(path)) == 3
    appender.close()
    assert lines_on_disk(path) == [{"n": i} for i in range(1, 5)]
    assert appender.count == 4


def test_flushes_after_time(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("vbatch.storage.writers.time.monotonic", lambda: clock[0])
    path = tmp_path / "results.jsonl"
    appender = JsonlAppender(str(path), flush_every=1000, flush_seconds=1.0)
    appender.append({"n": 1})
    clock[0] += 0.5
    appender.append({"n": 2})
    assert lines_on_disk(path) == []
    clock[0] += 0.6
    appender.append({"n": 3})
    assert lines_on_disk(path) == [{"n": 1}, {"n": 2}, {"n": 3}]
    appender.close()


class RecordingFile:
    def __init__(self, file):
        self.file = file
        self.writes = []

    def write(self, data):
        self.writes.append(bytes(data))
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def test_flush_is_one_write_then_fsync(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr("vbatch.storage.writers.os.fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "results.jsonl"
    appender = JsonlAppender(str(path), flush_every=2)
    appender._file = recorder = RecordingFile(appender._file)
    appender.append({"n": 1})
    appender.append({"n": 2})
    assert recorder.writes == [b'{"n":1}\n{"n":2}\n']
    assert synced == [recorder.fileno()]
    appender.close()
    assert len(synced) == 1  # nothing left to write, so no second fsync


def test_appends_to_existing_file(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"n":0}\n')
    with JsonlAppender(str(path)) as appender:
        appender.append({"n": 1})
    assert lines_on_disk(path) == [{"n": 0}, {"n": 1}]


def test_close_is_idempotent(tmp_path):
    path = tmp_path / "results.jsonl"
    appender = JsonlAppender(str(path))
    appender.append({"n": 1})
    appender.close()
    appender.close()
    assert lines_on_disk(path) == [{"n": 1}]


RESULT = {
    "id": "batch_req_1",
    "custom_id": "a",
    "response": {"status_code": 200, "request_id": "req_1", "body": {"choices": [{"text": "hi"}]}},
    "error": None,
}
ERROR = {
    "id": "batch_req_2",
    "custom_id": "b",
    "response": None,
    "error": {"code": "invalid_request", "message": "bad"},
    "line": 7,
}


def test_jsonl_to_parquet_round_trip(tmp_path):
    source = tmp_path / "results.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [RESULT, ERROR]) + b"\n")
    target = tmp_path / "results.parquet"
    jsonl_to_parquet(str(source), str(target))
    rows = pq.read_table(target).to_pylist()
    assert rows == [
        {
            "id": "batch_req_1",
            "custom_id": "a",
            "status_code": 200,
            "request_id": "req_1",
            "body": '{"choices":[{"text":"hi"}]}',
            "error": None,
            "line": None,
        },
        {
            "id": "batch_req_2",
            "custom_id": "b",
            "status_code": None,
            "request_id": None,
            "body": None,
            "error": '{"code":"invalid_request","message":"bad"}',
            "line": 7,
        },
    ]
    assert orjson.loads(rows[0]["body"]) == RESULT["response"]["body"]
    assert not os.path.exists(f"{target}.tmp")


def test_jsonl_to_parquet_in_batches(tmp_path):
    source = tmp_path / "results.jsonl"
    with JsonlAppender(str(source)) as appender:
        for i in range(25):
            appender.append({**RESULT, "custom_id": str(i)})
    target = tmp_path / "results.parquet"
    jsonl_to_parquet(str(source), str(target), batch_rows=10)
    table = pq.read_table(target)
    assert table.column("custom_id").to_pylist() == [str(i) for i in range(25)]
    assert str(table.schema.field("line").type) == "int64"


def test_jsonl_to_parquet_empty_file(tmp_path):
    source = tmp_path / "errors.jsonl"
    source.write_bytes(b"")
    target = tmp_path / "errors.parquet"
    jsonl_to_parquet(str(source), str(target))
    table = pq.read_table(target)
    assert table.num_rows == 0
    assert table.schema.names == ["id", "custom_id", "status_code", "request_id", "body", "error", "line"]


def test_jsonl_to_parquet_bad_line_leaves_no_output(tmp_path):
    source = tmp_path / "results.jsonl"
    source.write_bytes(orjson.dumps(RESULT) + b"\n[1]\n")
    target = tmp_path / "results.parquet"
    with pytest.raises(StateError, match="line 2 is not a JSON object"):
        jsonl_to_parquet(str(source), str(target))
    assert not target.exists() and not os.path.exists(f"{target}.tmp")


def test_killed_writer_leaves_whole_lines_in_order_once_a_torn_tail_is_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    script = (
        "import sys\n"
        "from vbatch.storage.writers import JsonlAppender\n"
        "appender = JsonlAppender(sys.argv[1], flush_every=50)\n"
        "for i in range(10**9):\n"
        "    appender.append({'custom_id': str(i), 'text': 'x' * 200})\n"
        "    if i == 500: print('running', flush=True)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, cwd=REPO)
    assert writer.stdout.readline() == b"running\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    # A kill can land inside the write of a group (Linux stops copying a write at a fatal signal
    # between pages), leaving a half line; resuming cuts it (journal.repair_tail, as
    # `vbatch run` does before it reads what is done). After that: only whole lines, in order.
    dropped = repair_tail(str(path))
    records = lines_on_disk(path)
    assert len(records) >= 500
    assert dropped or len(records) % 50 == 0  # intact: whole groups of flush_every
    assert [r["custom_id"] for r in records] == [str(i) for i in range(len(records))]


class _DiskWithRoomFor:
    """A file that takes `room` more bytes, then fails as a full disk does (a short write,
    then ENOSPC)."""

    def __init__(self, file, room: int):
        self._file = file
        self.room = room

    def write(self, data) -> int:
        if self.room == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        taken = min(self.room, len(data))
        self.room -= taken
        return self._file.write(data[:taken])

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_full_disk_cuts_the_file_back_to_whole_records_and_names_it(tmp_path):
    path = tmp_path / "results.jsonl"
    appender = JsonlAppender(str(path), flush_every=2, flush_seconds=3600)
    appender.append({"n": 1})
    appender.append({"n": 2})
    appender._file = _DiskWithRoomFor(appender._file, room=5)  # half of the next group fits
    appender.append({"n": 3})
    with pytest.raises(DiskFullError) as caught:
        appender.append({"n": 4})
    assert str(path) in caught.value.message and "MB free" in caught.value.message
    assert caught.value.exit_code == ExitCode.DISK_FULL
    appender.close()  # the dropped group is not written again on close
    assert lines_on_disk(path) == [{"n": 1}, {"n": 2}]


def test_other_write_errors_are_not_called_a_full_disk(tmp_path):
    appender = JsonlAppender(str(tmp_path / "r.jsonl"), flush_every=1)

    class Broken(_DiskWithRoomFor):
        def write(self, data):
            raise OSError(errno.EIO, "Input/output error")

    appender._file = Broken(appender._file, room=0)
    with pytest.raises(OSError) as caught:
        appender.append({"n": 1})
    assert not isinstance(caught.value, DiskFullError) and caught.value.errno == errno.EIO
