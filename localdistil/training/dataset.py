"""Records -> a Hugging Face ``datasets.Dataset`` ready for TRL's ``SFTTrainer``.

Two steps, so that bad data fails before any model is loaded:

1. :func:`select_records` reads the recipe's files, keeps one function's records (``data.function``,
   required when the files hold several), keeps the newest output schema, drops identical calls
   and splits train/eval with a seeded shuffle. No tokenizer needed.
2. :func:`build_dataset` renders each record with :mod:`localdistil.prompts` in the recipe's
   prompt style and tokenizes it the way dispatch will: the prompt through the chat template
   (:func:`~localdistil.prompts.encode_prompt`), the answer - canonical compact JSON plus the
   end-of-turn token - on its own, so no token merges across the boundary.

Each row is in TRL's conversational prompt/completion form (``prompt``, ``completion``) and is
also tokenized (``input_ids``; ``labels`` with -100 over the prompt), so TRL trains on exactly
these tokens: the loss falls on the answer and its end-of-turn token only. Examples longer than
``train.max_length`` are left out and reported, never truncated.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from localdistil.errors import DatasetError
from localdistil.prompts import (
    TOOLSET_PARAMETER,
    encode_completion,
    encode_prompt,
    render_completion,
    render_messages,
    render_toolset_messages,
)
from localdistil.records import Record, RecordProblem, read_records
from localdistil.records.foreign import args_problem
from localdistil.spec import canonical_json, fingerprint, schema_hash

if TYPE_CHECKING:
    from datasets import Dataset

    from localdistil.training.recipe import Recipe


@dataclasses.dataclass(frozen=True)
class FunctionInfo:
    """The function the training data is for, as its newest record describes it."""

    function: str
    name: str
    signature: str | None
    doc: str | None
    output_schema: dict[str, Any] | None
    fingerprint: str | None
    schema_hash: str | None


@dataclasses.dataclass
class Selection:
    """The records chosen for training and evaluation, and what was left out."""

    function: FunctionInfo
    train: list[Record]
    eval: list[Record]
    read: int
    problems: list[RecordProblem]
    other_functions: int = 0
    old_schema: int = 0
    duplicates: int = 0
    over_limit: int = 0
    prompt_only: list[RecordProblem] = dataclasses.field(default_factory=list)
    """Chosen records whose arguments are unknown (:func:`prompt_only_records`)."""


@dataclasses.dataclass
class DatasetReport:
    """What :func:`build_dataset` made, for the ``dataset`` command and the run's metrics."""

    selection: Selection
    train_examples: int
    eval_examples: int
    too_long: int
    too_long_example: str | None
    lengths: dict[str, dict[str, float]]
    example: str


@dataclasses.dataclass
class TrainingData:
    """Tokenized train and eval datasets and what they are for."""

    train: Dataset
    eval: Dataset | None
    function: FunctionInfo
    report: DatasetReport


def _matches(record: Record, wanted: str) -> bool:
    return wanted in (record.function, record.name, record.function.rpartition(":")[2])


def _label(record: Record) -> str:
    """Records are grouped by prompt name: it is what the model sees, it survives moving the
    function to another module, and one function traced under two names (``distil(name=...)``)
    is two functions to train."""
    return record.name


def _read(files: list[Any]) -> tuple[list[Record], list[RecordProblem]]:
    if not files:
        return [], []
    record_set = read_records(files)
    return record_set.records, record_set.problems


