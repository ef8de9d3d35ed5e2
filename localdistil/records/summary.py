"""What a set of trace files holds, per function (``localdistil records stats``).

Records whose arguments could not be read back (``args=None``) train on the prompt they were
recorded with, in another wording than the rest; the summary names each one (file, line) and
says why, so that nothing is trained in a second prompt style unnoticed.
"""

from __future__ import annotations

import dataclasses
import re

from localdistil.records.foreign import args_problem
from localdistil.records.record import RecordProblem, RecordSet
from localdistil.spec import canonical_json, sha256_hex


@dataclasses.dataclass
class FunctionSummary:
    """What a set of trace files holds for one function (``records stats``)."""

    function: str
    records: int = 0
    distinct_inputs: int = 0
    without_args: int = 0
    unknown_args: list[RecordProblem] = dataclasses.field(default_factory=list)
    """Each record without arguments: file, line and why they could not be read back."""
    schemas: dict[str, int] = dataclasses.field(default_factory=dict)
    """Output schema title and hash prefix -> number of records."""
    formats: dict[str, int] = dataclasses.field(default_factory=dict)


def summarize_records(record_set: RecordSet) -> list[FunctionSummary]:
    """Per function: records, distinct inputs, records without arguments and why, output
    schemas seen, source formats."""
    summaries: dict[str, FunctionSummary] = {}
    inputs: dict[str, set[str]] = {}
    for record in record_set.records:
        summary = summaries.setdefault(record.function, FunctionSummary(record.function))
        summary.records += 1
        inputs.setdefault(record.function, set()).add(record.input_key())
        problem = args_problem(record)
        if problem is not None:
            summary.without_args += 1
            where = (record.path or "?", record.line or 0)
            summary.unknown_args.append(RecordProblem(*where, problem))
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
