"""Write the files in ``tests/data/instructor/`` with the real ``instructor`` package.

    .venv/bin/pip install instructor
    .venv/bin/python tests/data/make_instructor_fixtures.py tests/data/instructor

instructor's ``Instructions.distil`` logs one JSON line per traced call through the ``logging``
handlers it is given; a ``logging.FileHandler`` turns that into a trace file. The calls below
cover the ways instructor renders arguments: keyword arguments with ``json.dumps``, positional
ones with ``str()`` (strings without quotes), in both ``finetune_format`` values. ``Instructions``
builds an OpenAI client it never uses while tracing; it gets one with a placeholder key, so
nothing here needs a network or a real key. The output holds no ids or timestamps: running this
again with the same instructor version writes the same bytes (``tests/test_foreign.py`` checks).
"""

import datetime
import logging
import sys
from importlib.metadata import version
from pathlib import Path

from pydantic import BaseModel


class Date(BaseModel):
    iso: str


class Quantity(BaseModel):
    amount: float
    unit: str


class Repeated(BaseModel):
    text: str


class Label(BaseModel):
    text: str


class Greeting(BaseModel):
    text: str


class Flags(BaseModel):
    summary: str


class Days(BaseModel):
    days: int


class Total(BaseModel):
    total: int


class Multiply(BaseModel):
    a: int
    b: int
    result: int


def multiply(a: int, b: int) -> Multiply:
    """Return the product of a and b."""
    return Multiply(a=a, b=b, result=a * b)


def normalize_date(text: str) -> Date:
    """Read a date written by a person."""
    return Date(iso=f"iso:{text}")


def parse_quantity(text: str) -> Quantity:
    return Quantity(amount=3.0, unit=text[:3])


def repeat(n: int, text: str) -> Repeated:
    return Repeated(text=text * n)


def label(city: str, country: str) -> Label:
    return Label(text=f"{city} / {country}")


def greet(name: str, times: int = 1) -> Greeting:
    return Greeting(text=f"Hi {name}! " * times)


def flags(ratio: float, strict: bool, note: str | None = None) -> Flags:
    return Flags(summary=f"{ratio} {strict} {note}")


def days_until(day: datetime.date) -> Days:
    return Days(days=(day - datetime.date(2029, 1, 1)).days)


def total(*values: int) -> Total:
    return Total(total=sum(values))


def trace_messages(trace) -> None:
    """Every kind of call, as instructor's ``messages`` format renders it."""
    trace(multiply)(540, b=677)
    trace(normalize_date)("2029-05-24")  # one positional str: recovered
    trace(normalize_date)(text="May 24th, 2029")  # keyword: json.dumps
    trace(normalize_date)("2029")  # a str parameter keeps digits as text
    trace(normalize_date)("24 mai 2029 — été")  # non-ASCII, positional: str()
    trace(normalize_date)(text="24 mai 2029 — été")  # non-ASCII, keyword: \u escapes
    trace(parse_quantity)("3 lbs, (approx.) 'fresh'")  # commas, parentheses, quotes
    trace(repeat)(3, "ho, ho")  # int, then the last positional is a str
    trace(repeat)(2, text="hey")
    trace(greet)("Alice", times=2)
    trace(greet)("Bob, Jr.", 3)  # unrecoverable: 'Bob, Jr., 3' or 'Bob, Jr.' and 3
    trace(label)("Oslo", "Norway")  # str before str, but only one way to split
    trace(label)("Paris, TX", "USA")  # unrecoverable: two ways to split
    trace(flags)(0.5, True, None)
    trace(flags)(2.5, False, "ok, fine")
    trace(flags)(1e-05, strict=False, note=None)
    trace(days_until)(datetime.date(2029, 5, 24))  # unrecoverable: str(date) is no literal
    trace(total)(1, 2, 3)  # unrecoverable: *args


def trace_raw(trace) -> None:
    """The calls whose arguments are JSON, as instructor's ``raw`` format writes them (a
    ``datetime.date`` argument makes instructor's ``json.dumps`` fail, so it is left out)."""
    trace(multiply)(540, b=677)
    trace(normalize_date)("2029-05-24")
    trace(parse_quantity)("3 lbs, (approx.) 'fresh'")
    trace(repeat)(3, "ho, ho")
    trace(label)("Paris, TX", "USA")  # raw keeps the JSON values: recovered
    trace(flags)(0.5, True, None)
    trace(total)(1, 2, 3)  # unrecoverable: *args


def write(path: Path, finetune_format: str, calls, **options) -> None:
    from instructor.distil import FinetuneFormat, Instructions
    from openai import OpenAI

    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    instructions = Instructions(
        name=f"make_instructor_fixtures.{path.stem}",
        log_handlers=[handler],
        finetune_format=FinetuneFormat(finetune_format),
        openai_client=OpenAI(api_key="unused: tracing makes no request"),
        **options,
    )
    instructions.logger.setLevel(logging.INFO)
    instructions.logger.propagate = False
    try:
        calls(instructions.distil)
    finally:
        instructions.logger.removeHandler(handler)
        handler.close()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write(out / "messages.jsonl", "messages", trace_messages)
    write(out / "messages_code_body.jsonl", "messages", lambda t: t(repeat)(3, "ho, ho"),
          include_code_body=True)
    write(out / "raw.jsonl", "raw", trace_raw)
    (out / "instructor_version.txt").write_text(f"instructor=={version('instructor')}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/data/make_instructor_fixtures.py OUT_DIR")
    main(Path(sys.argv[1]))
