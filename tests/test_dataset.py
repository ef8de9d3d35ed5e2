"""Records -> tokenized prompt/completion datasets: selection, rendering, masks and reports."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from localdistil import DatasetError, Instructions, RecipeError
from localdistil.cli import main
from localdistil.models.resolve import load_tokenizer
from localdistil.prompts import encode_prompt, render_messages
from localdistil.training.dataset import build_dataset, format_report, select_records
from localdistil.training.recipe import parse_recipe


class Multiply(BaseModel):
    a: int
    b: int
    result: int


class Echo(BaseModel):
    text: str


def trace_multiply(path, calls, *, name="multiply"):
    instructions = Instructions(path=str(path))

    @instructions.distil(name=name)
    def multiply(a: int, b: int) -> Multiply:
        return Multiply(a=a, b=b, result=a * b)

    for a, b in calls:
        multiply(a, b)
    return multiply


def recipe_for(model, train, **data):
    return parse_recipe(
        {"model": str(model), "data": {"train": train, **data}, "train": {"seed": 0}}
    )


@pytest.fixture
def traces(tmp_path):
    path = tmp_path / "m.jsonl"
    trace_multiply(path, [(100 + i, 3) for i in range(20)])
    return path


def test_rows_are_prompt_completion_with_loss_on_the_answer_and_end_of_turn(tiny_model_dir, traces):
    recipe = recipe_for(tiny_model_dir, [str(traces)], eval_fraction=0.1)
    tokenizer = load_tokenizer(tiny_model_dir)
    data = build_dataset(select_records(recipe), tokenizer, recipe)
    row = data.train[0]
    args = json.loads(row["args"])
    assert row["prompt"] == render_messages(name="multiply", args=args, style="compact")
    assert row["completion"] == [{"role": "assistant", "content": json.dumps(
        {"a": args["a"], "b": 3, "result": args["a"] * 3}, separators=(",", ":"))}]
    prompt_ids = encode_prompt(tokenizer, row["prompt"])
    assert row["input_ids"][: len(prompt_ids)] == prompt_ids
    assert row["labels"][: len(prompt_ids)] == [-100] * len(prompt_ids)
    trained = row["labels"][len(prompt_ids):]
    assert trained == row["input_ids"][len(prompt_ids):]
    assert trained[-1] == tokenizer.eos_token_id  # the model learns to stop
    assert tokenizer.decode(trained) == row["completion"][0]["content"] + "<|im_end|>"
    assert (len(data.train), len(data.eval)) == (18, 2)


def test_split_is_seeded_and_eval_inputs_never_train(tiny_model_dir, traces):
    recipe = recipe_for(tiny_model_dir, [str(traces)], eval_fraction=0.25)
    first, second = select_records(recipe), select_records(recipe)
    assert [r.id for r in first.eval] == [r.id for r in second.eval]
    other = parse_recipe({**recipe.as_dict(), "train": {**recipe.as_dict()["train"], "seed": 1}})
    assert [r.id for r in select_records(other).eval] != [r.id for r in first.eval]
    assert not {r.input_key() for r in first.eval} & {r.input_key() for r in first.train}


def test_identical_calls_are_deduplicated_however_spelled(tmp_path, tiny_model_dir):
    path = tmp_path / "dup.jsonl"
    multiply = trace_multiply(path, [(1, 2), (3, 4)])
    multiply(a=1, b=2)
    multiply(1, b=2)
    selection = select_records(recipe_for(tiny_model_dir, [str(path)], eval_fraction=0))
    assert (len(selection.train), selection.duplicates) == (2, 2)
    no_dedup = select_records(recipe_for(tiny_model_dir, [str(path)], eval_fraction=0, dedup=False))
    assert len(no_dedup.train) == 4


def test_several_functions_need_data_function(tmp_path, tiny_model_dir):
    path = tmp_path / "mixed.jsonl"
    trace_multiply(path, [(1, 2), (3, 4)], name="multiply")
    trace_multiply(path, [(5, 6)], name="times")
    with pytest.raises(
        DatasetError, match=r"several functions: multiply \(2\), times \(1\). Set data.function"
    ):
        select_records(recipe_for(tiny_model_dir, [str(path)], eval_fraction=0))
    chosen = select_records(
        recipe_for(tiny_model_dir, [str(path)], eval_fraction=0, function="times")
    )
    assert [r.args for r in chosen.train] == [{"a": 5, "b": 6}] and chosen.other_functions == 2
    with pytest.raises(DatasetError, match="data.function: no record of 'divide'.*multiply, times"):
        select_records(recipe_for(tiny_model_dir, [str(path)], function="divide"))


def test_only_the_newest_output_schema_is_kept(tmp_path, tiny_model_dir):
    path = tmp_path / "evolving.jsonl"
    trace_multiply(path, [(1, 2), (3, 4)])

    @Instructions(path=str(path)).distil
    def multiply(a: int, b: int) -> Echo:  # the return type changed since those records
        return Echo(text=str(a * b))

    multiply(7, 8)
    selection = select_records(recipe_for(tiny_model_dir, [str(path)], eval_fraction=0))
    assert [r.output for r in selection.train] == [{"text": "56"}] and selection.old_schema == 2
    assert selection.function.output_schema == Echo.model_json_schema()


def test_empty_or_missing_data_fail_naming_the_key(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{broken\n")
    with pytest.raises(
        DatasetError, match=r"data.train: .*empty.jsonl holds no valid records \(1 invalid line"
    ):
        select_records(recipe_for(tiny_model_dir, [str(empty)]))
    with pytest.raises(RecipeError) as caught:
        select_records(recipe_for(tiny_model_dir, [str(tmp_path / "nothing-*.jsonl")]))
    assert caught.value.key == "data.train"


def test_too_few_records_to_hold_out(tmp_path, tiny_model_dir):
    path = tmp_path / "one.jsonl"
    trace_multiply(path, [(1, 2)])
    with pytest.raises(DatasetError, match="too few to hold 10% out.*data.eval_fraction: 0"):
        select_records(recipe_for(tiny_model_dir, [str(path)]))


def test_separate_eval_file(tmp_path, tiny_model_dir, traces):
    held_out = tmp_path / "eval.jsonl"
    trace_multiply(held_out, [(100, 3), (999, 9)])  # (100, 3) is in the training file too
    selection = select_records(recipe_for(tiny_model_dir, [str(traces)], eval=[str(held_out)]))
    assert len(selection.eval) == 2 and len(selection.train) == 19


def test_examples_over_max_length_are_left_out_and_reported(tmp_path, tiny_model_dir):
    path = tmp_path / "long.jsonl"
    instructions = Instructions(path=str(path))

    @instructions.distil
    def echo(text: str) -> Echo:
        return Echo(text=text)

    echo("short")
    echo("word " * 200)
    recipe = parse_recipe({
        "model": str(tiny_model_dir),
        "data": {"train": [str(path)], "eval_fraction": 0},
        "train": {"max_length": 120},
    })
    data = build_dataset(select_records(recipe), load_tokenizer(tiny_model_dir), recipe)
    assert data.report.too_long == 1 and len(data.train) == 1
    assert "long.jsonl:2 (" in data.report.too_long_example
    assert "1 example(s) over train.max_length left out" in format_report(data.report)
    tiny = parse_recipe({**recipe.as_dict(), "train": {"max_length": 10}})
    with pytest.raises(
        DatasetError, match="train.max_length: all 2 training examples are longer than 10"
    ):
        build_dataset(select_records(tiny), load_tokenizer(tiny_model_dir), tiny)


def test_instructor_files_train_with_their_arguments_rerendered(tiny_model_dir):
    from pathlib import Path

    source = Path(__file__).parent / "data" / "instructor_messages.jsonl"
    recipe = recipe_for(tiny_model_dir, [str(source)], eval_fraction=0)
    data = build_dataset(select_records(recipe), load_tokenizer(tiny_model_dir), recipe)
    users = sorted(row["prompt"][1]["content"] for row in data.train)
    assert users == ["fn(a=12, b=3)", "fn(a=133, b=539)", "fn(a=540, b=677)"]


def test_dataset_command_prints_the_report_and_saves(tmp_path, tiny_model_dir, traces, capsys):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(f"model: {tiny_model_dir}\ndata:\n  train: [{traces}]\n")
    out = tmp_path / "ds"
    assert main(["dataset", str(recipe_file), "data.eval_fraction=0.2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "examples        16 train, 4 eval" in printed
    assert "[[{" in printed and "<|im_end|>]]" in printed
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "train"))) == 16
