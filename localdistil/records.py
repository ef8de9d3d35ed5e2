"""The trace record format: build records from calls, and read them back from files.

One JSON object per line. ``messages`` (the default) is the shape OpenAI-style fine-tuning
tools read, with localdistil's structured block beside it::

    {"messages": [{"role": "system", "content": "Predict the results of this function:..."},
                  {"role": "user", "content": "Return fn(a=133, b=539)"},
                  {"role": "assistant", "function_call": {"name": "Multiply", "arguments": "..."}}],
     "functions": [{"name": "Multiply", "description": "...", "parameters": {...}}],
     "localdistil": {"version": 1, "function": "pkg.mod:fn", "name": "fn", ...,
                     "args": {"a": 133, "b": 539}, "output": {"a": 133, "b": 539, "result": 71687}}}

``tools`` writes the modern ``tool_calls`` + ``tools`` variant; ``raw`` writes the structured
block alone (plus the output schema). Training only needs the block, so every format trains
the same way.

:func:`read_records` reads localdistil's files and also (through :mod:`localdistil.foreign`)
instructor's ``Instructions`` files (messages and raw) and plain OpenAI chat fine-tuning files
with ``tool_calls``. A line that is
malformed, truncated by a crash or not UTF-8 is reported (file, line, reason) and skipped, or
raises :class:`~localdistil.errors.RecordError` with ``strict=True``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import RecordError
from .prompts import render_completion, render_messages
from .spec import FunctionSpec, canonical_json, sha256_hex

#: Version of the ``localdistil`` block written into every record.
RECORD_VERSION = 1

FinetuneFormat = Literal["messages", "tools", "raw"]
FINETUNE_FORMATS: tuple[str, ...] = ("messages", "tools", "raw")

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# -- building -----------------------------------------------------------------------------------


class RecordBuilder:
    """Builds the record of one call. Everything that does not change between calls of the
    same function (system prompt, function schema) is prepared once, here."""

    def __init__(
        self,
        spec: FunctionSpec,
        *,
        finetune_format: str = "messages",
        indent: int | None = None,
        source: str | None = None,
        extra: Mapping[str, Any] | None = None,
        instructions_id: str | None = None,
    ):
        if finetune_format not in FINETUNE_FORMATS:
            raise ValueError(f"Unknown finetune_format {finetune_format!r}; choose one of {', '.join(FINETUNE_FORMATS)}.")
        self.spec = spec
        self.finetune_format = finetune_format
        self.indent = indent
        self._source = source
        self._extra = dict(extra or {})
        self._instructions_id = instructions_id
        model = spec.output_type
        description = (model.__doc__ or "").strip()
        if not description or model.__doc__ == BaseModel.__doc__:
            description = f"The result of {spec.name}."
        self._output_name = _NAME_UNSAFE.sub("_", model.__name__)
        self._function_schema = {
            "name": self._output_name,
            "description": description,
            "parameters": spec.output_schema,
        }

    def build(self, args: dict[str, Any], output: dict[str, Any], *, duration_s: float,
              annotations: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record of one call, as a JSON-compatible dict; ``annotations`` (e.g. shadow
        mode's comparison) go into the ``localdistil`` block."""
        spec = self.spec
        block: dict[str, Any] = {
            "version": RECORD_VERSION,
            "function": spec.qualname,
            "name": spec.name,
            "signature": spec.signature,
            "doc": spec.doc,
            "fingerprint": spec.fingerprint,
            "schema_hash": spec.schema_hash,
            "args": args,
            "output": output,
            "id": str(uuid.uuid4()),
            "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "duration_s": round(duration_s, 6),
        }
        if self._instructions_id is not None:
            block["instructions_id"] = self._instructions_id
        if self._extra:
            block["extra"] = self._extra
        if annotations:
            block.update(annotations)
        if self.finetune_format == "raw":
            block["output_schema"] = spec.output_schema
            return {"localdistil": block}

        messages: list[dict[str, Any]] = render_messages(
            name=spec.name, args=args, style="full", signature=spec.signature, doc=spec.doc, source=self._source
        )
        arguments = json.dumps(output, ensure_ascii=False, indent=self.indent) if self.indent else render_completion(output)
        call = {"name": self._output_name, "arguments": arguments}
        if self.finetune_format == "tools":
            messages.append({"role": "assistant", "tool_calls": [{"id": "call_0", "type": "function", "function": call}]})
            return {"messages": messages, "tools": [{"type": "function", "function": self._function_schema}], "localdistil": block}
        messages.append({"role": "assistant", "function_call": call})
        return {"messages": messages, "functions": [self._function_schema], "localdistil": block}


# -- reading ------------------------------------------------------------------------------------


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


