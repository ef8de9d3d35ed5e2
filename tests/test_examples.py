"""The example tasks under examples/: their inputs, their functions and their recipes.

Fast: no model is loaded. Each example's ``task.py`` builds every input from a known structured
value (``examples(n, seed)`` gives both), so the function is checked against the truth, not
only for producing some valid object.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
from datetime import date
from pathlib import Path
from types import ModuleType

import pytest

from localdistil.training.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# example directory -> the function it distils (the recipe and the traces are named after it)
FUNCTIONS = {"extract_order": "extract_order", "normalize_quantity": "normalize_quantity",
             "triage_ticket": "triage_ticket"}


@functools.cache
def load(name: str) -> tuple[ModuleType, ModuleType]:
    """The example's task module and its trace script (as a module), imported from the example's
    directory as the scripts import them. Every example's module is called ``task``, so whatever
    ``sys.modules`` held under that name is put back afterwards."""
    directory = EXAMPLES / name
    saved = sys.modules.pop("task", None)
    sys.path.insert(0, str(directory))
    try:
        task = importlib.import_module("task")
        spec = importlib.util.spec_from_file_location(f"{name}_trace", directory / "trace.py")
        trace = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(trace)
        return task, trace
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("task", None)
        if saved is not None:
            sys.modules["task"] = saved


@pytest.fixture(params=sorted(FUNCTIONS))
def example(request) -> tuple[str, ModuleType, ModuleType]:
    """(name, task module, trace script) of each example in turn."""
    return (request.param, *load(request.param))


def test_inputs_are_reproducible_from_the_seed(example):
    _, task, _ = example

    first = task.inputs(50, seed=3)

    assert first == task.inputs(50, seed=3)
    assert first != task.inputs(50, seed=4)
    assert len(first) == 50 and all(isinstance(call, dict) and call for call in first)
    assert len({tuple(call.items()) for call in task.inputs(200, seed=0)}) >= 180  # varied texts


def test_the_function_returns_the_value_each_input_was_written_from(example):
    name, task, _ = example
    function = getattr(task, FUNCTIONS[name])
    calls = task.inputs(200, seed=0)

    for call, (text, truth) in zip(calls, task.examples(200, seed=0), strict=True):
        assert list(call.values()) == [text]
        output = function(**call)
        assert type(output) is type(truth)
        assert output == truth, text
        assert type(output).model_validate_json(output.model_dump_json()) == output


def test_extract_order_outputs_vary():
    task, _ = load("extract_order")
    orders = [task.extract_order(**call) for call in task.inputs(200, seed=0)]

    assert {order.priority for order in orders} == set(task.Priority)
    dates = [order.delivery_date for order in orders]
    assert None in dates and any(isinstance(d, date) for d in dates)
    assert {len(order.items) for order in orders} >= {1, 2, 3}
    assert len({item.name for order in orders for item in order.items}) == len(task.CATALOGUE)
    assert len({order.customer for order in orders}) > 100


def test_normalize_quantity_outputs_vary():
    task, _ = load("normalize_quantity")
    quantities = [task.normalize_quantity(**call) for call in task.inputs(200, seed=0)]

    assert {q.unit for q in quantities} == set(task.Unit)
    values = [q.value for q in quantities]
    assert any(v != int(v) for v in values) and any(v >= 1000 for v in values)
    assert len(set(values)) > 100


def test_normalize_quantity_reads_the_messy_forms():
    task, _ = load("normalize_quantity")
    cases = {"2.5kg": (2.5, "kg"), "approx. 1,250 ml": (1250, "ml"), "2,5 KG": (2.5, "kg"),
             "1-1/2 cups of flour": (1.5, "cup"), "¾ tsp": (0.75, "tsp"),
             "half a pound": (0.5, "lb"), "three hundred and fifty grams": (350, "g"),
             "two and a half litres": (2.5, "l"), "three quarters of a cup": (0.75, "cup"),
             "an ounce": (1, "oz"), "~12 Tbsp.": (12, "tbsp")}

    for text, (value, unit) in cases.items():
        quantity = task.normalize_quantity(text)
        assert (quantity.value, quantity.unit.value) == (value, unit), text


def test_triage_ticket_routes_by_keyword_and_reads_the_order_number():
    task, _ = load("triage_ticket")
    cases = {"Re: charged twice for order #48213": ("billing", 48213),
             "URGENT: parcel never arrived": ("shipping", None),
             "can't log in to the API (order 12345)": ("account", 12345),
             "the iOS app crashes on start - ASAP please": ("bug", None),
             "tracking for #123456 is wrong": ("shipping", None)}  # six digits: not an order

    for subject, (queue, order) in cases.items():
        ticket = task.triage_ticket(subject)
        assert (ticket.queue.value, ticket.order) == (queue, order), subject
    with pytest.raises(ValueError, match="no queue's keyword"):
        task.triage_ticket("hello there")


def test_triage_ticket_outputs_vary():
    task, _ = load("triage_ticket")
    tickets = [task.triage_ticket(**call) for call in task.inputs(200, seed=0)]

    assert {ticket.queue for ticket in tickets} == set(task.Queue)
    orders = [ticket.order for ticket in tickets]
    assert None in orders and len({order for order in orders if order is not None}) > 80


def test_the_recipe_trains_on_what_the_trace_script_writes(example):
    name, _, trace = example
    recipe_path = ROOT / "recipes" / f"{name}.yaml"

    recipe = load_recipe(recipe_path)

    assert recipe.data.train == [trace.TRACES]
    assert trace.TRACES == f"traces/{name}.jsonl"
    assert recipe.data.function == FUNCTIONS[name]
    assert recipe.output.dir == f"runs/{name}"  # what dispatch.py loads by default
    dispatch_script = (EXAMPLES / name / "dispatch.py").read_text(encoding="utf-8")
    assert f'default="{recipe.output.dir}"' in dispatch_script
    assert recipe.data.eval_fraction > 0 and recipe.train.eval_samples > 0


def _script(name: str, script: str) -> ModuleType:
    """An example's script (``auto.py``, ``dispatch.py``) as a module, importing its ``task``."""
    directory = EXAMPLES / name
    saved = sys.modules.pop("task", None)
    sys.path.insert(0, str(directory))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_{script}", directory / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop("task", None)
        if saved is not None:
            sys.modules["task"] = saved


