"""The decorated function: one factory builds it, sync or async, from a mode.

:func:`build_wrapper` takes the user's function and a :class:`~localdistil.trace.modes.Mode`
and returns a function with the same name, signature and kind (a coroutine function stays
one) that drives the mode's steps: :func:`_drive_sync` calls the body and the model work
directly; :func:`_drive_async` awaits the body and runs model work with ``asyncio.to_thread``,
so the event loop keeps running while the model generates. Nothing here knows any mode.

The protocols say what a decorated function carries, for type checkers and readers:
:class:`DistilledFunction` (every mode: ``spec``), :class:`DispatchedFunction` (``dispatcher``,
``warmup``, ``batch``), :class:`ShadowedFunction` (``dispatcher``, ``shadow_stats``) and
:class:`AutoFunction` (``router_stats``).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from localdistil.trace.modes import BatchCall, Body, Mode, Step, Steps

if TYPE_CHECKING:
    from localdistil.inference.agreement import Agreement
    from localdistil.inference.dispatch import Dispatcher
    from localdistil.spec import FunctionSpec
    from localdistil.trace.auto import RouterStats

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class DistilledFunction(Protocol[P, R]):
    """What ``@instructions.distil`` returns: the function, called exactly as before, and
    ``spec``, the :class:`~localdistil.spec.FunctionSpec` it is traced and trained as."""

    spec: FunctionSpec

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def __get__(self, instance: Any, owner: type | None = None) -> Any: ...  # methods


class DispatchedFunction(DistilledFunction[P, R], Protocol):
    """A function decorated with ``mode="dispatch"``."""

    dispatcher: Dispatcher

    def warmup(self) -> None:
        """Load the model and build the grammar now, not on the first call."""

    def batch(self, calls: Sequence[BatchCall], *, raise_errors: bool = False) -> Any:
        """Answer many calls (each a dict of keyword arguments or a tuple of positional ones)
        in one generation batch: a list with one item per call, in order, each the answer or
        that call's ``DispatchError`` (``raise_errors=True`` raises the first instead). For an
        async function, an awaitable of that list."""


class ShadowedFunction(DistilledFunction[P, R], Protocol):
    """A function decorated with ``mode="shadow"``; ``shadow_stats.summary()`` gives the
    running agreement between the function and its model."""

    dispatcher: Dispatcher
    shadow_stats: Agreement


class AutoFunction(DistilledFunction[P, R], Protocol):
    """A function decorated with ``mode="auto"``: it runs and is recorded until its model has an
    adapter, is shadowed by the model until they agree often enough, then answered by the model
    while a sample of calls is still checked. ``router_stats`` says which phase it is in
    (``.phase``, ``.version``, ``.window``, ``.agreement``, ``.compared``, ``.summary()``)."""

    router_stats: RouterStats


def build_wrapper(fn: Callable[..., Any], mode: Mode) -> Any:
    """The decorated ``fn``: each call, and each of the mode's other entry points (``batch``),
    runs the mode's steps; sync for a sync ``fn``, async for a coroutine function."""
    wrapper: Any = functools.wraps(fn)(_driven(fn, lambda *args, **kwargs: mode.call(args, kwargs)))
    wrapper.spec = mode.spec
    for name, steps_of in mode.entry_points().items():
        setattr(wrapper, name, _driven(fn, steps_of))
    for name, value in mode.attributes().items():
        setattr(wrapper, name, value)
    return wrapper


def _driven(fn: Callable[..., Any], steps_of: Callable[..., Steps]) -> Callable[..., Any]:
    """A function that drives the steps of ``steps_of(...)``, of the same kind as ``fn``."""
    if inspect.iscoroutinefunction(fn):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return await _drive_async(fn, steps_of(*args, **kwargs))

        return run_async

    def run(*args: Any, **kwargs: Any) -> Any:
        return _drive_sync(fn, steps_of(*args, **kwargs))

    return run


def _drive_sync(fn: Callable[..., Any], steps: Steps) -> Any:
    send, reply = steps.send, None
    while True:
        try:
            step: Step = send(reply)
        except StopIteration as done:
            return done.value
        finally:
            reply = None  # no cycle: exception -> traceback -> this frame -> exception
        try:
            if isinstance(step, Body):
                reply = fn(*step.args, **step.kwargs)
            else:
                reply = step.work(*step.args)
            send = steps.send
        except Exception as error:  # the mode sees it at its yield, and may handle it
            reply, send = error, steps.throw


async def _drive_async(fn: Callable[..., Any], steps: Steps) -> Any:
    send, reply = steps.send, None
    while True:
        try:
            step: Step = send(reply)
        except StopIteration as done:
            return done.value
        finally:
            reply = None  # no cycle: exception -> traceback -> this frame -> exception
        try:
            if isinstance(step, Body):
                reply = await fn(*step.args, **step.kwargs)
            else:
                reply = await asyncio.to_thread(step.work, *step.args)
            send = steps.send
        except Exception as error:  # the mode sees it at its yield, and may handle it
            reply, send = error, steps.throw
