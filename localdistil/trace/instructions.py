"""``Instructions`` and its ``distil`` decorator: trace a function's calls into training records.

The API is instructor's, so moving to localdistil is a change of import::

    instructions = Instructions(name="three_digit_multiply", finetune_format="messages",
                                log_handlers=[logging.FileHandler("math_finetunes.jsonl")])

    @instructions.distil
    def fn(a: int, b: int) -> Multiply:
        return Multiply(a=a, b=b, result=a * b)

Tracing never changes what the function does: its return value and exceptions are exactly
those of the undecorated function, a call that raises writes no record, and a sink or record
that fails is reported as a :class:`~localdistil.errors.TraceWarning` (or raised as
:class:`~localdistil.errors.TraceError` with ``strict=True``). Tracing imports nothing heavy:
it runs inside production code.

What a decorated function does lives in :mod:`localdistil.trace.modes` (one small class per
mode; ``mode="auto"``, which switches between them per call, in :mod:`localdistil.trace.auto`);
:mod:`localdistil.trace.wrappers` turns a mode into the sync or async function;
:mod:`localdistil.trace.recorder` writes the records.
"""

from __future__ import annotations

import inspect
import logging
import os
import textwrap
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypedDict, TypeVar, overload

from localdistil.errors import DecorationError
from localdistil.records import FINETUNE_FORMATS, RecordBuilder
from localdistil.spec import FunctionSpec
from localdistil.trace.auto import AutoMode
from localdistil.trace.auto_state import AutoPolicy
from localdistil.trace.modes import DispatchMode, Mode, ShadowMode, TraceMode
from localdistil.trace.recorder import Recorder, Sampler
from localdistil.trace.sinks import HandlerSink, JsonlSink
from localdistil.trace.wrappers import (
    AutoFunction,
    DispatchedFunction,
    DistilledFunction,
    ShadowedFunction,
    build_wrapper,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

P = ParamSpec("P")
R = TypeVar("R")

#: Modes the decorator accepts: run and record, answer from the model, both and compare, or
#: each of these in turn as the model earns (and loses) trust.
MODES: tuple[str, ...] = ("distil", "dispatch", "shadow", "auto")

Redactor = Callable[[dict[str, Any]], "dict[str, Any] | None"]


class DistilOptions(TypedDict, total=False):
    """The keyword options of :meth:`Instructions.distil` besides ``mode``."""

    name: str | None
    finetune_format: Any
    fine_tune_format: Any
    model: str | os.PathLike[str] | None
    on_mismatch: Literal["raise", "warn"]
    on_invalid: Literal["raise", "retry", "fallback"]
    retries: int
    max_new_tokens: int | None
    shadow_rate: float
    promote_at: float
    demote_at: float
    window: int
    min_calls: int
    monitor_rate: float


def _format_name(value: Any, where: str) -> str:
    """Accept "messages", instructor's ``FinetuneFormat.MESSAGES`` or anything with a str value."""
    text = getattr(value, "value", value)
    if text not in FINETUNE_FORMATS:
        choices = ", ".join(repr(f) for f in FINETUNE_FORMATS)
        raise DecorationError(f"Unknown {where} {value!r}; choose one of {choices}.")
    return text


def _source_of(fn: Callable[..., Any]) -> str:
    """The function's source without its decorators, for ``include_code_body=True``."""
    try:
        lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
    except (OSError, TypeError) as exc:
        raise DecorationError(
            f"include_code_body=True needs the source of {fn.__qualname__}, which is not "
            f"available ({exc}). Define the function in a file, or leave include_code_body off."
        ) from exc
    start = next(i for i, line in enumerate(lines)
                 if line.lstrip().startswith(("def ", "async def ")))
    return "\n".join(lines[start:])


class Instructions:
    """Trace calls of decorated functions into training records.

    Args:
        name: a name for this set of traced functions (instructor's ``name``).
        id: an identifier recorded in every record as ``instructions_id``; random by default.
        log_handlers: ``logging.Handler`` objects that receive each record line as a log message
            (instructor's sinks: ``logging.FileHandler``, or your own, e.g. to S3).
        finetune_format: ``"messages"`` (default; ``function_call`` + ``functions``),
            ``"tools"`` (``tool_calls`` + ``tools``) or ``"raw"`` (the structured call only).
        indent: indentation of the JSON arguments inside ``messages``/``tools`` records
            (instructor indents by 2; ``None``, the default, writes them compactly). Training
            always uses the canonical compact form, whatever this is.
        include_code_body: show the function's source instead of its signature in the system
            prompt written to records.
        path: a JSONL file to append records to; safe with many threads and processes.
        extra: metadata merged into every record's ``localdistil`` block as ``extra``.
        sample_rate: the fraction of calls recorded, in [0, 1].
        seed: seeds the sampling decisions (``sample_rate``, and ``shadow_rate`` of the
            functions decorated here), to make them repeatable. They come from this object's
            own random generator, never from the ``random`` module's global one, whose state
            tracing leaves untouched either way.
        redact: a function that receives each record (a dict) before it is written and returns
            it, changed or not, or ``None`` to drop it (e.g. to remove personal data).
        strict: raise :class:`TraceError` when a record cannot be built or written, instead of
            warning. Use it in tests, not in production.
    """

    def __init__(
        self,
        name: str | None = None,
        id: str | None = None,
        log_handlers: Sequence[logging.Handler] | None = None,
        finetune_format: Any = "messages",
        indent: int | None = None,
        include_code_body: bool = False,
        *,
        path: str | os.PathLike[str] | None = None,
        extra: Mapping[str, Any] | None = None,
        sample_rate: float = 1.0,
        seed: int | None = None,
        redact: Redactor | None = None,
        strict: bool = False,
    ):
        self.name = name or "localdistil"
        self.id = id or str(uuid.uuid4())
        self.finetune_format = _format_name(finetune_format, "finetune_format")
        self.indent = indent
        self.include_code_body = include_code_body
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be between 0 and 1; got {sample_rate!r}.")
        self.sample_rate = sample_rate
        self.sampler = Sampler(seed)
        self.extra = dict(extra or {})
        self.redact = redact
        self.strict = strict
        self.sinks: list[JsonlSink | HandlerSink] = []
        if path is not None:
            self.sinks.append(JsonlSink(path))
        if log_handlers:
            self.sinks.append(HandlerSink(self.name, log_handlers))

    @overload
    def distil(self, fn: Callable[P, R], /) -> DistilledFunction[P, R]: ...

    @overload
    def distil(self, fn: None = None, /, *, mode: Literal["distil"] = "distil",
               **options: Unpack[DistilOptions]
               ) -> Callable[[Callable[P, R]], DistilledFunction[P, R]]: ...

    @overload
    def distil(self, fn: None = None, /, *, mode: Literal["dispatch"],
               **options: Unpack[DistilOptions]
               ) -> Callable[[Callable[P, R]], DispatchedFunction[P, R]]: ...

    @overload
    def distil(self, fn: None = None, /, *, mode: Literal["shadow"],
               **options: Unpack[DistilOptions]
               ) -> Callable[[Callable[P, R]], ShadowedFunction[P, R]]: ...

    @overload
    def distil(self, fn: None = None, /, *, mode: Literal["auto"],
               **options: Unpack[DistilOptions]
               ) -> Callable[[Callable[P, R]], AutoFunction[P, R]]: ...

    def distil(self, fn=None, /, *, name=None, mode="distil", finetune_format=None,
               fine_tune_format=None, model=None, on_mismatch="raise", on_invalid="raise",
               retries=2, max_new_tokens=None, shadow_rate=1.0, promote_at=0.97, demote_at=0.90,
               window=200, min_calls=50, monitor_rate=0.05):
        """Decorate a function whose return annotation is a Pydantic model.

        Use it bare (``@instructions.distil``) or with options
        (``@instructions.distil(model="runs/fn", mode="dispatch")``). Sync and async functions,
        methods and classmethods all work; an async function stays one, and never blocks the
        event loop while the model works (that runs in ``asyncio.to_thread``).

        Args:
            name: the name used in prompts and records; defaults to the function's name.
            mode: ``"distil"`` runs the function and records the call; ``"dispatch"`` skips the
                body and answers from the local model; ``"shadow"`` runs the function, returns its
                result, asks the model too and records whether they agree; ``"auto"`` does each
                in turn: it records calls until ``model`` has an adapter, shadows until the
                rolling agreement reaches ``promote_at``, then dispatches while still comparing
                ``monitor_rate`` of the calls, and shadows again below ``demote_at``.
            finetune_format: overrides the Instructions object's format for this function
                (``fine_tune_format`` is accepted too, as in instructor).
            model: the training run (``output.dir``) or adapter directory that answers, for
                ``dispatch`` and ``shadow``; for ``auto``, the training run, which need not exist
                yet (its promoted version is looked up every few seconds, and the router state is
                kept in ``RUN/auto/<name>.json``).
            on_mismatch: ``"raise"`` or ``"warn"`` when the adapter was trained for another
                version of the function (signature, docstring or return schema changed).
            on_invalid: when an answer fails the return type's validators: ``"raise"`` a
                ``DispatchError``, ``"retry"`` sampling, or ``"fallback"`` to running the function
                (the call is then recorded as a new training example).
            retries: how many times ``on_invalid="retry"`` samples again.
            max_new_tokens: the token budget of one answer (default: from the training answers).
            shadow_rate: the fraction of calls the model also answers in ``shadow`` mode (and in
                the shadow phase of ``auto``).
            promote_at: ``auto``: the rolling exact agreement, in [0, 1], at which the model is
                trusted and answers (with at least ``min_calls`` calls compared).
            demote_at: ``auto``: the rolling agreement below which the function answers again;
                ``0 <= demote_at < promote_at``.
            window: ``auto``: how many of the latest compared calls the agreement is taken over.
            min_calls: ``auto``: compared calls needed before trusting; ``1 <= min_calls <=
                window``.
            monitor_rate: ``auto``: the fraction of calls, in [0, 1], on which a trusted model is
                still checked: the function runs, its result is returned and compared.

        The decorated function (see :class:`DistilledFunction`) gets ``.spec`` (a
        :class:`FunctionSpec`). In dispatch mode (:class:`DispatchedFunction`) also
        ``.warmup()`` (load the model now), ``.dispatcher`` and ``.batch(calls)``: many calls
        answered in one generation batch, each call a dict of keyword arguments or a tuple of
        positional ones. A single call raises ``DispatchError`` when the model has no valid
        answer (it ran out of tokens, or failed validation with ``on_invalid="raise"`` or after
        its retries); a batch does not fail as a whole: it returns one item per call, in order,
        the answer or that call's ``DispatchError`` instance (as
        ``asyncio.gather(return_exceptions=True)`` does), and ``.batch(calls,
        raise_errors=True)`` raises the first ``DispatchError`` once the whole batch has been
        answered. In shadow mode (:class:`ShadowedFunction`) ``.shadow_stats`` and
        ``.dispatcher``; a model without a valid answer counts as a disagreement there. In auto
        mode (:class:`AutoFunction`) ``.router_stats``: the phase (``"trace"``, ``"shadow"``,
        ``"dispatch"``), the adapter version, the window's size and agreement and the calls
        compared, shared by every process of the service; a model without a valid answer
        counts as a disagreement where the call was compared, and the function answers that
        call. A new adapter version starts untrusted. The function's own exceptions pass
        through unchanged in every mode.

        Raises:
            DecorationError: no return annotation, a return type that is not a Pydantic model,
                an unknown mode or format, a dispatch mode without ``model``, or an ``auto``
                threshold out of range (the message names it).
            AdapterError, AdapterMismatchError: the adapter is missing or made for another
                version of the function (the manifest is read now; the model loads on first use).
                Not in ``auto`` mode: there an adapter that cannot answer for the function is
                reported as a ``TraceWarning`` when it is found, and the function keeps running.
        """
        if mode not in MODES:
            choices = ", ".join(repr(m) for m in MODES)
            raise DecorationError(f"Unknown mode {mode!r}; choose one of {choices}.")
        if mode != "distil" and model is None:
            raise DecorationError(f"mode={mode!r} needs model=: the output.dir of a training run "
                                  "(e.g. model=\"runs/fn\").")
        if finetune_format is not None and fine_tune_format is not None:
            raise DecorationError("Pass finetune_format or fine_tune_format, not both.")
        if not 0.0 <= shadow_rate <= 1.0:
            raise DecorationError(f"shadow_rate must be between 0 and 1; got {shadow_rate!r}.")
        policy = AutoPolicy(promote_at=promote_at, demote_at=demote_at, window=window,
                            min_calls=min_calls, monitor_rate=monitor_rate)
        chosen = finetune_format if finetune_format is not None else fine_tune_format
        fmt = self.finetune_format if chosen is None else _format_name(chosen, "finetune_format")
        dispatch_options = {"on_mismatch": on_mismatch, "on_invalid": on_invalid,
                            "retries": retries, "max_new_tokens": max_new_tokens}

        def decorate(func: Callable[..., Any]) -> Any:
            spec = FunctionSpec.from_function(func, name=name)
            builder = RecordBuilder(
                spec,
                finetune_format=fmt,
                indent=self.indent,
                source=_source_of(func) if self.include_code_body else None,
                extra=self.extra,
                instructions_id=self.id,
            )
            recorder = Recorder(self, builder)
            return build_wrapper(func, self._mode(mode, recorder, model, dispatch_options,
                                                  shadow_rate, policy))

        return decorate if fn is None else decorate(fn)

    @staticmethod
    def _mode(mode: str, recorder: Recorder, model: Any, dispatch_options: dict[str, Any],
              shadow_rate: float, policy: AutoPolicy) -> Mode:
        if mode == "distil":
            return TraceMode(recorder)
        if mode == "auto":  # the adapter may come later: no Dispatcher yet
            from localdistil.inference.dispatch import ON_INVALID, ON_MISMATCH

            for key, allowed in (("on_invalid", ON_INVALID), ("on_mismatch", ON_MISMATCH)):
                if dispatch_options[key] not in allowed:
                    raise DecorationError(f"{key} must be one of {', '.join(allowed)}; got "
                                          f"{dispatch_options[key]!r}.")
            return AutoMode(recorder, model, dispatch_options, policy, shadow_rate)
        from localdistil.inference.dispatch import Dispatcher

        try:
            dispatcher = Dispatcher(recorder.spec, model, **dispatch_options)
        except ValueError as exc:
            raise DecorationError(str(exc)) from exc
        if mode == "dispatch":
            return DispatchMode(recorder, dispatcher)
        return ShadowMode(recorder, dispatcher, shadow_rate)

    def close(self) -> None:
        """Close the JSONL file and flush the log handlers."""
        for sink in self.sinks:
            sink.close()

    def __repr__(self) -> str:
        return (f"Instructions(name={self.name!r}, finetune_format={self.finetune_format!r}, "
                f"sinks={self.sinks!r})")
