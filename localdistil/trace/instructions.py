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
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import random
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from localdistil.errors import DecorationError, TraceError, TraceWarning
from localdistil.records import FINETUNE_FORMATS, RecordBuilder
from localdistil.trace.sinks import HandlerSink, JsonlSink
from localdistil.spec import FunctionSpec

if TYPE_CHECKING:
    from localdistil.inference.dispatch import Dispatcher

F = TypeVar("F", bound=Callable[..., Any])

#: Modes the decorator accepts: run and record, answer from the model, or both and compare.
MODES: tuple[str, ...] = ("distil", "dispatch", "shadow")

Redactor = Callable[[dict[str, Any]], "dict[str, Any] | None"]

_log = logging.getLogger("localdistil")


def _format_name(value: Any, where: str) -> str:
    """Accept "messages", instructor's ``FinetuneFormat.MESSAGES`` or anything with a str value."""
    text = getattr(value, "value", value)
    if text not in FINETUNE_FORMATS:
        raise DecorationError(
            f"Unknown {where} {value!r}; choose one of {', '.join(repr(f) for f in FINETUNE_FORMATS)}."
        )
    return text


def _source_of(fn: Callable[..., Any]) -> str:
    """The function's source without its decorators, for ``include_code_body=True``."""
    try:
        lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
    except (OSError, TypeError) as exc:
        raise DecorationError(
            f"include_code_body=True needs the source of {fn.__qualname__}, which is not available "
            f"({exc}). Define the function in a file, or leave include_code_body off."
        ) from exc
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(("def ", "async def ")))
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
        path: str | None = None,
        extra: Mapping[str, Any] | None = None,
        sample_rate: float = 1.0,
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
        self.extra = dict(extra or {})
        self.redact = redact
        self.strict = strict
        self.sinks: list[JsonlSink | HandlerSink] = []
        if path is not None:
            self.sinks.append(JsonlSink(path))
        if log_handlers:
            self.sinks.append(HandlerSink(self.name, log_handlers))

    @overload
    def distil(self, fn: F, /) -> F: ...

    @overload
    def distil(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        mode: str = "distil",
        finetune_format: Any = None,
        fine_tune_format: Any = None,
        model: str | None = None,
        on_mismatch: str = "raise",
        on_invalid: str = "raise",
        retries: int = 2,
        max_new_tokens: int | None = None,
        shadow_rate: float = 1.0,
    ) -> Callable[[F], F]: ...

    def distil(self, fn=None, /, *, name=None, mode="distil", finetune_format=None, fine_tune_format=None,
               model=None, on_mismatch="raise", on_invalid="raise", retries=2, max_new_tokens=None,
               shadow_rate=1.0):
        """Decorate a function whose return annotation is a Pydantic model.

        Use it bare (``@instructions.distil``) or with options
        (``@instructions.distil(model="runs/fn", mode="dispatch")``).

        Args:
            name: the name used in prompts and records; defaults to the function's name.
            mode: ``"distil"`` runs the function and records the call; ``"dispatch"`` skips the
                body and answers from the local model; ``"shadow"`` runs the function, returns its
                result, asks the model too and records whether they agree.
            finetune_format: overrides the Instructions object's format for this function
                (``fine_tune_format`` is accepted too, as in instructor).
            model: the training run (``output.dir``) or adapter directory that answers, for
                ``dispatch`` and ``shadow``.
            on_mismatch: ``"raise"`` or ``"warn"`` when the adapter was trained for another
                version of the function (signature, docstring or return schema changed).
            on_invalid: when an answer fails the return type's validators: ``"raise"`` a
                ``DispatchError``, ``"retry"`` sampling, or ``"fallback"`` to running the function
                (the call is then recorded as a new training example).
            retries: how many times ``on_invalid="retry"`` samples again.
            max_new_tokens: the token budget of one answer (default: from the training answers).
            shadow_rate: the fraction of calls the model also answers in ``shadow`` mode.

        The decorated function gets ``.spec`` (a :class:`FunctionSpec`); in dispatch mode also
        ``.batch(calls)`` (answer many calls in one batch; each call a dict of keyword
        arguments or a tuple of positional ones) and ``.warmup()`` (load the model now); in
        shadow mode ``.shadow_stats``.

        Raises:
            DecorationError: no return annotation, a return type that is not a Pydantic model,
                an unknown mode or format, or a dispatch mode without ``model``.
            AdapterError, AdapterMismatchError: the adapter is missing or made for another
                version of the function (the manifest is read now; the model loads on first use).
        """
        if mode not in MODES:
            raise DecorationError(f"Unknown mode {mode!r}; choose one of {', '.join(repr(m) for m in MODES)}.")
        if mode != "distil" and model is None:
            raise DecorationError(f"mode={mode!r} needs model=: the output.dir of a training run (e.g. model=\"runs/fn\").")
        if finetune_format is not None and fine_tune_format is not None:
            raise DecorationError("Pass finetune_format or fine_tune_format, not both.")
        if not 0.0 <= shadow_rate <= 1.0:
            raise DecorationError(f"shadow_rate must be between 0 and 1; got {shadow_rate!r}.")
        chosen = finetune_format if finetune_format is not None else fine_tune_format
        fmt = self.finetune_format if chosen is None else _format_name(chosen, "finetune_format")

        def decorate(func: F) -> F:
            spec = FunctionSpec.from_function(func, name=name)
            builder = RecordBuilder(
                spec,
                finetune_format=fmt,
                indent=self.indent,
                source=_source_of(func) if self.include_code_body else None,
                extra=self.extra,
                instructions_id=self.id,
            )
            if mode == "distil":
                return self._traced(func, builder)
            from localdistil.inference.dispatch import Dispatcher

            try:
                dispatcher = Dispatcher(spec, model, on_mismatch=on_mismatch, on_invalid=on_invalid,
                                        retries=retries, max_new_tokens=max_new_tokens)
            except ValueError as exc:
                raise DecorationError(str(exc)) from exc
            if mode == "dispatch":
                return self._dispatching(func, builder, dispatcher)
            return self._shadowing(func, builder, dispatcher, shadow_rate)

        return decorate if fn is None else decorate(fn)

    # -- tracing --------------------------------------------------------------------------------

    def _traced(self, fn: F, builder: RecordBuilder) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def traced_async(*args: Any, **kwargs: Any) -> Any:
                bound = self._bind(builder, args, kwargs)
                start = time.perf_counter()
                result = await fn(*args, **kwargs)
                self._record(builder, bound, result, time.perf_counter() - start)
                return result

            wrapper: Any = traced_async
        else:

            @functools.wraps(fn)
            def traced(*args: Any, **kwargs: Any) -> Any:
                bound = self._bind(builder, args, kwargs)
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                self._record(builder, bound, result, time.perf_counter() - start)
                return result

            wrapper = traced
        wrapper.spec = builder.spec
        return wrapper

    def _dispatching(self, fn: F, builder: RecordBuilder, dispatcher: Dispatcher) -> F:
        """Skip the body; the model answers. A fallback runs the traced function instead."""
        spec = builder.spec
        traced = self._traced(fn, builder)

        def pairs_of(calls: Sequence[Any]) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
            """Batch items: a mapping of keyword arguments or a sequence of positional ones."""
            return [((), dict(c)) if isinstance(c, Mapping) else (tuple(c), {}) for c in calls]

        def model_answers(pairs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
            return dispatcher.answer_many([spec.bind(args, kwargs) for args, kwargs in pairs])

        if inspect.iscoroutinefunction(fn):

            async def answer(pairs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
                answers = await asyncio.to_thread(model_answers, pairs)
                return [a if a is not None else await traced(*args, **kwargs) for a, (args, kwargs) in zip(answers, pairs)]

            @functools.wraps(fn)
            async def dispatch_async(*args: Any, **kwargs: Any) -> Any:
                return (await answer([(args, kwargs)]))[0]

            async def abatch(calls: Sequence[Any]) -> list[Any]:
                return await answer(pairs_of(calls))

            wrapper: Any = dispatch_async
            wrapper.batch = abatch
        else:

            def answer_sync(pairs: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
                answers = model_answers(pairs)
                return [a if a is not None else traced(*args, **kwargs) for a, (args, kwargs) in zip(answers, pairs)]

            @functools.wraps(fn)
            def dispatch(*args: Any, **kwargs: Any) -> Any:
                return answer_sync([(args, kwargs)])[0]

            def batch(calls: Sequence[Any]) -> list[Any]:
                return answer_sync(pairs_of(calls))

            wrapper = dispatch
            wrapper.batch = batch
        wrapper.spec = spec
        wrapper.warmup = dispatcher.warmup
        wrapper.dispatcher = dispatcher
        return wrapper

    def _shadowing(self, fn: F, builder: RecordBuilder, dispatcher: Dispatcher, rate: float) -> F:
        """Run the function and return its result; the model answers too and the agreement is
        counted (``.shadow_stats``) and written into the call's record as ``shadow``."""
        from localdistil.training.evaluate import Agreement, compare_outputs

        spec = builder.spec
        agreement = Agreement()

        def compare(bound: Any, result: Any) -> dict[str, Any] | None:
            if isinstance(bound, Exception) or (rate < 1.0 and random.random() >= rate):
                return None
            try:
                expected = spec.dump_output(result)
                answer = dispatcher.answer(bound)
                got = None if answer is None else answer.model_dump(mode="json", by_alias=True)
            except Exception as exc:  # the model's side never breaks the caller
                self._report(f"localdistil shadow: the model could not answer {spec.name}: {exc}", exc)
                return None
            comparison = compare_outputs(expected, got)
            agreement.add(comparison)
            return {"shadow": {"model_output": got, "exact": comparison.exact, "fields": comparison.fields}}

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def shadow_async(*args: Any, **kwargs: Any) -> Any:
                bound = self._bind(builder, args, kwargs, sample=False)
                start = time.perf_counter()
                result = await fn(*args, **kwargs)
                duration = time.perf_counter() - start
                annotations = await asyncio.to_thread(compare, bound, result)
                self._record(builder, bound if self._sampled() else None, result, duration, annotations)
                return result

            wrapper: Any = shadow_async
        else:

            @functools.wraps(fn)
            def shadow(*args: Any, **kwargs: Any) -> Any:
                bound = self._bind(builder, args, kwargs, sample=False)
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                duration = time.perf_counter() - start
                annotations = compare(bound, result)
                self._record(builder, bound if self._sampled() else None, result, duration, annotations)
                return result

            wrapper = shadow
        wrapper.spec = spec
        wrapper.shadow_stats = agreement
        wrapper.dispatcher = dispatcher
        return wrapper

    def _sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate

    def _bind(self, builder: RecordBuilder, args: tuple[Any, ...], kwargs: dict[str, Any], *, sample: bool = True) -> Any:
        """Bind before the call (the body may mutate its arguments); ``None`` = not sampled."""
        if sample and not self._sampled():
            return None
        try:
            return builder.spec.bind(args, kwargs)
        except Exception as exc:  # reported after the call, and only if the call succeeds
            return exc

    def _record(self, builder: RecordBuilder, bound: Any, result: Any, duration_s: float,
                annotations: Mapping[str, Any] | None = None) -> None:
        if bound is None or not self.sinks:
            return
        spec = builder.spec
        try:
            if isinstance(bound, Exception):
                raise bound
            record: dict[str, Any] | None = builder.build(bound, spec.dump_output(result), duration_s=duration_s,
                                                          annotations=annotations)
            if self.redact is not None:
                record = self.redact(record)
                if record is None:
                    return
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        except Exception as exc:
            self._report(f"localdistil could not record a call of {spec.name}: {exc}", exc)
            return
        for sink in self.sinks:
            try:
                sink.write(line)
            except Exception as exc:
                self._report(f"localdistil could not write a record of {spec.name} to {sink!r}: {exc}", exc)

    def _report(self, message: str, exc: BaseException) -> None:
        if self.strict:
            raise TraceError(message) from exc
        try:
            warnings.warn(message, TraceWarning, stacklevel=4)
        except Exception:  # warnings turned into errors must not break the caller either
            _log.warning(message)

    def close(self) -> None:
        """Close the JSONL file and flush the log handlers."""
        for sink in self.sinks:
            sink.close()

    def __repr__(self) -> str:
        return f"Instructions(name={self.name!r}, finetune_format={self.finetune_format!r}, sinks={self.sinks!r})"
