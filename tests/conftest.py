"""Shared fixtures. Every test runs with its own LOCALDISTIL_HOME, so no test writes into the
repository or the user's home directory."""

from __future__ import annotations

import pytest
from pydantic import BaseModel


@pytest.fixture(autouse=True)
def localdistil_home(tmp_path, monkeypatch):
    """Point the model cache and every other piece of user state at a temporary directory."""
    home = tmp_path / "localdistil-home"
    monkeypatch.setenv("LOCALDISTIL_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight Llama with SmolLM2's special tokens and chat template (built once)."""
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny")


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory):
    """A LOCALDISTIL_HOME holding the embedded SmolLM2, converted once per test session.

    Tests that use it set LOCALDISTIL_HOME to it (monkeypatch) so they share the conversion.
    """
    home = tmp_path_factory.mktemp("smollm2-home")
    _resolve_in(home, "smollm2-135m")
    return home


@pytest.fixture(scope="session")
def smollm2_path(smollm2_home):
    """The converted SmolLM2 checkpoint directory (a plain Hugging Face model)."""
    return _resolve_in(smollm2_home, "smollm2-135m")


def _resolve_in(home, reference):
    import os

    from localdistil.models.resolve import resolve_model

    previous = os.environ.get("LOCALDISTIL_HOME")
    os.environ["LOCALDISTIL_HOME"] = str(home)
    try:
        return resolve_model(reference)
    finally:
        if previous is None:
            os.environ.pop("LOCALDISTIL_HOME", None)
        else:
            os.environ["LOCALDISTIL_HOME"] = previous


class Multiply(BaseModel):
    a: int
    b: int
    result: int


@pytest.fixture
def traced_multiply(tmp_path):
    """24 traced calls of a multiply function: ``(trace file, the traced function)``."""
    from localdistil import Instructions

    path = tmp_path / "traces" / "multiply.jsonl"
    instructions = Instructions(path=str(path))

    @instructions.distil
    def multiply(a: int, b: int) -> Multiply:
        """Multiply two numbers."""
        return Multiply(a=a, b=b, result=a * b)

    for i in range(24):
        multiply(100 + i, 7)
    return path, multiply


# -- deprecations raised by localdistil's own calls fail the test ---------------------------

_PACKAGE_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "localdistil"
_DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _library_of(path: str) -> str:
    """The installed distribution a source file belongs to (``transformers``), else the path."""
    head, marker, tail = path.partition("site-packages/")
    return tail.split("/", 1)[0] if marker else path


#: Frames that only pass a call through (``module(...)`` -> ``forward``): never the caller.
_PASS_THROUGH = ("torch/nn/modules/module.py",)


def _warned_from_our_call(category) -> str | None:
    """The localdistil frame that called a deprecated API, as ``file:line``, or None.

    The warning is issued inside the library that deprecates the API (``transformers``). Going
    outward from there, past that library's own frames and torch's call machinery, the first
    frame is the one that used the API: when it lies in the localdistil package, localdistil's
    call is deprecated; when it lies in another library (PEFT calling a deprecated transformers
    property, say), the fix belongs to that library and the test does not fail for it.
    """
    import sys

    if not (isinstance(category, type) and issubclass(category, _DEPRECATIONS)):
        return None
    frame = sys._getframe(2)  # the frame that called warnings.warn
    library = _library_of(frame.f_code.co_filename)
    while frame is not None:
        path = frame.f_code.co_filename
        if _library_of(path) != library and not path.endswith(_PASS_THROUGH):
            return f"{path}:{frame.f_lineno}" if path.startswith(str(_PACKAGE_DIR)) else None
        frame = frame.f_back
    return None


@pytest.fixture(autouse=True)
def fail_on_our_deprecations(monkeypatch):
    """A DeprecationWarning/FutureWarning raised inside a library that localdistil called fails
    the test: an API about to disappear is replaced the day the warning appears.

    pyproject's filterwarnings ignores deprecations in general (libraries warn about each other);
    this looks at where each one came from.
    """
    import warnings

    found: list[str] = []
    original = warnings.warn

    def warn(message, category=None, stacklevel=1, source=None, **kwargs):
        category = category or (message.__class__ if isinstance(message, Warning) else UserWarning)
        caller = _warned_from_our_call(category)
        if caller is not None:
            found.append(f"{category.__name__} via {caller}: {message}")
        return original(message, category, stacklevel + 1, source, **kwargs)

    monkeypatch.setattr(warnings, "warn", warn)
    yield found
    if found:
        pytest.fail("localdistil called a deprecated API:\n" + "\n".join(dict.fromkeys(found)))