def expand_paths(patterns: str | Path | Iterable[str | Path]) -> list[Path]:
    """Files named by paths, globs (``traces/*.jsonl``, ``**`` too) and directories (their
    ``*.jsonl``), sorted and without repeats.

    Raises:
        RecordError: a path does not exist or a glob matches nothing.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    files: dict[Path, None] = {}
    for pattern in patterns:
        text = str(pattern)
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise RecordError(f"No file matches {text!r}. Check the pattern and the working directory.")
        elif Path(text).is_dir():
            matches = sorted(Path(text).glob("*.jsonl"))
            if not matches:
                raise RecordError(f"Directory {text!r} holds no *.jsonl files.")
        elif Path(text).is_file():
            matches = [Path(text)]
        else:
            raise RecordError(f"No such file: {text!r}.")
        files.update(dict.fromkeys(matches))
    return list(files)


def read_records(patterns: str | Path | Iterable[str | Path], *, strict: bool = False) -> RecordSet:
    """Read every record from files, globs or directories.

    Args:
        patterns: one or several paths, globs or directories.
        strict: raise :class:`RecordError` on the first bad line instead of skipping it.

    Returns:
        A :class:`RecordSet`; ``problems`` lists each skipped line with file, line and reason.
    """
    files = expand_paths(patterns)
    records: list[Record] = []
    problems: list[RecordProblem] = []
    for path in files:
        data = path.read_bytes()
        lines = data.split(b"\n")
        last = len(lines) - 1  # after a final newline, the last piece is empty
        for index, raw in enumerate(lines):
            if not raw.strip():
                continue
            number = index + 1
            try:
                record = parse_line(raw, truncated=index == last)
            except RecordError as exc:
                if strict:
                    raise RecordError(exc.reason, path=path, line=number) from None
                problems.append(RecordProblem(str(path), number, exc.reason))
                continue
            records.append(record.model_copy(update={"path": str(path), "line": number}))
    return RecordSet(records=records, problems=problems, files=files)


def parse_line(raw: bytes | str, *, truncated: bool = False) -> Record:
    """Parse one line of a trace file into a :class:`Record`.

    Args:
        raw: the line, without its newline.
        truncated: the line is the file's last and has no newline after it.

    Raises:
        RecordError: the line is not a record of any supported format (``reason`` says why).
    """
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        if truncated:
            raise RecordError(f"truncated: the last line ends without a newline and is not whole JSON ({exc.msg}); a writer probably stopped mid-line") from None
        raise RecordError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    from .foreign import parse_chat, parse_instructor_raw  # they build Records: imported late

    try:
        if "localdistil" in obj:
            return _parse_localdistil(obj)
        if "fn_name" in obj and "resp" in obj:
            return parse_instructor_raw(obj)
        if "messages" in obj:
            return parse_chat(obj)
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise RecordError(f"malformed record: {type(exc).__name__}: {exc}") from None
    raise RecordError("not a localdistil, instructor or OpenAI chat record (no 'localdistil', 'messages' or 'fn_name' key)")


def _parse_localdistil(obj: dict[str, Any]) -> Record:
    block = obj["localdistil"]
    version = block.get("version")
    if version != RECORD_VERSION:
        raise RecordError(f"record version {version!r} is not {RECORD_VERSION}; it was written by another localdistil release")
    for key in ("function", "args", "output"):
        if key not in block:
            raise RecordError(f"the 'localdistil' block has no {key!r}")
    schema = block.get("output_schema")
    if schema is None and obj.get("functions"):
        schema = obj["functions"][0].get("parameters")
    if schema is None and obj.get("tools"):
        schema = obj["tools"][0]["function"].get("parameters")
    name = block.get("name") or block["function"].rpartition(":")[2].rpartition(".")[2]
    if "messages" in obj:
        prompt = [m for m in obj["messages"] if m.get("role") != "assistant"]
    else:
        prompt = render_messages(name=name, args=block["args"], style="full", signature=block.get("signature") or f"def {name}(...)", doc=block.get("doc"))
    return Record(
        function=block["function"], name=name, args=block["args"], output=block["output"],
        output_schema=schema, signature=block.get("signature"), doc=block.get("doc"), prompt=prompt,
        fingerprint=block.get("fingerprint"), schema_hash=block.get("schema_hash"), id=block.get("id"),
        ts=block.get("ts"), duration_s=block.get("duration_s"), extra=block.get("extra") or {},
        source_format="localdistil",
    )


# -- summaries ----------------------------------------------------------------------------------


@dataclasses.dataclass
class FunctionSummary:
    """What a set of trace files holds for one function (``records stats``)."""

    function: str
    records: int = 0
    distinct_inputs: int = 0
    without_args: int = 0
    schemas: dict[str, int] = dataclasses.field(default_factory=dict)
    """Output schema title and hash prefix -> number of records."""
    formats: dict[str, int] = dataclasses.field(default_factory=dict)


def summarize_records(record_set: RecordSet) -> list[FunctionSummary]:
    """Per function: records, distinct inputs, output schemas seen, source formats."""
    summaries: dict[str, FunctionSummary] = {}
    inputs: dict[str, set[str]] = {}
    for record in record_set.records:
        summary = summaries.setdefault(record.function, FunctionSummary(record.function))
        summary.records += 1
        inputs.setdefault(record.function, set()).add(record.input_key())
        summary.without_args += record.args is None
        schema = record.output_schema or {}
        digest = record.schema_hash or canonical_json(schema)
        label = f"{schema.get('title', '?')} ({_short_hash(digest)})" if schema else "unknown"
        summary.schemas[label] = summary.schemas.get(label, 0) + 1
        summary.formats[record.source_format] = summary.formats.get(record.source_format, 0) + 1
    for function, summary in summaries.items():
        summary.distinct_inputs = len(inputs[function])
    return sorted(summaries.values(), key=lambda s: s.function)


def _short_hash(text: str) -> str:
    return text[:12] if re.fullmatch(r"[0-9a-f]{64}", text) else sha256_hex(text)[:12]
