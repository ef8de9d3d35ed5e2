"""Versions of a run, the gate and early stopping.

Fast: promotion and rollback on hand-made run directories (a SIGKILL at any moment leaves a
promoted version), the resolver (an adapter, a run's promoted version, a run from before
versions), the ``runs`` command, the gate's verdicts and the early-stopping rule.

Slow (``slow``): the tiny model learns a constant answer and training stops early; a version
trained for one step is refused by the gate and the promoted one stays; a rollback gives the
previous version's answers through dispatch; the version written is the best state seen.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from localdistil import AdapterError, Instructions
from localdistil.cli import main
from localdistil.models.adapter import MANIFEST_NAME, adapter_dir
from localdistil.models.versions import (
    list_versions,
    promote,
    promoted_version,
    promotion_history,
    remove_unfinished_versions,
    rollback,
    writing_version,
)
from localdistil.training.accuracy import Evaluation, stop_reason, time_to_gate
from localdistil.training.gate import judge
from localdistil.training.recipe import parse_recipe

ADAPTER_FILES = (MANIFEST_NAME, "adapter_config.json", "adapter_model.safetensors")


def fake_adapter(directory: Path, **metrics) -> Path:
    """A directory ``adapter_dir`` accepts (the files exist; nothing loads them)."""
    directory.mkdir(parents=True)
    for name in ADAPTER_FILES:
        (directory / name).write_text("{}")
    if metrics:
        (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def fake_run(root: Path, versions: int) -> Path:
    run = root / "run"
    for number in range(1, versions + 1):
        fake_adapter(run / "versions" / f"v{number:04d}", steps=10 * number,
                     eval={"exact_match": number / 10, "valid_rate": 1.0})
    return run


# -- versions and promotion ------------------------------------------------------------------

def test_promote_and_rollback_keep_a_stack_of_promotions(tmp_path):
    run = fake_run(tmp_path, 3)
    assert list_versions(run) == ["v0001", "v0002", "v0003"]
    assert promoted_version(run) is None and promotion_history(run) == []

    promote(run, "v0001")
    promote(run, "v0003")
    promote(run, "v0003")  # already promoted: nothing changes
    assert json.loads((run / "promoted").read_text()) == {"version": "v0003",
                                                          "history": ["v0001", "v0003"]}
    assert adapter_dir(run) == run / "versions" / "v0003"

    assert rollback(run) == "v0001"
    assert promoted_version(run) == "v0001" and promotion_history(run) == ["v0001"]
    assert adapter_dir(run) == run / "versions" / "v0001"
    with pytest.raises(AdapterError, match="Nothing to roll back to.*only v0001 has been promoted"):
        rollback(run)
    with pytest.raises(AdapterError, match=r"has no version 'v0009' \(its versions: v0001, v0002, "
                       r"v0003\)"):
        promote(run, "v0009")
    assert promoted_version(run) == "v0001"
    assert not list(run.glob(".promoted.tmp-*"))


def test_a_new_version_appears_whole_or_not_at_all(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(RuntimeError), writing_version(run) as (name, staging):
        assert name == "v0001" and staging.parent == run / "versions"
        (staging / "adapter_config.json").write_text("{}")
        raise RuntimeError("killed while writing")
    assert list_versions(run) == [] and list((run / "versions").iterdir()) == []

    with writing_version(run) as (name, staging):
        (staging / "half").write_text("x")
        left = run / "versions" / ".v0002.tmp-0badf00d"  # another writer, or a killed one
        left.mkdir()
    assert name == "v0001" and list_versions(run) == ["v0001"]
    with writing_version(run) as (name, _):
        pass
    assert name == "v0003"  # numbers are never reused, even one a killed writer had taken
    assert remove_unfinished_versions(run) == [left] and not left.exists()
    assert list_versions(run) == ["v0001", "v0003"]


PROMOTING_LOOP = """
import sys
from localdistil.models.versions import promote, rollback
run = sys.argv[1]
print("ready", flush=True)
while True:
    promote(run, "v0003")
    rollback(run)
