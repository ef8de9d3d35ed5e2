"""Training on the tiny model: the loss falls, only LoRA weights are trained and saved, the
adapter reloads with plain PEFT, the manifest describes the function, held-out accuracy is
measured during training, and bad input fails before any model is loaded. Versions, the gate
and early stopping have their own tests in test_versions.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from localdistil import DatasetError, ModelError, RecipeError
from localdistil.cli import main
from localdistil.models.adapter import adapter_dir, read_manifest
from localdistil.training.recipe import parse_recipe
from localdistil.training.train import train

#: A gate every version passes: the tiny random model never answers correctly.
OPEN_GATE = {"min_exact": 0.0, "min_valid": 0.0}


def tiny_recipe(model, data, out, *, gate=OPEN_GATE, **train):
    settings = {"max_steps": 16, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0,
                "logging_steps": 2, "save_steps": 8, "patience": None, **train}
    return parse_recipe({
        "model": str(model),
        "data": {"train": [str(data)], "eval_fraction": 0.125},
        "train": settings,
        "gate": gate,
        "output": {"dir": str(out), "plot": True},
    })


def test_training_lowers_the_loss_and_writes_a_loadable_adapter(tiny_model_dir, traced_multiply,
                                                                tmp_path):
    data, multiply = traced_multiply
    base_before = load_file(str(tiny_model_dir / "model.safetensors"))
    result = train(tiny_recipe(tiny_model_dir, data, tmp_path / "run"))

    metrics, version = result.metrics, result.adapter_dir
    assert version == result.output_dir / "versions" / "v0001" and result.version == "v0001"
    assert result.promoted and adapter_dir(result.output_dir) == version
    assert metrics["steps"] == 16
    assert metrics["final_loss"] < 0.92 * metrics["first_loss"]  # a random tiny model: 6.2 -> 5.4
    assert metrics["final_eval_loss"] is not None and metrics["eval_examples"] == 3
    assert metrics["tokens_per_second"] > 0
    saved_metrics = json.loads((version / "metrics.json").read_text())
    assert saved_metrics["steps"] == 16 and saved_metrics["gate"]["passed"] is True
    assert (version / "loss.png").stat().st_size > 1000
    assert (result.output_dir / "recipe.yaml").read_text().startswith("model:")
    evaluation = json.loads((version / "eval.json").read_text())
    assert evaluation["examples"] == 3 and len(evaluation["samples"]) == 3
    assert evaluation["adapter"] == str(version)
    assert metrics["eval"]["examples"] == 3 and 0 <= metrics["eval"]["valid_rate"] <= 1
    assert "| exact match |" in (version / "eval.md").read_text()

    # held-out accuracy during training: every 10 steps (the floor) and at the last step,
    # beside that step's held-out loss, in metrics.json and the trainer's log history
    assert metrics["eval_every"] == 10
    assert [e["step"] for e in metrics["accuracy"]] == [10, 16]
    # the held-out loss is computed with each accuracy evaluation and at no other step (not at
    # the end of each pass over the data), on the same held-out calls
    eval_loss = {p["step"]: p["loss"] for p in metrics["eval_loss"]}
    assert list(eval_loss) == [10, 16]
    for entry in metrics["accuracy"]:
        assert 0 <= entry["exact_match"] <= entry["valid_rate"] + 1e-9 <= 1 + 1e-9
        assert set(entry["fields"]) == {"a", "b", "result"}
        assert entry["eval_loss"] == eval_loss[entry["step"]] and entry["time_s"] > 0
    assert metrics["best_step"] in (10, 16) and metrics["stopped_early"] is None
    assert metrics["time_to_gate_s"] == metrics["accuracy"][0]["time_s"]  # an open gate
    last = json.loads((result.output_dir / "checkpoints" / "checkpoint-16" / "trainer_state.json")
                      .read_text())["log_history"]
    logged = [h for h in last if "eval_exact_match" in h]
    assert [h["step"] for h in logged] == [10, 16] and all("eval_loss" in h for h in logged)

    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)  # only the adapter is saved
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0
               for name, tensor in saved.items())
    base_after = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    base_logits = base(ids).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                      str(result.adapter_dir))
    assert not torch.allclose(tuned(ids).logits, base_logits)

    manifest = read_manifest(result.output_dir)  # the promoted version
    assert manifest.fingerprint == multiply.spec.fingerprint
    assert manifest.schema_hash == multiply.spec.schema_hash
    assert manifest.output_schema == multiply.spec.output_type.model_json_schema()
    assert manifest.name == "multiply" and manifest.prompt_style == "compact"
    assert manifest.base_model == str(tiny_model_dir) and len(manifest.base_model_hash) == 64
    assert manifest.recipe["train"]["max_steps"] == 16 and manifest.metrics["steps"] == 16
    assert manifest.max_output_tokens > 5 and "torch" in manifest.versions


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, traced_multiply, tmp_path,
                                                   monkeypatch):
    from trl import SFTTrainer

    data, _ = traced_multiply
    out = tmp_path / "run"
    train(tiny_recipe(tiny_model_dir, data, out, max_steps=8, save_steps=4))
    assert (out / "checkpoints" / "checkpoint-8").is_dir()

    executed = []
    original = SFTTrainer.training_step

    def counting_step(self, *args, **kwargs):
        executed.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SFTTrainer, "training_step", counting_step)
    result = train(tiny_recipe(tiny_model_dir, data, out, max_steps=12, save_steps=4), resume=True)
    assert result.metrics["steps"] == 12 and result.version == "v0002"  # a new version
    assert executed == [8, 9, 10, 11]  # steps 1-8 were not run again
    assert read_manifest(out).recipe["train"]["max_steps"] == 12
    assert read_manifest(out / "versions" / "v0001").recipe["train"]["max_steps"] == 8
    # the evaluations before the resume are kept in the history (from the checkpoint)
    assert [e["step"] for e in result.metrics["accuracy"]] == [8, 10, 12]


def test_resume_skips_a_checkpoint_left_half_written(tiny_model_dir, traced_multiply, tmp_path,
                                                     capsys):
    data, _ = traced_multiply
    out = tmp_path / "run"
    train(tiny_recipe(tiny_model_dir, data, out, max_steps=8, save_steps=4))
    half = out / "checkpoints" / "checkpoint-8"
    (half / "trainer_state.json").write_text('{"global_st')  # killed while writing its last file
    unfinished = out / "versions" / ".v0002.tmp-0badf00d"
    unfinished.mkdir()  # or while writing a version
    capsys.readouterr()

    result = train(tiny_recipe(tiny_model_dir, data, out, max_steps=8, save_steps=4), resume=True)
    err = capsys.readouterr().err
    assert f"removing {half}" in err and f"removing {unfinished}" in err
    assert "resuming from " + str(out / "checkpoints" / "checkpoint-4") in err
    assert result.metrics["steps"] == 8 and result.version == "v0002"
    # written again, whole
    assert json.loads((half / "trainer_state.json").read_text())["global_step"] == 8
    assert not unfinished.exists()


def test_resume_before_the_first_checkpoint_starts_over(tiny_model_dir, traced_multiply, tmp_path,
                                                        capsys):
    data, _ = traced_multiply
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("model: x\n")  # killed before its first checkpoint
    result = train(tiny_recipe(tiny_model_dir, data, out, max_steps=4, save_steps=4), resume=True)
    assert "no complete checkpoint" in capsys.readouterr().err
    assert result.metrics["steps"] == 4 and read_manifest(out).metrics["steps"] == 4
    assert result.version == "v0001"


@pytest.mark.slow  # a subprocess training run: well over a few seconds
def test_a_run_killed_at_a_random_step_resumes_to_a_whole_adapter(tiny_model_dir, traced_multiply,
                                                                  tmp_path, capsys):
    """SIGKILL ``localdistil train`` at a random step (often while it writes a checkpoint), then
    ``train --resume``: the run completes and its adapter is whole. The seed is printed on
    failure; LOCALDISTIL_KILL_SEED=... replays it."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    seed = int(os.environ.get("LOCALDISTIL_KILL_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    steps, kill_at, delay = 24, rng.randrange(2, 22, 2), rng.uniform(0, 0.2)
    data, multiply = traced_multiply
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndata: {{train: [{data}], eval_fraction: 0.125}}\n"
                      f"train: {{max_steps: {steps}, batch_size: 4, learning_rate: 1.0e-2,"
                      f" warmup_ratio: 0,"
                      f" save_steps: 2, save_total_limit: 3, eval_samples: 2}}\n"
                      f"gate: {{min_exact: 0, min_valid: 0}}\n"
                      f"output: {{dir: {out}, plot: false}}\n")
    log = tmp_path / "killed.log"
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "localdistil", "train", str(recipe)],
                                   stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    where = f"(seed {seed}: kill when checkpoint-{kill_at} appears, +{delay:.2f} s; log {log})"
    deadline = time.monotonic() + 300
    while not (out / "checkpoints" / f"checkpoint-{kill_at}").exists():
        assert process.poll() is None, f"the run ended before it was killed {where}"
        assert time.monotonic() < deadline, f"checkpoint-{kill_at} never appeared {where}"
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, where

    capsys.readouterr()
    assert main(["train", str(recipe), "--resume"]) == 0, where
    err = capsys.readouterr().err
    if "resuming from " in err:
        resumed_from = int(err.split("resuming from ")[1].split("checkpoint-")[1].split()[0])
    else:  # killed while it wrote its first checkpoint
        assert "no complete checkpoint" in err, where
        resumed_from = 0
    # checkpoint-{kill_at - 2} was whole when killed
    assert kill_at - 2 <= resumed_from <= steps, where

    # the resumed training's version is promoted (one the killed run may have committed, if it
    # was killed after its last step, is an earlier version)
    version = adapter_dir(out)
    assert version.parent == out / "versions", where
    manifest = read_manifest(out)
    assert manifest.metrics["steps"] == steps, where
    assert manifest.fingerprint == multiply.spec.fingerprint, where
    saved = load_file(str(version / "adapter_model.safetensors"))
    assert saved and all("lora_" in name and torch.isfinite(t).all()
                         for name, t in saved.items()), where
    assert json.loads((version / "metrics.json").read_text())["eval"]["examples"] == 2, where
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                              str(version))
    for checkpoint in (out / "checkpoints").glob("checkpoint-*"):  # none is left half-written
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] > 0, where
    assert not list((out / "versions").glob(".v*")), where  # nor a version it was writing


