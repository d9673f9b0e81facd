"""The bytes of the batch server's files, one file per id in one directory beside the catalog.

A file appears under its id only whole: uploads and adopted outputs are written elsewhere, fsynced,
then renamed into place, so a kill -9 or a refused upload never leaves a partial file under an id.
Names on disk are catalog ids, checked against their pattern: a client's string never becomes a path.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from vbatch.errors import UsageError
from vbatch.storage.catalog import FILE_ID

#: Uploads in progress are written under this prefix; what a killed server left is removed on start.
_PARTIAL_PREFIX = ".upload-"


class FileTooLarge(UsageError):
    """An upload passed the size limit; nothing of it was kept."""

    def __init__(self, limit: int):
        super().__init__(f"the file is larger than the limit of {limit:,} bytes")
        self.limit = limit


class FileStore:
    """Files by id under `root`. One store per root and process: it clears stale uploads on start."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(_PARTIAL_PREFIX + "*"):
            leftover.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path:
        if not FILE_ID.fullmatch(file_id):
            raise ValueError(f"not a file id: {file_id!r}")
        return self.root / file_id

    async def write_stream(self, file_id: str, chunks: AsyncIterator[bytes], limit: int) -> int:
        """Store the chunks as `file_id` and return its size; FileTooLarge once more than `limit`
        bytes arrive. The file exists only if every chunk was written (and fsynced)."""
        final = self.path(file_id)
        fd, partial = tempfile.mkstemp(dir=self.root, prefix=_PARTIAL_PREFIX)
        size = 0
        try:
            with open(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise FileTooLarge(limit)
                    out.write(chunk)  # into the page cache: quick enough for the event loop
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())  # seconds for a large file
            os.replace(partial, final)
        except BaseException:
            os.unlink(partial)
            raise
        self._sync_root()
        return size

    def adopt(self, file_id: str, src: Path) -> None:
        """Move a finished file (an executor's output) into the store as `file_id`, atomically.
        `src` must be on the store's file system."""
        with open(src, "rb") as written:
            os.fsync(written.fileno())
        os.replace(src, self.path(file_id))
        self._sync_root()

    def delete(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)

    def size(self, file_id: str) -> int:
        return self.path(file_id).stat().st_size

    def _sync_root(self) -> None:
        """Make the rename itself durable (it lives in the directory)."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
