"""Export on the tiny model: the merged model loads with plain transformers and gives the
logits of base + adapter; the vLLM command names the base, the adapter and a rank vLLM takes."""

from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch
from pydantic import BaseModel

from localdistil import AdapterError, Instructions, LocaldistilError
from localdistil.cli import main
from localdistil.models.adapter import MANIFEST_NAME
from localdistil.models.export import MERGED_MANIFEST_NAME, export_merged, vllm_command
from localdistil.training.recipe import parse_recipe
from localdistil.training.train import train


class Multiply(BaseModel):
    a: int
    b: int
    result: int


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    """A run trained for a few steps with a high learning rate, so the adapter moves the logits."""
    root = tmp_path_factory.mktemp("export")
    instructions = Instructions(path=str(root / "multiply.jsonl"))

    @instructions.distil
    def multiply(a: int, b: int) -> Multiply:
        return Multiply(a=a, b=b, result=a * b)

    for i in range(16):
        multiply(100 + i, 7)
    recipe = parse_recipe({
        "model": str(tiny_model_dir),
        "data": {"train": [str(root / "multiply.jsonl")], "eval_fraction": 0},
        "train": {
            "max_steps": 4, "batch_size": 4, "learning_rate": 2e-2, "warmup_ratio": 0,
            "logging_steps": 1,
        },
        "output": {"dir": str(root / "run"), "plot": False},
    })
    return train(recipe).output_dir


def test_the_merged_model_loads_plainly_and_matches_base_plus_adapter(
    run_dir, tiny_model_dir, tmp_path
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = export_merged(run_dir, tmp_path / "merged")

    names = {path.name for path in out.iterdir()}
    assert {
        "config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
        MERGED_MANIFEST_NAME,
    } <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors", MANIFEST_NAME}
    assert not list(tmp_path.glob(".merged.*"))  # the staging directory was renamed into place
    provenance = json.loads((out / MERGED_MANIFEST_NAME).read_text())
    assert (
        provenance["manifest"]["name"] == "multiply"
        and provenance["merged_from"].endswith("v0001")
    )

    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    merged = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert merged.dtype == torch.float32  # the base checkpoint's own dtype
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        str(run_dir / "versions" / "v0001"),
    ).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        merged_logits, tuned_logits, base_logits = (
            merged(ids).logits, tuned(ids).logits, base(ids).logits
        )
    assert torch.allclose(merged_logits, tuned_logits, atol=1e-5, rtol=1e-5)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter is in there

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


def test_export_refuses_to_overwrite_unless_asked(run_dir, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(LocaldistilError, match="already exists. Pass --overwrite"):
        export_merged(run_dir, out)
    assert (out / "keep.txt").read_text() == "mine"
    export_merged(run_dir, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    with pytest.raises(LocaldistilError, match="outside the adapter directory"):
        export_merged(run_dir, run_dir / "versions" / "v0001" / "merged")


def test_vllm_command_serves_the_adapter_on_its_local_base(run_dir, tiny_model_dir):
    command = vllm_command(run_dir)

    assert shlex.split(command) == [
        "vllm", "serve", str(tiny_model_dir), "--enable-lora",
        "--lora-modules", f"multiply={(run_dir / 'versions' / 'v0001').resolve()}",
        "--max-lora-rank", "16",
    ]
    assert vllm_command(run_dir / "versions" / "v0001") == command


@pytest.mark.parametrize(
    ("rank", "max_rank"),
    [(1, 1), (4, 8), (16, 16), (17, 32), (64, 64), (300, 320), (512, 512)],
)
def test_the_rank_is_rounded_up_to_one_vllm_accepts(run_dir, tmp_path, rank, max_rank):
    adapter = shutil.copytree(run_dir / "versions" / "v0001", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(r=1, rank_pattern={"q_proj": rank})  # the largest rank counts
    (adapter / "adapter_config.json").write_text(json.dumps(config))

    assert shlex.split(vllm_command(adapter))[-2:] == ["--max-lora-rank", str(max_rank)]


def test_a_rank_above_what_vllm_serves_points_to_merging(run_dir, tmp_path):
    adapter = shutil.copytree(run_dir / "versions" / "v0001", tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": 1024}))

    with pytest.raises(AdapterError, match="rank 1024, above the 512 vLLM serves.*--merged"):
        vllm_command(adapter)


def test_a_base_model_from_the_hub_is_served_by_its_hub_id(run_dir, tmp_path):
    adapter = shutil.copytree(run_dir / "versions" / "v0001", tmp_path / "adapter")
    manifest = json.loads((adapter / MANIFEST_NAME).read_text())
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "abc123"
    manifest.update(base_model="Qwen/Qwen2.5-0.5B-Instruct", base_model_path=str(snapshot))
    (adapter / MANIFEST_NAME).write_text(json.dumps(manifest))

    assert shlex.split(vllm_command(adapter))[:3] == ["vllm", "serve", "Qwen/Qwen2.5-0.5B-Instruct"]


def test_export_command_writes_the_merged_model_and_prints_the_vllm_command(
    run_dir, tmp_path, capsys
):
    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--merged", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"merged model  {out}" in printed and vllm_command(run_dir) in printed
    assert (out / "model.safetensors").is_file()

    assert main(["export", str(run_dir), "--merged", str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(run_dir)]) == 0  # only the command
    assert capsys.readouterr().out.startswith(
        "serve the adapter unmerged with vLLM:\n  vllm serve "
    )
    assert main(["export", str(tmp_path / "nowhere")]) == 1
    assert "No adapter at" in capsys.readouterr().err
