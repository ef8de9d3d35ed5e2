"""Files written by the real ``instructor`` package: positional arguments read back through the
signature, one prompt style in the dataset, and the records that cannot be read back reported
with file, line and reason.

The files in ``tests/data/instructor/`` were written by instructor itself with

    .venv/bin/python tests/data/make_instructor_fixtures.py tests/data/instructor

(the version is in ``tests/data/instructor/instructor_version.txt``); these tests need only the
files, and :func:`test_fixtures_match_what_the_installed_instructor_writes` checks them against
the installed instructor where there is one.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from localdistil.cli import main
from localdistil.models.resolve import load_tokenizer
from localdistil.records import parse_line, read_records, summarize_records
from localdistil.records.foreign import args_problem
from localdistil.training.dataset import build_dataset, format_report, select_records
from localdistil.training.recipe import parse_recipe

DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "instructor"
GENERATOR = DATA / "make_instructor_fixtures.py"
MESSAGES = FIXTURES / "messages.jsonl"
RAW = FIXTURES / "raw.jsonl"

AMBIGUOUS = (
    "positional string argument before another positional argument cannot be recovered "
    "from instructor's str() rendering"
)

#: Line of messages.jsonl -> the arguments read back (``None``: not recoverable).
MESSAGES_ARGS = {
    1: {"a": 540, "b": 677},  # multiply(540, b=677)
    2: {"text": "2029-05-24"},  # normalize_date(2029-05-24)
    3: {"text": "May 24th, 2029"},  # normalize_date(text="May 24th, 2029")
    4: {"text": "2029"},  # normalize_date(2029): a str parameter keeps the digits as text
    5: {"text": "24 mai 2029 — été"},
    6: {"text": "24 mai 2029 — été"},  # keyword: json.dumps wrote \u escapes
    7: {"text": "3 lbs, (approx.) 'fresh'"},
    8: {"n": 3, "text": "ho, ho"},  # repeat(3, ho, ho): the last positional is a str
    9: {"n": 2, "text": "hey"},
    10: {"name": "Alice", "times": 2},  # greet(Alice, times=2)
    11: None,  # greet(Bob, Jr., 3): name='Bob, Jr., 3', or 'Bob, Jr.' and times=3
    12: {"city": "Oslo", "country": "Norway"},  # label(Oslo, Norway): one way to split
    13: None,  # label(Paris, TX, USA): two ways to split
    14: {"ratio": 0.5, "strict": True, "note": None},
    15: {"ratio": 2.5, "strict": False, "note": "ok, fine"},  # note: str | None, last
    16: {"ratio": 1e-05, "strict": False, "note": None},  # keywords: false, null
    17: None,  # days_until(2029-05-24): a datetime.date, no literal
    18: None,  # total(1, 2, 3): *values
}


def test_positional_arguments_are_read_back_through_the_signature():
    records = read_records(MESSAGES, strict=True).records
    assert {r.line: r.args for r in records} == MESSAGES_ARGS
    assert all(r.source_format == "instructor" for r in records)
    assert records[1].prompt[1]["content"] == "Return `normalize_date(2029-05-24)`"
    assert records[1].signature == "def normalize_date(text: str) -> __main__.Date"
    # the same call, positional or by keyword, is one input (deduplicated in the dataset)
    assert records[4].input_key() == records[5].input_key()


def test_include_code_body_prompts_are_read_too():
    (record,) = read_records(FIXTURES / "messages_code_body.jsonl", strict=True).records
    assert record.args == {"n": 3, "text": "ho, ho"}
    assert record.signature == "def repeat(n: int, text: str) -> Repeated"


def test_raw_files_name_positional_values_through_fn_repr():
    records = read_records(RAW, strict=True).records
    assert [r.args for r in records] == [
        {"a": 540, "b": 677},
        {"text": "2029-05-24"},
        {"text": "3 lbs, (approx.) 'fresh'"},
        {"n": 3, "text": "ho, ho"},
        {"city": "Paris, TX", "country": "USA"},  # raw keeps JSON values: no ambiguity
        {"ratio": 0.5, "strict": True, "note": None},
        None,
    ]
    assert all(r.source_format == "instructor-raw" for r in records)
    total = records[-1]
    # kept in instructor's own wording, with its arguments (not an empty ``total()``)
    assert total.prompt[1]["content"] == "Return `total(1, 2, 3)`"
    assert total.prompt[0]["content"].startswith(
        "Predict the results of this function:\n\ndef total("
    )
    assert args_problem(total) == (
        "`def total(*values: int) -> Total` takes *values: positional arguments cannot be named"
    )


def test_unrecoverable_records_are_reported_with_file_line_and_reason():
    summaries = {s.function: s for s in summarize_records(read_records([MESSAGES, RAW]))}
    messages, raw = str(MESSAGES), str(RAW)
    assert summaries["label"].without_args == 1
    (label,) = summaries["label"].unknown_args
    assert (label.path, label.line) == (messages, 13)
    assert label.reason == (
        f"{AMBIGUOUS}: `Paris, TX, USA` reads as city='Paris', country='TX, USA' "
        "or as city='Paris, TX', country='USA'"
    )
    (greet,) = summaries["greet"].unknown_args
    assert (greet.line, greet.reason.startswith(AMBIGUOUS)) == (11, True)
    (day,) = summaries["days_until"].unknown_args
    assert (day.line, day.reason.split(":")[0]) == (
        17, "`2029-05-24` for parameter `day"
    )
    assert "not a Python literal: instructor writes positional arguments with str()" in day.reason
    assert [(p.path, p.line) for p in summaries["total"].unknown_args] == [(messages, 18), (raw, 7)]
    for name in ("multiply", "normalize_date", "parse_quantity", "repeat", "flags"):
        assert summaries[name].without_args == 0 and summaries[name].unknown_args == []


def test_records_stats_names_each_prompt_only_record(capsys):
    assert main(["records", "stats", str(MESSAGES)]) == 0
    out = capsys.readouterr().out
    assert "\nlabel\n  records          2\n  distinct inputs  2\n  prompt only      1 (" in out
    assert f"    {MESSAGES}:13: {AMBIGUOUS}: `Paris, TX, USA` reads as" in out
    assert f"    {MESSAGES}:18: `def total(*values: int)" in out
    assert "\nnormalize_date\n  records          5\n  distinct inputs  4\n  formats" in out


def test_openai_records_say_why_they_have_no_arguments():
    (record,) = read_records(DATA / "openai_tools.jsonl").records
    assert args_problem(record) == (
        "an OpenAI chat file holds the prompt text only, not the call's arguments"
    )


def _instructor_line(signature: str, call: str) -> str:
    return json.dumps({"messages": [
        {"role": "system", "content": f"Predict the results of this function:\n\n{signature}"},
        {"role": "user", "content": f"Return `{call}`"},
        {"role": "assistant", "function_call": {"name": "Out", "arguments": '{"x": 1}'}},
    ]})


@pytest.mark.parametrize(("signature", "call", "args"), [
    # a string argument that itself holds ", name=": the keyword list is what parses as one
    ("def f(text: str, n: int = 1) -> Out", 'f(a, n=2, n=3)', {"text": "a, n=2", "n": 3}),
    ("def f(text: str) -> Out", "f(a, b=2)", {"text": "a, b=2"}),  # b is no parameter
    ("def f(text: Optional[str] = None) -> Out", "f(None)", {"text": None}),
    ("def f(text: Optional[str] = None) -> Out", "f(None at all)", {"text": "None at all"}),
    ("def f(xs: list[int], ys: dict) -> Out", "f([1, 2], {'a': (3, 4)})",
     {"xs": [1, 2], "ys": {"a": [3, 4]}}),
    ("def f(a, b=0) -> Out", "f(1, 2)", {"a": 1, "b": 2}),  # ``1, 2`` is no tuple argument
    ("def f(n: int) -> Out", "f(True)", None),  # not an int
    ("def f(self, n: int) -> Out", "f(<__main__.C object at 0x7f>, 3)", None),
])
def test_instructor_call_texts(signature, call, args):
    assert parse_line(_instructor_line(signature, call)).args == args


def test_long_texts_with_many_commas_are_read_without_trying_every_split():
    text = ", ".join(["word"] * 3000)
    line = _instructor_line("def f(n: int, xs: list, text: str) -> Out", f"f(1, [2, 3], {text})")
    assert parse_line(line).args == {"n": 1, "xs": [2, 3], "text": text}
    many = _instructor_line("def f(a: str, b: str, c: str) -> Out", f"f({text})")
    assert args_problem(parse_line(many)).startswith(AMBIGUOUS)


def _recipe(model, function):
    return parse_recipe({
        "model": str(model),
        "data": {"train": [str(MESSAGES)], "function": function, "eval_fraction": 0},
        "train": {"seed": 0},
    })


def test_positional_and_keyword_calls_train_in_one_prompt_style(tiny_model_dir):
    recipe = _recipe(tiny_model_dir, "normalize_date")
    selection = select_records(recipe)
    assert selection.prompt_only == []
    data = build_dataset(selection, load_tokenizer(tiny_model_dir), recipe)
    assert {row["prompt"][0]["content"] for row in data.train} == {"JSON"}
    assert sorted(row["prompt"][1]["content"] for row in data.train) == [
        'normalize_date(text="2029")',
        'normalize_date(text="2029-05-24")',
        'normalize_date(text="24 mai 2029 — été")',
        'normalize_date(text="May 24th, 2029")',
    ]
    assert "prompt only" not in format_report(data.report)


def test_the_dataset_report_names_records_kept_in_instructor_wording(tiny_model_dir):
    recipe = _recipe(tiny_model_dir, "label")
    selection = select_records(recipe)
    assert [(p.path, p.line) for p in selection.prompt_only] == [(str(MESSAGES), 13)]
    data = build_dataset(selection, load_tokenizer(tiny_model_dir), recipe)
    users = sorted(row["prompt"][1]["content"] for row in data.train)
    assert users == ["Return `label(Paris, TX, USA)`", 'label(city="Oslo", country="Norway")']
    report = format_report(data.report)
    assert "prompt only     1 record(s) keep their recorded prompt, not data.prompt_style" in report
    assert f"                {MESSAGES}:13: {AMBIGUOUS}" in report


def _instructor_installed() -> bool:
    return all(importlib.util.find_spec(name) for name in ("instructor", "openai"))


@pytest.mark.skipif(not _instructor_installed(), reason="instructor is not installed "
                    "(pip install instructor) to regenerate tests/data/instructor")
def test_fixtures_match_what_the_installed_instructor_writes(tmp_path):
    """Regenerate the files with the command in the module docstring. instructor's files hold
    no ids or timestamps; with the version that wrote the fixtures the bytes must be equal, and
    with any version the records read back must be."""
    subprocess.run([sys.executable, str(GENERATOR), str(tmp_path)], check=True, timeout=120)
    names = sorted(p.name for p in FIXTURES.glob("*.jsonl"))
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == names
    same_version = (
        (FIXTURES / "instructor_version.txt").read_text().strip()
        == f"instructor=={version('instructor')}"
    )
    for name in names:
        if same_version:
            assert (tmp_path / name).read_bytes() == (FIXTURES / name).read_bytes(), name
        fresh, kept = (read_records(d / name, strict=True).records for d in (tmp_path, FIXTURES))
        assert [(r.name, r.args, r.output, args_problem(r)) for r in fresh] == [
            (r.name, r.args, r.output, args_problem(r)) for r in kept
        ]
