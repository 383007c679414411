"""The echo model's file store: what ``/v1/files`` keeps, bounded, in a temporary directory.

At most ``max_files`` files and ``max_bytes`` bytes: an upload that would pass either bound
makes room by dropping the oldest files (the echo model is a demo and a test double: it keeps
working rather than filling up); one file larger than ``max_bytes`` is refused with 413. The
directory is made on first use and removed, with everything in it, by ``close()`` (the app's
shutdown). A file is written as it arrives (never gathered in memory) under a temporary name,
and only joins the store once its upload completed: an upload that fails leaves nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, BinaryIO

from proxy.errors import UpstreamStatusError

MAX_FILES = 100
MAX_BYTES = 512 * 1024 * 1024
READ = 64 * 1024


class FileWriter:
    """One upload on its way into the store (an ``echo.form.Sink``)."""

    def __init__(self, store: FileStore, path: Path, filename: str) -> None:
        self.store = store
        self.path = path
        self.filename = filename
        self.size = 0
        self._file: BinaryIO | None = path.open("wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.store.max_bytes:
            self.discard()
            raise UpstreamStatusError(
                f"The echo model's file store holds at most {self.store.max_bytes} bytes.",
                status=413,
                type="invalid_request_error",
                param="file",
                code="file_too_large",
            )
        assert self._file is not None
        self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


class FileStore:
    """See the module docstring."""

    def __init__(self, max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.directory: Path | None = None
        self._files: OrderedDict[str, dict[str, Any]] = OrderedDict()  # oldest first

    @property
    def size(self) -> int:
        return sum(entry["bytes"] for entry in self._files.values())

    def writer(self, filename: str) -> FileWriter:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="chat-stream-proxy-echo-files-"))
        return FileWriter(self, self.directory / f"upload-{os.urandom(8).hex()}", filename)

    def add(self, writer: FileWriter, purpose: str) -> dict[str, Any]:
        """The completed upload joins the store (the oldest files make room)."""
        writer.close()
        while self._files and (
            len(self._files) >= self.max_files or self.size + writer.size > self.max_bytes
        ):
            self._remove(next(iter(self._files)))
        file_id = "file-" + os.urandom(12).hex()
        assert self.directory is not None
        writer.path.rename(self.directory / file_id)
        self._files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": writer.size,
            "created_at": int(time.time()),
            "filename": writer.filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        return self._files[file_id]

    def list(
        self, purpose: str | None, limit: int, order: str, after: str | None
    ) -> dict[str, Any]:
        entries = [e for e in self._files.values() if purpose is None or e["purpose"] == purpose]
        if order != "asc":
            entries.reverse()
        if after is not None:
            ids = [entry["id"] for entry in entries]
            entries = entries[ids.index(after) + 1 :] if after in ids else []
        page = entries[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(entries) > len(page),
        }

    def get(self, file_id: str) -> dict[str, Any]:
        entry = self._files.get(file_id)
        if entry is None:
            raise UpstreamStatusError(
                f"No such File object: {file_id}",
                status=404,
                type="invalid_request_error",
                param="id",
            )
        return entry

    async def content(self, file_id: str) -> AsyncGenerator[bytes, None]:
        """The file's bytes, read as the client takes them."""
        self.get(file_id)
        assert self.directory is not None
        with (self.directory / file_id).open("rb") as file:
            while data := file.read(READ):
                yield data

    def delete(self, file_id: str) -> dict[str, Any]:
        self.get(file_id)
        self._remove(file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    def _remove(self, file_id: str) -> None:
        self._files.pop(file_id, None)
        if self.directory is not None:
            (self.directory / file_id).unlink(missing_ok=True)

    def close(self) -> None:
        """Remove everything (the app's shutdown)."""
        self._files.clear()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
