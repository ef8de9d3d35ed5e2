"""The record format: golden files for each format, and reading localdistil's, instructor's and
OpenAI's files, with bad lines reported instead of crashing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import BaseModel

from localdistil import Instructions, RecordError, read_records
from localdistil.cli import main
from localdistil.records import parse_line, summarize_records

DATA = Path(__file__).parent / "data"
VOLATILE = {"id": "<uuid>", "ts": "<ts>", "duration_s": 0.0}


class Multiply(BaseModel):
    """The product of two numbers."""

    a: int
    b: int
    result: int


def traced_record(tmp_path, finetune_format: str) -> dict:
    path = tmp_path / f"{finetune_format}-{len(list(tmp_path.iterdir()))}.jsonl"
    instructions = Instructions(
        name="golden", id="golden-run", path=str(path), finetune_format=finetune_format
    )

    @instructions.distil
    def fn(a: int, b: int) -> Multiply:
        """Return the product of a and b."""
        return Multiply(a=a, b=b, result=a * b)

    fn(133, b=539)
    (line,) = path.read_text().splitlines()
    record = json.loads(line)
    record["localdistil"].update(VOLATILE)
    return record


@pytest.mark.parametrize("finetune_format", ["messages", "tools", "raw"])
def test_golden_record_formats(tmp_path, finetune_format):
    golden = DATA / f"golden_{finetune_format}.json"
    if os.environ.get("LOCALDISTIL_UPDATE_GOLDEN"):
        golden.write_text(json.dumps(traced_record(tmp_path, finetune_format), indent=2) + "\n")
    assert traced_record(tmp_path, finetune_format) == json.loads(golden.read_text())


@pytest.mark.parametrize("finetune_format", ["messages", "tools", "raw"])
def test_every_format_reads_back_to_the_same_structured_call(tmp_path, finetune_format):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(traced_record(tmp_path, finetune_format)) + "\n")
    (record,) = read_records(path, strict=True).records
    assert record.name == "fn" and record.function == f"{__name__}:traced_record.<locals>.fn"
    assert record.args == {"a": 133, "b": 539}
    assert record.output == {"a": 133, "b": 539, "result": 71687}
    assert record.output_schema == Multiply.model_json_schema()
    assert record.signature == "def fn(a: int, b: int) -> Multiply"
    assert record.source_format == "localdistil"
    assert (record.path, record.line) == (str(path), 1)


def test_messages_lines_carry_compact_arguments_and_instructor_indent_is_an_option(tmp_path):
    record = traced_record(tmp_path, "messages")
    assert record["messages"][2]["function_call"]["arguments"] == '{"a":133,"b":539,"result":71687}'
    path = tmp_path / "indented.jsonl"

    @Instructions(path=str(path), indent=2).distil
    def fn(a: int, b: int) -> Multiply:
        return Multiply(a=a, b=b, result=a * b)

    fn(1, 2)
    arguments = json.loads(path.read_text())["messages"][2]["function_call"]["arguments"]
    assert arguments == '{\n  "a": 1,\n  "b": 2,\n  "result": 2\n}'


def test_reads_instructor_messages_files():
    record_set = read_records(DATA / "instructor_messages.jsonl", strict=True)
    assert [r.args for r in record_set.records] == [
        {"a": 540, "b": 677},
        {"a": 133, "b": 539},
        {"a": 12, "b": 3},
    ]
    first = record_set.records[0]
    assert first.output == {"a": 540, "b": 677, "result": 365580}
    assert first.name == "fn" and first.source_format == "instructor"
    assert first.output_schema["title"] == "Multiply"
    assert first.prompt[1]["content"] == "Return `fn(540, b=677)`"


def test_instructor_positional_strings_without_quotes_are_recovered_from_the_annotation():
    line = json.dumps({
        "messages": [
            {
                "role": "system",
                "content": (
                    "Predict the results of this function:\n\n"
                    "def greet(name: str) -> Greeting"
                ),
            },
            {"role": "user", "content": "Return `greet(Ada Lovelace)`"},
            {
                "role": "assistant",
                "function_call": {"name": "Greeting", "arguments": '{"text": "Hi Ada"}'},
            },
        ]
    })
    record = parse_line(line)
    assert record.name == "greet" and record.args == {"name": "Ada Lovelace"}
    assert record.output == {"text": "Hi Ada"}
    assert record.input_key() != parse_line(line.replace("Ada Lovelace", "Alan Turing")).input_key()


def test_reads_instructor_raw_files():
    (record,) = read_records(DATA / "instructor_raw.jsonl", strict=True).records
    assert record.args == {"a": 540, "b": 677}
    assert record.output["result"] == 365580 and record.source_format == "instructor-raw"


def test_reads_openai_tool_call_files():
    (record,) = read_records(DATA / "openai_tools.jsonl", strict=True).records
    assert record.source_format == "openai" and record.args is None
    assert record.output == {"city": "Oslo"}
    assert record.output_schema["required"] == ["city"]
    assert [m["role"] for m in record.prompt] == ["system", "user"]


def test_bad_lines_are_reported_with_file_line_and_reason():
    record_set = read_records(DATA / "malformed.jsonl")
    assert len(record_set.records) == 2
    path = str(DATA / "malformed.jsonl")
    reasons = {(p.path, p.line): p.reason for p in record_set.problems}
    assert set(reasons) == {(path, n) for n in (2, 3, 5, 6, 7, 9)}
    assert reasons[(path, 2)].startswith("not valid JSON")
    assert reasons[(path, 3)] == "expected a JSON object, got list"
    assert reasons[(path, 5)].startswith("not UTF-8 (byte 0xe9")
    assert "no 'localdistil', 'messages' or 'fn_name' key" in reasons[(path, 6)]
    assert reasons[(path, 7)] == "the last message is not the assistant's answer"
    assert reasons[(path, 9)].startswith("truncated")
    assert str(record_set.problems[0]) == f"{path}:2: {reasons[(path, 2)]}"


def test_strict_raises_on_the_first_bad_line():
    with pytest.raises(RecordError) as caught:
        read_records(DATA / "malformed.jsonl", strict=True)
    assert caught.value.line == 2 and caught.value.path.endswith("malformed.jsonl")
    assert str(caught.value).startswith(f"{DATA / 'malformed.jsonl'}:2: not valid JSON")


def test_globs_directories_and_missing_paths(tmp_path):
    assert len(read_records(str(DATA / "instructor_*.jsonl")).records) == 4
    assert len(read_records(DATA).files) == 4
    with pytest.raises(RecordError, match="No file matches"):
        read_records(str(tmp_path / "*.jsonl"))
    with pytest.raises(RecordError, match="No such file"):
        read_records(tmp_path / "missing.jsonl")


def test_summaries_count_records_inputs_and_schemas(tmp_path):
    summaries = summarize_records(
        read_records([DATA / "instructor_messages.jsonl", DATA / "instructor_raw.jsonl"])
    )
    (summary,) = summaries
    assert summary.function == "fn" and summary.records == 4
    assert summary.distinct_inputs == 3  # fn(540, b=677) appears in both files
    assert summary.formats == {"instructor": 3, "instructor-raw": 1}
    assert (
        sum(summary.schemas.values()) == 4
        and all(k.startswith("Multiply (") for k in summary.schemas)
    )


def test_records_stats_cli(capsys):
    assert main(
        ["records", "stats", str(DATA / "malformed.jsonl"), str(DATA / "openai_tools.jsonl")]
    ) == 0
    out = capsys.readouterr().out
    assert "2 file(s), 3 record(s), 6 invalid line(s)" in out
    assert "malformed.jsonl:9: truncated" in out
    assert "\nfn\n  records          2\n  distinct inputs  1" in out
    assert "prompt only      1" in out


def test_records_stats_cli_reports_errors_without_a_traceback(capsys, tmp_path):
    assert main(["records", "stats", str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err.startswith("error: No such file")
