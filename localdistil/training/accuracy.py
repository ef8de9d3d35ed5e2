"""Held-out accuracy during training: measured, kept at its best, and when to stop.

:class:`AccuracyCallback` answers the held-out calls through the engine every
``train.eval_every`` steps (and at the last step), with the in-training model in eval mode, and
records exact match, per-field accuracy and valid rate in the trainer's log history, on the same
entry as that step's held-out loss. It keeps the best state (highest exact match; ties: lower
held-out loss) in memory and in each checkpoint, so that the version written is the best one,
also after ``--resume``; and it stops training early (:func:`stop_reason`). The version written
is then judged by :mod:`localdistil.training.gate`.

Several processes (``accelerate launch``, DDP): the main process evaluates, the others wait
for it at a broadcast of the result and the stop decision, so every process keeps the same log
history and stops at the same step. Under FSDP the weights are sharded, so no process can
answer alone: accuracy is not measured during training there (the gate still judges the
version written).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localdistil.inference.agreement import Agreement, compare_outputs

if TYPE_CHECKING:
    from localdistil.models.adapter import Manifest
    from localdistil.records import Record

#: The file in each checkpoint that keeps the best LoRA state so far (``--resume`` reads it).
BEST_STATE_NAME = "localdistil_best.safetensors"
#: With ``train.eval_every: null``: about this many evaluations per run ...
EVALUATIONS_PER_RUN = 10
#: ... but never more often than every this many steps.
MIN_EVAL_EVERY = 10
#: Held-out calls are answered in batches of at least this many (at most all of them at once):
#: decoding 50 calls on 2 CPU cores took 4.4 s in one batch and 7.8 s in batches of 8.
ANSWER_BATCH_SIZE = 64


def answer_batch_size(train_batch_size: int) -> int:
    """How many held-out calls are answered in one batch, during training and at the gate."""
    return max(train_batch_size, ANSWER_BATCH_SIZE)


def default_eval_every(max_steps: int) -> int:
    """Steps between evaluations when the recipe leaves ``train.eval_every`` null."""
    return max(MIN_EVAL_EVERY, math.ceil(max_steps / EVALUATIONS_PER_RUN))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One accuracy evaluation during training."""

    step: int
    exact_match: float
    valid_rate: float
    fields: dict[str, float]
    eval_loss: float | None
    time_s: float
    """Wall time since this ``train()`` call started training (after ``--resume``: since the
    resume)."""

    @property
    def rank(self) -> tuple[float, float]:
        """What "better" means: higher exact match, then lower held-out loss."""
        return self.exact_match, -(self.eval_loss if self.eval_loss is not None else math.inf)

    def meets(self, min_exact: float, min_valid: float) -> bool:
        return self.exact_match >= min_exact and self.valid_rate >= min_valid

    def log_entry(self) -> dict[str, Any]:
        """The keys added to the trainer's log history entry of this step's evaluation."""
        return {"eval_exact_match": self.exact_match, "eval_valid_rate": self.valid_rate,
                "eval_field_accuracy": self.fields, "eval_wall_s": self.time_s}

    @classmethod
    def from_log(cls, entry: dict[str, Any]) -> Evaluation:
        return cls(step=entry["step"], exact_match=entry["eval_exact_match"],
                   valid_rate=entry["eval_valid_rate"],
                   fields=entry.get("eval_field_accuracy") or {},
                   eval_loss=entry.get("eval_loss"), time_s=entry.get("eval_wall_s", 0.0))


def history_from_log(log_history: Sequence[dict[str, Any]]) -> list[Evaluation]:
    """The accuracy evaluations recorded in a trainer's log history (a resumed run's included)."""
    return [Evaluation.from_log(entry) for entry in log_history if "eval_exact_match" in entry]


def best_index(history: Sequence[Evaluation]) -> int | None:
    """The index of the best evaluation (the first of equals), or None."""
    return max(range(len(history)), key=lambda i: history[i].rank) if history else None


def stop_reason(history: Sequence[Evaluation], *, patience: int | None, min_exact: float,
                min_valid: float) -> str | None:
    """Why training should stop after the last of ``history``, or None to go on.

    It stops once the gate's thresholds have been met ``patience`` evaluations in a row, or
    once ``patience`` evaluations have gone by without improving on the best held-out exact
    match or the lowest held-out loss so far (an equal one is no improvement). Either counts
    as progress: on 50 held-out calls exact match moves in steps of 2 % and dips by one call
    while the loss still falls, and the model is still learning then.
    """
    if patience is None or not history:
        return None
    met = 0
    for evaluation in reversed(history):
        if not evaluation.meets(min_exact, min_valid):
            break
        met += 1
    if met >= patience:
        return (f"the gate's thresholds (exact >= {min_exact:.0%}, valid >= {min_valid:.0%}) were "
                f"met{f' {met} evaluations in a row' if met > 1 else ''}")
    since = len(history) - 1 - _last_progress(history)
    if since >= patience:
        best = history[best_index(history)]
        return (f"neither held-out exact match nor held-out loss has improved for {since} "
                f"evaluation{'s' if since > 1 else ''} (best {best.exact_match:.1%} at step "
                f"{best.step})")
    return None


