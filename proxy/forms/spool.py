"""Bytes held for re-sending: in memory up to a small threshold, then in a temporary file.

The file is made with ``tempfile.TemporaryFile``: on Linux it never has a name in the
directory (``O_TMPFILE``, or unlinked at once elsewhere), so it disappears when it is closed,
and with the process however the process ends (even ``kill -9``); the space it takes is freed
on ``close()``, which the upload's owner calls on every way a request ends. It lives in
``$TMPDIR`` (``/tmp``): on a tmpfs that is memory, though not the process's.

Reads are positional (``os.pread``), so each attempt reads from the start on its own, and an
abandoned reader never moves another's position.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

# Bytes kept in memory before the rest goes to disk: twice what an upload holds before it
# starts sending once its model is known (``upload.HOLD``), so that only a file sent before its
# model ever reaches the disk.
MEMORY = 2 * 1024 * 1024
READ = 256 * 1024  # bytes per read when re-sending


class Spool:
    """See the module docstring. Written once (``write``), then read any number of times."""

    def __init__(self, memory: int = MEMORY) -> None:
        self.memory = memory
        self.size = 0
        self._buffer = bytearray()
        self._file: BinaryIO | None = None

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def write(self, data: bytes) -> None:
        if self._file is None and len(self._buffer) + len(data) <= self.memory:
            self._buffer += data
        else:
            if self._file is None:
                # Closed by close(), on every way the request ends: not a with block.
                self._file = tempfile.TemporaryFile(prefix="chat-stream-proxy-upload-")  # noqa: SIM115
                self._file.write(self._buffer)
                self._buffer = bytearray()
            self._file.write(data)
        self.size += len(data)

    def chunks(self) -> Iterator[bytes]:
        """Everything written, from the start, in pieces of at most ``READ`` bytes."""
        if self._file is None:
            view = bytes(self._buffer)
            for start in range(0, len(view), READ):
                yield view[start : start + READ]
            return
        self._file.flush()
        descriptor, offset = self._file.fileno(), 0
        while offset < self.size:
            data = os.pread(descriptor, min(READ, self.size - offset), offset)
            if not data:  # pragma: no cover (the file shrank under us: nothing sane to send)
                raise OSError("the upload's spool file is shorter than what was written")
            offset += len(data)
            yield data

    def close(self) -> None:
        """Free what is held (the temporary file is gone with it). Idempotent."""
        self._buffer = bytearray()
        if self._file is not None:
            self._file.close()
            self._file = None
