"""The exceptions localdistil raises, all rooted at :class:`LocaldistilError`.

Catch ``LocaldistilError`` to handle any of them::

    LocaldistilError                 anything localdistil raises on purpose
     ├── DecorationError             @distil applied to a function it cannot trace
     ├── TraceError                  a record could not be built or written (strict=True only)
     ├── RecordError                 a trace file holds a line that is not a valid record
     ├── RecipeError                 a training recipe (YAML) is invalid
     ├── DatasetError                records cannot be turned into a training dataset
     ├── ModelError                  a model reference cannot be resolved or loaded
     ├── AdapterError                an adapter directory is missing, partial or unreadable
     │    └── AdapterMismatchError   the adapter was trained for a different function
     ├── DispatchError               the local model did not produce a valid answer
     └── ToolCallError               a tool set's call was refused (a tool's validators, or a
                                     function tool that raised it to refuse its arguments)

Every message names the thing to fix (the function, the file and line, the YAML key) and
how; the exceptions carry that context as attributes too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class LocaldistilError(Exception):
    """Base class of every error localdistil raises on purpose."""


class DecorationError(LocaldistilError, TypeError):
    """``@distil`` was applied to a function it cannot trace or serve.

    Raised at decoration time (import time of the user's module), never at call time.
    """


class TraceError(LocaldistilError):
    """A trace record could not be built or written.

    Only raised when the Instructions object was created with ``strict=True``; otherwise
    the failure is reported as a :class:`TraceWarning` and the call goes on untouched.
    """


class RecordError(LocaldistilError, ValueError):
    """A line of a trace file is not a valid record.

    Attributes:
        path: the file, where known.
        line: the 1-based line number, where known.
        reason: what is wrong with the line.
    """

    def __init__(self, reason: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}: " if self.path is not None and line is not None else ""
        super().__init__(f"{where}{reason}")


class RecipeError(LocaldistilError, ValueError):
    """A training recipe is invalid. The message names the YAML key and how to fix it.

    Attributes:
        key: the dotted YAML key at fault (e.g. ``"train.learning_rate"``), where one is.
    """

    def __init__(self, message: str, *, key: str | None = None):
        self.key = key
        super().__init__(message)


class DatasetError(LocaldistilError, ValueError):
    """Records cannot be turned into a training dataset (none found, mixed functions, ...)."""


class ModelError(LocaldistilError):
    """A model reference (alias, hub id, local directory, .gguf file) cannot be resolved or loaded.

    Attributes:
        reference: the model reference as the user wrote it.
    """

    def __init__(self, message: str, *, reference: str | None = None):
        self.reference = reference
        super().__init__(message)


class AdapterError(LocaldistilError):
    """An adapter directory is missing, incomplete or unreadable.

    Attributes:
        path: the adapter directory.
    """

    def __init__(self, message: str, *, path: str | Path | None = None):
        self.path = None if path is None else str(path)
        super().__init__(message)


class AdapterMismatchError(AdapterError):
    """The adapter was trained for a different version of the function calling it.

    Attributes:
        path: the adapter directory.
        changes: what differs, e.g. ``{"fingerprint": (trained, now)}``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        changes: dict[str, Any] | None = None,
    ):
        self.changes = dict(changes or {})
        super().__init__(message, path=path)


class DispatchError(LocaldistilError):
    """The local model did not produce a valid instance of the function's return type.

    Attributes:
        function: the function's name.
        raw_output: the text the model generated (possibly partial), for debugging.
        adapter: the adapter directory that answered.
    """

    def __init__(
        self,
        message: str,
        *,
        function: str | None = None,
        raw_output: str | None = None,
        adapter: str | Path | None = None,
    ):
        self.function = function
        self.raw_output = raw_output
        self.adapter = None if adapter is None else str(adapter)
        super().__init__(message)


class ToolCallError(LocaldistilError, ValueError):
    """A tool call of a :class:`~localdistil.Toolset` was refused.

    Raised by a tool's validators (through the tool set), or by a function tool itself: raise
    it inside a function tool to refuse the arguments it was called with, and the tool set
    acts on it as its ``on_invalid`` says (sample again, ask the teacher, or raise).

    Attributes:
        tool: the tool whose call was refused, where known.
        raw_output: the text the model generated, where a model answered.
        attempts: how many answers were tried before giving up (0 when raised by a tool).
    """

    def __init__(
        self,
        message: str,
        *,
        tool: str | None = None,
        raw_output: str | None = None,
        attempts: int = 0,
    ):
        self.tool = tool
        self.raw_output = raw_output
        self.attempts = attempts
        super().__init__(message)


class TraceWarning(RuntimeWarning):
    """A call could not be recorded; the function's own result was returned untouched."""
