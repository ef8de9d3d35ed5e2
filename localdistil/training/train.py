"""``train(recipe)``: records -> a LoRA adapter on a local open model, with TRL and PEFT.

The run's output directory (``output.dir``)::

    versions/v0001/     one complete version per training: PEFT files + tokenizer +
    versions/v0002/     localdistil.json (what dispatch loads), metrics.json, eval.json,
                        eval.md, loss.png (see :mod:`localdistil.models.versions`)
    promoted            which version everything loads (written atomically)
    checkpoints/        periodic trainer checkpoints of the latest training (``--resume``
                        continues from the last complete one; one a killed run left
                        half-written is removed)
    recipe.yaml         the recipe of the latest training

Each training of the same ``output.dir`` writes a new version; ``--overwrite`` deletes the run
directory first (every version with it) and ``--resume`` continues the latest training from its
checkpoints (a training that is not resumed starts afresh and removes them). During training the
held-out calls are answered every ``train.eval_every`` steps (:mod:`localdistil.training.accuracy`):
the version written is the best state by held-out exact match, and training stops early as
``train.patience`` says. The new version is then evaluated on up to ``train.eval_samples``
held-out calls and judged by the recipe's ``gate:``, on the same calls as the promoted version
(which answers them again, unless its own evaluation was on exactly these calls). It is promoted
only if it passes; otherwise it stays a candidate: :attr:`TrainResult.promoted` is false and
``localdistil train`` exits with status 3 (promote it by hand with ``localdistil runs promote``).
A version trained without held-out calls is promoted unjudged.

Everything that can be wrong with the input (a directory that is not a training run, missing or
empty data, records of several functions, an unknown model, a GPU-only option on a CPU machine)
is reported before any model is loaded. Precision ``auto`` is bf16 where the hardware computes it
natively (most GPUs; CPUs with avx512_bf16 or AMX) and fp32 otherwise; ``train.learning_rate``
and ``train.epochs`` ``auto`` follow from the base model's size and the data's
(:mod:`localdistil.training.choices`). A version is written into a temporary
directory and renamed into place, so a crash never leaves a half-written version that looks
complete.

Several processes (``accelerate launch --num_processes 2 -m localdistil train recipe.yaml``; DDP by
default, FSDP with an accelerate config, see ``recipes/accelerate/``) train one adapter together.
Every process checks the input; the main one alone fetches or converts the model first (the
others then find it cached), prepares ``output.dir`` (``--overwrite`` deletes it once, after every
process has checked it), answers the held-out calls during training (the others wait for its
decision to stop) and writes the version, its evaluation and plot; the Trainer writes checkpoints
across processes, so ``--resume`` works as in one process. The other processes return once the
adapter is gathered, with ``TrainResult.is_main_process`` false.
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

from localdistil.errors import RecipeError
from localdistil.files import replace_file
from localdistil.models.adapter import (
    ADAPTER_SUBDIR,
    Manifest,
    library_versions,
    tokenizer_hash,
    write_manifest,
)
from localdistil.models.resolve import load_tokenizer, model_content_hash, resolve_model
from localdistil.models.versions import (
    PROMOTED_NAME,
    VERSIONS_SUBDIR,
    promote,
    remove_unfinished_versions,
    writing_version,
)
from localdistil.prompts import PROMPT_VERSION
from localdistil.training.accuracy import time_to_gate
from localdistil.training.choices import choose_precision
from localdistil.training.dataset import TrainingData, build_dataset, format_report, select_records
from localdistil.training.gate import (
    GateVerdict,
    current_version,
    evaluate_and_judge,
    verdict_message,
)
from localdistil.training.metrics import plot_losses, run_metrics
from localdistil.training.trainer import make_trainer

if TYPE_CHECKING:
    from localdistil.records import Record
    from localdistil.training.accuracy import AccuracyCallback
    from localdistil.training.recipe import Recipe

CHECKPOINTS_SUBDIR = "checkpoints"
#: How long a process waits for the others at a barrier (transformers' ``ddp_timeout`` default).
PROCESS_GROUP_TIMEOUT = timedelta(seconds=1800)


@dataclasses.dataclass
class TrainResult:
    """Where a training run put everything, its headline figures, and the gate's verdict."""

    output_dir: Path
    adapter_dir: Path
    """The new version's directory (``output_dir/versions/vNNNN``), promoted or not."""
    metrics: dict[str, Any]
    is_main_process: bool = True
    """False in the other processes of a multi-process run: they wrote nothing, judged nothing."""
    version: str | None = None
    """The new version's name (``v0003``); None in the other processes."""
    promoted: bool = False
    """Whether the new version passed the gate and is now what ``output_dir`` loads."""
    gate: GateVerdict | None = None


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _is_run(directory: Path) -> bool:
    """Whether ``directory`` is a training run's (so a new training may add a version to it)."""
    return any((directory / name).exists()
               for name in ("recipe.yaml", VERSIONS_SUBDIR, PROMOTED_NAME, ADAPTER_SUBDIR))