def test_group_by_length_batches_examples_of_similar_length(tiny_model_dir, traced_multiply,
                                                            tmp_path, monkeypatch):
    import transformers.trainer

    made = []
    original = transformers.trainer.LengthGroupedSampler

    def recording(*args, **kwargs):
        made.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.trainer, "LengthGroupedSampler", recording)
    result = train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run", max_steps=4,
                               group_by_length=True))
    examples = result.metrics["train_examples"]
    trained = [kwargs for kwargs in made if len(kwargs["dataset"]) == examples]
    assert result.metrics["steps"] == 4 and len(trained) == 1
    assert trained[0]["model_input_name"] == "input_ids"


def test_the_held_out_loss_runs_on_the_answered_calls_shortest_first():
    from datasets import Dataset

    from localdistil.training.trainer import _loss_eval_set

    lengths = [7, 3, 9, 5, 2, 8]
    held_out = Dataset.from_dict({
        "input_ids": [[1] * n for n in lengths],
        "args": [{"a": 1}, None, {"a": 2}, {"a": 3}, {"a": 4}, {"a": 5}],  # row 1: no call
    })
    # the first three calls are answered (rows 0, 2, 3), and their loss is computed in order
    # of length, so that each batch pads to a length near its own
    answered = _loss_eval_set(held_out, answered=3)
    assert [len(ids) for ids in answered["input_ids"]] == [5, 7, 9]
    everything = _loss_eval_set(held_out, answered=0)
    assert [len(ids) for ids in everything["input_ids"]] == sorted(lengths)