def select_records(recipe: Recipe) -> Selection:
    """Choose the records a recipe trains and evaluates on. Loads no model.

    Raises:
        DatasetError: no records, records of several functions with no ``data.function``,
            a filter that matches nothing, or too few records to hold any out.
        RecipeError: a ``data.train``/``data.eval`` pattern matches no file.
    """
    data = recipe.data
    records, problems = _read(data.train_files())
    eval_records, eval_problems = _read(data.eval_files())
    problems += eval_problems
    read = len(records) + len(eval_records)
    if not records:
        detail = f" ({len(problems)} invalid line(s), first: {problems[0]})" if problems else ""
        raise DatasetError(
            f"data.train: {', '.join(data.train)} holds no valid records{detail}. "
            "Trace some calls first."
        )

    names = Counter(_label(r) for r in records)
    if data.function is None:
        if len(names) > 1:
            listed = ", ".join(f"{name} ({count})" for name, count in names.most_common())
            raise DatasetError(
                f"data.train holds records of several functions: {listed}. "
                "Set data.function to the one to train."
            )
        chosen = records
    else:
        chosen = [r for r in records if _matches(r, data.function)]
        eval_records = [r for r in eval_records if _matches(r, data.function)]
        if not chosen:
            listed = ", ".join(sorted({r.name for r in records}))
            raise DatasetError(
                f"data.function: no record of {data.function!r} in data.train; it holds: {listed}."
            )
    other_functions = len(records) - len(chosen)

    newest = max(chosen, key=lambda r: r.ts or "")
    schema_key = _schema_key(newest)
    current = [r for r in chosen if _schema_key(r) == schema_key]
    old_schema = len(chosen) - len(current)
    eval_records = [r for r in eval_records if _schema_key(r) == schema_key]

    duplicates = 0
    if data.dedup:
        current, duplicates = _dedup(current)
        eval_records, eval_duplicates = _dedup(eval_records)
        duplicates += eval_duplicates
        seen = {r.input_key() for r in eval_records}
        before = len(current)
        current = [r for r in current if r.input_key() not in seen]  # never train on eval inputs
        duplicates += before - len(current)

    rng = random.Random(recipe.train.seed)
    rng.shuffle(current)
    over_limit = 0
    if data.max_records is not None and len(current) > data.max_records:
        over_limit = len(current) - data.max_records
        current = current[: data.max_records]
    if not eval_records and data.eval_fraction > 0:
        held_out = round(len(current) * data.eval_fraction)
        if held_out == 0 or held_out >= len(current):
            raise DatasetError(
                f"data.eval_fraction: {len(current)} record(s) are too few "
                f"to hold {data.eval_fraction:.0%} out. "
                "Trace more calls, or set data.eval_fraction: 0."
            )
        eval_records, current = current[:held_out], current[held_out:]
    if data.dedup:  # a held-out call is not trained in another form either (a tool set's call,
        # with a refused answer fed back, is another input of the same call)
        held = {_call_key(r) for r in eval_records}
        before = len(current)
        current = [r for r in current if _call_key(r) not in held]
        duplicates += before - len(current)

    return Selection(
        function=_function_info(newest),
        train=current, eval=eval_records, read=read, problems=problems,
        other_functions=other_functions,
        old_schema=old_schema, duplicates=duplicates, over_limit=over_limit,
        prompt_only=prompt_only_records(current + eval_records),
    )


def _call_key(record: Record) -> str:
    """The call a record answers, whatever was fed back before its answer."""
    return record.input_key() if record.args is None else canonical_json([record.name,
                                                                          record.args])


def prompt_only_records(records: list[Record]) -> list[RecordProblem]:
    """The records that train on their recorded prompt because their arguments are unknown
    (plain OpenAI chat files, instructor calls whose positional strings cannot be read back),
    each with file, line and why. :func:`render_record` cannot re-render them in
    ``data.prompt_style``, so they are trained in another wording than the rest; the report
    says so rather than mixing two prompt styles silently."""
    problems = []
    for record in records:
        problem = args_problem(record)
        if problem is not None:
            problems.append(RecordProblem(record.path or "?", record.line or 0, problem))
    return problems


def _function_info(record: Record) -> FunctionInfo:
    """The identity an adapter trained on ``record``'s function records in its manifest. The
    hashes are taken anew from the record's schema and signature (records written before the
    field order was part of the hash carry the older hashes)."""
    schema = record.output_schema
    return FunctionInfo(
        function=record.function, name=record.name, signature=record.signature, doc=record.doc,
        output_schema=schema,
        fingerprint=(
            fingerprint(record.signature, record.doc, schema)
            if record.fingerprint is not None and schema is not None
            else record.fingerprint
        ),
        schema_hash=schema_hash(schema) if schema is not None else record.schema_hash,
    )


def _schema_key(record: Record) -> str:
    return schema_hash(record.output_schema) if record.output_schema else str(record.schema_hash)


def _dedup(records: list[Record]) -> tuple[list[Record], int]:
    """Keep the newest record of each distinct input."""
    newest: dict[str, Record] = {}
    for record in sorted(records, key=lambda r: r.ts or ""):
        newest[record.input_key()] = record
    return list(newest.values()), len(records) - len(newest)


def render_record(record: Record, style: str) -> list[dict[str, Any]]:
    """The prompt a record trains on: re-rendered in ``style`` from its structured arguments,
    or its recorded prompt where the source kept no arguments."""
    if record.args is None:
        return list(record.prompt)
    if record.is_toolset:  # a tool set: the prompt its dispatch renders (the list of calls is
        # the record's output, trained as is: render_completion writes it name first)
        return render_toolset_messages(record.name, record.tools or [],
                                       record.args[TOOLSET_PARAMETER], style, record.repairs)
    return render_messages(
        name=record.name, args=record.args, style=style, signature=record.signature, doc=record.doc
    )


