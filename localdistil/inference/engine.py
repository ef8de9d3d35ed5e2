"""The engine: a loaded model that answers prompts with validated objects, one outcome per item.

Every path in localdistil that generates goes through :meth:`Engine.answer` (or, for raw
token results, :meth:`Engine.generate`): dispatch, shadow, evaluation after training, the
benchmarks, and the server, tool sets and document teacher built on them. None has a decode
loop of its own, so a fix or a speed-up here reaches all of them.

An engine holds one model, in eval mode, on the best device there is:

- :meth:`Engine.for_adapter`: a base model with a trained adapter merged in, and the adapter's
  manifest (what it was trained for, how its prompts are rendered, its token budget);
- :meth:`Engine.for_base`: a base model alone, answering any schema under the grammar.

Both are loaded once per process and shared: by every thread, and by every decorated function
that names the same adapter. A retrained adapter (its manifest changed on disk) is loaded anew
on the next request for it; callers that check compatibility (dispatch) compare ``engine``
objects to know when to check again.

Generation is serialised per engine (``lock``): on a CPU, concurrent forward passes only compete
for the same cores, so concurrent callers batch instead. Each item of a batch gets its own
:class:`Outcome`: a validated object, the partial text of an answer that ran out of tokens, or
the validation error of an answer the grammar allowed but the type's validators refused. One
item failing never fails the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from localdistil.errors import AdapterError
from localdistil.models.adapter import MANIFEST_NAME, Manifest, adapter_dir
from localdistil.models.placement import inference_placement
from localdistil.models.versions import VERSIONS_SUBDIR
from localdistil.prompts import encode_prompt, render_messages, repair_turns

if TYPE_CHECKING:
    from localdistil.inference.generate import GenerationResult
    from localdistil.inference.grammar import JsonGrammar

#: The temperature of a resample after an answer failed validation.
RETRY_TEMPERATURE = 0.7

Status = Literal["ok", "budget", "invalid"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the engine made of one prompt.

    Attributes:
        status: ``"ok"`` (``value`` holds the validated answer), ``"budget"`` (the token budget
            ran out before the JSON was complete: ``text`` is the partial answer) or
            ``"invalid"`` (complete JSON that the type's validators refused: ``error`` says why).
        text: the generated text (the canonical JSON when complete).
        value: the validated answer: an instance of the requested type, or the parsed JSON when
            no type was given. ``None`` unless ``status == "ok"``.
        error: the validation message, for ``"invalid"``.
        prompt_tokens: tokens in the prompt.
        completion_tokens: tokens generated (forced ones included) by the attempt kept.
        attempts: how many answers were generated for this prompt (1 + resamples).
    """

    status: Status
    text: str
    value: Any = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 1

    @property
    def ok(self) -> bool:
        """Whether ``value`` holds a valid answer."""
        return self.status == "ok"


