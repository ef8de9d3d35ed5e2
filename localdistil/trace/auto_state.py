"""The router state of one ``mode="auto"`` function, shared by the processes of a service.

What is kept: the adapter version it is about, the phase (``"shadow"``: the function answers
and the model is compared with it; ``"dispatch"``: the model answers and a sample of calls is
still compared), and the rolling window of the last ``window`` comparisons (exact agreement or
not) that decides the phase, with running totals. :func:`merge` is the whole policy: promote
when the window holds at least ``min_calls`` comparisons and its agreement reaches
``promote_at``; demote when it falls below ``demote_at``. The window is kept across a phase
change, so trust is lost and regained gradually; a new version starts from an empty window,
untrusted.

Where: ``RUN/auto/<function name>.json`` (JSON, readable by people), beside the run's adapter,
so a restarted service keeps the trust it earned. Deleting the file resets the function to
untrusted.

Concurrency, decided here:

- Threads of one process share one :class:`AutoState`; a ``threading.Lock`` guards its
  in-memory state (created anew in a child after ``fork``).
- Processes share the file. Every write is a read-modify-write under an exclusive ``flock`` on
  ``<name>.json.lock`` beside it, and is atomic (a temporary file, then ``os.replace``), so a
  reader without the lock sees the old file or the new one, never part of one.
- The hot path is cheap: a call reads :attr:`AutoState.view`, an immutable snapshot, with no
  lock and no I/O. The mode asks for :meth:`AutoState.refresh` at most every ``REFRESH_S``: one
  ``stat``, and a re-read only when the file changed (inode, mtime, size). Comparisons gather in
  memory and are merged into the file every ``FLUSH_EVERY`` comparisons, once the oldest waiting
  one is ``FLUSH_S`` old, and at once when they would change the phase, so a promotion or
  demotion reaches every process within ``REFRESH_S`` of its next call. A process that exits
  loses at most ``FLUSH_EVERY - 1`` waiting comparisons (their calls are still in the traces).
- A file that cannot be written (read-only disk, ...) is reported once as a ``TraceWarning``;
  the process then keeps its state in memory. A file that cannot be read counts as absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from localdistil.errors import DecorationError
from localdistil.files import replace_file

try:  # POSIX; elsewhere the atomic replace alone keeps the file whole
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Seconds between two looks at the state file (a ``stat``) by one process.
REFRESH_S = 0.5
#: Waiting comparisons that are merged into the file at once.
FLUSH_EVERY = 16
#: Seconds a comparison may wait before it is merged into the file.
FLUSH_S = 2.0

Phase = Literal["trace", "shadow", "dispatch"]
Reporter = Callable[[str, BaseException], None]


@dataclasses.dataclass(frozen=True)
class AutoPolicy:
    """When an auto-mode function hands its calls to the model and when it takes them back.

    Raises:
        DecorationError: a value out of range, naming the argument.
    """

    promote_at: float = 0.97
    """Dispatch once the rolling exact agreement reaches this (with ``min_calls`` compared)."""
    demote_at: float = 0.90
    """Go back to shadowing once the rolling agreement falls below this."""
    window: int = 200
    """How many of the latest comparisons the rolling agreement is taken over."""
    min_calls: int = 50
    """Comparisons needed in the window before the model can be trusted."""
    monitor_rate: float = 0.05
    """The fraction of dispatched calls on which the function still runs and is compared."""

    def __post_init__(self) -> None:
        for name in ("promote_at", "demote_at", "monitor_rate"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not 0 <= value <= 1:
                raise DecorationError(f"{name} must be a number between 0 and 1; got {value!r}.")
        for name in ("window", "min_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DecorationError(f"{name} must be a whole number of calls, at least 1; "
                                      f"got {value!r}.")
        if not self.demote_at < self.promote_at:
            raise DecorationError(f"demote_at ({self.demote_at!r}) must be below promote_at "
                                  f"({self.promote_at!r}), or the function would flip between "
                                  "phases on every comparison.")
        if self.min_calls > self.window:
            raise DecorationError(f"min_calls ({self.min_calls!r}) must not exceed window "
                                  f"({self.window!r}): the window never holds more comparisons.")


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The state of one function for one adapter version (the file's content)."""

    version: str | None
    """The adapter version compared and trusted; ``None``: no adapter, the function traces."""
    phase: Phase
    window: str = ""
    """The latest comparisons, oldest first: ``"1"`` agreed exactly, ``"0"`` did not."""
    compared: int = 0
    """Comparisons made with this version, in all processes."""
    agreed: int = 0
    promotions: int = 0
    demotions: int = 0
    since: str | None = None
    """When the phase last changed (ISO 8601, UTC)."""

    @property
    def agreement(self) -> float | None:
        """The exact agreement over the window; ``None`` before any comparison."""
        return self.window.count("1") / len(self.window) if self.window else None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fresh(version: str | None) -> Snapshot:
    """The state of a version that has just arrived: untrusted, nothing compared."""
    return Snapshot(version, "trace" if version is None else "shadow", since=_now())


def merge(state: Snapshot, results: Sequence[bool], policy: AutoPolicy) -> Snapshot:
    """``state`` with ``results`` (exact agreement of each comparison, oldest first) added to
    its window, and the phase that the window's agreement now calls for."""
    if not results or state.version is None:
        return state
    window = (state.window + "".join("1" if exact else "0" for exact in results))[-policy.window:]
    changes: dict[str, Any] = {"window": window, "compared": state.compared + len(results),
                               "agreed": state.agreed + sum(map(bool, results))}
    agreement = window.count("1") / len(window)
    trusted = len(window) >= policy.min_calls and agreement >= policy.promote_at
    if state.phase == "shadow" and trusted:
        changes.update(phase="dispatch", promotions=state.promotions + 1, since=_now())
    elif state.phase == "dispatch" and agreement < policy.demote_at:
        changes.update(phase="shadow", demotions=state.demotions + 1, since=_now())
    return dataclasses.replace(state, **changes)