def build_dataset(selection: Selection, tokenizer: Any, recipe: Recipe) -> TrainingData:
    """Render and tokenize the selected records into train and eval ``datasets.Dataset``.

    Raises:
        DatasetError: every training example is longer than ``train.max_length``.
    """
    from datasets import Dataset

    style, max_length = recipe.data.prompt_style, recipe.train.max_length
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    too_long: list[str] = []
    for split, records in (("train", selection.train), ("eval", selection.eval)):
        for record in records:
            prompt = render_record(record, style)
            completion = render_completion(record.output)
            prompt_ids = encode_prompt(tokenizer, prompt)
            completion_ids = encode_completion(tokenizer, completion)
            total = len(prompt_ids) + len(completion_ids)
            if total > max_length:
                too_long.append(f"{record.path}:{record.line} ({total} tokens)")
                continue
            rows[split].append({
                "prompt": prompt,
                "completion": [{"role": "assistant", "content": completion}],
                "input_ids": prompt_ids + completion_ids,
                "labels": [-100] * len(prompt_ids) + completion_ids,
                "prompt_length": len(prompt_ids),
                "completion_length": len(completion_ids),
                "repair_turns": len(record.repairs),
                "args": canonical_json(record.args) if record.args is not None else None,
                "output": canonical_json(record.output),
            })
    if not rows["train"]:
        raise DatasetError(
            f"train.max_length: all {len(too_long)} training examples "
            f"are longer than {max_length} tokens "
            f"(e.g. {too_long[0] if too_long else '?'}). Raise train.max_length."
        )
    train = Dataset.from_list(rows["train"])
    eval_set = Dataset.from_list(rows["eval"]) if rows["eval"] else None
    report = DatasetReport(
        selection=selection,
        train_examples=len(rows["train"]),
        eval_examples=len(rows["eval"]),
        too_long=len(too_long),
        too_long_example=too_long[0] if too_long else None,
        lengths=_length_stats(rows["train"] + rows["eval"]),
        example=mark_trained_tokens(
            tokenizer, rows["train"][0]["input_ids"], rows["train"][0]["labels"]
        ),
    )
    return TrainingData(train=train, eval=eval_set, function=selection.function, report=report)


def _length_stats(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    stats = {}
    for key in ("prompt_length", "completion_length"):
        values = sorted(row[key] for row in rows)
        stats[key.removesuffix("_length")] = _summary(values)
    stats["total"] = _summary(
        sorted(row["prompt_length"] + row["completion_length"] for row in rows)
    )
    return stats


def _summary(values: list[int]) -> dict[str, float]:
    return {
        "min": values[0],
        "mean": round(statistics.fmean(values), 1),
        "p95": values[min(len(values) - 1, int(0.95 * len(values)))],
        "max": values[-1],
    }


def _prompt_only_lines(problems: list[RecordProblem], shown: int = 5) -> list[str]:
    if not problems:
        return []
    lines = [f"prompt only     {len(problems)} record(s) keep their recorded prompt, not "
             "data.prompt_style: their arguments are unknown"]
    lines += [f"                {problem}" for problem in problems[:shown]]
    if len(problems) > shown:
        more = len(problems) - shown
        lines.append(f"                ... and {more} more (see: localdistil records stats)")
    return lines


def mark_trained_tokens(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """The example's text with the tokens that carry loss between ``[[`` and ``]]``."""
    start = next(i for i, label in enumerate(labels) if label != -100)
    return tokenizer.decode(input_ids[:start]) + "[[" + tokenizer.decode(input_ids[start:]) + "]]"


def format_report(report: DatasetReport) -> str:
    """The dataset report as text: counts, token lengths and one example."""
    s = report.selection
    lines = [
        f"function        {s.function.name} ({s.function.function})",
        f"records read    {s.read} ({len(s.problems)} invalid line(s) skipped)",
    ]
    for count, what in (
        (s.other_functions, "records of other functions left out"),
        (s.old_schema, "records with an older output schema left out"),
        (s.duplicates, "duplicate calls removed"),
        (s.over_limit, "records over data.max_records left out"),
    ):
        if count:
            lines.append(f"                {count} {what}")
    lines.extend(_prompt_only_lines(s.prompt_only))
    lines.append(f"examples        {report.train_examples} train, {report.eval_examples} eval")
    if report.too_long:
        lines.append(
            f"too long        {report.too_long} example(s) over train.max_length left out, "
            f"e.g. {report.too_long_example}"
        )
    lines.append("tokens          min   mean   p95   max")
    for name, st in report.lengths.items():
        lines.append(f"  {name:<12} {st['min']:>5} {st['mean']:>6} {st['p95']:>5} {st['max']:>5}")
    lines.append("example (trained tokens between [[ ]]):")
    lines.extend("  " + line for line in report.example.splitlines())
    return "\n".join(lines)

