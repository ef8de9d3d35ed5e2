"""A traced call as read back from a file, whatever format wrote it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from localdistil.spec import canonical_json


class Record(BaseModel):
    """One traced call, read back from a file of any supported format.

    ``args`` is ``None`` when the source kept only the prompt text (plain OpenAI chat files,
    instructor calls whose arguments cannot be parsed back); such records train on their
    recorded ``prompt`` as is.
    """

    model_config = ConfigDict(frozen=True)

    function: str
    """``module:qualname`` where known, else the function's name."""
    name: str
    """The name used in prompts."""
    args: dict[str, Any] | None
    output: dict[str, Any]
    output_schema: dict[str, Any] | None = None
    signature: str | None = None
    doc: str | None = None
    prompt: list[dict[str, Any]]
    """The prompt messages as recorded (the assistant answer left out)."""
    fingerprint: str | None = None
    schema_hash: str | None = None
    id: str | None = None
    ts: str | None = None
    duration_s: float | None = None
    extra: dict[str, Any] = {}
    source_format: Literal["localdistil", "instructor", "instructor-raw", "openai"]
    path: str | None = None
    line: int | None = None

    def input_key(self) -> str:
        """Canonical text of the input, equal for identical calls: used to deduplicate."""
        if self.args is not None:
            return canonical_json([self.name, self.args])
        return canonical_json(self.prompt)


@dataclasses.dataclass(frozen=True)
class RecordProblem:
    """A line that could not be read, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclasses.dataclass
class RecordSet:
    """What :func:`read_records` found: the valid records and the lines it skipped."""

    records: list[Record]
    problems: list[RecordProblem]
    files: list[Path]