class AutoState:
    """The shared state of one function, kept in ``path`` (see the module docstring).

    Args:
        path: ``RUN/auto/<function name>.json``.
        policy: the thresholds :func:`merge` applies.
        report: reports a problem with the file (a ``TraceWarning``; raised when strict).
    """

    def __init__(self, path: str | os.PathLike[str], policy: AutoPolicy, report: Reporter):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.policy = policy
        self._report = report
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._base = fresh(None)  # the file as last read or written (or as kept in memory)
        self._pending: list[bool] = []  # comparisons not merged into the file yet
        self._pending_since = 0.0
        self._stamp: tuple[int, int, int] | None = None  # the file's (inode, mtime, size)
        self._failing = False
        #: What calls and ``router_stats`` see: the file's state with the waiting comparisons.
        self.view: Snapshot = self._base
        #: The file is about another version than ours: look for the promoted version now.
        self.stale = False

    def _guard(self) -> threading.Lock:
        if self._pid != os.getpid():  # forked: the parent's lock and comparisons are not ours
            self._lock, self._pid, self._pending = threading.Lock(), os.getpid(), []
        return self._lock

    # -- what the mode calls -----------------------------------------------------------------

    def use(self, version: str | None) -> None:
        """Follow ``version``, the promoted one now: the file's state when it is about that
        version, else a fresh, untrusted one (written, so other processes follow too)."""
        with self._guard():
            self._pending.clear()
            self.stale = False
            if version is None:
                self._base = self.view = fresh(None)
                return
            if self._base.version != version:
                self._base = fresh(version)
            state = self._update(lambda current: current if current is not None and
                                 current.version == version else fresh(version))
            self._base = self.view = self._base if state is None else state

    def refresh(self) -> None:
        """Re-read the file if another process changed it; merge waiting comparisons if due."""
        with self._guard():
            version = self._base.version
            if version is None:
                return
            stamp = self._stat()
            if stamp != self._stamp:
                self._stamp = stamp
                current = self._read()
                if current is None:  # removed (a reset) or unreadable
                    self._base = fresh(version)
                elif current.version != version:
                    self.stale = True
                else:
                    self._base = current
                self.view = merge(self._base, self._pending, self.policy)
            if self._pending and time.monotonic() - self._pending_since >= FLUSH_S:
                self._flush()

    def add(self, version: str, exact: bool) -> None:
        """Count one comparison made with ``version`` (dropped if that is no longer current)."""
        with self._guard():
            if version != self._base.version:
                return
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(exact)
            self.view = merge(self._base, self._pending, self.policy)
            if (self.view.phase != self._base.phase or len(self._pending) >= FLUSH_EVERY
                    or time.monotonic() - self._pending_since >= FLUSH_S):
                self._flush()

    # -- the file ----------------------------------------------------------------------------

    def _flush(self) -> None:
        pending, version = list(self._pending), self._base.version
        self._pending.clear()
        moved_on = False

        def update(current: Snapshot | None) -> Snapshot:
            nonlocal moved_on
            if current is not None and current.version != version:
                moved_on = True  # another process follows another version: ours are outdated
                return current
            return merge(current or fresh(version), pending, self.policy)

        state = self._update(update)
        if moved_on:
            self.stale = True  # the mode looks for the promoted version at its next call
        else:  # unwritable: the comparisons still count, in this process
            self._base = merge(self._base, pending, self.policy) if state is None else state
        self.view = merge(self._base, self._pending, self.policy)

    def _update(self, update: Callable[[Snapshot | None], Snapshot]) -> Snapshot | None:
        """Read-modify-write the file under its lock: the state now in the file, or ``None``
        when it cannot be written (reported once; the caller keeps its state in memory)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                current = self._read()
                state = update(current)
                if state != current:
                    self._write(state)
                self._stamp = self._stat()  # still under the lock: nobody wrote since
            finally:
                os.close(fd)  # releases the lock
        except OSError as exc:
            if not self._failing:
                self._failing = True
                self._report(f"localdistil auto: cannot write {self.path} ({exc}); this process "
                             "keeps the state of its function in memory, unshared.", exc)
            return None
        self._failing = False
        return state

    def _write(self, state: Snapshot) -> None:
        data = {"function": self.path.stem, **dataclasses.asdict(state), "updated": _now()}
        replace_file(self.path, json.dumps(data, indent=1) + "\n")

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def _read(self) -> Snapshot | None:
        """The file's state; ``None`` when it is absent or not a valid state (reported)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._report(f"localdistil auto: {self.path} is unreadable ({exc}); starting "
                         "untrusted again.", exc)
            return None
        try:
            fields = {field.name: data[field.name] for field in dataclasses.fields(Snapshot)}
            state = Snapshot(**fields)
            if (not isinstance(state.version, str) or state.phase not in ("shadow", "dispatch")
                    or set(state.window) - {"0", "1"}
                    or not all(isinstance(getattr(state, name), int) and getattr(state, name) >= 0
                               for name in ("compared", "agreed", "promotions", "demotions"))):
                raise ValueError("a field has a value out of range")
        except (KeyError, TypeError, ValueError) as exc:
            self._report(f"localdistil auto: {self.path} is not a valid state ({exc!r}); "
                         "starting untrusted again.", exc)
            return None
        if len(state.window) > self.policy.window:  # the window was made smaller since
            state = dataclasses.replace(state, window=state.window[-self.policy.window:])
        return state