class TestBadInputFailsBeforeAnyModelLoads:
    @pytest.fixture(autouse=True)
    def no_model_loading(self, monkeypatch):
        import transformers

        def refuse(*args, **kwargs):
            raise AssertionError("a model was loaded before the input was checked")

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)

    def test_an_existing_directory_that_is_not_a_run(self, tiny_model_dir, traced_multiply,
                                                     tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        with pytest.raises(RecipeError, match="already exists and is not a training run's "
                           "directory. Pass --overwrite") as caught:
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], out))
        assert caught.value.key == "output.dir" and (out / "keep.txt").read_text() == "mine"

    def test_resume_without_a_checkpoint(self, tiny_model_dir, traced_multiply, tmp_path):
        with pytest.raises(RecipeError,
                           match="holds no training run to resume. Run without --resume"):
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run"), resume=True)

    def test_empty_data(self, tiny_model_dir, tmp_path):
        empty = tmp_path / "empty.jsonl"
        empty.write_text("")
        with pytest.raises(DatasetError, match="holds no valid records"):
            train(tiny_recipe(tiny_model_dir, empty, tmp_path / "run"))

    def test_unknown_model(self, traced_multiply, tmp_path):
        with pytest.raises(ModelError, match="smollm2-135m"):
            train(tiny_recipe("smollm9-1t", traced_multiply[0], tmp_path / "run"))

    def test_gpu_only_options_on_a_cpu(self, tiny_model_dir, traced_multiply, tmp_path):
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        with pytest.raises(RecipeError, match="train.quantization: 4bit .*needs a CUDA GPU"):
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run",
                              quantization="4bit", precision="bf16"))
        with pytest.raises(RecipeError, match="train.precision: fp16 needs a CUDA GPU"):
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run",
                              precision="fp16"))


