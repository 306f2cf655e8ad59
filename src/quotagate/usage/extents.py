"""A file's data a chunk at a time, its holes skipped.

A user can make a file of any apparent size that takes one block on disk (``truncate -s 16T``).
Its holes read as zeros, which hold no line break and no ``From `` line, so counting messages
or line breaks needs only the data: ``SEEK_DATA``/``SEEK_HOLE`` find it (a file system that does
not know holes reports the whole file as data). Each chunk first checks the job's deadline
(:func:`quotagate.bounded.check_deadline`): data a user did write is bounded only by their disk.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from quotagate.bounded import check_deadline


def data_chunks(fd: int, size: int, chunk: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` of the data in the first ``size`` bytes of the file open at ``fd``, in
    order, at most ``chunk`` bytes each. A chunk whose offset is not where the one before ended
    follows a hole: zeros the caller did not see."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from here on
                return
            raise
        while start < end:
            check_deadline()
            data = os.pread(fd, min(chunk, end - start), start)
            if not data:  # the file shrank meanwhile
                return
            yield start, data
            start += len(data)
        offset = end
