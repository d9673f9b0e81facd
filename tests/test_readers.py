import gzip
import hashlib
import io
import os
import subprocess
import sys
import textwrap

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vbatch.errors import InputError
from vbatch.storage import readers
from vbatch.storage.readers import InputRecord, InputScan, open_input


def write(tmp_path, name, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def read_all(path: str) -> list[InputRecord]:
    return list(open_input(path).records())


def test_jsonl_objects_with_line_numbers(tmp_path):
    path = write(tmp_path, "in.jsonl", b'{"custom_id": "a"}\n{"custom_id": "b"}\n')
    assert read_all(path) == [
        InputRecord(1, {"custom_id": "a"}, None),
        InputRecord(2, {"custom_id": "b"}, None),
    ]


def test_blank_lines_are_skipped_but_numbered(tmp_path):
    path = write(tmp_path, "in.jsonl", b'\n{"a": 1}\n   \n\t\r\n{"a": 2}\n\n')
    records = read_all(path)
    assert [(r.line, r.data) for r in records] == [(2, {"a": 1}), (5, {"a": 2})]


def test_crlf_bom_and_missing_final_newline(tmp_path):
    path = write(tmp_path, "in.jsonl", b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}')
    assert [(r.line, r.data, r.error) for r in read_all(path)] == [(1, {"a": 1}, None), (2, {"a": 2}, None)]


def test_bom_only_allowed_at_file_start(tmp_path):
    path = write(tmp_path, "in.jsonl", b'{"a": 1}\n\xef\xbb\xbf{"a": 2}\n')
    records = read_all(path)
    assert records[0].data == {"a": 1}
    assert records[1].data is None and "invalid JSON" in records[1].error


def test_invalid_utf8_names_byte_and_column(tmp_path):
    path = write(tmp_path, "in.jsonl", '{"a": "é'.encode() + b'\xff"}\n{"a": 2}\n')
    bad, good = read_all(path)
    assert bad.line == 1 and bad.data is None
    # the column counts characters: {"a": "é is 8 of them, so the bad byte is the 9th
    assert bad.error == "line is not valid UTF-8 (byte 0xff at column 9): save the file as UTF-8"
    assert good == InputRecord(2, {"a": 2}, None)


def test_invalid_json_gives_reason(tmp_path):
    path = write(tmp_path, "in.jsonl", b'{"a": 1\n')
    (record,) = read_all(path)
    assert record.data is None
    assert record.error.startswith("invalid JSON (unexpected end of data at column")
    assert record.error.endswith("each line must be one JSON object")


@pytest.mark.parametrize(
    "line, kind",
    [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"3", "a number"), (b"true", "a boolean"), (b"null", "null")],
)
def test_valid_json_that_is_not_an_object(tmp_path, line, kind):
    path = write(tmp_path, "in.jsonl", line + b"\n")
    (record,) = read_all(path)
    assert record.data is None
    assert record.error == f"line is {kind}, not an object: each line must be one JSON object"


def test_gzip_jsonl(tmp_path):
    path = write(tmp_path, "in.jsonl.gz", gzip.compress(b'{"a": 1}\n\n{"a": 2}\n'))
    assert [(r.line, r.data) for r in read_all(path)] == [(1, {"a": 1}), (3, {"a": 2})]


def test_corrupt_gzip_is_input_error(tmp_path):
    path = write(tmp_path, "in.jsonl.gz", b"this is not gzip\n")
    with pytest.raises(InputError, match="not a valid gzip file"):
        read_all(path)
    with pytest.raises(InputError, match="not a valid gzip file"):
        open_input(path).scan()


