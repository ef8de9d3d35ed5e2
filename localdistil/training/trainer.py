"""The TRL trainer ``localdistil train`` runs: the base model, the recipe's LoRA and
``SFTConfig``, and which held-out examples its loss is computed on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localdistil.training.choices import choose_learning_rate, describe_auto, plan_steps

if TYPE_CHECKING:
    from localdistil.training.dataset import TrainingData
    from localdistil.training.recipe import Recipe


def _loss_eval_set(eval_set: Any, answered: int) -> Any:
    """The held-out examples the trainer computes its loss on, shortest first. Where accuracy is
    measured (``answered`` = ``train.eval_samples`` > 0), the calls it answers: the held-out loss
    only ranks evaluations of equal exact match, and over every held-out example it took longer
    than answering the calls (8 s of 14 per evaluation, normalize_quantity on 2 cores). In order
    of length, each evaluation batch pads to a length near its own (extract_order's 50 calls in
    batches of 8: 18 % of the positions were padding in held-out order, 4 % in this one)."""
    rows = range(len(eval_set))
    if answered:
        calls = [i for i, args in enumerate(eval_set["args"]) if args is not None][:answered]
        rows = calls or rows
    lengths = [len(ids) for ids in eval_set["input_ids"]]
    return eval_set.select(sorted(rows, key=lambda i: lengths[i]))


def make_trainer(recipe: Recipe, model_path: Path, tokenizer: Any, data: TrainingData, *,
                 checkpoints: Path, precision: str, state: Any,
                 say: Callable[[str], None]) -> Any:
    """The trainer of a recipe: the base model in ``precision``, the recipe's LoRA, TRL's
    ``SFTConfig`` from its ``train:`` section (``auto`` settings resolved and, on the main
    process ``state``, said), checkpoints in ``checkpoints``, and the CPU loss of
    :mod:`localdistil.training.loss`."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from localdistil.training.loss import sft_trainer_class

    t = recipe.train
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if t.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True
        )
    if torch.cuda.is_available():
        model_kwargs["attn_implementation"] = "sdpa"
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **model_kwargs)
    if t.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=t.gradient_checkpointing)

    has_eval = data.eval is not None
    steps = plan_steps(recipe, len(data.train), state.num_processes)
    learning_rate = choose_learning_rate(recipe, model.num_parameters())
    chosen = describe_auto(recipe, learning_rate, steps, len(data.train))
    if state.is_main_process and chosen:
        say(chosen)
    config = SFTConfig(
        output_dir=str(checkpoints),
        num_train_epochs=1.0 if t.epochs == "auto" else t.epochs,
        max_steps=steps if steps is not None else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        seed=t.seed,
        data_seed=t.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=t.gradient_checkpointing,
        packing=t.packing,
        padding_free=t.padding_free,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        # dataset.py already left out every example over max_length; TRL refuses to enforce it
        # for padding-free batches without packing, and need not
        max_length=None if t.padding_free and not t.packing else t.max_length,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=("steps" if t.eval_steps else "epoch") if has_eval else "no",
        eval_steps=t.eval_steps,
        report_to="none",
        dataset_num_proc=None,
    )
    columns = ["input_ids", "labels"]
    peft_config = LoraConfig(
        r=recipe.lora.r,
        lora_alpha=recipe.lora.alpha,
        lora_dropout=recipe.lora.dropout,
        target_modules=recipe.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return sft_trainer_class()(
        model=model,
        args=config,
        train_dataset=data.train.select_columns(columns),
        eval_dataset=_loss_eval_set(data.eval, t.eval_samples).select_columns(columns)
        if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
