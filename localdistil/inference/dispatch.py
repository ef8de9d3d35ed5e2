"""Dispatch: the distilled model answers for the function, always with a valid object or an
error that says why.

:class:`Dispatcher` answers calls of one decorated function through the adapter's
:class:`~localdistil.inference.engine.Engine`: the prompt is rendered with
:mod:`localdistil.prompts` exactly as training rendered it (style, name and signature from the
manifest), decoded greedily under the return type's grammar and validated into the type.

- An adapter made for another version of the function raises :class:`AdapterMismatchError`
  saying what changed (``on_mismatch="warn"`` downgrades it to a warning). The check runs at
  decoration time and again whenever a retrained adapter is loaded in its place.
- The token budget is the longest training answer x 1.5 + 8 tokens (``max_new_tokens``
  overrides it). An answer that runs out of it is a :class:`DispatchError` with the partial
  text; an invalid object is never returned.
- Pydantic validators the grammar cannot express may still refuse an answer:
  ``on_invalid="raise"`` makes it a :class:`DispatchError`, ``"retry"`` samples again up to
  ``retries`` times, ``"fallback"`` answers :data:`FALLBACK` so that the caller runs the
  original function (the decorator does, and records that call as a new example).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from localdistil.errors import DispatchError
from localdistil.inference.engine import Engine, Outcome
from localdistil.models.adapter import (
    Manifest,
    adapter_dir,
    check_compatible,
    mismatch_error,
    read_manifest,
)
from localdistil.spec import FunctionSpec

#: What ``on_invalid`` accepts.
ON_INVALID = ("raise", "retry", "fallback")
#: What ``on_mismatch`` accepts.
ON_MISMATCH = ("raise", "warn")


class _Fallback:
    """The answer that tells the caller to run the function itself."""

    def __repr__(self) -> str:
        return "FALLBACK"


#: Returned for a call whose answer failed validation under ``on_invalid="fallback"``.
FALLBACK: Any = _Fallback()


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
        ValueError: an unknown ``on_invalid`` or ``on_mismatch``.
    """

    def __init__(self, spec: FunctionSpec, model: str | Path, *, on_mismatch: str = "raise",
                 on_invalid: str = "raise", retries: int = 2, max_new_tokens: int | None = None):
        if on_invalid not in ON_INVALID:
            raise ValueError(
                f"on_invalid must be one of {', '.join(ON_INVALID)}; got {on_invalid!r}."
            )
        if on_mismatch not in ON_MISMATCH:
            raise ValueError(
                f"on_mismatch must be one of {', '.join(ON_MISMATCH)}; got {on_mismatch!r}."
            )
        self.spec = spec
        self.model = model
        self.path = adapter_dir(model)
        self.on_mismatch = on_mismatch
        self.on_invalid = on_invalid
        self.retries = retries
        self.max_new_tokens = max_new_tokens
        self._checked: Engine | None = None
        self._check_lock = threading.Lock()
        self._manifest = read_manifest(self.path)
        self._check(self._manifest)

    def _check(self, manifest: Manifest) -> None:
        """Raise (or warn) if ``manifest`` was trained for another version of the function;
        remember it as checked only once it has passed (or been warned about)."""
        changes = check_compatible(manifest, self.spec)
        if changes:
            error = mismatch_error(manifest, self.spec, changes, self.path)
            if self.on_mismatch == "raise":
                raise error
            warnings.warn(str(error), UserWarning, stacklevel=4)
        self._manifest = manifest

    @property
    def engine(self) -> Engine:
        """The adapter's engine, loaded on first use. ``model`` is resolved on every call, so a
        run directory follows its promoted version (a promotion or a rollback) and an adapter
        directory its retraining; a new adapter is checked against the function before it
        answers."""
        engine = Engine.for_adapter(self.model)
        self.path = engine.path
        if engine is not self._checked:
            with self._check_lock:
                if engine is not self._checked:
                    if engine.manifest != self._manifest:  # retrained since it was checked
                        self._check(engine.manifest)
                    self._checked = engine
        return engine

    def warmup(self) -> None:
        """Load the model and build the grammar now, not on the first call."""
        self.engine.grammar(self.spec.output_schema)

    def answer(self, args: Mapping[str, Any]) -> BaseModel:
        """The model's answer to one call (bound, JSON-compatible arguments), or
        :data:`FALLBACK`.

        Raises:
            DispatchError: no valid answer (see :meth:`answer_many`).
        """
        (answer,) = self.answer_many([args])
        if isinstance(answer, DispatchError):
            raise answer
        return answer

    def answer_many(self, calls: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Answer many calls in one batch, one answer per call, each on its own:

        - the answer, validated into the return type;
        - :data:`FALLBACK` where it failed validation and ``on_invalid="fallback"``;
        - a :class:`DispatchError` (returned, not raised) where there is no answer: it ran out
          of tokens (``raw_output`` holds the partial text), or failed validation with
          ``on_invalid="raise"``, or still failed after the retries.
        """
        engine = self.engine
        budget = self.max_new_tokens or engine.default_budget
        outcomes = engine.answer([engine.call_prompt(args) for args in calls],
                                 output_type=self.spec.output_type,
                                 schema=self.spec.output_schema, max_new_tokens=budget,
                                 retries=self.retries if self.on_invalid == "retry" else 0)
        return [self._resolve(outcome, budget) for outcome in outcomes]

    def _resolve(self, outcome: Outcome, budget: int | None) -> Any:
        if outcome.ok:
            return outcome.value
        spec = self.spec
        context = {"function": spec.name, "raw_output": outcome.text, "adapter": self.path}
        if outcome.status == "budget":
            return DispatchError(
                f"{spec.name}: the model ran out of tokens ({budget}) before finishing its "
                "answer. Pass a larger max_new_tokens, or train on more examples like this call.",
                **context)
        if self.on_invalid == "fallback":
            return FALLBACK
        tries = "" if self.on_invalid == "raise" else f" after {outcome.attempts - 1} retries"
        return DispatchError(
            f"{spec.name}: the model's answer{tries} fails {spec.output_type.__name__}'s "
            f"validation: {outcome.error}. Use on_invalid='retry' or 'fallback'.", **context)
