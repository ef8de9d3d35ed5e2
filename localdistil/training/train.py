"""``train(recipe)``: records -> a LoRA adapter on a local open model, with TRL and PEFT.

The run's output directory (``output.dir``)::

    adapter/            PEFT files + tokenizer + localdistil.json (what dispatch loads)
    checkpoints/        periodic trainer checkpoints (``--resume`` continues from the last
                        complete one; one a killed run left half-written is removed)
    metrics.json        losses, token counts, throughput, dataset report, eval summary
    eval.json, eval.md  dispatch accuracy on up to ``train.eval_samples`` held-out calls
    loss.png            the loss curves (``output.plot``)
    recipe.yaml         the recipe as run

Everything that can be wrong with the input (an existing output directory, missing or empty
data, records of several functions, an unknown model, a GPU-only option on a CPU machine) is
reported before any model is loaded. Precision ``auto`` is bf16 on GPUs that support it and fp32
otherwise. The adapter is written into a temporary directory and renamed into place, so a crash
never leaves a half-written adapter that looks complete.

Several processes (``accelerate launch --num_processes 2 -m localdistil train recipe.yaml``; DDP by
default, FSDP with an accelerate config, see ``recipes/accelerate/``) train one adapter together.
Every process checks the input; the main one alone fetches or converts the model first (the
others then find it cached), prepares ``output.dir`` (``--overwrite`` deletes it once, after every
process has checked it) and writes the adapter, manifest, metrics, evaluation and plot; the
Trainer writes checkpoints across processes, so ``--resume`` works as in one process. The other
processes return once the adapter is gathered, with ``TrainResult.is_main_process`` false.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localdistil.models.adapter import ADAPTER_SUBDIR, Manifest, library_versions, tokenizer_hash, write_manifest, writing_directory
from localdistil.training.dataset import TrainingData, build_dataset, format_report, select_records
from localdistil.errors import RecipeError
from localdistil.models.resolve import load_tokenizer, model_content_hash, resolve_model
from localdistil.prompts import PROMPT_VERSION

if TYPE_CHECKING:
    from localdistil.training.recipe import Recipe

CHECKPOINTS_SUBDIR = "checkpoints"
#: How long a process waits for the others at a barrier (transformers' ``ddp_timeout`` default).
PROCESS_GROUP_TIMEOUT = timedelta(seconds=1800)


@dataclasses.dataclass
class TrainResult:
    """Where a training run put everything, and its headline figures."""

    output_dir: Path
    adapter_dir: Path
    metrics: dict[str, Any]
    is_main_process: bool = True
    """False in the other processes of a multi-process run: they wrote nothing and did not evaluate."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _prepare_output(output_dir: Path, *, overwrite: bool, resume: bool) -> None:
    if resume and overwrite:
        raise RecipeError("Pass --resume or --overwrite, not both.", key="output.dir")
    has_content = output_dir.is_dir() and any(output_dir.iterdir())
    if resume:
        if not (output_dir / "recipe.yaml").is_file():
            raise RecipeError(f"output.dir: {output_dir} holds no training run to resume. Run without --resume.",
                              key="output.dir")
        return
    if has_content and not overwrite:
        raise RecipeError(
            f"output.dir: {output_dir} already exists. Pass --overwrite to replace it, --resume to continue "
            f"its interrupted run, or choose another directory (output.dir=...).",
            key="output.dir",
        )


def _checkpoint_step(path: Path) -> int | None:
    """The step of a Trainer checkpoint directory (``checkpoint-120`` -> 120), else None."""
    prefix, _, step = path.name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() and path.is_dir() else None


