"""``Toolset``: structured output from any of several tools, distilled and answered locally.

What functioncalming does with a hosted model, with a local one::

    support = Toolset(name="support", tools=[Refund, Escalation, lookup_order],
                      teacher=route, path="traces/support.jsonl")
    support.complete(user_message="...", mode="trace")       # the teacher answers; recorded
    $ python -m localdistil train recipes/support_desk.yaml  # data.function: support
    result = support.complete(user_message="...", mode="dispatch", model="runs/support")
    result.tool_calls, result.tool_call_results, result.messages, result.messages_raw

Modes (each a small function below):

``trace``
    the teacher answers (any callable ``messages -> [{"name", "arguments"}, ...]``: code, a
    served model, functioncalming on a hosted model); its calls are validated, function tools
    run, and the call is recorded.
``dispatch``
    the adapter answers under the union grammar (:mod:`localdistil.inference.tools`); an answer
    the tools refuse goes to ``on_invalid``: ``"resample"`` (up to ``retries`` samples, each
    unlike the refused ones), ``"repair"`` (up to ``retries`` times, the refused answer and the
    error are fed back to the model, which answers again: offered only by an adapter that learnt
    from such repair turns, :attr:`~localdistil.records.Record.repairs`), ``"fallback"`` (the
    teacher answers, and the call is recorded as a new example, and once more with the model's
    refused answer fed back, as a repair turn to learn from) or ``"raise"``
    (:class:`~localdistil.errors.ToolCallError`).
``shadow``
    the teacher answers and is returned (and recorded); the model answers too, without running
    any function, and whether the two agree (the same calls in any order) is recorded in the
    record and counted in :attr:`Toolset.agreement`.
``auto``
    as a function's ``mode="auto"`` (:mod:`localdistil.trace.auto`): the teacher answers and is
    recorded while the run has no promoted adapter; then shadows, each comparison counted in the
    run's router state (``RUN/auto/<name>.json``, shared by processes), until the rolling
    agreement reaches ``policy.promote_at``; then the model answers, ``policy.monitor_rate`` of
    the calls still shadowed, and agreement below ``policy.demote_at`` goes back to shadowing. A
    model that cannot answer (refused after resampling, out of tokens, cannot load) falls back
    to the teacher for that call, recorded as a new example. A new promoted version starts
    untrusted; :meth:`Toolset.router_stats` says where it stands.

Records are OpenAI chat fine-tuning lines with ``tools`` and one assistant message holding
every call in ``tool_calls``, plus localdistil's block (the tool set as a function of
``user_message``; ``output`` is what the model writes; ``output_schema`` the union schema), so
they train with ``python -m localdistil train`` like any function's records.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from localdistil.errors import (
    AdapterMismatchError,
    LocaldistilError,
    ToolCallError,
    TraceError,
    TraceWarning,
)
from localdistil.inference.agreement import Agreement, Comparison
from localdistil.inference.tools import (
    Answered,
    Attempt,
    ToolCall,
    ToolsetResult,
    ToolUnion,
    build_result,
)
from localdistil.prompts import (
    PROMPT_VERSION,
    TOOLSET_PARAMETER,
    repair_turns,
    toolset_doc,
    toolset_signature,
)
from localdistil.records.build import RECORD_VERSION
from localdistil.spec import canonical_json, fingerprint, schema_hash
from localdistil.trace.auto import Router, RouterStats
from localdistil.trace.auto_state import AutoPolicy
from localdistil.trace.sinks import HandlerSink, JsonlSink

if TYPE_CHECKING:
    from localdistil.inference.engine import Engine

Teacher = Callable[[list[dict[str, Any]]], Sequence[Any]]
Mode = Literal["trace", "dispatch", "shadow", "auto"]
#: What ``mode`` accepts.
MODES = ("trace", "dispatch", "shadow", "auto")
#: What ``on_invalid`` accepts.
ON_INVALID = ("resample", "repair", "fallback", "raise")


class Toolset:
    """A named set of tools whose calls are traced, distilled and answered locally.

    Args:
        name: the tool set's name: records carry it (``data.function`` in a recipe names it)
            and prompts show it.
        tools: Pydantic model classes and plain functions (their parameters become a model,
            from the signature and the docstring's ``Args:``; they run with the validated
            arguments).
        parallel: answers hold 1 to ``max_calls`` calls; with ``False``, exactly one.
        max_calls: the most calls in one answer.
        teacher: answers in ``trace`` and ``shadow`` modes and for ``on_invalid="fallback"``:
            ``teacher(messages)`` returns a list of ``{"name", "arguments"}`` (arguments a
            dict, a model or JSON text).
        model: the default adapter (a run directory or adapter) for ``dispatch`` and
            ``shadow``; the run directory for ``auto``.
        path: a JSONL file to append records to (safe with many threads and processes).
        log_handlers: ``logging.Handler`` objects that receive each record line.
        on_invalid: ``"resample"``, ``"repair"``, ``"fallback"`` or ``"raise"`` (see the
            module docstring).
        retries: how many samples ``"resample"`` tries after the first answer (how many
            answers ``"repair"`` feeds back).
        strict: raise :class:`~localdistil.errors.TraceError` when a record cannot be written
            (or ``auto``'s state file cannot be read or written), instead of warning.
        policy: when ``auto`` hands calls to the model and takes them back (the thresholds of
            a function's ``mode="auto"``).
        seed: seeds which calls ``auto`` still compares while dispatching.

    Raises:
        TypeError, ValueError: a tool that is neither a model nor a function, two tools of one
            name, an unknown ``on_invalid``.
        DecorationError: a ``policy`` threshold out of range.
    """

    def __init__(self, name: str, tools: Sequence[Any], *, parallel: bool = True,
                 max_calls: int = 4, teacher: Teacher | None = None,
                 model: str | os.PathLike[str] | None = None,
                 path: str | os.PathLike[str] | None = None,
                 log_handlers: Sequence[logging.Handler] | None = None,
                 on_invalid: str = "resample", retries: int = 2, strict: bool = False,
                 policy: AutoPolicy | None = None, seed: int | None = None):
        if on_invalid not in ON_INVALID:
            raise ValueError(f"on_invalid must be one of {', '.join(ON_INVALID)}; "
                             f"got {on_invalid!r}")
        self.name = name
        self.union = ToolUnion(name, tools, parallel=parallel, max_calls=max_calls)
        self.teacher = teacher
        self.model = model
        self.on_invalid = on_invalid
        self.retries = retries
        self.strict = strict
        self.agreement = Agreement()
        self.policy = policy if policy is not None else AutoPolicy()
        self._routers: dict[Path, Router[Engine]] = {}
        self._sampler = random.Random(seed)
        self.sinks: list[JsonlSink | HandlerSink] = []
        if path is not None:
            self.sinks.append(JsonlSink(path))
        if log_handlers:
            self.sinks.append(HandlerSink(name, log_handlers))

    @property
    def schema(self) -> dict[str, Any]:
        """The union schema answers are decoded under (and records carry)."""
        return self.union.schema

    @property
    def signature(self) -> str:
        return toolset_signature(self.name)

    def complete(self, user_message: str, *, mode: Mode = "dispatch",
                 model: str | os.PathLike[str] | None = None,
                 teacher: Teacher | None = None) -> ToolsetResult:
        """Answer one user message with tool calls, in ``mode``.

        Raises:
            ToolCallError: the teacher's calls are invalid, or the model's with
                ``on_invalid="raise"``.
            AdapterMismatchError: the adapter was trained for another tool set.
            ValueError: an unknown mode, or no teacher/model where the mode needs one.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        run = {"trace": _trace, "dispatch": _dispatch, "shadow": _shadow, "auto": _auto}[mode]
        return run(self, user_message, model or self.model, teacher or self.teacher)

    def router_stats(self, model: str | os.PathLike[str] | None = None) -> RouterStats:
        """Where ``mode="auto"`` stands with the run at ``model`` (default: ``self.model``):
        phase, version, rolling agreement, as every process sharing its state sees it.

        Raises:
            ValueError: no model given.
        """
        return RouterStats(self._router(model))

    def _router(self, model: str | os.PathLike[str] | None) -> Router[Engine]:
        """The router that follows the run at ``model`` for ``auto`` (one per run)."""
        model = model or self.model
        if model is None:
            raise ValueError(f"tool set {self.name}: pass model= (the training run's "
                             "output.dir) for mode='auto'")
        key = Path(model).resolve()
        router = self._routers.get(key)
        if router is None:
            router = self._routers.setdefault(key, Router(
                key, self.name, self.policy, lambda version, path: self.engine(path),
                self._report))
        return router

    def _report(self, message: str, exc: BaseException) -> None:
        """A problem on the model's side that the caller need not see: a
        :class:`~localdistil.errors.TraceWarning`, or :class:`~localdistil.errors.TraceError` when
        strict."""
        if self.strict:
            raise TraceError(message) from exc
        warnings.warn(message, TraceWarning, stacklevel=4)

    # -- the pieces the modes share ------------------------------------------------------------

    def engine(self, model: str | os.PathLike[str] | None) -> Engine:
        """The adapter's engine, checked to be trained for this tool set.

        Raises:
            ValueError: no model given.
            AdapterMismatchError: trained for other tools or another prompt version.
        """
        from localdistil.inference.engine import Engine

        if model is None:
            raise ValueError(f"tool set {self.name}: pass model= (a run directory or adapter)")
        engine = Engine.for_adapter(model)
        manifest = engine.manifest
        if manifest is None:  # for_adapter always reads one; a base model has none
            raise AdapterMismatchError(f"{model} holds no adapter manifest", path=engine.path)
        changes: dict[str, Any] = {}
        trained = manifest.output_schema or {}
        if schema_hash(trained) != schema_hash(self.schema):
            changes["output_schema"] = (trained, self.schema)
        if manifest.prompt_version != PROMPT_VERSION:
            changes["prompt_version"] = (manifest.prompt_version, PROMPT_VERSION)
        if changes:
            was = (trained.get("x-localdistil-toolset") or {}).get("tools")
            raise AdapterMismatchError(
                f"the adapter at {engine.path} was trained for {manifest.name} "
                f"(tools {was}), not for tool set {self.name} as it is now (tools "
                f"{list(self.union.tools)}, parallel={self.union.parallel}, max_calls="
                f"{self.union.max_calls}; prompt version {PROMPT_VERSION}). Trace calls of "
                "this tool set and train again.", path=engine.path, changes=changes)
        return engine

    def prompt(self, engine: Engine, user_message: str,
               repairs: Sequence[Mapping[str, str]] = ()) -> list[int]:
        """The prompt's token ids, rendered from the adapter's manifest exactly as its training
        rendered it (so a tool whose docstring changed since cannot change the prompt), with
        the answers refused before fed back (``{"output", "error"}``)."""
        return engine.call_prompt({TOOLSET_PARAMETER: user_message}, repairs)

    def ask_teacher(self, user_message: str, teacher: Teacher | None,
                    ) -> tuple[list[ToolCall], list[Any], Attempt]:
        """The teacher's calls, validated and executed.

        Raises:
            ValueError: no teacher.
            ToolCallError: the teacher's calls are refused.
        """
        if teacher is None:
            raise ValueError(f"tool set {self.name}: this needs a teacher (Toolset(teacher=...) "
                             "or complete(teacher=...))")
        answered = [_as_call(call) for call in teacher([{"role": "user", "content": user_message}])]
        calls, results = self.union.accept(answered)
        return calls, results, Attempt("teacher", answered)

    def record(self, user_message: str, calls: Sequence[ToolCall], duration_s: float,
               annotations: Mapping[str, Any] | None = None) -> None:
        """Write the record of one call (the clean calls) to every sink; failures warn."""
        if not self.sinks:
            return
        try:
            line = json.dumps(self.record_of(user_message, calls, duration_s, annotations),
                              ensure_ascii=False, separators=(",", ":"))
            for sink in self.sinks:
                sink.write(line)
        except Exception as exc:
            message = f"localdistil could not record a call of tool set {self.name}: {exc}"
            if self.strict:
                raise TraceError(message) from exc
            warnings.warn(message, TraceWarning, stacklevel=4)

    def record_of(self, user_message: str, calls: Sequence[ToolCall], duration_s: float = 0.0,
                  annotations: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record of one call: an OpenAI chat fine-tuning line with ``tools`` and every
        call in ``tool_calls``, and localdistil's block."""
        union = self.union
        doc = toolset_doc(union.definitions)
        block: dict[str, Any] = {
            "version": RECORD_VERSION, "function": self.name, "name": self.name,
            "signature": self.signature, "doc": doc,
            "fingerprint": fingerprint(self.signature, doc, self.schema),
            "schema_hash": schema_hash(self.schema), "output_schema": self.schema,
            "toolset": {"tools": list(union.tools), "parallel": union.parallel,
                        "max_calls": union.max_calls},
            "args": {TOOLSET_PARAMETER: user_message}, "output": union.output(calls),
            "id": str(uuid.uuid4()),
            "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            "duration_s": round(duration_s, 6), **(annotations or {}),
        }
        return {
            "messages": [{"role": "user", "content": user_message},
                         *repair_turns(block.get("repairs") or ()),
                         {"role": "assistant", "content": None,
                          "tool_calls": [call.to_openai() for call in calls]}],
            "tools": [{"type": "function", "function": d} for d in union.definitions],
            "localdistil": block,
        }

    def close(self) -> None:
        """Close the record sinks."""
        for sink in self.sinks:
            sink.close()

    def __repr__(self) -> str:
        return f"Toolset({self.name!r}, tools={list(self.union.tools)})"


# -- the modes -----------------------------------------------------------------------------------


def _trace(toolset: Toolset, user_message: str, model: Any, teacher: Teacher | None
           ) -> ToolsetResult:
    started = time.perf_counter()
    calls, results, attempt = toolset.ask_teacher(user_message, teacher)
    toolset.record(user_message, calls, time.perf_counter() - started)
    return build_result(user_message, [attempt], calls, results, "teacher")


def _dispatch(toolset: Toolset, user_message: str, model: Any, teacher: Teacher | None
              ) -> ToolsetResult:
    answered = _model_answer(toolset, toolset.engine(model), user_message)
    if answered.ok:
        return build_result(user_message, answered.attempts, answered.calls, answered.results,
                            "model")
    error = ToolCallError(f"tool set {toolset.name}: {answered.error}",
                          raw_output=answered.attempts[-1].text, attempts=len(answered.attempts))
    if toolset.on_invalid == "raise":
        raise error
    if toolset.on_invalid == "fallback":
        return _fallback(toolset, user_message, teacher, answered.attempts, answered.error)
    return build_result(user_message, answered.attempts, None, [], error=error)


def _model_answer(toolset: Toolset, engine: Engine, user_message: str) -> Answered:
    """The model's calls, validated and executed; refused ones resampled or repaired per
    ``on_invalid``.

    Raises:
        AdapterMismatchError: ``on_invalid="repair"`` with an adapter that learnt no repair.
    """
    from localdistil.inference.tools import answer_with_model

    if toolset.on_invalid != "repair":
        resamples = toolset.retries if toolset.on_invalid == "resample" else 0
        return answer_with_model(engine, toolset.union, toolset.prompt(engine, user_message),
                                 resamples=resamples)
    manifest = engine.manifest
    if manifest is None or not manifest.repair_examples:
        raise AdapterMismatchError(
            f"tool set {toolset.name}: on_invalid='repair' feeds refused answers back to the "
            f"model, and the adapter at {engine.path} learnt from no such turn (no training "
            "record had repairs). Use on_invalid='resample' or 'fallback' (which records the "
            "repair turns a later training learns from).", path=engine.path,
            changes={"repair_examples": (0, "at least 1")})
    attempts, repairs = [], []
    for _ in range(toolset.retries + 1):
        answered = answer_with_model(engine, toolset.union,
                                     toolset.prompt(engine, user_message, repairs))
        attempts += answered.attempts
        if answered.ok:
            return Answered(answered.calls, answered.results, attempts)
        refused = answered.attempts[-1]
        repairs.append({"output": refused.text or "", "error": refused.error or ""})
    return Answered(None, [], attempts)


def _fallback(toolset: Toolset, user_message: str, teacher: Teacher | None,
              rejected: Sequence[Attempt], error: str | None) -> ToolsetResult:
    """The teacher answers where the model could not; recorded as a new example, and again
    with the model's first refused answer fed back (a repair turn, for ``"repair"`` to learn
    from)."""
    started = time.perf_counter()
    calls, results, attempt = toolset.ask_teacher(user_message, teacher)
    duration = time.perf_counter() - started
    toolset.record(user_message, calls, duration,
                   {"fallback": {"rejected": [a.text for a in rejected], "error": error}})
    first = next((a for a in rejected if a.text is not None and a.error), None)
    if first is not None:
        toolset.record(user_message, calls, duration,
                       {"repairs": [{"output": first.text, "error": first.error}]})
    return build_result(user_message, [*rejected, attempt], calls, results, "teacher")


def _shadow(toolset: Toolset, user_message: str, model: Any, teacher: Teacher | None
            ) -> ToolsetResult:
    return _compare(toolset, user_message, teacher, lambda: toolset.engine(model))[0]


def _compare(toolset: Toolset, user_message: str, teacher: Teacher | None,
             engine: Callable[[], Engine]) -> tuple[ToolsetResult, bool | None]:
    """The teacher's answer (recorded), and whether the model's agreed with it (``None``
    when the model could not answer at all)."""
    from localdistil.inference.tools import answer_with_model

    started = time.perf_counter()
    calls, results, attempt = toolset.ask_teacher(user_message, teacher)
    duration = time.perf_counter() - started
    teacher_result = build_result(user_message, [attempt], calls, results, "teacher")
    try:  # the model's side never breaks the caller: the teacher's tools have run already
        answerer = engine()
        answered = answer_with_model(answerer, toolset.union,
                                     toolset.prompt(answerer, user_message), execute=False)
    except Exception as exc:
        warnings.warn(f"localdistil shadow: the model could not answer tool set "
                      f"{toolset.name}: {exc}", TraceWarning, stacklevel=4)
        toolset.record(user_message, calls, duration, None)
        return teacher_result, None
    agree = answered.ok and same_calls(toolset.union.output(calls),
                                       toolset.union.output(answered.calls or []))
    toolset.agreement.add(Comparison(exact=agree, fields={"tool_calls": agree}))
    shadow = {"agree": agree, "model": answered.attempts[-1].text, "model_error": answered.error}
    toolset.record(user_message, calls, duration, {"shadow": shadow})
    return teacher_result, agree


def _auto(toolset: Toolset, user_message: str, model: Any, teacher: Teacher | None
          ) -> ToolsetResult:
    router = toolset._router(model)
    if router.due:
        router.look()
    route, view = router.current()
    if route is None:  # no usable adapter yet: the teacher answers, and is recorded
        return _trace(toolset, user_message, model, teacher)
    if view.phase == "dispatch" and toolset._sampler.random() >= toolset.policy.monitor_rate:
        try:
            answered = _model_answer(toolset, route.answerer, user_message)
        except LocaldistilError as exc:  # the model's side never breaks the caller (a function
            # tool's own exception passes through, as in dispatch)
            toolset._report(f"localdistil auto: the model could not answer tool set "
                            f"{toolset.name} ({exc}); the teacher answered.", exc)
            return _fallback(toolset, user_message, teacher, [], repr(exc))
        if answered.ok:
            return build_result(user_message, answered.attempts, answered.calls,
                                answered.results, "model")
        return _fallback(toolset, user_message, teacher, answered.attempts, answered.error)
    result, agree = _compare(toolset, user_message, teacher, lambda: route.answerer)
    if agree is not None:
        router.state.add(route.version, agree)
    return result


def same_calls(expected: Mapping[str, Any], got: Mapping[str, Any] | None) -> bool:
    """Whether two tool-set outputs hold the same calls, in any order (the order of parallel
    calls carries no meaning)."""
    from localdistil.records.record import output_calls

    if got is None:
        return False

    def key(output: Mapping[str, Any]) -> list[str]:
        return sorted(canonical_json(call) for call in output_calls(output))

    return key(expected) == key(got)


def _as_call(call: Any) -> dict[str, Any]:
    """A teacher's call as ``{"name", "arguments"}``: from a dict (OpenAI's ``function`` form
    too), a :class:`ToolCall`, or an object with ``name`` and ``arguments``."""
    if isinstance(call, ToolCall):
        return {"name": call.name, "arguments": call.arguments}
    if isinstance(call, Mapping):
        call = call.get("function", call)
        return {"name": call.get("name"), "arguments": call.get("arguments")}
    return {"name": getattr(call, "name", None), "arguments": getattr(call, "arguments", None)}