def test_truncated_gzip_is_input_error(tmp_path):
    data = gzip.compress(b'{"a": 1}\n' * 1000)
    path = write(tmp_path, "in.jsonl.gz", data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        read_all(path)


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist") as raised:
        open_input(str(tmp_path / "nope.jsonl"))
    assert raised.value.hint


def test_directory_is_input_error(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        open_input(str(tmp_path))


def test_unreadable_file_is_input_error(tmp_path, monkeypatch):
    path = write(tmp_path, "in.jsonl", b"{}\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(readers, "open", denied, raising=False)  # root could read a chmod 0 file
    with pytest.raises(InputError, match="cannot read input file .*: Permission denied"):
        open_input(path)


def test_stdin_via_subprocess():
    script = textwrap.dedent(
        """
        from vbatch.storage.readers import open_input
        source = open_input("-")
        assert source.scan() is None
        for r in source.records():
            print(r.line, r.data, r.error is not None)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=b'{"a": 1}\n\nnot json\n',
        capture_output=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert result.stdout.decode().splitlines() == ["1 {'a': 1} False", "3 None True"]


def test_stdin_via_monkeypatch(monkeypatch):
    class FakeStdin:
        buffer = io.BytesIO(b'\xef\xbb\xbf{"a": 1}\n')

    monkeypatch.setattr(sys, "stdin", FakeStdin)
    assert list(open_input("-").records()) == [InputRecord(1, {"a": 1}, None)]


def test_scan_counts_nonblank_lines_and_digests_bytes(tmp_path):
    data = b'\xef\xbb\xbf{"a": 1}\r\n\r\n  \n{"a": 2}\nbad\n{"a": 3}'
    path = write(tmp_path, "in.jsonl", data)
    scan = open_input(path).scan()
    assert scan == InputScan(count=4, size=len(data), digest=hashlib.blake2b(data, digest_size=16).hexdigest())
    assert scan.count == len(read_all(path))


def test_scan_digest_changes_with_content(tmp_path):
    first = open_input(write(tmp_path, "a.jsonl", b'{"a": 1}\n')).scan()
    second = open_input(write(tmp_path, "b.jsonl", b'{"a": 2}\n')).scan()
    assert first.size == second.size and first.digest != second.digest


def test_scan_gzip_counts_decompressed_lines_and_digests_file(tmp_path):
    compressed = gzip.compress(b'{"a": 1}\n\n{"a": 2}\n')
    path = write(tmp_path, "in.gz", compressed)
    scan = open_input(path).scan()
    assert scan.count == 2
    assert scan.size == len(compressed)
    assert scan.digest == hashlib.blake2b(compressed, digest_size=16).hexdigest()


def test_scan_counts_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr("vbatch.storage.readers._SCAN_CHUNK", 7)
    data = b'{"a": 1}\n\n   \n{"bb": 22}\r\n\r\n{"c": 3}\n \n'
    path = write(tmp_path, "in.jsonl", data)
    assert open_input(path).scan().count == 3


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from(
            [
                b"",
                b" ",
                b"\r",
                b"\t \r",
                b"{}",
                b'{"x": 1}\r',
                b"[",
                b"7",
                b"\xef\xbb\xbf{}",
                b"\xef\xbb\xbf",
                b"\xef\xbb\xbf ",
            ]
        )
    ),
    final_newline=st.booleans(),
    chunk=st.integers(min_value=1, max_value=16),
)
def test_scan_count_matches_records(tmp_path_factory, lines, final_newline, chunk):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = tmp_path_factory.mktemp("scan") / "in.jsonl"
    path.write_bytes(data)
    source = open_input(str(path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("vbatch.storage.readers._SCAN_CHUNK", chunk)
        assert source.scan().count == len(list(source.records()))


def test_parquet_body_column_json_string(tmp_path):
    path = str(tmp_path / "in.parquet")
    table = pa.table(
        {
            "custom_id": ["a", "b", "c", None],
            "url": ["/v1/chat/completions", None, "/v1/embeddings", "/v1/embeddings"],
            "body": ['{"model": "m", "max_tokens": null}', '{"x": 1}', "{not json", '{"input": "hi"}'],
        }
    )
    pq.write_table(table, path)
    source = open_input(path)
    records = list(source.records())
    assert records[0] == InputRecord(
        1,
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "max_tokens": None}},
        None,
    )
    assert records[1].data == {"custom_id": "b", "method": "POST", "body": {"x": 1}}
    assert records[2].data is None and records[2].line == 3 and "body is not valid JSON" in records[2].error
    assert records[3].data == {"method": "POST", "url": "/v1/embeddings", "body": {"input": "hi"}}
    scan = source.scan()
    assert scan.count == 4 and scan.size == os.path.getsize(path)
    assert scan.digest == hashlib.blake2b(open(path, "rb").read(), digest_size=16).hexdigest()


def test_parquet_body_struct_column_drops_nulls(tmp_path):
    path = str(tmp_path / "in.parquet")
    body_type = pa.struct([("model", pa.string()), ("max_tokens", pa.int64())])
    table = pa.table(
        {
            "custom_id": pa.array(["a"]),
            "body": pa.array([{"model": "m", "max_tokens": None}], type=body_type),
        }
    )
    pq.write_table(table, path)
    assert read_all(path) == [InputRecord(1, {"custom_id": "a", "method": "POST", "body": {"model": "m"}}, None)]


def test_parquet_shorthand_with_messages_list_of_structs(tmp_path):
    path = str(tmp_path / "in.parquet")
    message = pa.struct([("role", pa.string()), ("content", pa.string()), ("name", pa.string())])
    table = pa.table(
        {
            "custom_id": ["r1", "r2", "r3"],
            "messages": pa.array(
                [
                    [
                        {"role": "system", "content": "be brief", "name": None},
                        {"role": "user", "content": "hi", "name": "ann"},
                    ],
                    None,
                    None,
                ],
                type=pa.list_(message),
            ),
            "prompt": [None, "once upon", None],
            "max_tokens": pa.array([16, None, None], type=pa.int32()),
            "temperature": [0.5, None, None],
            "input": [None, None, "embed me"],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    assert [(r.line, r.data) for r in read_all(path)] == [
        (
            1,
            {
                "custom_id": "r1",
                "messages": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "hi", "name": "ann"},
                ],
                "max_tokens": 16,
                "temperature": 0.5,
            },
        ),
        (2, {"custom_id": "r2", "prompt": "once upon"}),
        (3, {"custom_id": "r3", "input": "embed me"}),
    ]


def test_parquet_null_body_falls_back_to_shorthand(tmp_path):
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"custom_id": ["a"], "body": pa.array([None], type=pa.string()), "prompt": ["p"]}), path)
    assert read_all(path)[0].data == {"custom_id": "a", "prompt": "p"}


def test_parquet_row_numbers_span_batches(tmp_path, monkeypatch):
    monkeypatch.setattr("vbatch.storage.readers._PARQUET_BATCH_ROWS", 3)
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"custom_id": [str(i) for i in range(10)]}), path, row_group_size=4)
    records = read_all(path)
    assert [r.line for r in records] == list(range(1, 11))
    assert [r.data["custom_id"] for r in records] == [str(i) for i in range(10)]


def test_not_a_parquet_file_is_input_error(tmp_path):
    path = write(tmp_path, "in.parquet", orjson.dumps({"a": 1}))
    with pytest.raises(InputError, match="not a readable Parquet file"):
        open_input(path)
