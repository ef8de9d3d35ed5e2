"""The training recipe: a YAML file validated into a :class:`Recipe`.

A recipe starts with a comment giving the command that runs it::

    # python -m localdistil train recipes/three_digit_multiply.yaml
    model: smollm2-135m
    data:
      train: [traces/three_digit_multiply.jsonl]   # files or globs of records
      function: multiply                            # optional filter when files hold several
      eval_fraction: 0.1                            # or a separate eval file
    lora: {r: 16, alpha: 32, dropout: 0.0, target_modules: all-linear}
    train: {epochs: 3, max_steps: null, batch_size: 8, learning_rate: 2.0e-4, max_length: 256}
    gate: {min_exact: 0.95, min_valid: 1.0, not_worse: true}   # when a new version is promoted
    output: {dir: runs/three_digit_multiply}

Every key is documented where it is declared (``Field(description=...)``); only ``model`` and
``data.train`` are required. Unknown keys are errors that suggest the nearest valid key, and a
key given twice in one mapping is an error too (plain YAML would silently keep the last).
``key=value`` overrides change one field without editing the file; values are parsed as YAML, so
``train.max_steps=20``, ``train.max_steps=null`` and ``lora.target_modules=[q_proj,v_proj]`` work.

Cross-field rules (each error names every key involved): ``data.eval`` with a non-zero
``data.eval_fraction`` is rejected (hold out data one way); ``train.quantization: 4bit`` needs
``train.precision`` other than fp32; ``train.eval_steps`` and ``train.eval_every`` need held-out
data, and ``train.eval_every`` a non-zero ``train.eval_samples``. ``train.packing``
with ``train.padding_free`` is allowed (TRL packs into padding-free batches).

Relative paths in a recipe (``data.train``, ``data.eval``, ``output.dir``, a local ``model``)
are resolved against the current working directory when they are used, not against the
recipe's own directory (as in torchtune): run the command from the project root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    field_validator,
    model_validator,
)

from localdistil.config import CheckFailed, read_yaml, validate
from localdistil.errors import RecipeError, RecordError
from localdistil.records import expand_paths

__all__ = ["DataSection", "GateSection", "LoraSection", "OutputSection", "Recipe", "TrainSection",
           "load_recipe", "parse_recipe", "resolve_data_files"]

_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                     "constant_with_warmup", "inverse_sqrt"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    """``data:`` which records to train on and how they become training examples."""

    train: list[_Text] = Field(min_length=1, description=(
        "trace files (JSONL records) or globs, e.g. [traces/*.jsonl]; one string is accepted"))
    eval: list[_Text] | None = Field(None, min_length=1, description=(
        "separate held-out files or globs; then nothing is split off data.train"))
    function: _Text | None = Field(None, description=(
        "keep only this function's records (name or module:name) when files hold several"))
    eval_fraction: float = Field(0.1, ge=0, le=0.5, description=(
        "fraction of the records held out, 0 to 0.5 (0 = none); 0 when data.eval is given"))
    dedup: bool = Field(True, description=(
        "drop records whose prompt repeats an earlier one, before the split"))
    prompt_style: Literal["compact", "full"] = Field("compact", description=(
        "compact: short system prompt, no output schema (cheaper at every dispatch); "
        "full: instructor's wording with the signature and docstring. Dispatch uses the same "
        "style"))
    completion: Literal["json"] = Field("json", description=(
        "what the model learns to write: json = the output as canonical compact JSON, the only "
        "form the dispatch grammar accepts"))
    max_records: int | None = Field(None, gt=0, description=(
        "use at most this many records (after filter and dedup, before the split); null = all"))

    @field_validator("train", "eval", mode="before")
    @classmethod
    def _wrap_single_path(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_eval(self) -> DataSection:
        if self.eval is not None:
            if "eval_fraction" in self.model_fields_set and self.eval_fraction != 0:
                raise CheckFailed("data.eval", (
                    "data.eval and data.eval_fraction are both set. Hold out data one way: "
                    "remove data.eval_fraction to use the data.eval files, or data.eval to "
                    "split data.train"))
            self.eval_fraction = 0.0
        return self

    def train_files(self) -> list[Path]:
        """The files ``data.train`` names, globs expanded (relative to the current directory)."""
        return resolve_data_files(self.train, key="data.train")

    def eval_files(self) -> list[Path]:
        """The files ``data.eval`` names, or ``[]`` when held-out data is split off instead."""
        return [] if self.eval is None else resolve_data_files(self.eval, key="data.eval")


class LoraSection(_Section):
    """``lora:`` the low-rank adapter trained on top of the frozen base model (PEFT LoraConfig)."""

    r: int = Field(16, gt=0, description=(
        "the LoRA rank, a positive integer; 8 to 64 is typical, larger learns more, slower"))
    alpha: int = Field(32, gt=0, description=(
        "LoRA scaling, a positive integer: updates are scaled by alpha / r (commonly 2 x r)"))
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "dropout on the adapter's input during training, 0 up to (not including) 1; 0 by "
        "default: on a CPU, the dropout of 210 adapters' inputs took 42 % of a step "
        "(SmolLM2, batch 8 of 40 tokens: 2.23 s with 0.05, 1.29 s with 0), and distilled "
        "functions, trained for about one pass, need no such regularisation"))
    target_modules: str | list[_Text] = Field("all-linear", description=(
        "the layers that get an adapter: all-linear (every linear layer but the output head) "
        "or a list of module names such as [q_proj, v_proj]"))

    @field_validator("target_modules")
    @classmethod
    def _check_target_modules(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError(f"must be all-linear or a list of module names, not {value!r}. "
                             f"For one module write [{value}]")
        if isinstance(value, list) and not value:
            raise ValueError("the list is empty. Name at least one module, e.g. [q_proj, v_proj], "
                             "or write all-linear")
        return value


class TrainSection(_Section):
    """``train:`` the optimisation run (TRL SFTConfig / transformers TrainingArguments)."""

    epochs: Annotated[float, Field(gt=0)] | Literal["auto"] = Field("auto", description=(
        "passes over the training set, above 0 (fractions allowed), or auto: one pass, or as "
        "many as make at least 200 optimizer steps when the data is small (training stops "
        "early at the gate, train.patience); unused with max_steps"))
    max_steps: int | None = Field(None, gt=0, description=(
        "stop after this many optimizer steps, overriding train.epochs; null = use epochs"))
    batch_size: int = Field(8, gt=0, description="examples per device per forward pass, above 0")
    gradient_accumulation_steps: int = Field(1, gt=0, description=(
        "forward passes per optimizer step; the effective batch is batch_size x this"))
    learning_rate: Annotated[float, Field(gt=0)] | Literal["auto"] = Field("auto", description=(
        "the peak learning rate, above 0, or auto: 2e-3 for base models under a billion "
        "parameters (what small models need to learn a function in a few hundred steps), "
        "2e-4 from a billion up (the usual LoRA rate for larger models)"))
    lr_scheduler: _Scheduler = Field("cosine", description=(
        "how the learning rate decays after warm-up (a transformers scheduler name)"))
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description=(
        "fraction of the steps spent raising the learning rate from 0, 0 up to 1"))
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay, 0 or more")
    max_length: int = Field(512, gt=0, description=(
        "tokens per example (prompt + completion); longer examples are left out and reported, "
        "never truncated"))
    seed: int = Field(0, ge=0, description=(
        "seed for the split, shuffling, adapter initialisation and dropout, 0 or more"))
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description=(
        "auto = bf16 on a GPU that supports it, else fp32 on a GPU; on a CPU bf16 where it has "
        "native bf16 instructions (avx512_bf16 or AMX), else fp32"))
    gradient_checkpointing: bool = Field(False, description=(
        "recompute activations in the backward pass: less memory, about 6 % slower"))
    packing: bool = Field(False, description=(
        "pack short examples into sequences of max_length; may be combined with padding_free"))
    padding_free: bool = Field(False, description=(
        "batch without padding tokens; pays off with a variable-length attention kernel (GPU)"))
    group_by_length: bool = Field(False, description=(
        "batch examples of similar length together (random groups of up to 50 batches, each "
        "group sorted longest first): less padding to compute where lengths vary, but the "
        "batches come in long-to-short sweeps, which slows early learning where length goes "
        "with content"))
    quantization: Literal["none", "4bit"] = Field("none", description=(
        "none, or 4bit = QLoRA: the base model in 4 bits via bitsandbytes (CUDA GPU only)"))
    logging_steps: int = Field(10, gt=0, description="log the loss every this many steps")
    save_steps: int = Field(50, gt=0, description="write a checkpoint every this many steps")
    save_total_limit: int | None = Field(2, gt=0, description=(
        "keep at most this many checkpoints (oldest deleted); null = keep all"))
    eval_steps: int | None = Field(None, gt=0, description=(
        "held-out loss every this many steps; null = every save_steps. Needs held-out data"))
    eval_samples: int = Field(50, ge=0, description=(
        "held-out calls answered with constrained decoding, every train.eval_every steps and "
        "after training, to measure accuracy, keep the best state and judge the new version by "
        "the gate; the held-out loss is computed on the same calls (0 = skip all three and "
        "compute the loss on every held-out example; ignored without held-out data)"))
    eval_every: int | None = Field(None, gt=0, description=(
        "steps between those accuracy evaluations during training; null = about 10 per run, "
        "never more often than every 10 steps. The last step is always evaluated"))
    patience: int | None = Field(2, gt=0, description=(
        "evaluations: stop early once the gate's min_exact and min_valid have been met this "
        "many evaluations in a row, or neither held-out exact match nor held-out loss has "
        "improved on its best for this many; null = never stop early"))

    @model_validator(mode="after")
    def _check_quantization(self) -> TrainSection:
        if self.quantization == "4bit" and self.precision == "fp32":
            raise CheckFailed("train.quantization", (
                "4bit cannot be combined with train.precision: fp32 (a 4-bit base model computes "
                "in bf16 or fp16). Set train.precision to auto, bf16 or fp16, or "
                "train.quantization to none"))
        return self


class GateSection(_Section):
    """``gate:`` what a newly trained version must reach on the held-out calls to be promoted
    (the version everything loads from output.dir); otherwise it stays a candidate."""

    min_exact: float = Field(0.95, ge=0, le=1, description=(
        "the least held-out exact match, 0 to 1; also the level that stops training early "
        "(train.patience)"))
    min_valid: float = Field(1.0, ge=0, le=1, description=(
        "the least share of held-out answers that are complete, valid outputs, 0 to 1"))
    not_worse: bool = Field(True, description=(
        "also require an exact match at least the promoted version's, on the same held-out "
        "calls (the promoted version answers them again)"))


class OutputSection(_Section):
    """``output:`` where the adapter and its training record go."""

    dir: _Text = Field("runs/model", description=(
        "where the adapter, its manifest and checkpoints are written"))
    plot: bool = Field(True, description="draw the loss curves into output.dir after training")


class Recipe(_Section):
    """A validated training recipe. Build one with :func:`load_recipe` or :func:`parse_recipe`.

    ``source`` is the file it came from (``None`` when built from a mapping); it is not part
    of :meth:`as_dict` or :meth:`to_yaml`, which give the recipe as run, defaults filled in, nor
    of equality: two recipes are equal when they would run the same.
    """

    model: _Text = Field(description=(
        "the base model: an alias (smollm2-135m, the embedded default), a Hugging Face hub id "
        "(Qwen/Qwen2.5-0.5B-Instruct), a local Hugging Face directory or a .gguf file"))
    data: DataSection = Field(description=(
        "the data section: which records to train on, e.g. data: {train: [traces/fn.jsonl]}"))
    lora: LoraSection = Field(default_factory=LoraSection, description="the adapter's shape")
    train: TrainSection = Field(default_factory=TrainSection, description="the training run")
    gate: GateSection = Field(default_factory=GateSection, description=(
        "when a new version is promoted"))
    output: OutputSection = Field(default_factory=OutputSection, description="where it goes")

    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The recipe file this came from, or ``None``."""
        return self._source

    @model_validator(mode="after")
    def _check_eval_steps(self) -> Recipe:
        held_out = self.data.eval is not None or self.data.eval_fraction > 0
        if self.train.eval_steps is not None and not held_out:
            raise CheckFailed("train.eval_steps", (
                "is set but there is no held-out data (data.eval_fraction is 0 and data.eval is "
                "not set). Set data.eval_fraction above 0, give data.eval files, or remove "
                "train.eval_steps"))
        if self.train.eval_every is not None and not held_out:
            raise CheckFailed("train.eval_every", (
                "is set but there is no held-out data to evaluate (data.eval_fraction is 0 and "
                "data.eval is not set). Set data.eval_fraction above 0, give data.eval files, or "
                "remove train.eval_every"))
        if self.train.eval_every is not None and self.train.eval_samples == 0:
            raise CheckFailed("train.eval_every", (
                "is set but train.eval_samples is 0, so no held-out call would be answered. Set "
                "train.eval_samples above 0 or remove train.eval_every"))
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self.as_dict() == other.as_dict()

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain JSON-compatible data, every default filled in."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The recipe as YAML that :func:`load_recipe` reads back into an equal Recipe."""
        return yaml.safe_dump(self.as_dict(), sort_keys=False, allow_unicode=True)


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Recipe:
    """Read the YAML recipe at ``path``, apply ``key=value`` ``overrides`` in order, validate.

    Raises:
        RecipeError: the file is missing or unreadable, is not valid YAML (the message gives
            the file, line and column), or does not describe a valid recipe (every problem is
            listed as ``<dotted.key>: <what is wrong>. <how to fix>``; ``.key`` is the first).
    """
    raw = read_yaml(path, example="recipes/three_digit_multiply.yaml")
    return parse_recipe(raw, overrides=overrides, source=path)


