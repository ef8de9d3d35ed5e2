"""What ``auto`` and the defaults of a recipe become on this machine, for this data and model:
precision, learning rate and the number of steps (used by :func:`localdistil.training.train.train`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from localdistil.errors import RecipeError
from localdistil.models.placement import computes_bf16

if TYPE_CHECKING:
    from localdistil.training.recipe import Recipe

__all__ = ["MIN_AUTO_STEPS", "choose_learning_rate", "choose_precision", "describe_auto",
           "plan_steps"]


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
        raise RecipeError("train.precision: fp16 needs a CUDA GPU. Use auto, fp32 or bf16 on a "
                          "CPU.", key="train.precision")
    if precision == "auto":
        return "bf16" if computes_bf16() else "fp32"
    return precision


#: ``train.epochs: auto``: one pass over the data, but at least this many optimizer steps
MIN_AUTO_STEPS = 200
#: ``train.learning_rate: auto``: this rate below ``LARGE_MODEL_PARAMETERS`` parameters ...
SMALL_MODEL_LEARNING_RATE = 2e-3
#: ... and this one from there up
LARGE_MODEL_LEARNING_RATE = 2e-4
LARGE_MODEL_PARAMETERS = 1_000_000_000


def plan_steps(recipe: Recipe, train_examples: int, processes: int = 1) -> int | None:
    """The optimizer steps to train for, or None to go by ``train.epochs``.

    ``train.max_steps`` when set; with ``train.epochs: auto``, one pass over ``train_examples``
    but never fewer than :data:`MIN_AUTO_STEPS` steps: a few dozen distinct calls are passed
    over many times, which a small model needs (the early stop at the gate ends it sooner).
    """
    t = recipe.train
    if t.max_steps is not None:
        return t.max_steps
    if t.epochs != "auto":
        return None
    per_step = t.batch_size * t.gradient_accumulation_steps * processes
    return max(MIN_AUTO_STEPS, math.ceil(train_examples / per_step))


def choose_learning_rate(recipe: Recipe, parameters: int) -> float:
    """``train.learning_rate``, or for ``auto`` the rate for a base model of this size."""
    rate = recipe.train.learning_rate
    if rate != "auto":
        return rate
    return (SMALL_MODEL_LEARNING_RATE if parameters < LARGE_MODEL_PARAMETERS
            else LARGE_MODEL_LEARNING_RATE)


def describe_auto(recipe: Recipe, learning_rate: float, steps: int | None,
                  train_examples: int) -> str | None:
    """What the recipe's ``auto`` settings became, as printed when training starts; None when
    it has none."""
    t, chosen = recipe.train, []
    if t.learning_rate == "auto":
        chosen.append(f"train.learning_rate auto -> {learning_rate:g}")
    if t.epochs == "auto" and t.max_steps is None:
        chosen.append(f"train.epochs auto -> {steps} steps (one pass over {train_examples} "
                      f"examples, at least {MIN_AUTO_STEPS} steps)")
    return "; ".join(chosen) or None
