"""Training throughput of ``localdistil train`` vs a plain TRL script, measured in one run.

    python bench/train_throughput.py [--model smollm2-135m] [--steps 12] [--batch 8]

Both sides train the same LoRA (r 16, all-linear) on the same model, the same traced records
(three-digit multiply, compact prompts) and the same settings for the same number of steps.
The plain script is what a TRL user would write: a conversational prompt/completion dataset
handed to ``SFTTrainer``, which tokenizes it itself. Throughput counts the real (non-padding)
tokens TRL reports feeding, per second of ``trainer.train()``, after a warm-up run.

The plain script keeps TRL's and PEFT's settings a user starts from (float32, LoRA dropout 0.05);
localdistil runs with its defaults (bf16 on a CPU with native bf16, dropout 0).

Also reported: what localdistil's CPU loss gains over TRL's (the same run with ``SFTTrainer``'s
own ``compute_loss``, which on a CPU projects every position through the LM head; see
``localdistil/training/loss.py``), and what ``train.padding_free`` and ``train.packing`` change
on these short records. Target: localdistil / plain TRL >= 1.0.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent / "examples" / "three_digit_multiply")
)


def trace(path: Path, n: int) -> None:
    from task import inputs, multiply

    from localdistil import Instructions

    instructions = Instructions(path=str(path))
    traced = instructions.distil(multiply)
    for call in inputs(n, seed=1):
        traced(**call)
    instructions.close()


def plain_trl(
    model_path: Path, records: Path, steps: int, batch: int, out: Path
) -> tuple[float, int]:
    """A straightforward TRL script; returns (seconds, real tokens trained)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from localdistil.prompts import COMPACT_SYSTEM

    rows = []
    for line in records.read_text().splitlines():
        block = json.loads(line)["localdistil"]
        call = ", ".join(f"{k}={json.dumps(v)}" for k, v in block["args"].items())
        rows.append({
            "prompt": [{"role": "system", "content": COMPACT_SYSTEM},
                       {"role": "user", "content": f"multiply({call})"}],
            "completion": [{
                "role": "assistant",
                "content": json.dumps(block["output"], separators=(",", ":")),
            }],
        })
    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    config = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=batch,
                       learning_rate=2e-4, logging_steps=steps, save_strategy="no",
                       report_to="none", use_cpu=True, max_length=256, disable_tqdm=True, seed=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer,
                         peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05,
                                                target_modules="all-linear", task_type="CAUSAL_LM"))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return seconds, int(
        max(h["num_tokens"] for h in trainer.state.log_history if "num_tokens" in h)
    )


def localdistil_train(
    model: str, records: Path, steps: int, batch: int, out: Path, **train_options
) -> tuple[float, int]:
    from localdistil.training.recipe import parse_recipe
    from localdistil.training.train import train

    recipe = parse_recipe({
        "model": model,
        "data": {"train": [str(records)], "eval_fraction": 0},
        "train": {"max_steps": steps, "batch_size": batch, "learning_rate": 2e-4, "max_length": 256,
                  "save_steps": 10_000, "logging_steps": steps, **train_options},
        "output": {"dir": str(out), "plot": False},
    })
    result = train(recipe, overwrite=True)
    return result.metrics["train_seconds"], result.metrics["trained_tokens"]


def with_trls_loss(train: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    """``train()`` with ``SFTTrainer``'s own loss in place of localdistil's CPU loss."""
    from trl import SFTTrainer

    from localdistil.training import loss

    original = loss.sft_trainer_class
    loss.sft_trainer_class = lambda: SFTTrainer
    try:
        return train()
    finally:
        loss.sft_trainer_class = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--skip-packing", action="store_true",
                        help="leave out the packing run (about 5x slower per token on CPU)")
    args = parser.parse_args()

    from localdistil.models.resolve import resolve_model

    random.seed(0)
    model_path = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        records = tmp_path / "multiply.jsonl"
        trace(records, args.records)
        # warm-up: first-touch costs (allocator, kernels) land here, not in either measurement
        localdistil_train(args.model, records, 2, args.batch, tmp_path / "warmup")
        results = {
            "plain TRL": plain_trl(model_path, records, args.steps, args.batch, tmp_path / "trl"),
            "localdistil": localdistil_train(
                args.model, records, args.steps, args.batch, tmp_path / "ld"
            ),
            "localdistil, TRL's loss": with_trls_loss(lambda: localdistil_train(
                args.model, records, args.steps, args.batch, tmp_path / "tl"
            )),
            "localdistil padding_free": localdistil_train(
                args.model, records, args.steps, args.batch, tmp_path / "pf", padding_free=True
            ),
        }
        if not args.skip_packing:
            results["localdistil packing"] = localdistil_train(
                args.model, records, args.steps, args.batch, tmp_path / "pk", packing=True
            )
    rates = {name: tokens / seconds for name, (seconds, tokens) in results.items()}
    print(f"\n{args.model}, LoRA r16 all-linear, batch {args.batch}, {args.steps} steps, CPU")
    for name, (seconds, tokens) in results.items():
        print(f"  {name:<26} {seconds:7.2f} s  {tokens:6d} tokens  {rates[name]:7.1f} tok/s")
    print("ratios:")
    print(f"  localdistil / plain TRL          "
          f"{rates['localdistil'] / rates['plain TRL']:.2f}x   (target >= 1.0x)")
    trls_loss = rates["localdistil, TRL's loss"]
    print(f"  localdistil's loss / TRL's loss  {rates['localdistil'] / trls_loss:.2f}x")
    print(f"  padding_free / default           "
          f"{rates['localdistil padding_free'] / rates['localdistil']:.2f}x")
    if "localdistil packing" in rates:
        print(f"  packing / default                "
              f"{rates['localdistil packing'] / rates['localdistil']:.2f}x   (target >= 1.5x)")


if __name__ == "__main__":
    main()