class Engine:
    """A loaded causal LM and its tokenizer, answering prompts under an output grammar.

    Build one with :meth:`for_adapter` or :meth:`for_base` (cached per process) rather than
    directly.

    Attributes:
        model: the model, in eval mode (an adapter already merged in).
        tokenizer: its tokenizer.
        name: what the engine serves: the function's name for an adapter, else the reference.
        manifest: the adapter's manifest, or ``None`` for a base model alone.
        path: the adapter directory, or the base model's directory.
    """

    def __init__(self, model: Any, tokenizer: Any, *, name: str, path: Path,
                 manifest: Manifest | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.path = path
        self.manifest = manifest
        self.lock = threading.Lock()
        self._prefix: Any = None  # the PromptPrefix of this engine's prompts, made on first use

    # -- loading -----------------------------------------------------------------------------

    @classmethod
    def for_adapter(cls, path: str | os.PathLike[str]) -> Engine:
        """The engine of the adapter at ``path``: an adapter directory, or a run's
        ``output.dir`` (its promoted version, resolved on every call, so a promotion or a
        rollback is followed). Loaded once per process and shared; loaded anew once the
        manifest changes on disk. Loading one version of a run lets go of the run's other
        versions, so a process keeps one model per run however often versions change.

        Raises:
            AdapterError: no complete adapter there, or the base model or tokenizer differ from
                the ones it was trained with.
            ModelError: the base model cannot be found or loaded.
        """
        directory = adapter_dir(path).resolve()
        try:
            stat = (directory / MANIFEST_NAME).stat()
        except OSError as error:  # replaced between the check and now (a retraining)
            raise AdapterError(f"{directory} changed while it was being loaded ({error}); "
                               "try again", path=directory) from None
        siblings = directory.parent if directory.parent.name == VERSIONS_SUBDIR else None
        return _cached(("adapter", str(directory)), (stat.st_mtime_ns, stat.st_size),
                       lambda: _load_adapter(directory), replaces=siblings)

    @classmethod
    def for_base(cls, reference: str | os.PathLike[str]) -> Engine:
        """The engine of a base model alone (an alias, hub id, directory or ``.gguf`` file, as
        recipes name models), loaded once per process.

        Raises:
            ModelError: the model cannot be resolved or loaded.
        """
        from localdistil.models.resolve import resolve_model

        path = resolve_model(reference)
        return _cached(("base", str(path)), (), lambda: _load_base(str(reference), path))

    # -- prompts -----------------------------------------------------------------------------

    @property
    def default_budget(self) -> int | None:
        """The token budget of one answer: from the longest answer the adapter was trained on
        (x 1.5 + 8 tokens); ``None`` for a base model (callers say how many tokens)."""
        from localdistil.inference.generate import budget_for

        return None if self.manifest is None else budget_for(self.manifest.max_output_tokens)

    def encode(self, messages: list[dict[str, Any]]) -> list[int]:
        """The token ids of a chat prompt, ending where the answer begins."""
        return encode_prompt(self.tokenizer, messages)

    def call_prompt(self, args: Mapping[str, Any],
                    repairs: Sequence[Mapping[str, str]] = ()) -> list[int]:
        """The prompt of one call of the adapter's function (bound, JSON-compatible arguments),
        token for token as training rendered it; for a tool set, ``repairs`` are answers refused
        before (``{"output", "error"}``), fed back after the call as training showed them.

        Raises:
            ValueError: the engine serves a base model, which has no function to call.
        """
        m = self.manifest
        if m is None:
            raise ValueError(f"{self.name} is a base model: render the prompt and call encode()")
        messages = render_messages(name=m.name, args=args, style=m.prompt_style,
                                   signature=m.signature, doc=m.doc)
        return self.encode(messages + repair_turns(repairs))

    def grammar(self, schema: dict[str, Any]) -> JsonGrammar:
        """The output grammar of ``schema`` for this engine's tokenizer (built once, shared)."""
        from localdistil.inference.grammar import JsonGrammar

        return JsonGrammar.for_schema(schema, self.tokenizer)

    # -- generation --------------------------------------------------------------------------

    def generate(self, schema: dict[str, Any], prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> list[GenerationResult]:
        """Canonical JSON for ``schema``, one per prompt (token ids), in one batch."""
        from localdistil.inference.generate import generate_json
        from localdistil.inference.prefix import PromptPrefix

        grammar = self.grammar(schema)
        with self.lock:
            if self._prefix is None:
                self._prefix = PromptPrefix()
            return generate_json(self.model, self.tokenizer, grammar, [list(p) for p in prompts],
                                 max_new_tokens=max_new_tokens, temperature=temperature,
                                 seed=seed, prefix=self._prefix)

    def answer(self, prompts: Sequence[Sequence[int]], *,
               output_type: type[BaseModel] | None = None, schema: dict[str, Any] | None = None,
               max_new_tokens: int | None = None, retries: int = 0, temperature: float = 0.0,
               seed: int = 0) -> list[Outcome]:
        """Answer each prompt with an object of ``output_type`` (or JSON valid for ``schema``).

        Decoding is greedy (or sampled at ``temperature``) under the grammar of the schema, so
        every complete answer is valid JSON of it; the type's validators may still refuse one
        (numeric bounds, custom validators). Those are sampled again, at
        :data:`RETRY_TEMPERATURE`, up to ``retries`` times, all the batch's retries in one batch.

        Args:
            prompts: token ids of each prompt (see :meth:`encode`, :meth:`call_prompt`).
            output_type: the Pydantic model each answer is validated into.
            schema: the JSON schema to decode under; default ``output_type``'s.
            max_new_tokens: the token budget of one answer; default :attr:`default_budget`.
            retries: how many times an answer that fails validation is sampled again.
            temperature: 0 decodes greedily; above 0 the first answers are sampled too.
            seed: seeds the sampling (the same call gives the same answers and retries).

        Returns:
            One :class:`Outcome` per prompt, in order.

        Raises:
            ValueError: neither ``output_type`` nor ``schema`` given, or no budget for a base
                model.
        """
        if schema is None:
            if output_type is None:
                raise ValueError("answer() needs output_type or schema")
            schema = output_type.model_json_schema()
        budget = max_new_tokens or self.default_budget
        if budget is None:
            raise ValueError(f"{self.name} is a base model: pass max_new_tokens")
        results = self.generate(schema, prompts, max_new_tokens=budget, temperature=temperature,
                                seed=seed if temperature > 0 else None)
        outcomes = [_outcome(result, output_type, len(prompt))
                    for result, prompt in zip(results, prompts)]
        for attempt in range(1, retries + 1):
            again = [i for i, outcome in enumerate(outcomes) if outcome.status == "invalid"]
            if not again:
                break
            results = self.generate(schema, [prompts[i] for i in again], max_new_tokens=budget,
                                    temperature=RETRY_TEMPERATURE, seed=seed + 1000 * attempt)
            for index, result in zip(again, results):
                outcomes[index] = dataclasses.replace(
                    _outcome(result, output_type, len(prompts[index])), attempts=attempt + 1)
        return outcomes

    def __repr__(self) -> str:
        kind = "base model" if self.manifest is None else "adapter"
        return f"Engine({self.name!r}, {kind} at {self.path})"


def _outcome(result: GenerationResult, output_type: type[BaseModel] | None,
             prompt_tokens: int) -> Outcome:
    """Validate one generation into an :class:`Outcome`."""
    counts = {"prompt_tokens": prompt_tokens, "completion_tokens": result.token_count}
    if not result.finished:
        return Outcome("budget", result.text, **counts)
    try:
        value = (json.loads(result.text) if output_type is None
                 else output_type.model_validate_json(result.text))
    except ValidationError as error:
        return Outcome("invalid", result.text, error=_first_error(error), **counts)
    except ValueError as error:  # json.loads: a grammar that admitted invalid JSON (a bug)
        return Outcome("invalid", result.text, error=str(error), **counts)
    return Outcome("ok", result.text, value=value, **counts)


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    return f"{where}: {first['msg']}" if where else str(first["msg"])


# -- the process-wide cache ------------------------------------------------------------------

_ENGINES: dict[tuple[str, str], tuple[Any, Engine]] = {}
_LOADING = threading.Lock()


def _cached(key: tuple[str, str], version: Any, load: Any, *,
            replaces: Path | None = None) -> Engine:
    """The engine under ``key`` if it was loaded at ``version``, else a fresh load (one thread
    loads; the others wait for it). A fresh load first drops the stale engine under ``key`` and,
    with ``replaces``, every engine of a directory inside it (the run's other versions):
    callers still holding one keep it; the cache lets it go."""
    found = _ENGINES.get(key)
    if found is not None and found[0] == version:
        return found[1]
    with _LOADING:
        found = _ENGINES.get(key)
        if found is None or found[0] != version:
            stale = [k for k in _ENGINES if k == key or (
                replaces is not None and k[0] == key[0] and Path(k[1]).parent == replaces)]
            for old in stale:
                del _ENGINES[old]
            found = _ENGINES[key] = (version, load())
    return found[1]


def _load_adapter(directory: Path) -> Engine:
    from localdistil.models.adapter import load_merged

    model, tokenizer, manifest = load_merged(directory, **inference_placement())
    return Engine(model, tokenizer, name=manifest.name, path=directory, manifest=manifest)


def _load_base(reference: str, path: Path) -> Engine:
    from localdistil.models.resolve import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path, **inference_placement())
    return Engine(model, tokenizer, name=reference, path=path)
