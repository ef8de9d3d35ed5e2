"""From one call to one record line in every sink, without ever changing what the call does.

:class:`Recorder` is the part of tracing that every mode shares: bind the arguments before the
body runs (it may mutate them), build the record after it returns, redact it, write it to each
sink, and report (never raise, unless ``strict=True``) whatever goes wrong on the way.
:class:`Sampler` draws the sampling decisions from a private ``random.Random``, so tracing never
moves the application's own random state.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from localdistil.errors import TraceError, TraceWarning

if TYPE_CHECKING:
    from types import FrameType

    from localdistil.records import RecordBuilder
    from localdistil.spec import FunctionSpec

_log = logging.getLogger("localdistil")
_PACKAGE = str(Path(__file__).resolve().parent.parent)


class Sampler:
    """Sampling decisions (``sample_rate``, ``shadow_rate``) from a private ``random.Random``.

    With ``seed=None`` the generator is seeded from the operating system, and again in a child
    process after ``fork`` (as ``random`` itself does), so forked workers do not all sample the
    same calls. With a seed, the decisions repeat from run to run (and in each forked child).
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._random = random.Random(seed)
        self._pid = os.getpid()

    def __call__(self, rate: float) -> bool:
        """True for a ``rate`` fraction of calls; no draw at all for rates 0 and 1."""
        if rate >= 1.0:
            return True
        if rate <= 0.0:
            return False
        if self.seed is None and os.getpid() != self._pid:
            self._random.seed()
            self._pid = os.getpid()
        return self._random.random() < rate


class Settings(Protocol):
    """What a :class:`Recorder` reads from its Instructions object, at every call."""

    @property
    def sinks(self) -> Sequence[Any]: ...
    @property
    def redact(self) -> Callable[[dict[str, Any]], dict[str, Any] | None] | None: ...
    @property
    def strict(self) -> bool: ...
    @property
    def sample_rate(self) -> float: ...
    @property
    def sampler(self) -> Sampler: ...


class Recorder:
    """Records the calls of one decorated function into its Instructions object's sinks."""

    def __init__(self, instructions: Settings, builder: RecordBuilder):
        self.instructions = instructions
        self.builder = builder

    @property
    def spec(self) -> FunctionSpec:
        return self.builder.spec

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, sample: bool = True) -> Any:
        """The call's bound arguments, taken before the body runs (it may mutate them).

        ``None``: not recorded (not sampled, or nowhere to write); an exception: the arguments
        could not be bound, reported by :meth:`record` only if the call itself succeeds.
        ``sample=False`` binds every call (shadow mode needs the arguments for the model).
        """
        instructions = self.instructions
        if sample and not (instructions.sinks and instructions.sampler(instructions.sample_rate)):
            return None
        try:
            return self.spec.bind(args, kwargs)
        except Exception as exc:
            return exc

    def sampled(self) -> bool:
        """Whether to record this call, at the Instructions object's ``sample_rate``."""
        return self.instructions.sampler(self.instructions.sample_rate)

    def record(self, bound: Any, result: Any, duration_s: float,
               annotations: Mapping[str, Any] | None = None) -> None:
        """Write the record of a call that returned ``result`` (nothing when ``bound`` is None)."""
        instructions = self.instructions
        if bound is None or not instructions.sinks:
            return
        spec = self.spec
        try:
            if isinstance(bound, Exception):
                raise bound
            record = self.builder.build(bound, spec.dump_output(result), duration_s=duration_s,
                                        annotations=annotations)
            if instructions.redact is not None:
                redacted = instructions.redact(record)
                if redacted is None:
                    return
                record = redacted
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        except Exception as exc:
            self.report(f"localdistil could not record a call of {spec.name}: {exc}", exc)
            return
        for sink in instructions.sinks:
            try:
                sink.write(line)
            except Exception as exc:
                self.report(f"localdistil could not write a record of {spec.name} to {sink!r}: "
                            f"{exc}", exc)

    def report(self, message: str, exc: BaseException) -> None:
        """A :class:`TraceWarning` pointing at the caller's line; :class:`TraceError` if strict."""
        if self.instructions.strict:
            raise TraceError(message) from exc
        try:
            warnings.warn(message, TraceWarning, stacklevel=_outside_stacklevel())
        except Exception:  # warnings turned into errors must not break the caller either
            _log.warning(message)


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside localdistil, seen from ``report``: the
    user's call, however many of the package's frames (modes, drivers) lie between."""
    frame: FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    return level
