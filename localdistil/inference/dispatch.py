"""Dispatch: the distilled model answers for the function, always with a valid object.

:func:`load_adapter` loads a base model with its adapter once per process (lazily, shared by all
threads and decorated functions that name the same adapter), merges the LoRA weights into the
base (unmerged adapters decode 1.1-1.2x slower on CPU) and checks that the base model and
tokenizer are the ones the adapter was trained on.

:class:`Dispatcher` answers calls of one function: it renders the prompt with
:mod:`localdistil.prompts` exactly as training did (same style, name and signature as the
manifest records), decodes under the return type's grammar (:mod:`localdistil.inference.grammar`:
canonical compact JSON, no free whitespace) and validates the text into the return type.

- A manifest made for another version of the function raises :class:`AdapterMismatchError`
  saying what changed (``on_mismatch="warn"`` downgrades it to a warning).
- The token budget is the longest training answer x 1.5 + 8 tokens (``max_new_tokens``
  overrides it). Running out raises :class:`DispatchError` with the partial text; an invalid
  object is never returned.
- Pydantic validators the grammar cannot express may still reject an answer:
  ``on_invalid="raise"`` raises :class:`DispatchError`, ``"retry"`` samples again (temperature
  0.7, seeded) up to ``retries`` times, ``"fallback"`` answers ``None`` so that the caller
  runs the original function (the decorator does, and records that call as a new example).
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from localdistil.models.adapter import MANIFEST_NAME, Manifest, adapter_dir, check_compatible, mismatch_error, read_manifest, tokenizer_hash
from localdistil.errors import AdapterError, DispatchError
from localdistil.prompts import encode_prompt, render_messages
from localdistil.spec import FunctionSpec

if TYPE_CHECKING:
    from localdistil.inference.generate import GenerationResult

#: What ``on_invalid`` accepts.
ON_INVALID = ("raise", "retry", "fallback")
#: What ``on_mismatch`` accepts.
ON_MISMATCH = ("raise", "warn")
RETRY_TEMPERATURE = 0.7

_LOADED: dict[tuple[Path, int, int], LoadedAdapter] = {}
_LOADING = threading.Lock()


@dataclasses.dataclass
class LoadedAdapter:
    """A base model with its adapter merged in, its tokenizer and manifest.

    ``lock`` serialises generation: one batch at a time per model (on a CPU, concurrent forward
    passes only compete for the same cores; :meth:`Dispatcher.answer_many` batches instead).
    """

    path: Path
    manifest: Manifest
    tokenizer: Any
    model: Any
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    prefix: Any = None
    """The :class:`~localdistil.inference.generate.PromptPrefix` of this adapter's prompts (made lazily)."""

    def budget(self) -> int:
        """The default token budget of one answer, from the longest training answer."""
        from localdistil.inference.generate import budget_for

        return budget_for(self.manifest.max_output_tokens)

    def generate(self, schema: dict[str, Any], prompts: list[list[int]], *, max_new_tokens: int,
                 temperature: float = 0.0, seed: int | None = None) -> list[GenerationResult]:
        """Constrained generation of one answer per prompt (token ids), in one batch."""
        from localdistil.inference.generate import PromptPrefix, generate_json
        from localdistil.inference.grammar import JsonGrammar

        grammar = JsonGrammar.for_schema(schema, self.tokenizer)
        with self.lock:
            if self.prefix is None:
                self.prefix = PromptPrefix()
            return generate_json(self.model, self.tokenizer, grammar, prompts, max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed, prefix=self.prefix)

    def prompt_ids(self, args: Mapping[str, Any]) -> list[int]:
        """The prompt of one call, token for token as training rendered it."""
        m = self.manifest
        messages = render_messages(name=m.name, args=args, style=m.prompt_style, signature=m.signature, doc=m.doc)
        return encode_prompt(self.tokenizer, messages)


def load_adapter(path: str | Path) -> LoadedAdapter:
    """The adapter at ``path`` (a run's output directory or its ``adapter/``), loaded once per
    process and shared.

    Raises:
        AdapterError: no complete adapter there, or the base model or tokenizer differ from the
            ones it was trained with.
        ModelError: the base model cannot be found or loaded.
    """
    directory = adapter_dir(path).resolve()
    stat = (directory / MANIFEST_NAME).stat()
    key = (directory, stat.st_mtime_ns, stat.st_size)  # a retrained adapter is loaded anew
    loaded = _LOADED.get(key)
    if loaded is not None:
        return loaded
    with _LOADING:
        loaded = _LOADED.get(key)
        if loaded is None:
            for stale in [k for k in _LOADED if k[0] == directory]:
                del _LOADED[stale]
            loaded = _LOADED[key] = _load(directory)
    return loaded


