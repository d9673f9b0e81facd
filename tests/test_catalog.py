"""The batch server's catalog (storage/catalog) and file store (storage/filestore), on real
SQLite databases and real files in a temporary directory."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vbatch.errors import StateError
from vbatch.storage import catalog as catalog_module
from vbatch.storage.catalog import BATCH_ID, FILE_ID, Catalog
from vbatch.storage.filestore import FileStore, FileTooLarge


@pytest.fixture
def catalog(tmp_path: Path):
    opened = Catalog(tmp_path / "catalog.sqlite3")
    yield opened
    opened.close()


def _batch(catalog: Catalog, input_file_id: str = "file-x", **overrides):
    values = {"metadata": None, "expires_at": int(time.time()) + 86400, "model": "tiny"} | overrides
    return catalog.create_batch(input_file_id, "/v1/chat/completions", "24h", **values)


# --- catalog ---------------------------------------------------------------------------------


def test_files_round_trip_and_delete(catalog: Catalog):
    row = catalog.add_file("in.jsonl", "batch", 123, expires_at=99)
    assert FILE_ID.fullmatch(row.id)
    assert catalog.get_file(row.id) == row
    assert (row.filename, row.purpose, row.bytes, row.expires_at) == ("in.jsonl", "batch", 123, 99)
    assert abs(row.created_at - time.time()) < 5
    assert catalog.delete_file(row.id) is True
    assert catalog.get_file(row.id) is None
    assert catalog.delete_file(row.id) is False


def test_add_file_under_a_chosen_id_only_if_it_is_an_id(catalog: Catalog):
    file_id = catalog.new_file_id()
    assert catalog.add_file("out.jsonl", "batch_output", 5, file_id=file_id).id == file_id
    with pytest.raises(ValueError):
        catalog.add_file("x", "batch", 1, file_id="../etc/passwd")


def test_ids_are_unique_and_shaped(catalog: Catalog):
    file_ids = {catalog.new_file_id() for _ in range(2000)}
    batch_ids = {_batch(catalog).id for _ in range(50)}
    assert len(file_ids) == 2000 and len(batch_ids) == 50
    assert all(FILE_ID.fullmatch(i) and len(i) == 29 for i in file_ids)
    assert all(BATCH_ID.fullmatch(i) and len(i) == 30 for i in batch_ids)


def _files_at(catalog: Catalog, count: int) -> list[str]:
    """`count` files, several per second (in the order they were added), in listing order oldest first."""
    ids = [(1000 + n // 3, catalog.add_file(f"f{n}", "batch" if n % 3 else "batch_output", n).id) for n in range(count)]
    with sqlite3.connect(catalog_path(catalog)) as db:
        db.executemany("UPDATE files SET created_at = ? WHERE id = ?", ids)
    return [file_id for _, file_id in ids]  # created_at rises with n: already oldest first


def catalog_path(catalog: Catalog) -> str:
    return catalog._db.execute("PRAGMA database_list").fetchone()[2]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_files_pages_through_everything_once(catalog: Catalog, order: str):
    expected = _files_at(catalog, 10)
    if order == "desc":
        expected.reverse()
    seen, after, pages = [], None, 0
    while True:
        rows, has_more = catalog.list_files(after=after, limit=3, order=order)
        seen += [row.id for row in rows]
        pages += 1
        if not has_more:
            break
        after = rows[-1].id
    assert seen == expected
    assert pages == 4  # 3 + 3 + 3 + 1: the last page says no more
    rows, has_more = catalog.list_files(limit=10, order=order)
    assert [row.id for row in rows] == expected and has_more is False


def test_list_files_by_purpose_and_after_an_unknown_id(catalog: Catalog):
    _files_at(catalog, 9)
    rows, _ = catalog.list_files(purpose="batch_output")
    assert [row.filename for row in rows] == ["f6", "f3", "f0"]
    assert catalog.list_files(after="file-gone") == ([], False)
    with pytest.raises(ValueError):
        catalog.list_files(order="sideways")


def test_batches_create_list_and_page_newest_first(catalog: Catalog):
    first = _batch(catalog, metadata={"team": "a"})
    assert first.status == "validating" and first.model == "tiny" and first.metadata == {"team": "a"}
    assert catalog.get_batch(first.id) == first
    ids = [first.id] + [_batch(catalog).id for _ in range(4)]
    with sqlite3.connect(catalog_path(catalog)) as db:
        for n, batch_id in enumerate(ids):
            db.execute("UPDATE batches SET created_at = ? WHERE id = ?", (2000 + n, batch_id))
    rows, has_more = catalog.list_batches(limit=2)
    assert [row.id for row in rows] == ids[:-3:-1] and has_more
    rows, has_more = catalog.list_batches(after=rows[-1].id, limit=10)
    assert [row.id for row in rows] == ids[2::-1] and not has_more
    assert [row.id for row in catalog.batches_with_status("validating")] == ids  # oldest first


def test_status_stamps_its_time_once(catalog: Catalog):
    batch = _batch(catalog)
    running = catalog.update_batch(batch.id, status="in_progress", request_total=7)
    assert running.status == "in_progress" and running.request_total == 7
    assert running.in_progress_at is not None and abs(running.in_progress_at - time.time()) < 5
    again = catalog.update_batch(batch.id, status="in_progress")
    assert again.in_progress_at == running.in_progress_at
    chosen = catalog.update_batch(batch.id, status="finalizing", finalizing_at=42)
    assert chosen.finalizing_at == 42
    done = catalog.update_batch(
        batch.id, status="completed", errors=[{"code": "x", "message": "y", "line": 3}], output_file_id="file-o"
    )
    assert done.completed_at is not None and done.errors == [{"code": "x", "message": "y", "line": 3}]
    assert catalog.get_batch(batch.id) == done
    assert catalog.update_batch(batch.id, request_completed=5).completed_at == done.completed_at


def test_update_batch_refuses_what_is_not_a_batch_field(catalog: Catalog):
    batch = _batch(catalog)
    with pytest.raises(ValueError):
        catalog.update_batch(batch.id, status="done")
    with pytest.raises(ValueError):
        catalog.update_batch(batch.id, colour="red")
    with pytest.raises(ValueError):
        catalog.update_batch(batch.id, id="batch_other")
    with pytest.raises(KeyError):
        catalog.update_batch("batch_missing", status="failed")
    assert catalog.get_batch(batch.id) == batch


def test_update_batch_if_status_leaves_a_finished_batch_alone(catalog: Catalog):
    batch = _batch(catalog)
    catalog.update_batch(batch.id, status="completed")
    row = catalog.update_batch(batch.id, status="cancelling", if_status=("validating", "in_progress"))
    assert row.status == "completed" and row.cancelling_at is None
    assert catalog.get_batch(batch.id) == row


def test_live_batches_counts_and_old_outputs(catalog: Catalog):
    a, b, c = _batch(catalog, "file-in"), _batch(catalog, "file-in"), _batch(catalog, "file-other")
    catalog.update_batch(b.id, status="completed")
    catalog.update_batch(c.id, status="cancelling")
    assert catalog.live_batches_using("file-in") == [a.id]
    assert catalog.live_batches_using("file-other") == [c.id]
    assert catalog.count_by_status() == {"validating": 1, "completed": 1, "cancelling": 1}
    old = catalog.add_file("o.jsonl", "batch_output", 1)
    catalog.add_file("i.jsonl", "batch", 1)
    assert catalog.outputs_older_than(int(time.time()) + 10) == [old.id]
    assert catalog.outputs_older_than(0) == []


def test_reopened_catalog_has_everything_and_is_wal(tmp_path: Path):
    path = tmp_path / "state" / "catalog.sqlite3"
    first = Catalog(path)
    file_row = first.add_file("in.jsonl", "batch", 10)
    batch = first.update_batch(_batch(first, file_row.id).id, status="in_progress", input_tokens=3)
    first.close()
    second = Catalog(path)
    try:
        assert second.get_file(file_row.id) == file_row
        assert second.get_batch(batch.id) == batch
    finally:
        second.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == catalog_module.SCHEMA_VERSION


def test_a_catalog_from_a_newer_vbatch_is_refused(tmp_path: Path):
    path = tmp_path / "catalog.sqlite3"
    Catalog(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {catalog_module.SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="schema version"):
        Catalog(path)


def test_two_threads_write_at_once(catalog: Catalog):
    batch = _batch(catalog)
    errors: list[BaseException] = []

    def work(kind: str) -> None:
        try:
            for n in range(100):
                if kind == "files":
                    catalog.add_file(f"f{n}", "batch", n)
                else:
                    catalog.update_batch(batch.id, request_completed=n, status="in_progress")
                    catalog.get_batch(batch.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(kind,)) for kind in ("files", "batches")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(catalog.list_files()[0]) == 100
    assert catalog.get_batch(batch.id).request_completed == 99


# --- file store ------------------------------------------------------------------------------


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_store_writes_whole_files_only(tmp_path: Path, catalog: Catalog):
    store = FileStore(tmp_path / "files")
    file_id = catalog.new_file_id()
    assert asyncio.run(store.write_stream(file_id, _chunks(b"ab", b"", b"cd"), limit=4)) == 4
    assert store.path(file_id).read_bytes() == b"abcd" and store.size(file_id) == 4
    refused = catalog.new_file_id()
    with pytest.raises(FileTooLarge):
        asyncio.run(store.write_stream(refused, _chunks(b"abc", b"de"), limit=4))
    assert sorted(p.name for p in store.root.iterdir()) == [file_id]
    store.delete(file_id)
    store.delete(file_id)
    assert list(store.root.iterdir()) == []


def test_store_adopts_and_refuses_names_that_are_not_ids(tmp_path: Path, catalog: Catalog):
    store = FileStore(tmp_path / "files")
    written = store.root / "output.partial"
    written.write_bytes(b"{}\n")
    file_id = catalog.new_file_id()
    store.adopt(file_id, written)
    assert store.path(file_id).read_bytes() == b"{}\n" and not written.exists()
    for bad in ("../catalog.sqlite3", "file-short", "/etc/passwd", f"{file_id}/x", ""):
        with pytest.raises(ValueError):
            store.path(bad)


def test_store_clears_uploads_a_killed_server_left(tmp_path: Path):
    root = tmp_path / "files"
    root.mkdir()
    (root / ".upload-abc123").write_bytes(b"half")
    FileStore(root)
    assert list(root.iterdir()) == []


def test_batches_made_in_one_second_list_newest_first(catalog: Catalog):
    """Ids are random, so creation order within a second must come from the insertion order."""
    made = [_batch(catalog).id for _ in range(6)]
    with sqlite3.connect(catalog_path(catalog)) as db:
        db.execute("UPDATE batches SET created_at = 1000")
    rows, more = catalog.list_batches(limit=100)
    assert [row.id for row in rows] == made[::-1] and not more
    page, more = catalog.list_batches(after=made[3], limit=2)
    assert [row.id for row in page] == [made[2], made[1]] and more


def test_a_catalog_of_the_first_schema_gains_reasoning_tokens(tmp_path: Path):
    """A server's catalog from before reasoning tokens were counted opens with its batches intact."""
    path = tmp_path / "catalog.sqlite3"
    with sqlite3.connect(path) as db:
        for statement in catalog_module._MIGRATIONS[0]:
            db.execute(statement)
        db.execute(
            "INSERT INTO batches (id, input_file_id, endpoint, completion_window, status, created_at, output_tokens)"
            " VALUES ('batch_old', 'file-x', '/v1/chat/completions', '24h', 'completed', 1, 42)"
        )
        db.execute("PRAGMA user_version = 1")
    catalog = Catalog(path)
    try:
        old = catalog.get_batch("batch_old")
        assert (old.output_tokens, old.reasoning_tokens) == (42, 0)
        assert catalog.update_batch("batch_old", reasoning_tokens=7).reasoning_tokens == 7
    finally:
        catalog.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == catalog_module.SCHEMA_VERSION == 2
