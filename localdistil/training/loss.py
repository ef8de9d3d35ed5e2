"""The training loss, computed only where a token is trained.

TRL 1.x patches the model with a fused LM head that turns hidden states into per-token
log-probabilities in tiles. Where Triton runs it scores only the positions whose next token is
trained; elsewhere (every CPU) it projects *every* position through the vocabulary-sized head,
in float32, and discards the prompt's. A distilled call is mostly prompt (normalize_quantity:
28 of 41 tokens), so on a CPU that head took about a third of a training step.

:func:`sft_trainer_class` returns ``SFTTrainer`` with one change on CPU: the model computes its
logits only for the (row, position) pairs whose next token is trained (``logits_to_keep`` as an
index tensor narrows the positions to those some row trains, a hook on the head narrows its
input to the pairs; in the autocast precision), and the loss is the same one TRL computes —
the summed negative log-likelihood of the trained tokens over ``num_items_in_batch`` (or their
count), scaled alike across processes — with the same logged metrics (``entropy``,
``mean_token_accuracy``, ``num_tokens``). Every configuration this path does not cover (a GPU, a
custom loss, label smoothing, DFT, MoE auxiliary losses, sequence parallelism, evaluation that
wants the logits) goes to TRL's own ``compute_loss`` unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

IGNORE_INDEX = -100


def trained_positions(labels: Any) -> Any:
    """The positions whose *next* token is trained in at least one row of ``labels``
    (``batch × length``, ``-100`` where not trained): the only positions a causal LM's loss
    needs logits at."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().flatten()


def completion_nll(logits: Any, targets: Any) -> tuple[Any, Any]:
    """The summed negative log-likelihood of ``targets`` under ``logits``, in float32, and the
    log-probabilities it came from (for the metrics). ``targets`` holds ``-100`` where a
    position is not trained."""
    import torch

    log_probs = torch.log_softmax(logits.float(), dim=-1)
    trained = targets != IGNORE_INDEX
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * trained).sum(), log_probs


@contextlib.contextmanager
def _head_sees_only(head: Any, kept: Any) -> Iterator[None]:
    """While the block runs, ``head`` (the LM head, or None) gets only the hidden states of the
    ``kept`` (row, position) pairs, as one ``pairs × hidden`` matrix, and so returns their
    logits alone. ``logits_to_keep`` keeps the same positions in every row: with prompts of
    different lengths in a batch, their union is 1.5-1.9 times the trained pairs (the examples'
    random batches of 8)."""
    def select(module: Any, args: tuple) -> tuple | None:
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[:2] != kept.shape:
            return None
        return (hidden[kept], *args[1:])

    hook = head.register_forward_pre_hook(select) if head is not None else None
    try:
        yield
    finally:
        if hook is not None:
            hook.remove()


@functools.cache
def sft_trainer_class() -> type:
    """``trl.SFTTrainer`` whose loss on CPU computes logits only at trained positions (see the
    module docstring). Built on first use, so importing this module imports no TRL."""
    import accelerate
    import torch
    from packaging.version import Version
    from trl import SFTTrainer

    class CompletionLossSFTTrainer(SFTTrainer):
        """``SFTTrainer`` with the loss of :mod:`localdistil.training.loss` on CPU."""

        def _scores_trained_positions_only(self, inputs: dict[str, Any]) -> bool:
            parallelism = (
                self.accelerator.parallelism_config
                if Version(accelerate.__version__) >= Version("1.12.0") else None
            )
            return (
                inputs["input_ids"].device.type == "cpu"
                and "labels" in inputs
                and self.compute_loss_func is None
                and self.label_smoother is None
                and self.args.loss_type == "nll"
                and not self.aux_loss_enabled
                and not (parallelism is not None and parallelism.sp_enabled)
            )

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self._scores_trained_positions_only(inputs):
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            positions = trained_positions(labels)
            targets = labels[:, 1:][:, positions]
            kept = targets != IGNORE_INDEX  # the (row, position) pairs the loss needs
            model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
            head = self.accelerator.unwrap_model(model).get_output_embeddings()
            with _head_sees_only(head, kept):
                outputs = model(**model_inputs, use_cache=False, logits_to_keep=positions)
            logits = outputs.logits
            if logits.dim() == 3:  # the hook did not apply (no head found, another shape)
                logits = logits[kept]
            targets = targets[kept]
            nll, log_probs = completion_nll(logits, targets)
            trained = targets != IGNORE_INDEX
            denominator = trained.sum() if num_items_in_batch is None else num_items_in_batch
            loss = nll / torch.as_tensor(denominator).clamp(min=1)
            # as TRL (and Trainer): num_items_in_batch counts every rank's tokens, and DDP
            # averages the gradients across ranks
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            self._log_token_metrics(mode, inputs, log_probs.detach(), targets, trained)
            return loss

        def _log_token_metrics(self, mode: str, inputs: dict[str, Any], log_probs: Any,
                               targets: Any, trained: Any) -> None:
            """TRL's per-step metrics, from the kept positions' log-probabilities."""
            gather = self.accelerator.gather_for_metrics
            with torch.no_grad():
                entropy = -(log_probs.exp() * log_probs).sum(dim=-1)
                is_top1 = log_probs.argmax(dim=-1) == targets
                num_valid = gather(trained.sum()).sum()
                entropy_sum = gather((entropy * trained).sum()).sum()
                num_correct = gather((is_top1 & trained).sum()).sum()
            self._metrics[mode]["entropy"].append(
                (entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
            self._metrics[mode]["mean_token_accuracy"].append(
                (num_correct / num_valid).item() if num_valid > 0 else 0.0)
            if mode == "train":
                if "attention_mask" in inputs:
                    local_tokens = inputs["attention_mask"].sum()
                else:  # padding-free: one row of every real token
                    local_tokens = torch.tensor(inputs["position_ids"].size(1))
                self._total_train_tokens += gather(local_tokens).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    return CompletionLossSFTTrainer