def _prepare_output(output_dir: Path, *, overwrite: bool, resume: bool) -> None:
    if resume and overwrite:
        raise RecipeError("Pass --resume or --overwrite, not both.", key="output.dir")
    has_content = output_dir.is_dir() and any(output_dir.iterdir())
    if resume:
        if not (output_dir / "recipe.yaml").is_file():
            raise RecipeError(f"output.dir: {output_dir} holds no training run to resume. Run "
                              "without --resume.", key="output.dir")
        return
    if output_dir.exists() and not output_dir.is_dir():
        raise RecipeError(f"output.dir: {output_dir} is a file, not a directory. Choose another "
                          "directory (output.dir=...).", key="output.dir")
    if has_content and not overwrite and not _is_run(output_dir):
        raise RecipeError(
            f"output.dir: {output_dir} already exists and is not a training run's directory. Pass "
            f"--overwrite to replace it, or choose another directory (output.dir=...).",
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


def train(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> TrainResult:
    """Train a LoRA adapter as ``recipe`` says, write it as a new version of the run, and
    promote it if it passes the recipe's gate.

    Args:
        recipe: a validated recipe (see :func:`localdistil.training.recipe.load_recipe`).
        overwrite: delete an existing ``output.dir`` first, every version with it.
        resume: continue the latest, interrupted training from its last checkpoint.

    Returns:
        A :class:`TrainResult`. A version the gate refuses is no error: ``promoted`` is false and
        ``gate.reasons`` says why (the command line exits with status 3).

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
        _clear_output(output_dir, overwrite=overwrite, resume=resume)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    state.wait_for_everyone()
    resume_from = _last_checkpoint(output_dir / CHECKPOINTS_SUBDIR) if resume else None
    if resume and main:
        _say(f"resuming from {resume_from}" if resume_from else
             f"no complete checkpoint in {output_dir / CHECKPOINTS_SUBDIR} yet: training from the "
             "first step")

    tokenizer = load_tokenizer(model_path)
    data = build_dataset(selection, tokenizer, recipe)
    if main:
        _say(format_report(data.report))
    manifest = _manifest(recipe, model_path, tokenizer, data) if main else None
    held_out = [r for r in selection.eval if r.args is not None][: recipe.train.eval_samples]

    trainer = make_trainer(recipe, model_path, tokenizer, data,
                           checkpoints=output_dir / CHECKPOINTS_SUBDIR, precision=precision,
                           state=state, say=_say)
    watch = _watch(recipe, trainer, held_out, tokenizer, manifest, output_dir, resume_from)
    if main:
        processes = f" x {state.num_processes} processes" if state.num_processes > 1 else ""
        _say(f"training {recipe.model} with LoRA r={recipe.lora.r} in {precision} on "
             f"{_device_name()}{processes}")
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    seconds = time.perf_counter() - started

    metrics = run_metrics(trainer, data, seconds, precision)
    if watch is not None:
        metrics.update(_accuracy_metrics(watch, recipe))
        best = watch.restore_best(trainer.accelerator.unwrap_model(trainer.model)) if main else None
        if best is not None:
            metrics["best_step"] = best.step
            if best.step != metrics["steps"]:
                _say(f"keeping the best state, from step {best.step} (held-out exact match "
                     f"{best.exact_match:.1%}), not the last one (step {metrics['steps']})")
    # FSDP shards the weights: every process takes part in gathering them (as Trainer.save_model)
    fsdp = trainer.is_fsdp_enabled
    state_dict = trainer.accelerator.get_state_dict(trainer.model) if fsdp else None
    if not main:
        return TrainResult(output_dir=output_dir, adapter_dir=output_dir, metrics=metrics,
                           is_main_process=False)
    current = current_version(output_dir)
    with writing_version(output_dir) as (name, staging):
        model = trainer.accelerator.unwrap_model(trainer.model)
        model.save_pretrained(staging, state_dict=state_dict)
        tokenizer.save_pretrained(staging)
        write_manifest(staging, manifest.model_copy(update={"metrics": dict(metrics)}))
        _write_json(staging / "metrics.json", metrics)
        if recipe.output.plot:
            plot_losses(metrics, staging / "loss.png")
    version_path = output_dir / VERSIONS_SUBDIR / name
    # evaluated where it will stay, so that dispatch in this process finds its engine loaded
    verdict = evaluate_and_judge(recipe, version_path, held_out, current, metrics, say=_say)
    metrics["gate"] = verdict.to_dict()
    _write_json(version_path / "metrics.json", metrics)
    if verdict.passed:
        promote(output_dir, name)
    _say(verdict_message(output_dir, name, verdict, current))
    return TrainResult(output_dir=output_dir, adapter_dir=version_path, metrics=metrics,
                       version=name, promoted=verdict.passed, gate=verdict)


def _write_json(path: Path, data: Any) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically (a reader sees the old or the new)."""
    replace_file(path, json.dumps(data, indent=2) + "\n")


def _clear_output(output_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Make ``output_dir`` ready for this training (main process, after every check)."""
    if overwrite and output_dir.exists():
        shutil.rmtree(output_dir)
        return
    checkpoints = output_dir / CHECKPOINTS_SUBDIR
    if resume:
        _remove_incomplete_checkpoints(checkpoints)
    elif checkpoints.is_dir():
        _say(f"starting a new training in {output_dir}: removing the checkpoints of its previous "
             "one (--resume continues that one instead)")
        shutil.rmtree(checkpoints)
    for unfinished in remove_unfinished_versions(output_dir):
        _say(f"removing {unfinished}: a run was stopped while writing it")
    for unfinished in output_dir.glob(f".{ADAPTER_SUBDIR}.*-*"):  # runs from before versions
        shutil.rmtree(unfinished, ignore_errors=True)


def _manifest(recipe: Recipe, model_path: Path, tokenizer: Any, data: TrainingData) -> Manifest:
    """The new version's manifest (its metrics are added once trained); the in-training
    evaluations answer through an engine that carries it too."""
    return Manifest(
        base_model=recipe.model,
        base_model_path=str(model_path),
        base_model_hash=model_content_hash(model_path),
        tokenizer_hash=tokenizer_hash(tokenizer),
        **dataclasses.asdict(data.function),
        prompt_style=recipe.data.prompt_style,
        prompt_version=PROMPT_VERSION,
        max_output_tokens=max(data.train["completion_length"]),
        repair_examples=sum(1 for turns in data.train["repair_turns"] if turns),
        recipe=recipe.as_dict(),
        versions=library_versions(),
    )


def _watch(recipe: Recipe, trainer: Any, held_out: list[Record], tokenizer: Any,
           manifest: Manifest | None, output_dir: Path,
           resume_from: Path | None) -> AccuracyCallback | None:
    """The callback that measures held-out accuracy during training, added to ``trainer``;
    None without held-out calls (or without a held-out loss to rank ties by)."""
    if not held_out or trainer.eval_dataset is None:
        return None
    from localdistil.training.accuracy import accuracy_callback

    t = recipe.train
    if trainer.is_fsdp_enabled and trainer.accelerator.is_main_process:
        _say("FSDP shards the weights, so held-out accuracy is not measured during training "
             "(no best state kept, no early stop); the new version is still judged by the gate")
    callback = accuracy_callback(
        records=held_out, tokenizer=tokenizer, manifest=manifest, path=output_dir,
        eval_every=t.eval_every, patience=t.patience, min_exact=recipe.gate.min_exact,
        min_valid=recipe.gate.min_valid, batch_size=t.batch_size, resume_from=resume_from,
        enabled=not trainer.is_fsdp_enabled, say=_say)
    trainer.add_callback(callback)
    return callback


def _accuracy_metrics(watch: AccuracyCallback, recipe: Recipe) -> dict[str, Any]:
    history = watch.history
    return {
        "eval_every": getattr(watch, "every", None),
        "accuracy": [{"step": e.step, "exact_match": e.exact_match, "valid_rate": e.valid_rate,
                      "fields": e.fields, "eval_loss": e.eval_loss, "time_s": e.time_s}
                     for e in history],
        "stopped_early": watch.stopped,
        "time_to_gate_s": time_to_gate(history, recipe.gate.min_exact, recipe.gate.min_valid),
        "gate_min_exact": recipe.gate.min_exact,
    }


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