def test_train_command_prints_where_everything_is(tiny_model_dir, traced_multiply, tmp_path,
                                                  capsys):
    run = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndata:\n  train: [{traced_multiply[0]}]\n"
                      f"output:\n  dir: {run}\n")
    small = ["train.max_steps=4", "train.batch_size=4", "output.plot=false"]
    assert main(["train", str(recipe), *small, "gate.min_exact=0", "gate.min_valid=0"]) == 0
    out = capsys.readouterr().out
    assert "in 4 steps" in out and f"adapter   {run / 'versions' / 'v0001'} (promoted)" in out
    assert f"metrics   {run / 'versions' / 'v0001' / 'metrics.json'}" in out
    # training again adds a version; the default gate refuses it (exit status 3)
    assert main(["train", str(recipe), *small]) == 3
    out = capsys.readouterr().out
    assert f"adapter   {run / 'versions' / 'v0002'} (candidate: refused by the gate)" in out
    assert "below gate.min_exact" in out and f"runs promote {run} v0002" in out
    assert adapter_dir(run) == run / "versions" / "v0001"
    assert main(["eval", str(recipe), "--limit", "2", "--out", str(tmp_path / "ev")]) == 0
    assert "| examples | 2 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["examples"] == 2
    assert main(["eval"]) == 1
    assert "eval needs a recipe" in capsys.readouterr().err


def test_auto_steps_pass_once_over_large_data_and_repeat_small_data():
    from localdistil.training.choices import MIN_AUTO_STEPS, plan_steps

    def recipe(**train):
        return parse_recipe({"model": "m", "data": {"train": ["x.jsonl"]}, "train": train})

    assert plan_steps(recipe(), 65) == MIN_AUTO_STEPS == 200  # 72 distinct calls: many passes
    assert plan_steps(recipe(), 2400) == 300  # one pass of batch 8
    assert plan_steps(recipe(gradient_accumulation_steps=2), 6400, processes=2) == 200
    assert plan_steps(recipe(epochs=3), 65) is None  # the recipe's epochs, as written
    assert plan_steps(recipe(epochs=3, max_steps=7), 65) == 7


def test_auto_learning_rate_follows_the_base_models_size():
    from localdistil.training.choices import choose_learning_rate

    def recipe(**train):
        return parse_recipe({"model": "m", "data": {"train": ["x.jsonl"]}, "train": train})

    assert choose_learning_rate(recipe(), 135_000_000) == 2e-3
    assert choose_learning_rate(recipe(), 7_000_000_000) == 2e-4
    assert choose_learning_rate(recipe(learning_rate=5e-4), 135_000_000) == 5e-4


def test_what_auto_chose_is_said_only_for_the_settings_left_auto():
    from localdistil.training.choices import describe_auto

    def recipe(**train):
        return parse_recipe({"model": "m", "data": {"train": ["x.jsonl"]}, "train": train})

    both = describe_auto(recipe(), 1e-3, 200, 65)
    assert both == ("train.learning_rate auto -> 0.001; train.epochs auto -> 200 steps (one "
                    "pass over 65 examples, at least 200 steps)")
    assert describe_auto(recipe(learning_rate=5e-4), 5e-4, 300, 2400).startswith("train.epochs")
    assert describe_auto(recipe(learning_rate=5e-4, max_steps=7), 5e-4, 7, 65) is None


def test_auto_precision_on_a_cpu_is_bf16_only_with_native_bf16(monkeypatch):
    """For training and for answering alike."""
    import torch

    from localdistil.models import placement
    from localdistil.training import choices

    recipe = parse_recipe({"model": "m", "data": {"train": ["x.jsonl"]}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: True)
    assert choices.choose_precision(recipe) == "bf16"
    assert placement.inference_placement() == {"dtype": torch.bfloat16, "device_map": None}
    monkeypatch.setattr(placement, "cpu_has_native_bf16", lambda: False)
    assert choices.choose_precision(recipe) == "fp32"
    assert placement.inference_placement() == {"dtype": torch.float32, "device_map": None}


def test_the_allocator_keeps_freed_memory_where_glibc_runs():
    import platform

    from localdistil.models.placement import keep_freed_memory

    assert keep_freed_memory() is (platform.libc_ver()[0] == "glibc")