def parse_recipe(data: Any, overrides: Sequence[str] = (), *,
                 source: str | os.PathLike[str] | None = None) -> Recipe:
    """Validate a recipe given as a mapping (what the YAML file holds), after ``overrides``.

    ``source`` names the file in messages and becomes :attr:`Recipe.source`. Raises
    :class:`RecipeError` as :func:`load_recipe` does.
    """
    recipe = validate(Recipe, data, overrides, source=source,
                      needs="model: and data: {train: [...]}")
    recipe._source = None if source is None else Path(source)
    return recipe


def resolve_data_files(patterns: str | Sequence[str], *, key: str = "data.train") -> list[Path]:
    """The files that ``patterns`` name, by the rules of :func:`localdistil.records.read_records`:
    files, globs (``*``, ``**``) and directories (their ``*.jsonl``), sorted, each file once.

    Relative patterns are resolved against the current working directory; ``~`` is expanded.

    Raises:
        RecipeError: naming ``key`` when a pattern matches no file.
    """
    patterns = [patterns] if isinstance(patterns, str) else patterns
    try:
        return expand_paths([os.path.expanduser(pattern) for pattern in patterns])
    except RecordError as exc:
        raise RecipeError(f"{key}: {exc} Relative paths start at the current directory, "
                          f"{Path.cwd()}", key=key) from None
