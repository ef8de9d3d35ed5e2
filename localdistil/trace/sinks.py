"""Where trace records go: a JSONL file, any ``logging.Handler``, or both.

:class:`JsonlSink` appends whole lines to a file that many threads and processes may write
at once: each line is written by one ``write`` on a file opened with ``O_APPEND``, under an
exclusive ``flock`` (so a partial write by one process is finished before another begins),
and the file is reopened after ``fork`` so parent and child never share a lock.

:class:`HandlerSink` sends each line to ``logging`` handlers (instructor's ``log_handlers``)
through a logger owned by its Instructions object: not the root logger, no propagation, not
registered with ``logging.getLogger`` (so a second Instructions object with the same name never
duplicates handlers) and independent of the application's log level and ``logging.disable``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

try:  # POSIX; on Windows O_APPEND alone keeps lines whole within one process
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]


class JsonlSink:
    """Append records, one per line, to ``path``; parent directories are created."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd is None or self._pid != pid:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # After fork, the inherited descriptor shares its flock with the parent: open anew.
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
            self._fd = os.open(self.path, flags, 0o644)
            self._pid = pid
        return self._fd

    def write(self, line: str) -> None:
        """Append ``line`` and a newline as one whole line."""
        data = (line + "\n").encode("utf-8")
        with self._lock:
            fd = self._descriptor()
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file; a later write opens it again."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"


class HandlerSink:
    """Send each record line, as the message of an INFO log record, to ``handlers``."""

    def __init__(self, name: str, handlers: Sequence[logging.Handler]):
        self.logger = logging.Logger(f"localdistil.trace.{name}", logging.DEBUG)
        self.logger.propagate = False
        for handler in handlers:
            if not isinstance(handler, logging.Handler):
                raise TypeError(
                    f"log_handlers takes logging.Handler objects; got {type(handler).__name__}. "
                    "For a file, pass logging.FileHandler('path.jsonl') or use path='path.jsonl'."
                )
            self.logger.addHandler(handler)

    def write(self, line: str) -> None:
        """Hand ``line`` to every handler, whatever the application's log level."""
        # logger.handle skips isEnabledFor, so logging.disable() and levels elsewhere do not
        # silently drop training data; the handlers' own levels and filters still apply.
        record = self.logger.makeRecord(self.logger.name, logging.INFO, "localdistil", 0, line,
                                        (), None)
        self.logger.handle(record)

    def close(self) -> None:
        """Flush the handlers (they belong to the caller, who closes them)."""
        for handler in self.logger.handlers:
            handler.flush()