def _last_progress(history: Sequence[Evaluation]) -> int:
    """The index of the last evaluation that set a new best exact match or a new lowest loss."""
    last, best_exact, best_loss = 0, -1.0, math.inf
    for index, evaluation in enumerate(history):
        loss = evaluation.eval_loss if evaluation.eval_loss is not None else math.inf
        if evaluation.exact_match > best_exact or loss < best_loss:
            last = index
        best_exact, best_loss = max(best_exact, evaluation.exact_match), min(best_loss, loss)
    return last


def time_to_gate(history: Sequence[Evaluation], min_exact: float, min_valid: float) -> float | None:
    """The wall time of the first evaluation that met the gate's thresholds, or None."""
    return next((e.time_s for e in history if e.meets(min_exact, min_valid)), None)


class AccuracyCallback:
    """A transformers ``TrainerCallback`` (see the module docstring). Build it with
    :func:`accuracy_callback`, which subclasses ``TrainerCallback`` lazily (no transformers
    import at module import)."""

    def __init__(self, *, records: Sequence[Record], tokenizer: Any, manifest: Manifest | None,
                 path: Path, eval_every: int | None, patience: int | None, min_exact: float,
                 min_valid: float, batch_size: int, resume_from: Path | None = None,
                 enabled: bool = True, say: Callable[[str], None] = print):
        self.records = [r for r in records if r.args is not None]
        self.tokenizer = tokenizer
        self.manifest = manifest  # the main process's (the others never answer)
        self.path = path
        self.eval_every = eval_every
        self.patience = patience
        self.min_exact, self.min_valid = min_exact, min_valid
        self.batch_size = batch_size
        self.resume_from = resume_from
        self.enabled = enabled and bool(self.records)
        self.say = say
        self.history: list[Evaluation] = []
        self.best: tuple[Evaluation, dict[str, Any]] | None = None
        self.stopped: str | None = None
        self._due = False
        self._started = time.perf_counter()
        self._base: Any = None  # dispatch's base model answering_model merges into (CPU)

    # -- trainer events ------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()
        self.every = self.eval_every or default_eval_every(state.max_steps)
        self.history = history_from_log(state.log_history)
        if self.enabled and state.is_world_process_zero and self.resume_from is not None:
            self.best = _load_best(self.resume_from / BEST_STATE_NAME)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.enabled and (step % self.every == 0 or step >= state.max_steps):
            self._due = True
            control.should_evaluate = True  # the held-out loss of this step, beside the accuracy
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.enabled:  # the held-out loss goes with accuracy, not with each pass as well
            control.should_evaluate = False
        return control

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not self._due:
            return control
        self._due = False
        found: list[Any] = [None, None]
        if state.is_world_process_zero:
            evaluation = self._measure(model, state.global_step, (metrics or {}).get("eval_loss"))
            self.history.append(evaluation)
            if self.best is None or evaluation.rank > self.best[0].rank:
                self.best = (evaluation, _lora_state(model))
            found = [evaluation, stop_reason(self.history, patience=self.patience,
                                             min_exact=self.min_exact, min_valid=self.min_valid)]
            loss = evaluation.eval_loss
            self.say(f"step {evaluation.step}: held-out exact match {evaluation.exact_match:.1%}, "
                     f"valid {evaluation.valid_rate:.1%} on {len(self.records)} call(s)"
                     + (f", eval loss {loss:.4f}" if loss is not None else ""))
        from accelerate.utils import broadcast_object_list

        evaluation, reason = broadcast_object_list(found)
        if not state.is_world_process_zero:
            self.history.append(evaluation)
        if state.log_history and state.log_history[-1].get("step") == evaluation.step:
            state.log_history[-1].update(evaluation.log_entry())  # beside this step's eval loss
        else:
            state.log_history.append({"step": evaluation.step, **evaluation.log_entry()})
        if reason is not None and evaluation.step < state.max_steps:
            self.stopped = reason
            self.say(f"stopping early at step {evaluation.step}: {reason}")
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self._base = None  # dispatch's base is needed only while training
        return control

    def on_save(self, args, state, control, **kwargs):
        if self.best is not None and state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                _save_best(self.best, checkpoint / BEST_STATE_NAME)
        return control

    # -- the rest ------------------------------------------------------------------------------

    def restore_best(self, model: Any) -> Evaluation | None:
        """Load the best state into ``model`` (the trained PEFT model); returns its evaluation."""
        if self.best is None:
            return None
        from peft import set_peft_model_state_dict

        evaluation, weights = self.best
        device = next(model.parameters()).device
        set_peft_model_state_dict(model, {k: v.to(device) for k, v in weights.items()})
        return evaluation

    def _measure(self, model: Any, step: int, eval_loss: float | None) -> Evaluation:
        """Answer the held-out calls through the engine with the in-training model."""
        from localdistil.inference.engine import Engine

        schema = self.manifest.output_schema or {}
        was_training = model.training
        model.eval()
        agreement, valid = Agreement(), 0
        size = answer_batch_size(self.batch_size)
        try:
            answering = answering_model(model, self._dispatch_base(model))
            # a new engine each time: its prompt prefix cache holds keys of the current weights
            engine = Engine(answering, self.tokenizer, name=self.manifest.name, path=self.path,
                            manifest=self.manifest)
            for start in range(0, len(self.records), size):
                batch = self.records[start:start + size]
                prompts = [engine.call_prompt(r.args, r.repairs) for r in batch]
                outcomes = engine.answer(prompts, schema=schema)
                for record, outcome in zip(batch, outcomes):
                    valid += outcome.ok
                    agreement.add(compare_outputs(record.output, outcome.value))
        finally:
            model.train(was_training)
        summary = agreement.summary()
        return Evaluation(step=step, exact_match=summary["exact_match"],
                          valid_rate=valid / len(self.records), fields=summary["fields"],
                          eval_loss=eval_loss, time_s=round(time.perf_counter() - self._started, 2))

    def _dispatch_base(self, model: Any) -> Any:
        """On a CPU, the base model as dispatch loads it (:func:`inference_placement`), loaded
        once per training; else None. Answering from a copy of it, never from a copy of the
        training model, matters even where the precisions agree: the trainer wraps the training
        model (autocast, gradient hooks), and a copy that carries those decoded 50 extraction
        calls 5x slower."""
        frozen = next((p for p in model.parameters() if not p.requires_grad), None)
        if frozen is None or frozen.device.type != "cpu":
            return None
        if self._base is None:
            from localdistil.models.placement import inference_placement
            from localdistil.models.resolve import load_causal_lm

            self._base = load_causal_lm(self.manifest.base_model_path,
                                        dtype=inference_placement()["dtype"])
        return self._base


