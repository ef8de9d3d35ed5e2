"""Replacing a file atomically and durably: the one way localdistil rewrites a file that
another process may read (a run's ``promoted`` pointer, auto mode's state, a run's metrics, a
synth run's records after a repair).

The content goes to a temporary sibling, is flushed and fsynced, and is renamed over the target
(``os.replace`` is atomic on POSIX); the directory is fsynced so the rename survives a power
cut. A reader sees the old file or the new one, never a mix; a process killed midway leaves at
most a ``.NAME.tmp-*`` sibling, which the next write of that file removes.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def replace_file(path: str | os.PathLike[str], content: str | bytes) -> None:
    """Make ``path`` hold ``content`` (text is written as UTF-8), atomically and durably."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
