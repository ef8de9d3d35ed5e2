"""The whole pipeline on the embedded SmolLM2-135M, through the CLI and the public API:
trace -> dataset -> train (a few steps, CPU) -> eval -> dispatch. Slow: about two minutes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from localdistil import Instructions, read_records
from localdistil.cli import main
from localdistil.models.adapter import read_manifest

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "examples" / "three_digit_multiply")
)

from task import Multiply, multiply  # noqa: E402  the seed example itself

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(smollm2_home, tmp_path_factory):
    """Trace 80 calls, then `localdistil dataset` and `localdistil train` on SmolLM2."""
    import os

    root = tmp_path_factory.mktemp("e2e")
    os.environ["LOCALDISTIL_HOME"] = str(smollm2_home)
    traces = root / "traces" / "multiply.jsonl"
    traced = Instructions(name="e2e", path=str(traces)).distil(multiply)
    for i in range(80):
        traced(100 + (i * 37) % 900, 100 + (i * 91) % 900)
    recipe = root / "multiply.yaml"
    recipe.write_text(
        "# python -m localdistil train multiply.yaml\n"
        "model: smollm2-135m\n"
        f"data: {{train: [{traces}], function: multiply, eval_fraction: 0.1}}\n"
        "train: {max_steps: 8, batch_size: 8, learning_rate: 1.0e-3, logging_steps: 1, "
        "save_steps: 4, eval_samples: 8}\n"
        "gate: {min_exact: 0.0}  # 8 steps learn the format, not the arithmetic: promote it\n"
        f"output: {{dir: {root / 'run'}}}\n"
    )
    assert main(["dataset", str(recipe), "--out", str(root / "dataset")]) == 0
    assert main(["train", str(recipe)]) == 0
    return root


def test_cli_training_learns_the_answer_format(trained_run):
    version = trained_run / "run" / "versions" / "v0001"
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["steps"] == 8
    assert metrics["final_loss"] < 0.7 * metrics["first_loss"]
    manifest = read_manifest(trained_run / "run")
    assert manifest.base_model == "smollm2-135m" and manifest.name == "multiply"
    assert manifest.output_schema == Multiply.model_json_schema()
    assert (trained_run / "dataset" / "train").is_dir()


def test_training_ends_with_an_evaluation_where_every_output_is_valid(trained_run):
    version = trained_run / "run" / "versions" / "v0001"
    evaluation = json.loads((version / "eval.json").read_text())
    assert evaluation["examples"] == 8
    assert evaluation["valid_rate"] == 1.0
    for sample in evaluation["samples"]:
        Multiply.model_validate(sample["got"])
        assert sample["got"]["a"] == sample["expected"]["a"] or not sample["exact"]


def test_dispatch_answers_new_calls_with_valid_objects(trained_run):
    fn = Instructions().distil(model=str(trained_run / "run"), mode="dispatch")(multiply)
    answers = fn.batch([(123, 456), {"a": 700, "b": 205}]) + [fn(999, 101)]
    assert all(isinstance(answer, Multiply) for answer in answers)
    # a model trained for 8 steps copies its inputs into the answer, even if the product is off
    assert [(a.a, a.b) for a in answers] == [(123, 456), (700, 205), (999, 101)]


def test_eval_command_on_the_held_out_split(trained_run, capsys):
    assert main(["eval", str(trained_run / "multiply.yaml"), "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert "| valid outputs | 100.0% |" in out and "| examples | 4 |" in out
    assert len(read_records(trained_run / "traces" / "multiply.jsonl").records) == 80