def _is_complete(checkpoint: Path) -> bool:
    """Whether the Trainer finished writing ``checkpoint``.

    ``trainer_state.json`` is the last file the Trainer writes into a checkpoint, after the
    adapter, optimizer, scheduler and RNG states; a process killed while saving leaves it
    missing or cut short.
    """
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and "global_step" in state


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The complete checkpoint with the highest step in ``checkpoints``, if any."""
    found = [(step, path) for path in (checkpoints.iterdir() if checkpoints.is_dir() else ())
             if (step := _checkpoint_step(path)) is not None and _is_complete(path)]
    return max(found)[1] if found else None


def _remove_incomplete_checkpoints(checkpoints: Path) -> None:
    """Delete the checkpoints a killed run left half-written, so none is resumed or kept."""
    for path in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else ():
        if _checkpoint_step(path) is not None and not _is_complete(path):
            _say(f"removing {path}: the run was stopped while writing it")
            shutil.rmtree(path)


def choose_precision(recipe: Recipe) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for this machine, refusing GPU-only options on a CPU.

    Raises:
        RecipeError: fp16 or 4-bit quantization asked for without a CUDA GPU.
    """
    import torch

    precision, cuda = recipe.train.precision, torch.cuda.is_available()
    if recipe.train.quantization == "4bit" and not cuda:
        raise RecipeError(
            "train.quantization: 4bit (QLoRA) needs a CUDA GPU and none is visible. Set "
            "train.quantization: none to train on this machine.",
            key="train.quantization",
        )
    if precision == "fp16" and not cuda:
        raise RecipeError("train.precision: fp16 needs a CUDA GPU. Use auto, fp32 or bf16 on a CPU.", key="train.precision")
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> TrainResult:
    """Train a LoRA adapter as ``recipe`` says, and write the run directory.

    Args:
        recipe: a validated recipe (see :func:`localdistil.training.recipe.load_recipe`).
        overwrite: replace an existing ``output.dir``.
        resume: continue an interrupted run from its last checkpoint.

    Raises:
        RecipeError, DatasetError, ModelError: bad input, before any model is loaded.
    """
    state = _process_state()
    main = state.is_main_process
    output_dir = Path(recipe.output.dir)
    _prepare_output(output_dir, overwrite=overwrite, resume=resume)
    selection = select_records(recipe)
    precision = choose_precision(recipe)
    with state.main_process_first():  # one process fetches or converts; the others find it cached
        model_path = resolve_model(recipe.model)

    state.wait_for_everyone()  # every process has checked output.dir before the main one changes it
    if main:
        if overwrite and output_dir.exists():
            shutil.rmtree(output_dir)
        if resume:
            _remove_incomplete_checkpoints(output_dir / CHECKPOINTS_SUBDIR)
            for unfinished in output_dir.glob(f".{ADAPTER_SUBDIR}.*-*"):  # killed while writing the adapter
                shutil.rmtree(unfinished, ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    state.wait_for_everyone()
    resume_from = _last_checkpoint(output_dir / CHECKPOINTS_SUBDIR) if resume else None
    if resume and main:
        _say(f"resuming from {resume_from}" if resume_from else
             f"no complete checkpoint in {output_dir / CHECKPOINTS_SUBDIR} yet: training from the first step")

    tokenizer = load_tokenizer(model_path)
    data = build_dataset(selection, tokenizer, recipe)
    if main:
        _say(format_report(data.report))

    trainer = _make_trainer(recipe, model_path, tokenizer, data, output_dir, precision)
    if main:
        processes = f" x {state.num_processes} processes" if state.num_processes > 1 else ""
        _say(f"training {recipe.model} with LoRA r={recipe.lora.r} in {precision} on {_device_name()}{processes}")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started

    metrics = _metrics(trainer, data, seconds, precision)
    adapter_path = output_dir / ADAPTER_SUBDIR
    # FSDP shards the weights: every process takes part in gathering them (as Trainer.save_model)
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if trainer.is_fsdp_enabled else None
    if not main:
        return TrainResult(output_dir=output_dir, adapter_dir=adapter_path, metrics=metrics, is_main_process=False)
    manifest = Manifest(
        base_model=recipe.model,
        base_model_path=str(model_path),
        base_model_hash=model_content_hash(model_path),
        tokenizer_hash=tokenizer_hash(tokenizer),
        **dataclasses.asdict(data.function),
        prompt_style=recipe.data.prompt_style,
        prompt_version=PROMPT_VERSION,
        max_output_tokens=max(data.train["completion_length"]),
        recipe=recipe.as_dict(),
        metrics=metrics,
        versions=library_versions(),
    )
    with writing_directory(adapter_path) as staging:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)
        write_manifest(staging, manifest)
    held_out = [r for r in selection.eval if r.args is not None][: recipe.train.eval_samples]
    if held_out:
        from localdistil.training.evaluate import evaluate, format_eval, write_eval

        _say(f"evaluating the adapter on {len(held_out)} held-out call(s)")
        report = evaluate(adapter_path, held_out)
        write_eval(report, output_dir)
        metrics["eval"] = {k: v for k, v in report.to_dict().items() if k != "samples"}
        _say(format_eval(report))
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if recipe.output.plot:
        plot_losses(metrics, output_dir / "loss.png")
    return TrainResult(output_dir=output_dir, adapter_dir=adapter_path, metrics=metrics)


