"""Read trace records back from files: localdistil's own, and (through
:mod:`localdistil.records.foreign`) instructor's ``Instructions`` files (messages and raw) and
plain OpenAI chat fine-tuning files with ``tool_calls`` (several parallel calls included: a
tool set's record keeps every one of them).

A line that is malformed, truncated by a crash or not UTF-8 is reported (file, line, reason)
and skipped, or raises :class:`~localdistil.errors.RecordError` with ``strict=True``.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from localdistil.errors import RecordError
from localdistil.prompts import render_messages
from localdistil.records.build import RECORD_VERSION
from localdistil.records.foreign import parse_chat, parse_instructor_raw
from localdistil.records.record import Record, RecordProblem, RecordSet


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
                raise RecordError(
                    f"No file matches {text!r}. Check the pattern and the working directory."
                )
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
            raise RecordError(
                f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"
            ) from None
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        if truncated:
            raise RecordError(
                "truncated: the last line ends without a newline and is not whole JSON "
                f"({exc.msg}); a writer probably stopped mid-line"
            ) from None
        raise RecordError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
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
    raise RecordError(
        "not a localdistil, instructor or OpenAI chat record "
        "(no 'localdistil', 'messages' or 'fn_name' key)"
    )


def _parse_localdistil(obj: dict[str, Any]) -> Record:
    block = obj["localdistil"]
    version = block.get("version")
    if version != RECORD_VERSION:
        raise RecordError(
            f"record version {version!r} is not {RECORD_VERSION}; "
            "it was written by another localdistil release"
        )
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
        prompt = render_messages(
            name=name,
            args=block["args"],
            style="full",
            signature=block.get("signature") or f"def {name}(...)",
            doc=block.get("doc"),
        )
    return Record(
        function=block["function"], name=name, args=block["args"], output=block["output"],
        output_schema=schema, signature=block.get("signature"), doc=block.get("doc"), prompt=prompt,
        fingerprint=block.get("fingerprint"), schema_hash=block.get("schema_hash"),
        id=block.get("id"),
        ts=block.get("ts"), duration_s=block.get("duration_s"), extra=block.get("extra") or {},
        tools=_toolset_tools(block, obj), repairs=_repairs(block.get("repairs")),
        source_format="localdistil",
    )


def _repairs(value: Any) -> list[dict[str, str]]:
    """A record's repair turns, checked: a list of ``{"output": str, "error": str}``."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
            isinstance(item, dict) and isinstance(item.get("output"), str)
            and isinstance(item.get("error"), str) for item in value):
        raise RecordError('"repairs" must be a list of {"output": text, "error": text}')
    return [{"output": item["output"], "error": item["error"]} for item in value]


def _toolset_tools(block: dict[str, Any], obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A tool-set record's tool definitions (from its ``tools``); ``None`` for a function's."""
    if "toolset" not in block:
        return None
    return [dict(entry.get("function", entry)) for entry in obj.get("tools") or []]
