"""Training on a CUDA GPU, on the tiny model: bf16 chosen by precision auto, 4-bit QLoRA, and
(with two GPUs or more) DDP and FSDP across GPUs. Every test here is marked ``gpu`` and skips
itself where no CUDA GPU is visible (CI); run them on a GPU machine with::

    scripts/install-gpu.sh
    .venv/bin/python -m pytest -m gpu -ra tests/test_gpu.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from localdistil.models.adapter import adapter_dir, read_manifest
from localdistil.training.recipe import parse_recipe
from localdistil.training.train import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"


@pytest.fixture
def traces(traced_multiply):
    return traced_multiply[0]


def recipe_data(model, data, out, **train_settings):
    settings = {"max_steps": 12, "batch_size": 4, "learning_rate": 1e-2, "warmup_ratio": 0,
                "logging_steps": 1, "save_steps": 6, "eval_samples": 2, **train_settings}
    return {"model": str(model), "data": {"train": [str(data)], "eval_fraction": 0.125},
            "train": settings, "gate": {"min_exact": 0, "min_valid": 0},
            "output": {"dir": str(out), "plot": False}}


def assert_trained_adapter(model_dir, run_dir, metrics, *, dtype=torch.bfloat16):
    """The loss fell, and the adapter reloads with plain PEFT on the base and changes its logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert metrics["final_loss"] < 0.95 * metrics["first_loss"]
    assert read_manifest(run_dir).metrics["steps"] == metrics["steps"]
    ids = torch.tensor([[1, 5, 6, 7, 8]], device="cuda")
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to("cuda").eval()
    with torch.no_grad():
        base_logits = base(ids).logits.float()
        tuned = PeftModel.from_pretrained(base, str(adapter_dir(run_dir))).eval()
        tuned_logits = tuned(ids).logits.float()
    assert torch.isfinite(tuned_logits).all()
    assert (tuned_logits - base_logits).abs().max() > 1e-3


def test_precision_auto_trains_in_bf16(tiny_model_dir, traces, tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    result = train(parse_recipe(recipe_data(tiny_model_dir, traces, tmp_path / "run")))

    assert result.metrics["precision"] == "bf16"
    assert result.metrics["eval"]["examples"] == 2  # dispatch ran on the GPU too
    assert_trained_adapter(tiny_model_dir, result.output_dir, result.metrics)


def test_qlora_4bit_trains_and_the_adapter_reloads(tiny_model_dir, traces, tmp_path):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.fail(
            "bitsandbytes is not installed: run scripts/install-gpu.sh, "
            "or pip install -e '.[gpu]'"
        )
    recipe = parse_recipe(
        recipe_data(tiny_model_dir, traces, tmp_path / "run", quantization="4bit")
    )
    result = train(recipe)

    assert result.metrics["precision"] in {"bf16", "fp32"} and result.metrics["steps"] == 12
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 16
    # the adapter goes onto the plain (unquantized) base model, as dispatch and export load it
    assert_trained_adapter(tiny_model_dir, result.output_dir, result.metrics)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("config", ["ddp.yaml", "fsdp.yaml"])
def test_two_gpus_train_one_adapter(config, tiny_model_dir, traces, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(
        recipe_data(tiny_model_dir, traces, tmp_path / "run", max_steps=6, batch_size=2)
    ))
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(ACCELERATE_CONFIGS / config),
               "--num_processes", "2", "--main_process_port", str(_free_port()),
               "-m", "localdistil", "train", str(recipe)]
    done = subprocess.run(
        command, env=dict(os.environ), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]

    assert "x 2 processes" in done.stderr and done.stderr.count("evaluating v0001 on") == 1
    metrics = json.loads((tmp_path / "run" / "versions" / "v0001" / "metrics.json").read_text())
    assert metrics["steps"] == 6 and metrics["epochs"] == 1.0  # 21 examples over 2 GPUs of batch 2
    assert_trained_adapter(tiny_model_dir, tmp_path / "run", metrics)
