"""The modes of a decorated function: what one call (and, for some, one batch) does.

A mode writes each of its entry points once, as a generator of *steps*, with no ``await`` in
it and no thread: it yields :class:`Body` where the decorated function must run (the result is
sent back) and :class:`Blocking` where model work must run (its return value is sent back). An
exception raised by either is thrown back into the generator at the ``yield``.
:mod:`localdistil.trace.wrappers` drives the steps: directly for a sync function; for an async
one, awaiting the body and running model work in ``asyncio.to_thread``, so the event loop never
blocks. One mode therefore gives both wrappers, and a mode can reuse another's steps with
``yield from`` (a dispatch fallback is a traced call).

- :class:`TraceMode` (``mode="distil"``): run the body, record the call.
- :class:`DispatchMode` (``"dispatch"``): skip the body, the model answers; ``.batch``.
- :class:`ShadowMode` (``"shadow"``): run the body and return its result, ask the model too,
  count the agreement.

A mode that switches between these per call (``mode="auto"``: trace until an adapter exists,
shadow until trusted, dispatch while monitoring) is one more subclass whose ``call`` picks one
of them and ``yield from``\\ s its steps.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from localdistil.errors import DispatchError
from localdistil.trace.recorder import Recorder

if TYPE_CHECKING:
    from localdistil.inference.agreement import Agreement
    from localdistil.inference.dispatch import Dispatcher
    from localdistil.spec import FunctionSpec


@dataclasses.dataclass(frozen=True)
class Body:
    """Run the decorated function with these arguments (awaited if it is async)."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Blocking:
    """Call ``work(*args)``: model work, run in a worker thread when the function is async."""

    work: Callable[..., Any]
    args: tuple[Any, ...] = ()


Step = Body | Blocking
#: What an entry point of a mode returns: a generator of steps whose return value is the answer.
Steps = Generator[Step, Any, Any]
#: One call of a batch: a mapping of keyword arguments or a sequence of positional ones.
BatchCall = Mapping[str, Any] | Sequence[Any]


class Mode:
    """What a decorated function does. Subclasses write :meth:`call` and may add entry points
    (driven like ``call``, e.g. ``batch``) and plain attributes of the decorated function."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    @property
    def spec(self) -> FunctionSpec:
        return self.recorder.spec

    def call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Steps:
        """The steps of one call of the decorated function."""
        raise NotImplementedError

    def entry_points(self) -> dict[str, Callable[..., Steps]]:
        """Attributes of the decorated function that are called like it (sync or async)."""
        return {}

    def attributes(self) -> dict[str, Any]:
        """Plain attributes of the decorated function (besides ``spec``)."""
        return {}


class TraceMode(Mode):
    """Run the body and record the call; its result and exceptions are the function's own."""

    def call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Steps:
        bound = self.recorder.bind(args, kwargs)
        start = time.perf_counter()
        result = yield Body(args, kwargs)
        self.recorder.record(bound, result, time.perf_counter() - start)
        return result


class DispatchMode(Mode):
    """Skip the body: the model answers. An answer that fails validation under
    ``on_invalid="fallback"`` runs the traced function instead (recorded as a new example).

    One call raises :class:`DispatchError` when the model has no answer. ``batch(calls)``
    answers every call and returns one item per call, in order: the answer, or the call's
    :class:`DispatchError` (like ``asyncio.gather(return_exceptions=True)``);
    ``raise_errors=True`` raises the first of them once the whole batch is answered. Arguments
    that do not fit the signature raise ``TypeError`` before the model runs.
    """

    def __init__(self, recorder: Recorder, dispatcher: Dispatcher):
        super().__init__(recorder)
        self.dispatcher = dispatcher
        self.fallback = TraceMode(recorder)

    def call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Steps:
        (answer,) = yield from self._answer([(args, kwargs)])
        if isinstance(answer, DispatchError):
            raise answer
        return answer

    def batch(self, calls: Sequence[BatchCall], *, raise_errors: bool = False) -> Steps:
        pairs = [((), dict(c)) if isinstance(c, Mapping) else (tuple(c), {}) for c in calls]
        answers = yield from self._answer(pairs)
        if raise_errors:
            for answer in answers:
                if isinstance(answer, DispatchError):
                    raise answer
        return answers

    def _answer(self, pairs: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]]) -> Steps:
        from localdistil.inference.dispatch import FALLBACK

        bound = [self.spec.bind(args, kwargs) for args, kwargs in pairs]
        if not bound:
            return []
        answers = yield Blocking(self.dispatcher.answer_many, (bound,))
        for index, (args, kwargs) in enumerate(pairs):
            if answers[index] is FALLBACK:
                answers[index] = yield from self.fallback.call(args, kwargs)
        return answers

    def entry_points(self) -> dict[str, Callable[..., Steps]]:
        return {"batch": self.batch}

    def attributes(self) -> dict[str, Any]:
        return {"dispatcher": self.dispatcher, "warmup": self.dispatcher.warmup}


class ShadowMode(Mode):
    """Run the body and return its result; for ``rate`` of the calls the model answers too, and
    the comparison is counted (``.shadow_stats``) and written into the call's record as
    ``shadow``.

    A model without a valid answer (a :class:`DispatchError`, or an answer that failed
    validation under ``on_invalid="fallback"``) is counted as a disagreement: ``model_output``
    is ``None`` and ``error`` says why. Anything else going wrong on the model's side (it cannot
    load, ...) never reaches the caller: it is reported as a ``TraceWarning`` and not counted.
    """

    def __init__(self, recorder: Recorder, dispatcher: Dispatcher, rate: float):
        from localdistil.inference.agreement import Agreement

        super().__init__(recorder)
        self.dispatcher = dispatcher
        self.rate = rate
        self.agreement: Agreement = Agreement()

    def call(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Steps:
        recorder = self.recorder
        bound = recorder.bind(args, kwargs, sample=False)
        start = time.perf_counter()
        result = yield Body(args, kwargs)
        duration = time.perf_counter() - start
        annotations = None
        if not isinstance(bound, Exception) and recorder.instructions.sampler(self.rate):
            annotations = yield Blocking(self._compare, (bound, result))
        recorder.record(bound if recorder.sampled() else None, result, duration, annotations)
        return result

    def _compare(self, bound: dict[str, Any], result: Any) -> dict[str, Any] | None:
        from localdistil.inference.agreement import compare_outputs
        from localdistil.inference.dispatch import FALLBACK

        spec = self.spec
        try:
            expected = spec.dump_output(result)
        except Exception:  # not the declared type: recording reports it
            return None
        try:
            (answer,) = self.dispatcher.answer_many([bound])
            got = None if answer is FALLBACK or isinstance(answer, DispatchError) \
                else spec.dump_output(answer)
        except Exception as exc:  # the model's side never breaks the caller
            self.recorder.report(f"localdistil shadow: the model could not answer {spec.name}: "
                                 f"{exc}", exc)
            return None
        comparison = compare_outputs(expected, got)
        self.agreement.add(comparison)
        shadow: dict[str, Any] = {"model_output": got, "exact": comparison.exact,
                                  "fields": comparison.fields}
        if got is None:
            shadow["error"] = (str(answer) if isinstance(answer, DispatchError)
                               else "the answer failed validation (on_invalid='fallback')")
        return {"shadow": shadow}

    def attributes(self) -> dict[str, Any]:
        return {"dispatcher": self.dispatcher, "shadow_stats": self.agreement}