def _process_state() -> Any:
    """accelerate's view of this process: alone, or one of several (``accelerate launch``).

    Created as the Trainer will create it (on the CPU when there is no CUDA GPU, gloo between
    processes), so that the process group exists before the first barrier.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available(), timeout=PROCESS_GROUP_TIMEOUT)


def _device_name() -> str:
    import torch

    return f"GPU ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "CPU"


def _make_trainer(recipe: Recipe, model_path: Path, tokenizer: Any, data: TrainingData, output_dir: Path, precision: str):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    t = recipe.train
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model_kwargs: dict[str, Any] = {"dtype": dtype}
    if t.quantization == "4bit":
        from transformers import BitsAndBytesConfig

        model_kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    if torch.cuda.is_available():
        model_kwargs["attn_implementation"] = "sdpa"
    model = AutoModelForCausalLM.from_pretrained(str(model_path), **model_kwargs)
    if t.quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=t.gradient_checkpointing)

    has_eval = data.eval is not None
    config = SFTConfig(
        output_dir=str(output_dir / CHECKPOINTS_SUBDIR),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
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
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=data.train.select_columns(columns),
        eval_dataset=data.eval.select_columns(columns) if has_eval else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )


def _metrics(trainer: Any, data: TrainingData, seconds: float, precision: str) -> dict[str, Any]:
    history = trainer.state.log_history
    train_loss = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    eval_loss = [{"step": h["step"], "loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    steps = trainer.state.global_step
    epochs_done = trainer.state.epoch or 0.0
    # TRL counts the real (non-padding) tokens it fed, since the start of the run
    trained_tokens = int(max((h["num_tokens"] for h in history if "num_tokens" in h), default=0))
    report = data.report
    return {
        "steps": steps,
        "epochs": round(epochs_done, 3),
        "precision": precision,
        "train_examples": len(data.train),
        "eval_examples": report.eval_examples,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "first_loss": train_loss[0]["loss"] if train_loss else None,
        "final_loss": train_loss[-1]["loss"] if train_loss else None,
        "final_eval_loss": eval_loss[-1]["loss"] if eval_loss else None,
        "train_seconds": round(seconds, 2),
        "trained_tokens": trained_tokens,
        "tokens_per_second": round(trained_tokens / seconds, 1) if seconds > 0 and trained_tokens else None,
        "dataset": {
            "records_read": report.selection.read,
            "invalid_lines": len(report.selection.problems),
            "duplicates_removed": report.selection.duplicates,
            "too_long": report.too_long,
            "token_lengths": report.lengths,
        },
    }


def plot_losses(metrics: dict[str, Any], path: Path) -> None:
    """Draw the train (and eval) loss against the step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in (("train_loss", "train"), ("eval_loss", "eval")):
        points = metrics.get(key) or []
        if points:
            axes.plot([p["step"] for p in points], [p["loss"] for p in points], marker="o" if key == "eval_loss" else None, label=label)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