def _load(directory: Path) -> LoadedAdapter:
    import torch
    from peft import PeftModel

    from localdistil.models.resolve import load_causal_lm, load_tokenizer, model_content_hash, resolve_model

    manifest = read_manifest(directory)
    base_path = resolve_model(manifest.base_model)
    if model_content_hash(base_path) != manifest.base_model_hash:
        raise AdapterError(
            f"The base model {manifest.base_model!r} at {base_path} is not the one the adapter at "
            f"{directory} was trained on (its weights changed). Train the adapter again.",
            path=directory,
        )
    tokenizer = load_tokenizer(directory)
    if tokenizer_hash(tokenizer) != manifest.tokenizer_hash:
        raise AdapterError(f"The tokenizer in {directory} differs from the one it was trained with.", path=directory)
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    base = load_causal_lm(base_path, dtype=dtype, device_map="cuda" if cuda else None)
    model = PeftModel.from_pretrained(base, str(directory)).merge_and_unload().eval()
    return LoadedAdapter(path=directory, manifest=manifest, tokenizer=tokenizer, model=model)


class Dispatcher:
    """Answers calls of one decorated function from its adapter.

    Args:
        spec: the decorated function.
        model: a training run's ``output.dir`` or an adapter directory.
        on_mismatch: ``"raise"`` (default) or ``"warn"`` when the adapter was trained for another
            version of the function.
        on_invalid: ``"raise"``, ``"retry"`` or ``"fallback"`` when an answer fails the return
            type's validators.
        retries: how many times ``"retry"`` samples again.
        max_new_tokens: the token budget of one answer; default from the training answers.

    Raises:
        AdapterError, AdapterMismatchError: at construction (decoration time), reading only the
            manifest; the model itself loads on the first call or :meth:`warmup`.
    """

    def __init__(self, spec: FunctionSpec, model: str | Path, *, on_mismatch: str = "raise", on_invalid: str = "raise",
                 retries: int = 2, max_new_tokens: int | None = None):
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {', '.join(ON_INVALID)}; got {on_invalid!r}.")
        if on_mismatch not in ON_MISMATCH:
            raise ValueError(f"on_mismatch must be one of {', '.join(ON_MISMATCH)}; got {on_mismatch!r}.")
        self.spec = spec
        self.path = adapter_dir(model)
        self.manifest = read_manifest(self.path)
        changes = check_compatible(self.manifest, spec)
        if changes:
            error = mismatch_error(self.manifest, spec, changes, self.path)
            if on_mismatch == "raise":
                raise error
            warnings.warn(str(error), UserWarning, stacklevel=3)
        self.on_invalid = on_invalid
        self.retries = retries
        self.max_new_tokens = max_new_tokens

    @property
    def loaded(self) -> LoadedAdapter:
        """The model, loaded on first use."""
        return load_adapter(self.path)

    def warmup(self) -> None:
        """Load the model and build the grammar now, not on the first call."""
        from localdistil.inference.grammar import JsonGrammar

        JsonGrammar.for_schema(self.spec.output_schema, self.loaded.tokenizer)

    def answer(self, args: Mapping[str, Any]) -> BaseModel | None:
        """The model's answer to one call (bound, JSON-compatible arguments)."""
        return self.answer_many([args])[0]

    def answer_many(self, calls: Sequence[Mapping[str, Any]]) -> list[BaseModel | None]:
        """Answer many calls in one batch; each answer validated into the return type, or
        ``None`` where it failed validation and ``on_invalid="fallback"``.

        Raises:
            DispatchError: an answer ran out of tokens, or failed validation with
                ``on_invalid="raise"`` (or still failed after the retries).
        """
        loaded = self.loaded
        budget = self.max_new_tokens or loaded.budget()
        prompts = [loaded.prompt_ids(args) for args in calls]
        results = loaded.generate(self.spec.output_schema, prompts, max_new_tokens=budget)
        return [self._validated(prompt, result, budget, index)
                for index, (prompt, result) in enumerate(zip(prompts, results))]

    def _validated(self, prompt: list[int], result: GenerationResult, budget: int, index: int) -> BaseModel | None:
        attempt = 0
        while True:
            if not result.finished:
                raise DispatchError(
                    f"{self.spec.name}: the model ran out of tokens ({budget}) before finishing its answer. "
                    "Pass a larger max_new_tokens, or train on more examples like this call.",
                    function=self.spec.name, raw_output=result.text, adapter=self.path,
                )
            try:
                return self.spec.output_type.model_validate_json(result.text)
            except ValidationError as exc:
                error = exc
            if self.on_invalid == "fallback":
                return None
            if self.on_invalid == "raise" or attempt >= self.retries:
                tries = "" if self.on_invalid == "raise" else f" after {attempt} retries"
                raise DispatchError(
                    f"{self.spec.name}: the model's answer{tries} fails {self.spec.output_type.__name__}'s "
                    f"validation: {error.errors()[0]['msg']}. Use on_invalid='retry' or 'fallback'.",
                    function=self.spec.name, raw_output=result.text, adapter=self.path,
                ) from error
            attempt += 1
            (result,) = self.loaded.generate(self.spec.output_schema, [prompt], max_new_tokens=budget,
                                             temperature=RETRY_TEMPERATURE, seed=attempt * 1000 + index)
