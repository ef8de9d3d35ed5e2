"""Training in several processes: ``accelerate launch`` with two CPU processes talking over gloo
(DDP), on the tiny model. The data is shared out between the processes, the main process alone
writes the run directory and evaluates, ``--resume`` continues from the checkpoints the Trainer
wrote, and the shipped accelerate configs say how to run them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from localdistil.models.adapter import read_manifest

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


@pytest.fixture
def recipe_file(tiny_model_dir, tmp_path, traced_multiply):
    traces = traced_multiply[0]
    recipe = {
        "model": str(tiny_model_dir),
        "data": {"train": [str(traces)], "eval_fraction": 0.125},  # 21 train, 3 held out
        "train": {"max_steps": 6, "batch_size": 2, "learning_rate": 1e-2, "warmup_ratio": 0,
                  "logging_steps": 1, "save_steps": 3, "eval_samples": 2},
        "gate": {"min_exact": 0, "min_valid": 0},  # the tiny model never answers right
        "output": {"dir": str(tmp_path / "run"), "plot": True},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``accelerate launch --multi_gpu --num_processes N -m localdistil ...``, on CPU processes.

    No GPU is visible to the launch, so the Trainer runs one CPU process per rank over gloo
    (``--cpu`` would start a single process). The environment, LOCALDISTIL_HOME and
    HF_HUB_OFFLINE included, is the test's.
    """
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "localdistil", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=240, check=False
    )


@pytest.mark.slow  # a subprocess training run: well over a few seconds
def test_two_processes_train_one_adapter_written_once(recipe_file, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    done = launch("train", str(recipe_file))
    assert done.returncode == 0, done.stderr[-4000:]

    assert "on CPU x 2 processes" in done.stderr
    # the main process alone answers the held-out calls, during training and after it
    assert done.stderr.count("step 6: held-out exact match") == 1
    assert done.stderr.count("evaluating v0001 on 2 held-out call(s)") == 1
    version = out / "versions" / "v0001"
    assert done.stdout.count(f"adapter   {version} (promoted)") == 1  # ... and reports
    metrics = json.loads((version / "metrics.json").read_text())
    assert metrics["steps"] == 6
    # 21 examples shared by 2 processes of batch 2: 6 steps an epoch (one process: 11)
    assert metrics["epochs"] == 1.0
    assert metrics["final_loss"] < 0.95 * metrics["first_loss"]
    assert metrics["eval"]["examples"] == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints", "promoted", "recipe.yaml", "versions"]
    assert [e["step"] for e in metrics["accuracy"]] == [6]
    assert {"adapter_model.safetensors", "eval.json", "eval.md", "loss.png", "metrics.json"} <= {
        p.name for p in version.iterdir()}
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-3", "checkpoint-6"]

    manifest = read_manifest(out)
    assert manifest.metrics["steps"] == 6 and manifest.base_model == str(tiny_model_dir)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[1, 5, 6, 7, 8]])
    base_logits = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(ids).logits
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(version)
    )
    assert not torch.allclose(tuned(ids).logits, base_logits)

    # every process refuses a directory that is not a run's before the main one could touch it
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    refused = launch("train", str(recipe_file), f"output.dir={other}")
    assert refused.returncode != 0
    assert refused.stderr.count("is not a training run's directory. Pass --overwrite") == 2
    assert [p.name for p in other.iterdir()] == ["keep.txt"]

    resumed = launch(
        "train", str(recipe_file), "train.max_steps=9", "train.eval_samples=0", "--resume"
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    metrics = json.loads((out / "versions" / "v0002" / "metrics.json").read_text())
    assert (
        metrics["steps"] == 9
        and [p["step"] for p in metrics["train_loss"]] == list(range(1, 10))
    )
    assert read_manifest(out).recipe["train"]["max_steps"] == 9  # v0002, promoted unjudged
    assert not list((out / "versions").glob(".v*"))  # no staging directory left behind


@pytest.mark.parametrize("path", sorted(ACCELERATE_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_accelerate_config_is_valid_and_says_how_to_run_it(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line.startswith(
        f"# accelerate launch --config_file recipes/accelerate/{path.name} "
        "-m localdistil train recipes/"
    )
    recipe = first_line.split()[-1]
    assert (ACCELERATE_CONFIGS.parents[1] / recipe).is_file()
    assert config.mixed_precision == "no"  # the recipe's train.precision decides
    assert config.num_processes >= 2


def test_the_accelerate_configs_are_found():
    assert {"ddp.yaml", "fsdp.yaml"} <= {path.name for path in ACCELERATE_CONFIGS.glob("*.yaml")}