"""


def test_a_sigkill_at_any_moment_leaves_the_old_or_the_new_version_promoted(tmp_path):
    """A process promoting and rolling back in a loop is SIGKILLed at random moments; every
    time, ``promoted`` is whole and names one of the two versions. LOCALDISTIL_KILL_SEED=...
    replays a failure."""
    seed = int(os.environ.get("LOCALDISTIL_KILL_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    run = fake_run(tmp_path, 3)
    promote(run, "v0001")
    promote(run, "v0002")
    seen = set()
    for attempt in range(4):
        process = subprocess.Popen([sys.executable, "-c", PROMOTING_LOOP, str(run)],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.01, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stdout.close()
        where = f"(seed {seed}, attempt {attempt})"
        record = json.loads((run / "promoted").read_text())
        assert record in ({"version": "v0002", "history": ["v0001", "v0002"]},
                          {"version": "v0003", "history": ["v0001", "v0002", "v0003"]}), where
        assert adapter_dir(run) == run / "versions" / record["version"], where
        seen.add(record["version"])
    promote(run, "v0001")  # a temporary file a killed process left does not get in the way
    assert promoted_version(run) == "v0001" and not list(run.glob(".promoted.tmp-*"))


# -- the resolver ----------------------------------------------------------------------------

def test_adapter_dir_takes_an_adapter_a_runs_promoted_version_or_a_legacy_adapter(tmp_path):
    adapter = fake_adapter(tmp_path / "plain")
    assert adapter_dir(adapter) == adapter

    legacy = tmp_path / "legacy"
    fake_adapter(legacy / "adapter")  # a run trained before versions existed
    assert adapter_dir(legacy) == legacy / "adapter"
    fake_adapter(legacy / "versions" / "v0001")  # trained again, but refused by the gate
    assert adapter_dir(legacy) == legacy / "adapter"
    promote(legacy, "v0001")
    assert adapter_dir(legacy) == legacy / "versions" / "v0001"


def test_a_run_with_versions_but_none_promoted_says_how_to_promote_one(tmp_path):
    run = fake_run(tmp_path, 2)
    with pytest.raises(AdapterError, match="No version of .* is promoted") as caught:
        adapter_dir(run)
    assert f"python -m localdistil runs promote {run} v0002" in str(caught.value)


def test_a_broken_promotion_record_is_reported_with_the_fix(tmp_path):
    run = fake_run(tmp_path, 2)
    (run / "promoted").write_text('{"version": "v00')
    with pytest.raises(AdapterError, match="not a promotion record.*runs promote"):
        adapter_dir(run)
    (run / "promoted").write_text('{"version": "v0007", "history": ["v0007"]}')
    with pytest.raises(AdapterError, match="names v0007, which is gone.*runs promote"):
        adapter_dir(run)
    with pytest.raises(AdapterError, match="does not exist"):
        adapter_dir(tmp_path / "nowhere")


def test_runs_command_lists_promotes_rolls_back_and_shows_status(tmp_path, capsys):
    run = fake_run(tmp_path, 2)
    gate = {"passed": False, "reasons": ["held-out exact match 20.0% is below gate.min_exact"]}
    metrics = json.loads((run / "versions" / "v0002" / "metrics.json").read_text())
    (run / "versions" / "v0002" / "metrics.json").write_text(json.dumps({**metrics, "gate": gate}))

    assert main(["runs", "status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "promoted  none" in out and f"runs promote {run} VERSION" in out
    assert main(["runs", "promote", str(run), "v0001"]) == 0
    assert main(["runs", "promote", str(run), "v0002"]) == 0
    assert main(["runs", "list", str(run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:4] == ["v0001", "10", "10.0%", "100.0%"] for line in lines)
    assert any(line.startswith("v0002*") and "refused: held-out exact match 20.0%" in line
               for line in lines)

    (run / "auto").mkdir()
    (run / "auto" / "answer.json").write_text('{"phase": "shadow", "version": "v0002"}\n')
    (run / "auto" / "answer.json.lock").write_text("")
    assert main(["runs", "status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "promoted  v0002  (history: v0001 -> v0002)" in out
    assert f"auto mode state {run / 'auto' / 'answer.json'}:" in out
    assert '{"phase": "shadow", "version": "v0002"}' in out and "answer.json.lock" not in out

    assert main(["runs", "rollback", str(run)]) == 0
    assert "now loads v0001" in capsys.readouterr().out
    assert main(["runs", "rollback", str(run)]) == 1
    assert "Nothing to roll back to" in capsys.readouterr().err
    assert main(["runs", "promote", str(run), "v0042"]) == 1
    assert "has no version 'v0042'" in capsys.readouterr().err
    assert main(["runs", "list", str(tmp_path / "empty")]) == 0
    assert "has no versions yet" in capsys.readouterr().out


# -- the gate and the early-stopping rule ----------------------------------------------------

class _Report:
    def __init__(self, exact, valid, examples=20):
        self.exact_match, self.valid_rate, self.examples = exact, valid, examples


def gate(**settings):
    return parse_recipe({"model": "m", "data": {"train": ["t.jsonl"]}, "gate": settings}).gate


def test_the_gate_needs_both_thresholds_and_no_loss_against_the_promoted_version():
    assert judge(gate(), _Report(0.95, 1.0)).passed
    refused = judge(gate(), _Report(0.9, 0.95), against="v0001", against_report=_Report(0.97, 1))
    assert not refused.passed and refused.judged and len(refused.reasons) == 3
    assert "gate.min_exact" in refused.reasons[0] and "gate.min_valid" in refused.reasons[1]
    assert "worse than the promoted v0001's 97.0% on the same 20 calls" in refused.reasons[2]
    assert refused.against == "v0001" and refused.against_exact == 0.97

    lenient = gate(min_exact=0.5, min_valid=0.5)
    assert not judge(lenient, _Report(0.6, 1), against="v1", against_report=_Report(0.7, 1)).passed
    assert judge(gate(min_exact=0.5, not_worse=False), _Report(0.6, 1), against="v1",
                 against_report=_Report(0.7, 1)).passed
    unjudged = judge(gate(), None)  # no held-out calls
    assert unjudged.passed and not unjudged.judged


def evaluations(*points):
    return [Evaluation(step=10 * (i + 1), exact_match=exact, valid_rate=1.0, fields={},
                       eval_loss=loss, time_s=float(i + 1))
            for i, (exact, loss) in enumerate(points)]


def test_training_stops_once_the_gate_is_met_or_accuracy_stops_improving():
    rule = {"patience": 2, "min_exact": 0.9, "min_valid": 1.0}
    assert stop_reason(evaluations((0.5, 2.0), (0.95, 1.0)), **rule) is None
    reached = stop_reason(evaluations((0.5, 2.0), (0.95, 1.0), (0.92, 1.1)), **rule)
    assert reached and "met 2 evaluations in a row" in reached
    # a lower held-out loss is progress, whatever exact match does; an equal one is not
    assert stop_reason(evaluations((0.0, 3.0), (0.0, 2.0), (0.0, 1.0)), **rule) is None
    assert stop_reason(evaluations((0.5, 2.0), (0.48, 1.5), (0.46, 1.0)), **rule) is None
    stalled = stop_reason(evaluations((0.5, 2.0), (0.5, 2.0), (0.4, 2.5)), **rule)
    assert stalled and "has improved for 2 evaluations (best 50.0% at step 10)" in stalled
    # a new best exact match is progress even where the loss rose
    assert stop_reason(evaluations((0.5, 1.0), (0.4, 1.2), (0.6, 1.5)), **rule) is None
    assert stop_reason(evaluations((0.5, 2.0), (0.5, 2.0), (0.4, 2.5)),
                       **{**rule, "patience": None}) is None
    # patience 1: the first evaluation that meets the gate, or the first without progress
    assert stop_reason(evaluations((0.5, 2.0), (0.95, 1.0)), **{**rule, "patience": 1}) == (
        "the gate's thresholds (exact >= 90%, valid >= 100%) were met")
    assert "has improved for 1 evaluation (best 50.0% at step 10)" in stop_reason(
        evaluations((0.5, 2.0), (0.4, 2.5)), **{**rule, "patience": 1})
    assert time_to_gate(evaluations((0.5, 2.0), (0.95, 1.0)), 0.9, 1.0) == 2.0
    assert time_to_gate(evaluations((0.5, 2.0)), 0.9, 1.0) is None


def test_held_out_calls_are_answered_by_dispatchs_merged_model_on_a_cpu(tiny_model_dir,
                                                                        tmp_path):
    """What answers during training is the merged model the version will be dispatched with:
    given the base as dispatch loads it (here fp32), that base, not the bf16 training model's
    rounded one; without, the training model's own base. The training model is left as it
    was."""
    import copy

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from localdistil.training.accuracy import answering_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():  # weights bf16 cannot hold, so that rounding them shows
        for parameter in base.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-3)
    training = get_peft_model(copy.deepcopy(base).to(torch.bfloat16),
                              LoraConfig(r=4, target_modules="all-linear",
                                         init_lora_weights=False))
    before = {name: p.detach().clone() for name, p in training.named_parameters()}

    answering = answering_model(training, base)
    rounded = answering_model(training)  # dispatch loads bf16 too: the training model's base

    after = dict(training.named_parameters())
    assert after.keys() == before.keys()
    assert all(after[name].dtype == value.dtype and torch.equal(after[name], value)
               for name, value in before.items())
    assert {p.dtype for p in answering.parameters()} == {torch.float32}
    assert {p.dtype for p in rounded.parameters()} == {torch.bfloat16}
    for model in (answering, rounded):
        assert not any("lora" in name for name, _ in model.named_parameters())
        assert not model.training
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        directory = tmp_path / "adapter"
        training.save_pretrained(directory)  # what a version holds, loaded as dispatch loads it
        dispatched = PeftModel.from_pretrained(base, directory).merge_and_unload().eval()
        expected = dispatched(ids).logits
        assert torch.allclose(answering(ids).logits, expected, atol=1e-5)
        assert not torch.allclose(rounded(ids).logits.float(), expected, atol=1e-5)
        unmerged = training(ids).logits.float()
        assert torch.allclose(rounded(ids).logits.float(), unmerged, atol=0.05)


# -- training on the tiny model --------------------------------------------------------------

class Reply(BaseModel):
    word: str


def trace_replies(path: Path, word: str, calls: int = 40) -> Path:
    """``answer(n)`` always replies ``word``: a function the tiny model learns in ~10 steps.
    Every word gives the same function identity (name, signature, docstring, return type)."""

    def answer(n: int) -> Reply:
        """Reply with the word of the day."""
        return Reply(word=word)

    traced = Instructions(path=str(path)).distil(answer)
    for n in range(calls):
        traced(n)
    return path


def answer(n: int) -> Reply:
    """Reply with the word of the day."""
    raise AssertionError("dispatch never runs the body")


def reply_recipe(model, traces, out, **train):
    settings = {"max_steps": 40, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0,
                "logging_steps": 5, "save_steps": 100, "eval_every": 5, "patience": 2, **train}
    return {"model": str(model), "data": {"train": [str(traces)], "eval_fraction": 0.1},
            "train": settings, "output": {"dir": str(out), "plot": True}}


@pytest.fixture(scope="module")
def learnt_run(tiny_model_dir, tmp_path_factory):
    """A run whose v0001 learnt to reply "yes", with the default gate (built once)."""
    from localdistil.training.train import train

    root = tmp_path_factory.mktemp("versions")
    traces = trace_replies(root / "yes.jsonl", "yes")
    result = train(parse_recipe(reply_recipe(tiny_model_dir, traces, root / "run")))
    return root, result


def copy_run(learnt_run, tmp_path) -> Path:
    root, _ = learnt_run
    return Path(shutil.copytree(root / "run", tmp_path / "run"))


@pytest.mark.slow
def test_a_task_learnt_early_stops_training_and_is_promoted(learnt_run):
    root, result = learnt_run
    metrics = result.metrics
    assert result.promoted and result.version == "v0001"
    assert promoted_version(root / "run") == "v0001"
    assert metrics["steps"] < 40 and "met 2 evaluations in a row" in metrics["stopped_early"]
    accuracy = metrics["accuracy"]
    assert [e["step"] for e in accuracy] == list(range(5, metrics["steps"] + 1, 5))
    assert accuracy[-1]["exact_match"] == accuracy[-2]["exact_match"] == 1.0
    assert 0 < metrics["time_to_gate_s"] == accuracy[-2]["time_s"]
    assert metrics["gate"] == {"passed": True, "judged": True, "reasons": [], "calls": 4,
                               "exact_match": 1.0, "valid_rate": 1.0, "against": None,
                               "against_exact": None}
    assert (result.adapter_dir / "loss.png").stat().st_size > 1000
    fn = Instructions().distil(model=str(root / "run"), mode="dispatch")(answer)
    assert fn(1234) == Reply(word="yes")


@pytest.mark.slow
def test_the_gate_refuses_a_worse_version_and_the_promoted_one_stays(learnt_run, tiny_model_dir,
                                                                      tmp_path, capsys):
    run = copy_run(learnt_run, tmp_path)
    recipe = tmp_path / "recipe.yaml"  # JSON is YAML
    recipe.write_text(json.dumps(reply_recipe(tiny_model_dir, learnt_run[0] / "yes.jsonl", run)))
    capsys.readouterr()
    # one step at a tiny learning rate: the adapter barely moves off the random model
    assert main(["train", str(recipe), "train.max_steps=1", "train.learning_rate=1e-7"]) == 3
    out, err = capsys.readouterr()
    assert f"adapter   {run / 'versions' / 'v0002'} (candidate: refused by the gate)" in out
    assert f"the gate refused v0002, which stays a candidate ({run} still loads v0001)" in err
    assert "evaluating the promoted" not in err  # v0001's own evaluation was on the same calls
    gate = json.loads((run / "versions" / "v0002" / "metrics.json").read_text())["gate"]
    assert not gate["passed"] and gate["against"] == "v0001" and gate["against_exact"] == 1.0
    assert any("(gate.not_worse)" in reason for reason in gate["reasons"])
    assert promoted_version(run) == "v0001" and adapter_dir(run) == run / "versions" / "v0001"
    assert Instructions().distil(model=str(run), mode="dispatch")(answer)(7) == Reply(word="yes")


@pytest.mark.slow
def test_rollback_gives_the_previous_versions_answers_again(learnt_run, tiny_model_dir, tmp_path):
    from localdistil.training.train import train

    run = copy_run(learnt_run, tmp_path)
    traces = trace_replies(tmp_path / "no.jsonl", "no")
    result = train(parse_recipe(reply_recipe(tiny_model_dir, traces, run)))
    assert result.promoted and result.version == "v0002"
    assert result.gate.against == "v0001" and result.gate.against_exact == 0.0  # it says "yes"
    assert promotion_history(run) == ["v0001", "v0002"]
    dispatch = Instructions().distil(model=str(run), mode="dispatch")
    assert dispatch(answer)(5) == Reply(word="no")

    assert main(["runs", "rollback", str(run)]) == 0
    assert promoted_version(run) == "v0001"
    assert Instructions().distil(model=str(run), mode="dispatch")(answer)(5) == Reply(word="yes")


@pytest.mark.slow
def test_the_version_written_is_the_best_state_seen(tiny_model_dir, traced_multiply, tmp_path,
                                                    monkeypatch):
    """The held-out answers are faked so that step 4 looks best: the version holds the
    weights of step 4 (its checkpoint's), not those of the last step."""
    from safetensors.torch import load_file

    from localdistil.training import accuracy
    from localdistil.training.train import train

    def measure(self, model, step, eval_loss):
        return Evaluation(step=step, exact_match=1.0 if step == 4 else 0.5, valid_rate=1.0,
                          fields={}, eval_loss=eval_loss, time_s=0.1)

    monkeypatch.setattr(accuracy.AccuracyCallback, "_measure", measure)
    recipe = {"model": str(tiny_model_dir),
              "data": {"train": [str(traced_multiply[0])], "eval_fraction": 0.125},
              "train": {"max_steps": 12, "batch_size": 4, "learning_rate": 1e-2,
                        "warmup_ratio": 0, "save_steps": 4, "save_total_limit": None,
                        "eval_every": 2, "patience": None},
              "gate": {"min_exact": 0, "min_valid": 0}, "output": {"dir": str(tmp_path / "run")}}
    result = train(parse_recipe(recipe))
    assert result.metrics["steps"] == 12 and result.metrics["best_step"] == 4
    kept = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    checkpoints = tmp_path / "run" / "checkpoints"
    at_4 = load_file(str(checkpoints / "checkpoint-4" / "adapter_model.safetensors"))
    at_12 = load_file(str(checkpoints / "checkpoint-12" / "adapter_model.safetensors"))
    assert kept.keys() == at_4.keys()
    assert all((kept[k] == at_4[k]).all() for k in kept)
    assert any(not (kept[k] == at_12[k]).all() for k in kept)
    # the best state is kept in each checkpoint, so --resume keeps it too
    best = load_file(str(checkpoints / "checkpoint-12" / accuracy.BEST_STATE_NAME))
    assert best.keys() == at_4.keys() and all((best[k] == at_4[k]).all() for k in best)
