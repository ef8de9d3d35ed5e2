"""Training on the tiny model: the loss falls, only LoRA weights are trained and saved, the
adapter reloads with plain PEFT, the manifest describes the function, and bad input fails
before any model is loaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from localdistil import DatasetError, ModelError, RecipeError
from localdistil.models.adapter import read_manifest
from localdistil.cli import main
from localdistil.training.recipe import parse_recipe
from localdistil.training.train import train


def tiny_recipe(model, data, out, **train):
    settings = {"max_steps": 16, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0,
                "logging_steps": 2, "save_steps": 8, **train}
    return parse_recipe({
        "model": str(model),
        "data": {"train": [str(data)], "eval_fraction": 0.125},
        "train": settings,
        "output": {"dir": str(out), "plot": True},
    })


def test_training_lowers_the_loss_and_writes_a_loadable_adapter(tiny_model_dir, traced_multiply, tmp_path):
    data, multiply = traced_multiply
    base_before = load_file(str(tiny_model_dir / "model.safetensors"))
    result = train(tiny_recipe(tiny_model_dir, data, tmp_path / "run"))

    metrics = result.metrics
    assert metrics["steps"] == 16
    assert metrics["final_loss"] < 0.92 * metrics["first_loss"]  # a random tiny model: 6.2 -> 5.4
    assert metrics["final_eval_loss"] is not None and metrics["eval_examples"] == 3
    assert metrics["tokens_per_second"] > 0
    assert json.loads((result.output_dir / "metrics.json").read_text())["steps"] == 16
    assert (result.output_dir / "loss.png").stat().st_size > 1000
    assert (result.output_dir / "recipe.yaml").read_text().startswith("model:")
    evaluation = json.loads((result.output_dir / "eval.json").read_text())
    assert evaluation["examples"] == 3 and len(evaluation["samples"]) == 3
    assert metrics["eval"]["examples"] == 3 and 0 <= metrics["eval"]["valid_rate"] <= 1
    assert "| exact match |" in (result.output_dir / "eval.md").read_text()

    saved = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert saved and all("lora_" in name for name in saved)  # only the adapter is saved
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in saved.items())
    base_after = load_file(str(tiny_model_dir / "model.safetensors"))
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    base_logits = base(ids).logits
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(result.adapter_dir))
    assert not torch.allclose(tuned(ids).logits, base_logits)

    manifest = read_manifest(result.output_dir)
    assert manifest.fingerprint == multiply.spec.fingerprint
    assert manifest.schema_hash == multiply.spec.schema_hash
    assert manifest.output_schema == multiply.spec.output_type.model_json_schema()
    assert manifest.name == "multiply" and manifest.prompt_style == "compact"
    assert manifest.base_model == str(tiny_model_dir) and len(manifest.base_model_hash) == 64
    assert manifest.recipe["train"]["max_steps"] == 16 and manifest.metrics["steps"] == 16
    assert manifest.max_output_tokens > 5 and "torch" in manifest.versions


def test_resume_continues_from_the_last_checkpoint(tiny_model_dir, traced_multiply, tmp_path, monkeypatch):
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
    assert result.metrics["steps"] == 12
    assert executed == [8, 9, 10, 11]  # steps 1-8 were not run again
    assert read_manifest(out).recipe["train"]["max_steps"] == 12


def test_resume_skips_a_checkpoint_left_half_written(tiny_model_dir, traced_multiply, tmp_path, capsys):
    data, _ = traced_multiply
    out = tmp_path / "run"
    train(tiny_recipe(tiny_model_dir, data, out, max_steps=8, save_steps=4))
    half = out / "checkpoints" / "checkpoint-8"
    (half / "trainer_state.json").write_text('{"global_st')  # killed while writing its last file
    (out / ".adapter.tmp-0badf00d").mkdir()  # or while writing the adapter
    capsys.readouterr()

    result = train(tiny_recipe(tiny_model_dir, data, out, max_steps=8, save_steps=4), resume=True)
    err = capsys.readouterr().err
    assert f"removing {half}" in err and "resuming from " + str(out / "checkpoints" / "checkpoint-4") in err
    assert result.metrics["steps"] == 8
    assert json.loads((half / "trainer_state.json").read_text())["global_step"] == 8  # written again, whole
    assert not (out / ".adapter.tmp-0badf00d").exists()


def test_resume_before_the_first_checkpoint_starts_over(tiny_model_dir, traced_multiply, tmp_path, capsys):
    data, _ = traced_multiply
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("model: x\n")  # killed before its first checkpoint
    result = train(tiny_recipe(tiny_model_dir, data, out, max_steps=4, save_steps=4), resume=True)
    assert "no complete checkpoint" in capsys.readouterr().err
    assert result.metrics["steps"] == 4 and read_manifest(out).metrics["steps"] == 4


def test_a_run_killed_at_a_random_step_resumes_to_a_whole_adapter(tiny_model_dir, traced_multiply, tmp_path, capsys):
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
                      f"train: {{max_steps: {steps}, batch_size: 4, learning_rate: 1.0e-2, warmup_ratio: 0,"
                      f" save_steps: 2, save_total_limit: 3, eval_samples: 2}}\n"
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
    assert kill_at - 2 <= resumed_from <= steps, where  # checkpoint-{kill_at - 2} was whole when killed

    manifest = read_manifest(out)
    assert manifest.metrics["steps"] == steps and manifest.fingerprint == multiply.spec.fingerprint, where
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in name and torch.isfinite(t).all() for name, t in saved.items()), where
    assert json.loads((out / "metrics.json").read_text())["eval"]["examples"] == 2, where
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(out / "adapter"))
    for checkpoint in (out / "checkpoints").glob("checkpoint-*"):  # none is left half-written
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] > 0, where
    assert not list(out.glob(".adapter.*")), where  # nor an adapter it was writing


def test_group_by_length_batches_examples_of_similar_length(tiny_model_dir, traced_multiply, tmp_path, monkeypatch):
    import transformers.trainer

    made = []
    original = transformers.trainer.LengthGroupedSampler

    def recording(*args, **kwargs):
        made.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.trainer, "LengthGroupedSampler", recording)
    result = train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run", max_steps=4, group_by_length=True))
    trained = [kwargs for kwargs in made if len(kwargs["dataset"]) == result.metrics["train_examples"]]
    assert result.metrics["steps"] == 4 and len(trained) == 1 and trained[0]["model_input_name"] == "input_ids"


class TestBadInputFailsBeforeAnyModelLoads:
    @pytest.fixture(autouse=True)
    def no_model_loading(self, monkeypatch):
        import transformers

        def refuse(*args, **kwargs):
            raise AssertionError("a model was loaded before the input was checked")

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)

    def test_existing_output_directory(self, tiny_model_dir, traced_multiply, tmp_path):
        out = tmp_path / "run"
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        with pytest.raises(RecipeError, match="already exists. Pass --overwrite.*--resume") as caught:
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], out))
        assert caught.value.key == "output.dir" and (out / "keep.txt").read_text() == "mine"

    def test_resume_without_a_checkpoint(self, tiny_model_dir, traced_multiply, tmp_path):
        with pytest.raises(RecipeError, match="holds no training run to resume. Run without --resume"):
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
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run", quantization="4bit", precision="bf16"))
        with pytest.raises(RecipeError, match="train.precision: fp16 needs a CUDA GPU"):
            train(tiny_recipe(tiny_model_dir, traced_multiply[0], tmp_path / "run", precision="fp16"))


def test_train_command_prints_where_everything_is(tiny_model_dir, traced_multiply, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ndata:\n  train: [{traced_multiply[0]}]\noutput:\n  dir: {tmp_path / 'run'}\n")
    assert main(["train", str(recipe), "train.max_steps=4", "train.batch_size=4", "output.plot=false"]) == 0
    out = capsys.readouterr().out
    assert "in 4 steps" in out and f"adapter   {tmp_path / 'run' / 'adapter'}" in out
    assert main(["train", str(recipe)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["eval", str(recipe), "--limit", "2", "--out", str(tmp_path / "ev")]) == 0
    assert "| examples | 2 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["examples"] == 2
    assert main(["eval"]) == 1
    assert "eval needs a recipe" in capsys.readouterr().err