def test_the_demo_recipe_trains_on_what_the_demo_traces():
    demo = (EXAMPLES / "demo.py").read_text(encoding="utf-8")
    recipe = load_recipe(ROOT / "recipes" / "demo.yaml")

    assert recipe.data.train == ["traces/demo.jsonl"]
    assert recipe.data.function == "triage_ticket"
    assert recipe.output.dir == "runs/demo"
    assert ('traces, recipe, run_dir = "traces/demo.jsonl", "recipes/demo.yaml", "runs/demo"'
            in demo)
    # the demo's version has to earn its promotion through the default gate
    assert recipe.gate.min_exact == 0.95 and recipe.gate.min_valid == 1.0
    assert recipe.train.patience is not None
    for script in ("triage_ticket/auto.py", "triage_ticket/dispatch.py",
                   "three_digit_multiply/trace.py", "three_digit_multiply/dispatch.py"):
        assert f"examples/{script}" in demo
        assert (EXAMPLES / script).is_file()


def test_the_auto_script_traces_while_no_adapter_exists(tmp_path):
    """The demo's step 1: ``mode="auto"`` on a run that does not exist yet runs the function and
    records each call exactly as a bare ``@distil`` does, fingerprint included."""
    import json
    import subprocess

    out = tmp_path / "traces.jsonl"
    result = subprocess.run(
        [sys.executable, "auto.py", "--run", str(tmp_path / "run"), "--out", str(out),
         "--n", "30", "--seed", "0"],
        cwd=EXAMPLES / "triage_ticket", capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "phase trace" in result.stdout
    assert "the function's body ran 30 of 30 times; 30/30 answers" in result.stdout
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    task, _ = load("triage_ticket")
    bare = tmp_path / "bare.jsonl"
    subprocess.run([sys.executable, "trace.py", "--n", "30", "--out", str(bare)],
                   cwd=EXAMPLES / "triage_ticket", check=True, capture_output=True,
                   timeout=60)
    expected = [json.loads(line) for line in bare.read_text(encoding="utf-8").splitlines()]
    assert [r["localdistil"]["args"] for r in records] == [{"subject": subject} for subject, _
                                                           in task.examples(30, seed=0)]
    for got, want in zip(records, expected, strict=True):
        for key in ("function", "fingerprint", "schema_hash", "args", "output"):
            assert got["localdistil"][key] == want["localdistil"][key]
        assert got["messages"] == want["messages"]


def test_the_held_out_check_leaves_out_every_traced_text(tmp_path):
    import subprocess

    dispatch = _script("triage_ticket", "dispatch.py")
    traces = tmp_path / "traces.jsonl"
    subprocess.run([sys.executable, "trace.py", "--n", "300", "--seed", "12345",
                    "--out", str(traces)],
                   cwd=EXAMPLES / "triage_ticket", check=True, capture_output=True,
                   timeout=60)  # the same seed as the check: every one of its first 300 is seen
    task, _ = load("triage_ticket")

    calls = dispatch._new_calls(50, [str(traces)])

    seen = {call["subject"] for call in task.inputs(300, seed=12345)}
    assert len(calls) == 50
    assert not seen & {call["subject"] for call in calls}
    assert len({call["subject"] for call in calls}) == 50


def test_docs_qa_agreement_scores_the_student_against_its_teacher(tmp_path, capsys, monkeypatch):
    import json

    spec = importlib.util.spec_from_file_location("docs_qa_agreement",
                                                  EXAMPLES / "docs_qa" / "agreement.py")
    agreement = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(agreement)
    assert agreement.token_f1("The base model is SmolLM2", "the base model is SmolLM2") == 1.0
    assert agreement.token_f1("runs are kept in runs", "kept in runs") == pytest.approx(0.75)
    assert agreement.token_f1("yes", "no") == 0.0 and agreement.token_f1("", "") == 1.0

    version = tmp_path / "v0001"
    version.mkdir()
    def sample(question, expected, got):
        return {"args": {"question": question}, "expected": {"answer": expected},
                "got": None if got is None else {"answer": got}}

    samples = [sample("Q1?", "a b", "a b"), sample("Q2?", "a b", "a"), sample("Q3?", "c", None)]
    (version / "eval.json").write_text(json.dumps({"samples": samples}))
    monkeypatch.setattr(agreement, "adapter_dir", lambda run: run)
    monkeypatch.setattr(sys, "argv", ["agreement.py", "--run", str(version)])
    agreement.main()
    out = capsys.readouterr().out
    assert "3 held-out questions, 2 answered" in out
    assert "exact agreement with the teacher  33.3%" in out
    assert "mean token F1 with the teacher    0.56" in out  # (1 + 2/3 + 0) / 3
    assert "| Q3? | c | (no answer) | 0.00 |" in out