def answering_model(model: Any, base: Any = None) -> Any:
    """The model that answers held-out calls during training.

    On a GPU, ``model`` itself. On a CPU, a copy with the LoRA weights merged in (unmerged LoRA
    layers cost extra matrix products: 2-4x slower): with ``base``, the base model as dispatch
    loads it (what training passes), the copy is that base with ``model``'s LoRA weights,
    exactly the merged model the version will be evaluated and dispatched with; without, a copy
    of ``model`` itself, with whatever the trainer attached to it. ``model`` is not touched;
    the copy is the caller's to drop.
    """
    import copy

    if next(model.parameters()).device.type != "cpu":
        return model
    if base is not None and hasattr(model, "peft_config"):
        from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

        config = copy.deepcopy(model.peft_config[model.active_adapter])
        answering = get_peft_model(copy.deepcopy(base), config)
        set_peft_model_state_dict(answering, get_peft_model_state_dict(model))
    else:
        answering = copy.deepcopy(model)
        if base is not None:
            answering = answering.to(next(base.parameters()).dtype)
    if hasattr(answering, "merge_and_unload"):
        answering = answering.merge_and_unload()
    return answering.eval()


def accuracy_callback(**kwargs: Any) -> AccuracyCallback:
    """An :class:`AccuracyCallback` that is also a ``transformers.TrainerCallback``."""
    from transformers import TrainerCallback

    cls = type("AccuracyTrainerCallback", (AccuracyCallback, TrainerCallback), {})
    return cls(**kwargs)


def _lora_state(model: Any) -> dict[str, Any]:
    """A CPU copy of the adapter's weights (small: the base model is not in it)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def _save_best(best: tuple[Evaluation, dict[str, Any]], path: Path) -> None:
    from safetensors.torch import save_file

    evaluation, weights = best
    temporary = path.with_name(f".{path.name}.tmp")
    metadata = {"evaluation": json.dumps(dataclasses.asdict(evaluation))}
    save_file(weights, str(temporary), metadata=metadata)
    os.replace(temporary, path)


def _load_best(path: Path) -> tuple[Evaluation, dict[str, Any]] | None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        evaluation = Evaluation(**json.loads(handle.metadata()["evaluation"]))
    return evaluation, load_file(str(path))
